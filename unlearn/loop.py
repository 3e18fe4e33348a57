"""The loop core every gradient-based method runs in, LLM and diffusion alike.

The core owns what does not depend on the kind of model: the optimizer and its schedule, the per-step data order,
gradient bookkeeping (several losses, gradient transforms, gradient masks, clipping), the non-finite guard,
checkpoints (model, optimizer, scheduler, auxiliary modules) and resume, ``trace.jsonl`` and the progress bar.
A *task* supplies the rest: how one optimizer step's batch is built and pushed through the model
(`unlearn/train.py` for causal LMs on QA pairs, `unlearn/diffusion_train.py` for denoising pairs).

Extension points (see `unlearn.methods.MethodSpec`):

* trainable parameters (``spec.trainable``) and 0/1 gradient masks (``spec.grad_mask``), applied after every
  backward; masked parameters get no weight decay, so a masked entry never moves;
* several losses: a step returning ``{name: loss}`` gets one gradient per loss (``Core.backward``), combined by
  ``spec.transform_grads`` before clipping (e.g. gradient surgery); without a transform the losses are summed;
* auxiliary modules / optimizers (``spec.make_aux``), checkpointed with the model;
* the step budget over the forget or the retain set (``spec.budget``);
* the caller's model wrapping (``wrap``: DDP through accelerate by default, FSDP2's ``fully_shard`` under
  ``sharding=fsdp``, unlearn/sharding.py) and an optimizer wrapper (``wrap_optimizer``: opacus later). A sharded
  core (``Core.sharded``) clips DTensor gradients, checkpoints through torch.distributed.checkpoint on every rank,
  and its trajectory evaluation runs on a gathered plain copy.

Schedule: linear warm-up over ``warmup_epochs`` then linear decay to 0 (or constant), Hugging Face's formulas.
Data order: one step = ``batch_size`` examples of the budget set (a fresh permutation per epoch, so an epoch
covers each exactly once), each paired with an example of the other set drawn uniformly with replacement (TOFU's
sampler). Both are pure functions of (seed, step): a resumed or multi-process run sees the same batches.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearn.errors import UnlearnError
from unlearn.store import append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl, write_status


class NonFiniteError(UnlearnError):
    """A non-finite loss, gradient norm or weight: the step was not applied."""


# ----------------------------------------------------------------------------------------------- data order
def step_indices(step: int, n_budget: int, n_other: int, batch_size: int, seed: int) -> tuple[list, list]:
    """Global indices of optimizer step ``step``: ``batch_size`` of the budget set (epoch permutations) and as many
    of the other set (uniform with replacement). Deterministic in (seed, step)."""
    spe = math.ceil(n_budget / batch_size)
    epoch, j = divmod(step, spe)
    perm = np.random.default_rng([seed, epoch]).permutation(n_budget)
    f = perm[j * batch_size : (j + 1) * batch_size].tolist()
    r = np.random.default_rng([seed, 1_000_003, step]).integers(0, n_other, size=len(f)).tolist()
    return f, r


def total_steps(n_budget: int, cfg) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps) for ``cfg.epochs`` passes over ``n_budget`` examples."""
    spe = math.ceil(n_budget / cfg.batch_size)
    return spe, max(1, math.ceil(cfg.epochs * spe))


def lr_lambda(cfg, spe: int, total: int) -> Callable[[int], float]:
    """LR multiplier at step s: linear warm-up over ``warmup_epochs``, then linear decay to 0 (or constant).

    Hugging Face's ``get_linear_schedule_with_warmup`` / ``get_constant_schedule_with_warmup`` exactly (the
    schedules open-unlearning trains with): ``s / warm`` during warm-up, so the first step of a warmed-up run
    applies LR 0, then ``(total - s) / (total - warm)``.
    """
    warm = int(round(cfg.warmup_epochs * spe))

    def f(s: int) -> float:
        if s < warm:
            return s / max(1, warm)
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total - s) / max(1, total - warm))

    return f


