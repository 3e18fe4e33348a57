"""The diffusion task of the loop core: text-to-image UNets unlearning on (x0, cond) pairs.

The core (`unlearn/loop.py`) owns the optimizer, schedule, gradient hooks, non-finite guard, checkpoints and resume,
``trace.jsonl`` and progress; this module supplies what is specific to denoising:

* Data: forget and retain pairs (x0 (N, C, H, W) in model space, cond (N, T, d) text embeddings), e.g. images the
  original model drew for the erased concept's prompts. One optimizer step = ``batch_size`` forget pairs and as many
  retain pairs, each drawn uniformly with replacement, with a timestep t and noise ε per pair (`PairStream`).
* The stream is the sequence of one ``torch.Generator`` seeded by ``seed`` (per step: forget indices, t, ε, then the
  same for retain), and `PairStream.at(step)` replays it, so a step's draws are a pure function of (seed, step): a
  resumed run sees the batches an uninterrupted one would have seen.
* The method's step sees ``ctx.policy(pairs) -> (B,)``, the trainable UNet's per-sample denoising loss, and
  ``ctx.reference(pairs) -> (B,)``, the frozen pre-unlearning copy's at the same (t, ε) (only when the method
  ``needs_reference``); ``ctx.norm`` holds the step's ``forget_seqs`` / ``retain_seqs`` pair counts.
* Methods that need raw UNet outputs (ESD, All-but-One, DoCo) call ``ctx.predict(pairs, cond=None,
  reference=False, space="model")`` -> (B, C, H, W): the trainable (or frozen) UNet's prediction at the pairs'
  x_t, optionally under other text embeddings ``cond`` (B, T, d), in the model's own prediction space (``model``:
  ε or v), as ``eps`` or as the predicted clean sample ``x0``; ``ctx.encode(prompts)`` -> (n, T, d) embeds extra
  prompts (cached, no grad), and ``ctx.concept`` is the erased concept's word (None when the caller gives none).
  Pairs given as (x0, cond, prompts) carry their prompt strings as ``pairs["prompt"]`` (anchor prompts are the
  same prompt with the concept word swapped, `swap_concept`).
* Checkpoints hold the trainable parameters only (plus the optimizer, scheduler and auxiliary modules): the frozen
  rest of the UNet is the pipeline on disk, so a Stable Diffusion checkpoint of the K/V projections stays small.

One process: the pairs and the UNet live on the UNet's device (CPU for TinyShapes). The trace's ``tokens`` column
counts the pairs denoised by the trainable UNet in that step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from unlearn.errors import UnlearnError
from unlearn.loop import make_core, run_loop, select_params
from unlearn.targets.diffusion import encode_prompts


@dataclass
class DiffusionTrainConfig:
    steps: int = 60  # optimizer steps
    lr: float = 1e-3  # AdamW learning rate (only the K/V projections move by default)
    batch_size: int = 16  # forget pairs per step, and as many retain pairs
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 0.0  # gradient clipping; 0 disables (the TinyShapes erasure table is without)
    warmup_epochs: float = 0.0  # linear warm-up, in passes over the forget pairs
    schedule: Literal["constant", "linear"] = "constant"  # LR after warm-up: constant or linear decay to 0
    checkpoint_every: int = 20  # save a resumable checkpoint every N steps (0: never)
    pairs_per_prompt: int = 4  # training pairs the original model draws per prompt (unlearn.erase.training_pairs)

    # the values `--set` accepts (checked by unlearn.config.set_field)
    RANGES: ClassVar[dict[str, str]] = {
        "steps": ">= 1", "lr": "> 0", "batch_size": ">= 1", "weight_decay": ">= 0", "max_grad_norm": ">= 0",
        "warmup_epochs": ">= 0", "checkpoint_every": ">= 0", "pairs_per_prompt": ">= 1",
    }  # fmt: skip


def denoise_mse(unet, sched, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """Per-sample denoising loss (B,) for x0 (B, C, H, W), text embeddings cond (B, T, d), timesteps t (B,) and
    noise (B, C, H, W): the mean squared error of the UNet's prediction against ε or v (the prediction type)."""
    pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
    target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
    return (pred - target).pow(2).mean(dim=(1, 2, 3))


def to_eps(pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, sched) -> torch.Tensor:
    """The ε a prediction ``pred`` (B, C, H, W) stands for at (x_t, t): itself for ε-models; for v-models
    ε = α_t v + σ_t x_t (α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), so α² + σ² = 1)."""
    if sched.config.prediction_type == "epsilon":
        return pred
    a, s = _alpha_sigma(sched, t, x_t)
    return a * pred + s * x_t


