"""Text-to-image diffusion targets: load, encode prompts, find cross-attention K/V, sample, save grids.

A target is a diffusers-format pipeline directory, read component by component (no ``DiffusionPipeline``, no
remote code, safetensors only): ``unet/``, ``text_encoder/`` (CLIP), ``tokenizer/``, ``scheduler/`` and, for
latent models such as SD 1.x/2.x, ``vae/``. The embedded TinyShapes target denoises RGB pixels directly (no
``vae/``) and ships a ``classifier/`` and ``tinyshapes.json``; its names (``EMBEDDED``) are resolved to a directory
by `unlearn.targets.tinyshapes_build.resolve`, which builds on this module (not the reverse). The sampling loop is
written out (diffusers' "expose the loop"): DDIM with classifier-free guidance, seeded per call, so erased and
original models draw from identical noise.

The closed-form adversarial embedding (RECE's Eq. 8) lives here too: it is a property of a pair of cross-attention
layer sets, used by RECE (methods/) to edit and by the erasure metrics (metrics/) to attack any edited model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from unlearn.errors import UnlearnError
from unlearn.store import atomic_write_json
from unlearn.targets.shape_classifier import load_classifier, save_classifier

EMBEDDED = {"tinyshapes": "default", "tinyshapes-micro": "micro"}  # name -> TinyShapes build preset
REQUIRED = ("unet", "text_encoder", "tokenizer", "scheduler")


@dataclass
class DiffusionTarget:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    vae: torch.nn.Module | None = None  # None: the UNet works in pixel space ([-1, 1] RGB)
    classifier: torch.nn.Module | None = None  # TinyShapes only: shape / colour / background heads
    path: Path | None = None
    meta: dict = field(default_factory=dict)  # tinyshapes.json of a TinyShapes pipeline (config, quality report)


def target_kind(path: str | Path) -> str:
    """``tinyshapes`` for a TinyShapes pipeline (embedded, rebuilt or edited: it has ``tinyshapes.json``), ``sd``
    for any other diffusers directory. Run paths are keyed by it."""
    return "tinyshapes" if (Path(path) / "tinyshapes.json").exists() else "sd"


def pipeline_dir(path: str | Path) -> Path:
    """``path`` as a diffusers pipeline directory (one-line errors when it is not one)."""
    p = Path(path).expanduser()
    if str(path) in EMBEDDED and not p.is_dir():  # a caller's slip, not the user's: say where names resolve
        raise UnlearnError(f"{path} is an embedded name: resolve it with unlearn.targets.tinyshapes_build.resolve")
    if not p.is_dir():
        raise UnlearnError(
            f"model {str(path)!r} is neither an embedded target ({', '.join(EMBEDDED)}) nor a local "
            "diffusers pipeline directory (Stable Diffusion weights must be downloaded beforehand)"
        )
    missing = [c for c in REQUIRED if not (p / c).is_dir()]
    if missing:
        raise UnlearnError(f"{p} is not a diffusers pipeline directory: missing {', '.join(missing)}/")
    return p


# what a Stable Diffusion hub repository holds that `load_target` never reads (pickles, fp16 / flax / ONNX copies,
# the single-file .ckpt): skipped when a snapshot is resolved, so an online resolve fetches only what is used
_HUB_IGNORE = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.fp16.*", "*.pb"]


def hub_pipeline_dir(name: str) -> Path:
    """The snapshot directory of the hub id ``name`` (``CompVis/stable-diffusion-v1-4``) as a pipeline directory:
    from the Hugging Face cache (``HF_HOME``) when ``HF_HUB_OFFLINE=1``, else fetched (safetensors and configs)."""
    import os

    from huggingface_hub import snapshot_download  # only for a hub id

    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return pipeline_dir(name)  # not a hub id: the missing-directory error
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        snap = snapshot_download(name, local_files_only=offline, ignore_patterns=_HUB_IGNORE)
    except Exception as e:  # hub errors come in many classes (offline miss, 404, auth, network): all one line
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UnlearnError(f"cannot find diffusion pipeline {name!r} ({msg}); offline, put it in the Hugging Face "
                           "cache (HF_HOME) or pass a local diffusers directory") from None  # fmt: skip
    return pipeline_dir(snap)


def load_target(path: str | Path, device: str = "cpu") -> DiffusionTarget:
    """Load a pipeline directory for editing and sampling, weights from safetensors only.

    Embedded names (``tinyshapes``) go through `unlearn.targets.tinyshapes_build.resolve` first.
    """
    # heavy (diffusers ~2 s, transformers' CLIP): imported only when a pipeline is loaded
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    p = pipeline_dir(path)
    try:
        unet = UNet2DConditionModel.from_pretrained(p / "unet", use_safetensors=True)
        te = CLIPTextModel.from_pretrained(p / "text_encoder", use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise UnlearnError(f"cannot load the UNet / CLIP text encoder from {p}: {str(e).splitlines()[0]}") from None
    tok = AutoTokenizer.from_pretrained(p / "tokenizer", trust_remote_code=False)
    sched = json.loads((p / "scheduler" / "scheduler_config.json").read_text())
    if te.config.hidden_size != unet.config.cross_attention_dim:
        raise UnlearnError(
            f"{p}: text encoder width {te.config.hidden_size} != UNet cross_attention_dim "
            f"{unet.config.cross_attention_dim} (mismatched checkpoints)"
        )
    vae = None
    if (p / "vae").is_dir():
        from diffusers import AutoencoderKL  # heavy, as above

        vae = AutoencoderKL.from_pretrained(p / "vae", use_safetensors=True).to(device).eval()
    clf, meta = None, {}
    if (p / "tinyshapes.json").exists():
        meta = json.loads((p / "tinyshapes.json").read_text())
        clf = load_classifier(p / "classifier").to(device)
    return DiffusionTarget(unet.to(device).eval(), te.to(device).eval(), tok, sched, vae, clf, p, meta)


def save_target(target: DiffusionTarget, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``target`` as a pipeline directory that `load_target` reads back bit for bit (safetensors only).

    Every component is written from memory (an edit may have changed any of them); ``model_index.json`` (what marks
    a directory as a diffusion pipeline) is the source's, or a minimal one. ``meta`` (default: ``target.meta``)
    becomes ``tinyshapes.json`` when the target has a classifier. Written to ``path.tmp`` first, then renamed.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    target.unet.save_pretrained(tmp / "unet", safe_serialization=True)
    target.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    target.tokenizer.save_pretrained(tmp / "tokenizer")
    atomic_write_json(tmp / "scheduler" / "scheduler_config.json", target.scheduler_config)
    if target.vae is not None:
        target.vae.save_pretrained(tmp / "vae", safe_serialization=True)
    src = Path(target.path) / "model_index.json" if target.path is not None else None
    if src is not None and src.exists():
        shutil.copy2(src, tmp / "model_index.json")
    else:
        index = {"unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
                 "scheduler": ["diffusers", target.scheduler_config.get("_class_name", "DDPMScheduler")]}  # fmt: skip
        atomic_write_json(tmp / "model_index.json", index)
    if target.classifier is not None:
        save_classifier(target.classifier, tmp / "classifier")
        atomic_write_json(tmp / "tinyshapes.json", target.meta if meta is None else meta)
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return path


def cross_attention_kv(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """Every cross-attention key/value projection (``...attn2.to_k`` / ``attn2.to_v``), in module order.

    SD 1.4: 16 attn2 blocks -> 32 Linear layers, weight (d_out, 768), no bias; TinyShapes: 14, weight (d_out, 64).
    """
    layers = [(n, m) for n, m in unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]
    if not layers:
        raise UnlearnError("the UNet has no cross-attention (attn2.to_k / attn2.to_v) layers to edit")
    return layers


def kv_weights(unet: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of every cross-attention K/V weight (d_out, d), in `cross_attention_kv` order."""
    return [m.weight.detach().clone() for _, m in cross_attention_kv(unet)]


