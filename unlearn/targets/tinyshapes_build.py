"""Build, cache and find the embedded TinyShapes text-to-image target and its shape/colour classifier.

Recipe (chosen for 2 CPU cores, see benchmarks/results/tinyshapes_erasure.md): 16x16 RGB pixel-space diffusion,
a diffusers ``UNet2DConditionModel`` (cross-attention at 8x8 and 4x4) conditioned on a 2-layer CLIP text encoder
trained jointly from scratch on a word-level tokenizer built from the caption vocabulary; v-prediction on a
cosine schedule, plain v-loss (min-SNR-γ weighting, Hang et al. 2023, is an option; at γ = 5 it starved the
high-noise steps and the model ignored colour words), EMA weights, 10 % empty captions for classifier-free
guidance. Every batch is a pure function of (seed, step), and a checkpoint (model, EMA, AdamW state) is written
every ``ckpt_every`` steps, so a killed build resumes where it stopped and ends with the same weights. The
finished pipeline is a diffusers-format directory (safetensors) plus ``tinyshapes.json`` (recipe, digest,
quality report) and ``classifier/``. `resolve` maps an embedded name (``tinyshapes``, ``tinyshapes-micro``) to
its finished pipeline directory (any other argument must be a diffusers directory).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from unlearn.data.tinyshapes import LABELS, TinyShapesConfig, eval_prompts, sample_batch, vocabulary
from unlearn.errors import UnlearnError, unknown_name
from unlearn.store import atomic_write_json, unlearn_home
from unlearn.targets.diffusion import EMBEDDED, DiffusionTarget, encode_prompts, pipeline_dir, sample
from unlearn.targets.shape_classifier import ShapeClassifier, save_classifier, train_classifier

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tinyshapes"


@dataclass(frozen=True)
class ShapesBuildConfig:
    data: TinyShapesConfig = field(default_factory=TinyShapesConfig)  # the image/caption generator
    blocks: tuple = (16, 32, 64)  # UNet channels per level (16x16, 8x8, 4x4)
    down: tuple = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")  # no attention at 16x16: speed
    up: tuple = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    heads: int = 4  # attention heads per cross-attention block
    text_dim: int = 64  # CLIP width = UNet cross_attention_dim
    text_layers: int = 2  # CLIP layers
    max_tokens: int = 16  # caption length incl. [BOS]/[EOS] (captions have <= 9 words)
    steps: int = 2000  # optimizer steps (~15 min alone on one core; 0.45 s per step)
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # peak AdamW learning rate (warm-up 100 steps, cosine to 10 %)
    ema: float = 0.998  # EMA decay of the saved weights
    min_snr: float = 0.0  # min-SNR-γ weighting; 0 = plain v-loss (γ = 5 starved the high-noise steps: colour 32 %)
    ckpt_every: int = 200  # steps between resumable checkpoints
    clf_steps: int = 600  # classifier training steps (batch 128)
    eval_per_prompt: int = 4  # quality check: images per (shape, colour, background) prompt
    eval_steps: int = 20  # DDIM steps when sampling
    guidance: float = 1.5  # CFG of the quality check (pixel space over-saturates: colour 100 % at 1.5, 49 % at 3)
    seed: int = 0

    def digest(self) -> str:
        """Hash of what determines the weights (the quality-check sampling settings are left out)."""
        d = asdict(self)
        for k in ("guidance", "eval_per_prompt", "eval_steps"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


PRESETS = {
    "default": ShapesBuildConfig(),
    # seconds, for tests: 8x8 images, a 2-level UNet, 40 steps. Not a usable generator, a usable *pipeline*.
    "micro": ShapesBuildConfig(
        data=TinyShapesConfig(image_size=8, supersample=2), blocks=(16, 32), text_dim=32, text_layers=1, heads=2,
        down=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        steps=40, batch_size=16, ckpt_every=20, clf_steps=40, eval_per_prompt=1, eval_steps=4,
    ),
}  # fmt: skip


def get_preset(name: str) -> ShapesBuildConfig:
    if name not in PRESETS:
        raise unknown_name("TinyShapes build preset", name, PRESETS)
    return PRESETS[name]


def build_root(cfg: ShapesBuildConfig) -> Path:
    return unlearn_home() / "tinyshapes" / cfg.digest()


def find_built(preset: str = "default") -> Path | None:
    """The finished pipeline of ``preset``: a local (re)build in the cache, else the committed asset if its digest
    matches, else None."""
    cfg = get_preset(preset)
    for p in (build_root(cfg) / "pipeline", ASSET_DIR):
        meta = p / "tinyshapes.json"
        if meta.exists() and json.loads(meta.read_text()).get("digest") == cfg.digest():
            return p
    return None


def resolve(name_or_dir: str | Path) -> Path:
    """``tinyshapes`` / ``tinyshapes-micro`` -> the finished pipeline of that preset (`find_built`); anything else
    must be a diffusers pipeline directory."""
    if str(name_or_dir) in EMBEDDED:
        preset = EMBEDDED[str(name_or_dir)]
        p = find_built(preset)
        if p is None:
            raise UnlearnError(f"{name_or_dir} is not built; run `unlearn build tinyshapes --preset {preset}`")
        return p
    return pipeline_dir(name_or_dir)


# ----------------------------------------------------------------------------------------------- components
def make_tokenizer(max_tokens: int):
    """Word-level tokenizer over the caption vocabulary: '[BOS] w1 .. wk [EOS] [PAD]..' (a CLIP-like layout)."""
    # heavy (tokenizers / transformers / diffusers, ~3 s together): imported when a target is built, not on import
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]",
        model_max_length=max_tokens,
    )  # fmt: skip


def make_models(cfg: ShapesBuildConfig):
    from diffusers import DDPMScheduler, UNet2DConditionModel  # heavy, as in make_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocabulary()), hidden_size=cfg.text_dim, intermediate_size=2 * cfg.text_dim,
            num_hidden_layers=cfg.text_layers, num_attention_heads=4, max_position_embeddings=cfg.max_tokens,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=cfg.data.image_size, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=cfg.blocks, down_block_types=cfg.down, up_block_types=cfg.up,
        cross_attention_dim=cfg.text_dim, attention_head_dim=cfg.heads, norm_num_groups=8,
    )  # fmt: skip
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    return unet, te, sched


def random_target(preset: str = "micro"):
    """An untrained pipeline of ``preset`` in memory (tests, timing): real architecture, random weights."""
    cfg = get_preset(preset)
    unet, te, sched = make_models(cfg)
    clf = ShapeClassifier(cfg.data.image_size)
    return DiffusionTarget(unet.eval(), te.eval(), make_tokenizer(cfg.max_tokens), dict(sched.config), classifier=clf)


# ----------------------------------------------------------------------------------------------- training
def _save_ckpt(path: Path, step: int, models: dict, ema: dict, opt) -> None:
    flat = {f"{k}.{n}": p.detach().contiguous() for k, m in models.items() for n, p in m.state_dict().items()}
    flat |= {f"ema.{n}": t.contiguous() for n, t in ema.items()}
    for i, st in opt.state_dict()["state"].items():
        flat |= {f"opt.{i}.{k}": torch.as_tensor(v).contiguous() for k, v in st.items()}
    tmp = path.with_suffix(".tmp")
    save_file(flat, str(tmp), metadata={"step": str(step)})
    tmp.replace(path)


def _load_ckpt(path: Path, models: dict, ema: dict, opt) -> int:
    flat = load_file(str(path))
    for k, m in models.items():
        m.load_state_dict({n[len(k) + 1 :]: t for n, t in flat.items() if n.startswith(f"{k}.")})
    ema.update({n[4:]: t for n, t in flat.items() if n.startswith("ema.")})
    sd = opt.state_dict()
    sd["state"] = {}
    for n, t in flat.items():
        if n.startswith("opt."):
            _, i, k = n.split(".", 2)
            sd["state"].setdefault(int(i), {})[k] = t
    opt.load_state_dict(sd)
    with safe_open(str(path), "pt") as f:
        return int(f.metadata()["step"])


def train(cfg: ShapesBuildConfig, work: Path, progress: bool = True, log=print):
    """Train UNet + text encoder jointly; returns them with EMA weights loaded. Resumes from work/ckpt."""
    unet, te, sched = make_models(cfg)
    tok = make_tokenizer(cfg.max_tokens)
    models = {"unet": unet, "te": te}
    params = [p for m in models.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ema = {f"{k}.{n}": p.detach().clone() for k, m in models.items() for n, p in m.named_parameters()}
    work.mkdir(parents=True, exist_ok=True)
    ckpt, start = work / "ckpt.safetensors", 0
    if ckpt.exists():
        start = _load_ckpt(ckpt, models, ema, opt)
        log(f"resuming TinyShapes training at step {start}/{cfg.steps}")
    abar = sched.alphas_cumprod  # (1000,)
    snr = abar / (1 - abar)
    # min-SNR-γ for v-prediction; plain v-loss (weight 1) keeps the high-noise steps where colour is decided
    weight = snr.clamp(max=cfg.min_snr) / (snr + 1) if cfg.min_snr > 0 else torch.ones_like(snr)
    named = [(f"{k}.{n}", p) for k, m in models.items() for n, p in m.named_parameters()]
    unet.train(), te.train()
    bar = tqdm(range(start, cfg.steps), desc="tinyshapes", disable=not progress, initial=start, total=cfg.steps)
    for s in bar:
        imgs, caps, _ = sample_batch(cfg.data, np.random.default_rng([cfg.seed, s]), cfg.batch_size)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s)
        x0 = torch.from_numpy(imgs)  # (B, 3, H, W) in [-1, 1]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (len(x0),), generator=g)
        ids = tok(caps, padding="max_length", max_length=cfg.max_tokens, truncation=True, return_tensors="pt")
        cond = te(ids.input_ids).last_hidden_state  # (B, T, d)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        mse = (pred - sched.get_velocity(x0, noise, t)).pow(2).mean((1, 2, 3))  # (B,)
        loss = (weight[t] * mse).mean()
        lr = cfg.lr * min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + s) / (10 + s))
        with torch.no_grad():
            for n, p in named:
                ema[n].lerp_(p.detach(), 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (s + 1) % cfg.ckpt_every == 0 or s + 1 == cfg.steps:
            _save_ckpt(ckpt, s + 1, models, ema, opt)
    with torch.no_grad():
        for n, p in named:
            p.copy_(ema[n])
    return unet.eval(), te.eval(), sched, tok


@torch.no_grad()
def quality_report(target, cfg: ShapesBuildConfig, progress: bool = True) -> dict:
    """Share of samples the classifier reads as the prompted shape / colour / background (the quality bar)."""
    rows = [r for r in eval_prompts() for _ in range(cfg.eval_per_prompt)]
    imgs = sample(target, encode_prompts(target, [r["prompt"] for r in rows]), seed=cfg.seed + 7,
                  steps=cfg.eval_steps, guidance=cfg.guidance, progress=progress)  # fmt: skip
    out = target.classifier(imgs)
    rep = {"n_images": len(rows)}
    for key, names in LABELS.items():
        want = torch.tensor([names.index(r[key]) for r in rows])
        rep[f"{key}_acc"] = (out[key].argmax(-1) == want).float().mean().item()
    return rep


def build_tinyshapes(preset: str = "default", force: bool = False, progress: bool = True, log=print) -> Path:
    """Build (or find) the TinyShapes pipeline of ``preset``; returns its directory. Resumable, cached by digest."""
    cfg = get_preset(preset)
    done = find_built(preset)
    if done is not None and not force:
        log(f"TinyShapes ({preset}) already built: {done}")
        return done
    root = build_root(cfg)
    work, final = root / "work", root / "pipeline"
    if force and root.exists():
        shutil.rmtree(root)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    unet, te, sched, tok = train(cfg, work, progress, log)
    train_s = time.time() - t0
    clf = train_classifier(cfg.data, cfg.clf_steps, cfg.seed, progress)
    tmp = root / "pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    te.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    tok.save_pretrained(tmp / "tokenizer")
    sched.save_pretrained(tmp / "scheduler")
    save_classifier(clf, tmp / "classifier")
    index = {"_class_name": "TinyShapes", "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "scheduler": ["diffusers", "DDPMScheduler"]}  # fmt: skip
    atomic_write_json(tmp / "model_index.json", index)
    target = DiffusionTarget(unet, te, tok, dict(sched.config), classifier=clf, path=tmp)
    rep = quality_report(target, cfg, progress)
    log(f"TinyShapes ({preset}): shape acc {rep['shape_acc']:.3f}, colour acc {rep['colour_acc']:.3f}")
    meta = {"preset": preset, "digest": cfg.digest(), "config": asdict(cfg), "train_seconds": round(train_s, 1),
            "quality": rep, "torch": torch.__version__,
            "rebuild": f"unlearn build tinyshapes --preset {preset}"}  # fmt: skip
    atomic_write_json(tmp / "tinyshapes.json", meta)
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    return final