def to_x0(pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, sched) -> torch.Tensor:
    """The clean sample x̂0 (B, C, H, W) a prediction stands for (diffusers' ``pred_original_sample``):
    (x_t − σ_t ε) / α_t for ε-models, α_t x_t − σ_t v for v-models."""
    a, s = _alpha_sigma(sched, t, x_t)
    if sched.config.prediction_type == "epsilon":
        return (x_t - s * pred) / a
    return a * x_t - s * pred


def _alpha_sigma(sched, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ac = sched.alphas_cumprod.to(x.device, x.dtype)[t].view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)
    return ac.sqrt(), (1 - ac).sqrt()


def swap_concept(prompt: str, concept: str | None, anchor: str) -> str:
    """``prompt`` with the word ``concept`` replaced by ``anchor`` (``anchor`` = "" drops it); a prompt without the
    word (or no concept given) becomes ``anchor`` itself. Whole words only, whitespace normalised."""
    words = prompt.split()
    if concept is None or concept not in words:
        return anchor
    return " ".join(w for w in (anchor if x == concept else x for x in words) if w)


class PairStream:
    """Per-step draws ``{"forget": (idx (B,), t (B,), noise (B, C, H, W)), "retain": ... or None}``.

    One generator seeded by ``seed`` draws, step after step, the forget indices, timesteps and noise, then the
    retain ones (when there are retain pairs). `at` replays the stream from the start when asked for an earlier
    step and skips ahead for a later one, so ``at(step)`` depends on (seed, step) only.
    """

    def __init__(self, seed: int, n_forget: int, n_retain: int, batch_size: int, shape: tuple, n_timesteps: int):
        self.seed, self.n_forget, self.n_retain, self.bs = seed, n_forget, n_retain, batch_size
        self.shape, self.T = tuple(shape), n_timesteps  # shape: one sample's (C, H, W)
        self._g, self._next = torch.Generator().manual_seed(seed), 0

    def _one(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, n, (self.bs,), generator=self._g)
        t = torch.randint(0, self.T, (self.bs,), generator=self._g)
        return idx, t, torch.randn((self.bs, *self.shape), generator=self._g)

    def _draw(self) -> dict:
        self._next += 1
        f = self._one(self.n_forget)
        return {"forget": f, "retain": self._one(self.n_retain) if self.n_retain else None}

    def at(self, step: int) -> dict:
        if step < self._next:
            self._g, self._next = torch.Generator().manual_seed(self.seed), 0
        while self._next < step:
            self._draw()
        return self._draw()


@dataclass
class _Ctx:  # the StepContext of the diffusion task (see unlearn.methods.StepContext)
    policy: Callable
    reference: Callable | None
    ref_forget_logp: Callable | None
    norm: dict
    aux: dict = field(default_factory=dict)
    predict: Callable | None = None  # (pairs, cond=None, reference=False, space="model") -> (B, C, H, W)
    encode: Callable | None = None  # (prompts) -> (n, T, d) text embeddings, no grad
    concept: str | None = None  # the erased concept's word, for anchor prompts (`swap_concept`)