def adversarial_embedding(W: list[torch.Tensor], W0: list[torch.Tensor], C: torch.Tensor, reg: float) -> torch.Tensor:
    """RECE's closed-form c' (Gong et al. 2024, https://arxiv.org/abs/2407.12383, Eq. 8) for every row of C (T, d).

    c' = argmin Σ_l ‖W_l c' − W⁰_l c‖² + λ_r ‖c'‖²: the embedding that makes the edited layers W_l reproduce what
    the original layers W⁰_l computed for c. Returns C' (T, d) = C Mᵀ, M = (λ_r I + ΣWᵀW)⁻¹ ΣWᵀW⁰ (fp64 inside).
    """
    d = C.shape[-1]
    gram = torch.zeros(d, d, dtype=torch.float64, device=C.device)  # Σ_l W_lᵀ W_l   (d, d)
    cross = torch.zeros_like(gram)  # Σ_l W_lᵀ W⁰_l  (d, d)
    for w, w0 in zip(W, W0):
        w, w0 = w.double(), w0.double()
        gram += w.T @ w
        cross += w.T @ w0
    M = torch.linalg.solve(reg * torch.eye(d, dtype=torch.float64, device=C.device) + gram, cross)  # (d, d)
    return (C.double() @ M.T).to(C.dtype)