# ----------------------------------------------------------------------------------------------- the core
@dataclass
class Core:
    """Optimizer state and gradient bookkeeping of one training run (built by `make_core`)."""

    acc: Any  # accelerate.Accelerator
    named_params: list  # [(name, param)] trained
    opt: Any
    sched: Any
    tcfg: Any  # TrainConfig-like: lr, weight_decay, max_grad_norm, warmup_epochs, schedule, checkpoint_every
    masks: dict = field(default_factory=dict)  # param name -> 0/1 mask (same shape)
    transform: Callable | None = None  # ({loss: [grad]}, cfg) -> [grad]
    mcfg: Any = None
    aux: dict = field(default_factory=dict)  # name -> module | optimizer
    _grads: dict = field(default_factory=dict)  # loss name -> [grad] accumulated over micro-batches
    sharded: bool = False  # the parameters are FSDP DTensor shards (unlearn/sharding.py)
    masters: list = field(default_factory=list)  # [(param, fp32 master)] with master_weights=fp32; opt steps these

    @property
    def params(self) -> list:
        return [p for _, p in self.named_params]

    def backward(self, loss, scale: float = 1.0) -> None:
        """Backward of a loss (tensor) or of several (``{name: tensor}``), scaled by ``scale``."""
        if not isinstance(loss, dict):
            self.acc.backward(loss * scale)
            return
        if self.transform is None:  # no transform: the losses simply add up
            self.acc.backward(sum(loss.values()) * scale)
            return
        if self.acc.num_processes > 1:
            raise UnlearnError("methods that transform per-loss gradients run in one process")
        items = list(loss.items())
        for i, (name, lv) in enumerate(items):
            gs = torch.autograd.grad(lv * scale, self.params, retain_graph=i < len(items) - 1, allow_unused=True)
            acc = self._grads.setdefault(name, [None] * len(gs))
            for j, g in enumerate(gs):
                if g is not None:
                    acc[j] = g.detach() if acc[j] is None else acc[j] + g.detach()

    def finish_grads(self) -> torch.Tensor:
        """Combine per-loss gradients, apply masks, clip; returns the (pre-clip) gradient norm."""
        if self._grads:
            zeros = [torch.zeros_like(p) for p in self.params]
            per = {k: [g if g is not None else z for g, z in zip(v, zeros)] for k, v in self._grads.items()}
            combined = self.transform(per, self.mcfg)
            for p, g in zip(self.params, combined):
                p.grad = g if p.grad is None else p.grad + g
            self._grads.clear()
        for name, p in self.named_params:
            if name in self.masks and p.grad is not None:
                p.grad.mul_(self.masks[name].to(p.grad.device, p.grad.dtype))
        if self.sharded:  # DTensor gradients: the norm needs one all-reduce over the shards
            from unlearn.sharding import clip_grad_norm_

            return clip_grad_norm_(self.params, self.tcfg.max_grad_norm)
        if self.tcfg.max_grad_norm > 0:
            return self.acc.clip_grad_norm_(self.params, self.tcfg.max_grad_norm)
        return grad_norm(self.params)

    def step(self) -> None:
        for p, m in self.masters:  # the (clipped, masked) low-precision gradient, upcast for the fp32 update
            m.grad = None if p.grad is None else p.grad.detach().to(m.dtype)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.masters:
            with torch.no_grad():
                for p, m in self.masters:  # the model keeps its dtype: round the updated master back into it
                    p.copy_(m)
                    p.grad = None

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        for p, _ in self.masters:
            p.grad = None
        self._grads.clear()


class MasterWeights:
    """The fp32 master copies as a checkpointable aux object (``aux_master_weights.pt``): loading puts the masters
    back and rounds them into the model's parameters, so a resumed run continues from the exact fp32 values."""

    def __init__(self, pairs: list):
        self.pairs = pairs  # [(param, master)]

    def state_dict(self) -> dict:
        return {"masters": [m.detach().cpu() for _, m in self.pairs]}

    def load_state_dict(self, sd: dict) -> None:
        saved = sd["masters"]
        if len(saved) != len(self.pairs):
            raise UnlearnError(f"checkpoint has {len(saved)} master weights, this run {len(self.pairs)}")
        with torch.no_grad():
            for (p, m), v in zip(self.pairs, saved):
                m.copy_(v)
                p.copy_(m)