def unlearn_diffusion(
    target,
    forget: tuple[torch.Tensor, torch.Tensor],
    retain: tuple[torch.Tensor, torch.Tensor] | None,
    method,
    mcfg,
    tcfg: DiffusionTrainConfig,
    seed: int,
    rdir: Path | None,
    progress: bool = True,
    log=print,
    accelerator=None,
    concept: str | None = None,
) -> dict:
    """Unlearn ``forget`` from ``target.unet`` in place with ``method`` (a gradient MethodSpec); returns a summary.

    Args:
        forget, retain: (x0 (N, C, H, W), cond (N, T, d)) pairs, optionally with a third element, the N prompt
            strings (``pairs["prompt"]``); ``retain`` may be None (no retain term).
        concept: the erased concept's word (``ctx.concept``), for methods that build anchor prompts.
        rdir: with a run directory, ``trace.jsonl`` and a checkpoint every ``tcfg.checkpoint_every`` steps go there,
            and an existing checkpoint is resumed from; None trains in memory.
    Returns:
        ``edit_seconds`` (the optimisation loop alone), ``steps``, ``images`` (pairs denoised by the trainable UNet)
        and the last step's ``loss`` / ``forget_mse`` / ``retain_mse``.
    """
    from accelerate import Accelerator  # heavy (~1 s): only when a gradient method runs
    from diffusers import DDPMScheduler  # heavy (diffusers), as in unlearn.targets.diffusion

    if method.step is None:
        raise UnlearnError(f"{method.name} is a closed-form edit, not a gradient method")
    acc = accelerator or Accelerator()
    if acc.num_processes > 1:
        raise UnlearnError("diffusion unlearning runs in one process")
    unet = target.unet
    device = next(unet.parameters()).device
    sched = DDPMScheduler.from_config(target.scheduler_config)
    ref = copy.deepcopy(unet).eval().requires_grad_(False) if method.needs_reference(mcfg) else None
    named = select_params(unet, method, mcfg)
    masks = method.grad_mask(unet, mcfg) if method.grad_mask is not None else {}
    aux = method.make_aux(unet, mcfg, device) if method.make_aux is not None else {}
    n_budget = len(retain[0]) if method.budget == "retain" and retain is not None else len(forget[0])
    spe, total = math.ceil(n_budget / tcfg.batch_size), tcfg.steps
    core = make_core(acc, named, tcfg, spe, total, spec=method, mcfg=mcfg, aux=aux, masks=masks)
    stream = PairStream(seed, len(forget[0]), 0 if retain is None else len(retain[0]), tcfg.batch_size,
                        forget[0].shape[1:], sched.config.num_train_timesteps)  # fmt: skip
    norm = {"forget_seqs": float(tcfg.batch_size), "retain_seqs": float(tcfg.batch_size)}

    def pairs(data, draw) -> dict:
        idx, t, noise = draw
        out = {"x0": data[0][idx].to(device), "cond": data[1][idx].to(device), "t": t.to(device),
               "noise": noise.to(device)}  # fmt: skip
        if len(data) > 2:
            out["prompt"] = [data[2][i] for i in idx.tolist()]
        return out

    emb_cache: dict[str, torch.Tensor] = {}

    def encode(prompts: list[str]) -> torch.Tensor:
        todo = [p for p in dict.fromkeys(prompts) if p not in emb_cache]
        if todo:
            emb_cache.update(zip(todo, encode_prompts(target, todo).to(device)))
        return torch.stack([emb_cache[p] for p in prompts])

    def predict(b: dict, cond: torch.Tensor | None = None, reference: bool = False, space: str = "model"):
        if reference and ref is None:
            raise UnlearnError(f"{method.name}: asked for the frozen reference without needs_reference")
        x_t = sched.add_noise(b["x0"], b["noise"], b["t"])  # (B, C, H, W)
        c = b["cond"] if cond is None else cond
        if reference:
            with torch.no_grad():
                out = ref(x_t, b["t"], encoder_hidden_states=c).sample
        else:
            out = unet(x_t, b["t"], encoder_hidden_states=c).sample
        if space == "model":
            return out
        if space == "eps":
            return to_eps(out, x_t, b["t"], sched)
        if space == "x0":
            return to_x0(out, x_t, b["t"], sched)
        raise UnlearnError(f"unknown prediction space {space!r}; valid: model, eps, x0")

    def step_fn(step: int) -> dict:
        d = stream.at(step)
        batch = {"forget": pairs(forget, d["forget"]), "retain": pairs(retain, d["retain"]) if retain else None}
        seen = [0]

        def policy(b):
            seen[0] += b["x0"].shape[0]
            return denoise_mse(unet, sched, b["x0"], b["cond"], b["t"], b["noise"])

        def predict_counted(b, cond=None, reference=False, space="model"):
            if not reference:
                seen[0] += b["x0"].shape[0]
            return predict(b, cond, reference, space)

        def reference(b):
            with torch.no_grad():
                return denoise_mse(ref, sched, b["x0"], b["cond"], b["t"], b["noise"])

        ctx = _Ctx(policy, reference if ref is not None else None, None, norm, core.aux, predict_counted, encode,
                   concept)  # fmt: skip
        loss, logs = method.step(ctx, batch, mcfg)
        core.backward(loss)
        gnorm = core.finish_grads()
        total_loss = sum(loss.values()) if isinstance(loss, dict) else loss
        return {"loss": float(total_loss.detach()), "grad_norm": float(gnorm), "tokens": seen[0],
                **{k: float(v) for k, v in logs.items()}}  # fmt: skip

    # the checkpoint holds the trained tensors themselves (shared with the UNet, so loading writes into it)
    trained = torch.nn.ParameterList([p for _, p in named])
    unet.train()
    try:
        last, images, seconds = run_loop(core, trained, step_fn, total, spe, rdir, f"{method.name} (diffusion)",
                                         progress=progress, log=log)  # fmt: skip
    finally:
        unet.eval().requires_grad_(False)
    summary = {"edit_seconds": seconds, "steps": total, "images": images}
    return summary | {k: last[k] for k in ("loss", "forget_mse", "retain_mse") if k in last}


__all__ = ["DiffusionTrainConfig", "PairStream", "denoise_mse", "unlearn_diffusion", "to_eps", "to_x0", "swap_concept"]