@torch.no_grad()
def encode_prompts(target: DiffusionTarget, prompts: list[str]) -> torch.Tensor:
    """CLIP last hidden states, (n, T, d), T = the tokenizer's max length (77 for SD, 16 for TinyShapes)."""
    tok = target.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    dev = next(target.text_encoder.parameters()).device
    return target.text_encoder(ids.input_ids.to(dev)).last_hidden_state


def _scheduler(cfg: dict):
    from diffusers import DDIMScheduler  # heavy (diffusers), as in load_target

    keep = {k: v for k, v in cfg.items() if not k.startswith("_")}
    # "trailing": the first step is t = T-1, where x_T really is pure noise. DDPM's default "leading" starts at
    # t = T - T/steps and mistakes the noise's low frequencies for signal: washed-out colours, grey backgrounds
    # (Lin et al. 2024, https://arxiv.org/abs/2305.08891, §3.3).
    keep["timestep_spacing"] = "trailing"
    return DDIMScheduler.from_config(keep)


@torch.no_grad()
def sample(
    target: DiffusionTarget,
    cond: torch.Tensor,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 3.0,
    batch_size: int = 64,
    progress: bool = False,
    latents: bool = False,
) -> torch.Tensor:
    """Images (n, 3, H, W) in [0, 1] from text embeddings ``cond`` (n, T, d); DDIM, classifier-free guidance.

    Image i's initial noise depends only on (seed, i), so any two models (or prompt sets of equal length) sample
    from the same noise — the erased-vs-original comparison is paired. ``latents=True`` returns the denoised
    model-space samples (latents for a VAE model, [-1, 1] pixels otherwise), e.g. as training pairs.
    """
    unet, dev = target.unet, cond.device
    uncond = encode_prompts(target, [""])  # (1, T, d)
    ch, size = unet.config.in_channels, unet.config.sample_size
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(cond.shape[0], ch, size, size, generator=gen)
    out = []
    for i in tqdm(range(0, cond.shape[0], batch_size), desc="sample", disable=not progress, leave=False):
        c = cond[i : i + batch_size]
        x = noise[i : i + batch_size].to(dev)
        sched = _scheduler(target.scheduler_config)
        sched.set_timesteps(steps)
        x = x * sched.init_noise_sigma
        emb = torch.cat([uncond.expand(len(c), -1, -1), c])
        for t in sched.timesteps:
            xin = sched.scale_model_input(torch.cat([x, x]), t)
            u, p = unet(xin, t, encoder_hidden_states=emb).sample.chunk(2)
            x = sched.step(u + guidance * (p - u), t, x).prev_sample
        out.append(x)
    x = torch.cat(out)
    if latents:
        return x.cpu()
    if target.vae is not None:
        x = target.vae.decode(x / target.vae.config.scaling_factor).sample
    return ((x.clamp(-1, 1) + 1) / 2).cpu()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, scale: int = 4, labels: list[str] | None = None):
    """Save (n, 3, H, W) images in [0, 1] as one PNG grid, upscaled ``scale``x (nearest), optional row labels."""
    import matplotlib  # heavy and optional: only for the PNG grid

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, _, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.ones(3, rows * (h + 1) - 1, nrow * (w + 1) - 1)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[:, r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[i]
    img = grid.permute(1, 2, 0).numpy()
    lw = 1.5 if labels else 0  # inches of left margin for row labels
    fig = plt.figure(figsize=((grid.shape[2] * scale) / 100 + lw, grid.shape[1] * scale / 100), dpi=100)
    ax = fig.add_axes([lw / fig.get_figwidth(), 0, 1 - lw / fig.get_figwidth(), 1])
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    for r, lab in enumerate(labels or []):
        ax.text(-2, r * (h + 1) + h / 2, lab, ha="right", va="center", fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