def check_finite(loss: float, gnorm: float) -> None:
    """Raise `NonFiniteError` when the step's (global) loss or gradient norm is not finite."""
    if not (math.isfinite(loss) and math.isfinite(gnorm)):
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        raise NonFiniteError(f"non-finite {what} (loss={loss}, grad_norm={gnorm})")


def grad_norm(params) -> torch.Tensor:
    g = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(g).norm() if g else torch.zeros(())


def finite(params) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def select_params(model, spec, mcfg) -> list:
    """The parameters a method trains: ``spec.trainable(model, cfg)`` or every parameter that requires grad."""
    if spec is not None and spec.trainable is not None:
        chosen = list(spec.trainable(model, mcfg))
        ids = {id(p) for _, p in chosen}
        for p in model.parameters():
            p.requires_grad_(id(p) in ids)
        if not chosen:
            raise UnlearnError(f"{spec.name}: the method selected no trainable parameter")
        return chosen
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def make_core(acc, named_params, tcfg, spe: int, total: int, spec=None, mcfg=None, aux=None, masks=None,
              fused: bool | None = None) -> Core:  # fmt: skip
    """AdamW over ``named_params`` with the warm-up/decay schedule; the core's gradient hooks from ``spec``.

    ``tcfg.master_weights == "fp32"``: every parameter that is not float32 (bf16 weights) gets a float32 master copy;
    AdamW (and its moments) updates the masters and `Core.step` rounds them back into the parameters, so updates
    smaller than a bf16 ulp accumulate instead of being lost. The masters travel in checkpoints as an aux object.
    """
    masked = set(masks or {})
    aux = dict(aux or {})
    masters = []
    if getattr(tcfg, "master_weights", "none") == "fp32":
        masters = [(p, p.detach().float().clone()) for _, p in named_params if p.dtype != torch.float32]
        if masters:
            aux["master_weights"] = MasterWeights(masters)
    opt_of = {id(p): m for p, m in masters}  # the tensor AdamW steps for each parameter
    named_params_opt = [(n, opt_of.get(id(p), p)) for n, p in named_params]
    # decoupled weight decay moves an entry whatever its gradient, so masked parameters are not decayed: a masked
    # entry never moves (Needle's reference decays the whole masked layer, docs/evaluators/concept-vectors.md)
    groups = [{"params": [p for n, p in named_params_opt if n not in masked]},
              {"params": [p for n, p in named_params_opt if n in masked], "weight_decay": 0.0}]  # fmt: skip
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, weight_decay=tcfg.weight_decay, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg, spe, total))
    return Core(acc, named_params, opt, sched, tcfg, masks=dict(masks or {}),
                transform=getattr(spec, "transform_grads", None), mcfg=mcfg, aux=aux, masters=masters)  # fmt: skip


# ----------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(ckpt: Path, model, core: Core, step: int, tokens: int, extra: dict | None = None) -> None:
    """Write ``ckpt.tmp`` completely, then swap it in (``ckpt`` -> ``ckpt.old`` -> removed).

    A sharded (FSDP) model: every rank calls; model and optimizer go through torch.distributed.checkpoint into
    ``dcp/`` (one file per rank), state.json records the world size, and the main process swaps."""
    from safetensors.torch import save_model

    if core.sharded:
        return _save_sharded(ckpt, model, core, step, tokens, extra)
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
    torch.save(core.opt.state_dict(), tmp / "optimizer.pt")  # our own file; reloaded with weights_only=True
    for name, obj in core.aux.items():
        if isinstance(obj, torch.nn.Module):
            save_model(obj, str(tmp / f"aux_{name}.safetensors"))
        elif hasattr(obj, "state_dict"):
            torch.save(obj.state_dict(), tmp / f"aux_{name}.pt")
    state = {"step": step, "tokens": tokens, "scheduler": core.sched.state_dict(), **(extra or {})}
    atomic_write_json(tmp / "state.json", state)  # last: a tmp folder with it is complete
    _swap_in(tmp, ckpt)


def _save_sharded(ckpt: Path, model, core: Core, step: int, tokens: int, extra: dict | None) -> None:
    from unlearn.sharding import save_sharded, world_size

    acc, tmp = core.acc, ckpt.with_name(ckpt.name + ".tmp")
    if acc.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    save_sharded(tmp / "dcp", model, core.opt)  # collective; returns once every rank's shard and the metadata exist
    if acc.is_main_process:
        state = {"step": step, "tokens": tokens, "scheduler": core.sched.state_dict(), "sharding": "fsdp",
                 "world_size": world_size(acc), **(extra or {})}  # fmt: skip
        atomic_write_json(tmp / "state.json", state)  # last: a tmp folder with it is complete
        _swap_in(tmp, ckpt)
    acc.wait_for_everyone()


def _swap_in(tmp: Path, ckpt: Path) -> None:
    """Replace ``ckpt`` by the complete ``tmp`` (``ckpt`` -> ``ckpt.old`` -> removed; see `recover_checkpoint`)."""
    old = ckpt.with_name(ckpt.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(ckpt: Path) -> None:
    """After a kill between the two renames of `save_checkpoint`, put the newest complete checkpoint back."""
    if (ckpt / "state.json").exists():
        return
    for cand in (ckpt.with_name(ckpt.name + ".tmp"), ckpt.with_name(ckpt.name + ".old")):
        if (cand / "state.json").exists():
            if ckpt.exists():
                shutil.rmtree(ckpt)
            os.replace(cand, ckpt)
            return


def load_checkpoint(ckpt: Path, model, core: Core) -> tuple[int, int, dict]:
    """Restore model, optimizer, scheduler and aux state; returns (step, tokens, state.json)."""
    from safetensors.torch import load_model

    state = json.loads((ckpt / "state.json").read_text())
    if core.sharded or state.get("sharding") == "fsdp":
        from unlearn.sharding import check_resume, load_sharded

        check_resume(state, model)  # another world size or sharding: exit 2 (no resharding)
        load_sharded(ckpt / "dcp", model, core.opt)
        core.sched.load_state_dict(state["scheduler"])
        return int(state["step"]), int(state.get("tokens", 0)), state
    load_model(model, str(ckpt / "model.safetensors"), device=str(next(model.parameters()).device))
    core.opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    core.sched.load_state_dict(state["scheduler"])
    for name, obj in core.aux.items():
        if isinstance(obj, torch.nn.Module):
            load_model(obj, str(ckpt / f"aux_{name}.safetensors"), device=str(next(obj.parameters()).device))
        elif hasattr(obj, "load_state_dict"):
            obj.load_state_dict(torch.load(ckpt / f"aux_{name}.pt", weights_only=True, map_location="cpu"))
    return int(state["step"]), int(state.get("tokens", 0)), state


def truncate_trace(path: Path, step: int) -> None:
    """Drop trace rows written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    atomic_write_jsonl(path, [r for r in read_jsonl(path, tolerant=True) if r.get("step", 0) <= step])


def clear_checkpoint(rdir: Path) -> None:
    for name in ("checkpoint", "checkpoint.tmp", "checkpoint.old"):
        p = Path(rdir) / name
        if p.exists():
            shutil.rmtree(p)


# ----------------------------------------------------------------------------------------------- the loop
def run_loop(
    core: Core,
    model,
    step_fn: Callable[[int], dict],
    total: int,
    spe: int,
    rdir: Path | None,
    desc: str,
    progress: bool = True,
    eval_fn: Callable | None = None,
    eval_every: int = 0,
    log=print,
    postfix: Callable[[dict], dict] | None = None,
    track: Callable[[dict, int], None] | None = None,
) -> tuple[dict, int, float]:
    """Steps ``start..total-1`` (resuming from ``rdir/checkpoint``); returns (last trace row, tokens, seconds).

    ``step_fn(step)`` computes one optimizer step's gradients: forward and backward passes through
    ``core.backward``, then ``core.finish_grads()`` (combine, mask, clip), and returns ``{"loss": float,
    "grad_norm": float, "tokens": int, **logs}``; it may raise `NonFiniteError`. The loop checks loss and norm,
    steps the optimizer, writes the trace row and, every ``checkpoint_every`` steps, a checkpoint of ``model`` (the
    trainable module) and the core's state. ``track(row, step)`` (main process only) receives every trace row as
    it is written, step rows and ``eval`` rows alike (an experiment tracker: `unlearn.tracking`).
    """
    from tqdm.auto import tqdm

    acc = core.acc
    main = acc.is_main_process
    start, n_tok_total = 0, 0
    ckpt = Path(rdir) / "checkpoint" if rdir else None
    if ckpt is not None:
        recover_checkpoint(ckpt)
        if (ckpt / "state.json").exists():
            start, n_tok_total, _ = load_checkpoint(ckpt, model, core)
            log(f"resuming from step {start} ({ckpt})")
        if main:
            # rows after the checkpoint are written again; with no checkpoint, all of them (step 0's eval included)
            truncate_trace(Path(rdir) / "trace.jsonl", start if start > 0 else -1)
        acc.wait_for_everyone()

    def fail(msg: str, step: int):
        has = ckpt is not None and (ckpt / "state.json").exists()
        if rdir and main:
            write_status(rdir, "failed", reason=msg, step=step, last_checkpoint=str(ckpt) if has else None)
        acc.wait_for_everyone()
        kept = f"; last good checkpoint kept in {ckpt}" if has else ""
        raise NonFiniteError(f"{msg} at step {step}; stopped{kept}")

    def trace_eval(step: int) -> None:  # the ``eval`` rows of trace.jsonl: a trajectory from step 0 to the end
        m = model
        if core.sharded:  # a sharded forward is collective: the main process evaluates a gathered plain copy
            from unlearn.sharding import consolidate

            m = consolidate(model, keep=main)
        if main:
            was = m.training
            m.eval()
            row = {"step": step, "eval": eval_fn(m)}
            append_jsonl(Path(rdir) / "trace.jsonl", row)
            if track is not None:
                track(row, step)
            m.train(was)
        acc.wait_for_everyone()

    tracing = eval_fn is not None and eval_every > 0 and rdir is not None
    if tracing and start == 0:
        trace_eval(0)  # before any update: the starting point every trajectory is measured from
    t_start = time.time()
    bar = tqdm(total=total, initial=start, desc=desc, disable=not (progress and main))
    last: dict = {}
    for step in range(start, total):
        t0 = time.time()
        try:
            res = step_fn(step)
            check_finite(res["loss"], res["grad_norm"])
        except NonFiniteError as e:
            core.zero_grad()
            fail(str(e), step)
        lr = core.sched.get_last_lr()[0]  # the rate this step applies (read before the scheduler moves on)
        core.step()
        n_tok_total += int(res.get("tokens", 0))
        dt = time.time() - t0
        last = {"step": step + 1, "epoch": round((step + 1) / spe, 3), "lr": lr,
                "tokens_per_s": res.get("tokens", 0) / max(dt, 1e-9), **res}  # fmt: skip
        if rdir and main:
            append_jsonl(Path(rdir) / "trace.jsonl", last)
        if track is not None and main:
            track(last, step + 1)
        bar.update(1)
        bar.set_postfix(**(postfix(res) if postfix else {"loss": f"{res['loss']:.3f}"}))
        done = step + 1 == total
        if tracing and ((step + 1) % eval_every == 0 or done):
            trace_eval(step + 1)  # every ``eval_every`` steps and after the last one
        every = core.tcfg.checkpoint_every
        if ckpt is not None and every and (step + 1) % every == 0 and not done:
            if not finite(core.params):  # never let a broken model replace the last good checkpoint
                fail("non-finite weights after the optimizer step", step)
            if main or core.sharded:  # sharded: every rank writes its shard
                save_checkpoint(ckpt, model, core, step + 1, n_tok_total)
            acc.wait_for_everyone()
            if os.environ.get("UNLEARN_INTERRUPT_AFTER_CHECKPOINT") == "1":  # tests: a kill right after a checkpoint
                raise KeyboardInterrupt
    bar.close()
    if not finite(core.params):
        fail("non-finite weights after the optimizer step", total - 1)
    return last, n_tok_total, round(time.time() - t_start, 2)


__all__ = ["Core", "make_core", "run_loop", "select_params", "step_indices", "total_steps", "lr_lambda",
           "NonFiniteError", "save_checkpoint", "load_checkpoint", "clear_checkpoint"]  # fmt: skip
