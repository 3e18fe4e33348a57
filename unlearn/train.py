"""The one training loop every gradient-based LLM unlearning method runs in.

* Data: one optimizer step = ``batch_size`` forget examples (a shuffled pass per epoch) each paired with a retain
  example drawn uniformly with replacement (TOFU, algorithms.md §0.2). The order is a pure function of
  (seed, step), so a resumed or multi-process run sees exactly the same batches.
* Exactness across processes and micro-batches: a method normalises by the *global* counts of the step
  (``ctx.norm``), every process takes a contiguous share of the global batch, and the loss is multiplied by the
  world size because DDP averages gradients. One process and two give the same update up to float summation order.
* Forget and retain sequences of a micro-batch go through the model in ONE forward pass (padded together); when a
  share is split into several micro-batches, sequences are sorted by length first (less padding).
* AdamW (fused on CUDA), linear warm-up then linear decay (or constant), gradient clipping, bf16 autocast on GPU
  (set by ``precision``, whether or not the accelerator was configured for mixed precision).
* Micro-batch size: the whole per-process share first; on GPU out-of-memory it is halved until it fits and kept.
* Checkpoints (``checkpoint/``: safetensors weights, optimizer state, step, tokens so far) every N steps, written
  atomically; a restarted run resumes from the last one and ends with the same weights as an uninterrupted run.
  A non-finite loss, gradient or weight stops the run, keeps the last good checkpoint and records the failure in
  ``status.json``.

`setup` / `train_step` / `optimizer_step` are the loop's pieces; `unlearn_model` strings them together with
checkpoints, tracing and evaluation. The speed benchmark (benchmarks/speed/train_speed.py) calls the same pieces.
"""

from __future__ import annotations

import contextlib
import copy
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

from unlearn.config import TrainConfig
from unlearn.errors import UnlearnError
from unlearn.store import append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl, write_status
from unlearn.targets.llm import SequenceLogProbs, collate, encode_qa, split_output


def step_indices(step: int, n_forget: int, n_retain: int, batch_size: int, seed: int) -> tuple[list, list]:
    """Global forget and retain example indices of optimizer step ``step`` (deterministic in seed and step)."""
    spe = math.ceil(n_forget / batch_size)
    epoch, j = divmod(step, spe)
    perm = np.random.default_rng([seed, epoch]).permutation(n_forget)
    f = perm[j * batch_size : (j + 1) * batch_size].tolist()
    r = np.random.default_rng([seed, 1_000_003, step]).integers(0, n_retain, size=len(f)).tolist()
    return f, r


def total_steps(n_forget: int, cfg: TrainConfig) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps)."""
    spe = math.ceil(n_forget / cfg.batch_size)
    return spe, max(1, math.ceil(cfg.epochs * spe))


def lr_lambda(cfg: TrainConfig, spe: int, total: int) -> Callable[[int], float]:
    """LR multiplier at step s: linear warm-up over ``warmup_epochs``, then linear decay to 0 (or constant)."""
    warm = int(round(cfg.warmup_epochs * spe))

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / (warm + 1)
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total - s) / max(1, total - warm))

    return f


class NonFiniteError(UnlearnError):
    """A non-finite loss, gradient norm or weight: the step was not applied."""


@dataclass
class _Ctx:
    policy: Callable
    reference: Callable | None
    ref_forget_logp: Callable | None
    norm: dict


@dataclass
class Loop:
    """Everything one optimizer step needs (built by `setup`)."""

    acc: Any  # accelerate.Accelerator
    wrapped: torch.nn.Module  # SequenceLogProbs(model), prepared (DDP on several processes)
    ref_model: torch.nn.Module | None  # frozen pre-unlearning copy (KL retain terms)
    ref_cache: torch.Tensor | None  # (n_forget,) reference sequence log-probs of the forget items
    method: Any  # MethodSpec
    mcfg: Any  # the method's config
    tcfg: TrainConfig
    params: list  # trainable parameters
    opt: Any
    sched: Any
    pad: int
    micro: int  # per-process micro-batch size (halved on GPU out-of-memory)
    autocast: Callable
    bf16: bool
    log: Callable = print
    stats: dict = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        """The trainable causal LM (peft model under LoRA)."""
        return self.acc.unwrap_model(self.wrapped).lm


def _device_batch(b: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in b.items()}


def _pad_cat(batches: list[dict], pad_id: int) -> dict:
    T = max(b["input_ids"].shape[1] for b in batches)
    out = {}
    for k, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100)):
        out[k] = torch.cat([torch.nn.functional.pad(b[k], (0, T - b[k].shape[1]), value=fill) for b in batches])
    return out


def _apply_lora(model, cfg: TrainConfig):
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    targets = [t.strip() for t in cfg.lora.target_modules.split(",") if t.strip()]
    present = {n.split(".")[-1] for n, _ in model.named_modules()}
    targets = [t for t in targets if t in present]
    if not targets:
        raise UnlearnError(f"lora.target_modules matches no module of this model (has e.g. {sorted(present)[:8]})")
    pc = PeftLora(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=targets)
    return get_peft_model(model, pc)


def _n_answer(labels: list[int]) -> int:
    """Answer tokens that get a log-prob (labels != -100 after the shift)."""
    return sum(x != -100 for x in labels[1:])


def setup(
    model,
    f_items: list,
    method,
    mcfg,
    tcfg: TrainConfig,
    pad_id: int,
    spe: int,
    total: int,
    accelerator=None,
    log=print,
) -> Loop:
    """Move ``model`` to the device, add LoRA / checkpointing, build the optimizer, cache reference log-probs.

    Args:
        f_items: the forget set as (ids, labels) pairs; their reference log-probs are computed once here.
        spe, total: steps per epoch and total steps (for the LR schedule).
    """
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    bf16 = tcfg.precision == "bf16" or (tcfg.precision == "auto" and cuda)
    acc = accelerator or Accelerator()  # mixed precision is ours (autocast below), not accelerate's
    device = acc.device
    ref_model = None
    if method.needs_reference(mcfg):
        ref_model = copy.deepcopy(model).to(device).eval()
        ref_model.requires_grad_(False)
    model.to(device)
    if tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if tcfg.lora.r > 0:
        model = _apply_lora(model, tcfg)
        if tcfg.gradient_checkpointing:
            # with frozen embeddings no input requires grad, so reentrant-checkpointed blocks would get no gradient
            model.enable_input_require_grads()
    model.train()
    # autocast on our side too: an accelerator passed in by `accelerate launch` may not have mixed precision set
    use_ac = bf16 and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_ac else contextlib.nullcontext
    micro = tcfg.micro_batch_size or max(1, tcfg.batch_size // acc.num_processes)

    # Reference log-probs of the forget set never change: compute them once (saves NPO a forward pass per step).
    ref_cache = None
    if ref_model is not None:
        ref_wrap, vals, chunk = SequenceLogProbs(ref_model), [], max(1, min(micro, 64))
        with torch.no_grad(), autocast():
            for i in range(0, len(f_items), chunk):
                b = _device_batch(collate(f_items[i : i + chunk], pad_id), device)
                vals.append(ref_wrap(**b)["seq_logp"].float())
        ref_cache = torch.cat(vals).cpu()  # (n_forget,)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, fused=cuda or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg, spe, total))
    lp = SequenceLogProbs(model)
    wrapped, opt = acc.prepare(lp, opt)
    # accelerate's mixed precision would cast every output to float32, i.e. copy the (N, V) answer logits: we
    # autocast ourselves and keep the logits in bf16 (token_logps makes the one float32 copy it reduces)
    lp.__dict__.pop("forward", None)
    return Loop(
        acc, wrapped, ref_model, ref_cache, method, mcfg, tcfg, params, opt, sched, pad_id, micro, autocast, bf16, log
    )


def train_step(loop: Loop, fb: list, rb: list, f_idx: list[int]) -> dict:
    """Forward + backward of one global batch (this process's share), clip, check; the optimizer is NOT stepped.

    Args:
        fb, rb: the global batch's forget and retain (ids, labels) pairs (same on every process).
        f_idx: indices of ``fb`` in the forget set (for the cached reference log-probs).
    Returns:
        ``loss`` (global), ``grad_norm``, ``tokens`` (real, non-pad tokens through the trainable model, all
        processes) and the method's logs averaged over the global batch.
    Raises:
        NonFiniteError: the loss or the gradient norm is not finite (gradients are zeroed).
    """
    acc, W = loop.acc, loop.acc.num_processes
    norm = {
        "forget_seqs": float(len(fb)),
        "retain_seqs": float(len(rb)),
        "forget_tokens": float(sum(_n_answer(lab) for _, lab in fb)),
        "retain_tokens": float(sum(_n_answer(lab) for _, lab in rb)),
    }
    share = math.ceil(len(fb) / W)
    lo, hi = acc.process_index * share, min(len(fb), (acc.process_index + 1) * share)
    while True:
        try:
            loss_sum, n_tok, logs = _accumulate(loop, fb, rb, f_idx, lo, hi, norm)
            break
        except torch.cuda.OutOfMemoryError:
            if loop.micro <= 1:
                raise
            loop.opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            loop.micro = max(1, loop.micro // 2)
            loop.log(f"out of GPU memory: micro-batch size -> {loop.micro}")
    if loop.tcfg.max_grad_norm > 0:
        gnorm = acc.clip_grad_norm_(loop.params, loop.tcfg.max_grad_norm)
    else:
        gnorm = _grad_norm(loop.params)
    # one all-reduce for the loss, the token count and the logs; (3 + n_logs,)
    keys = sorted(logs)
    vec = torch.tensor([loss_sum, float(n_tok), 0.0, *[logs[k] for k in keys]], dtype=torch.float64, device=acc.device)
    vec[2] = gnorm.detach().double() if torch.is_tensor(gnorm) else float(gnorm)
    vec = acc.reduce(vec, reduction="sum") if W > 1 else vec
    vals = vec.tolist()
    loss_t, tokens, gnorm = vals[0], int(vals[1]), vals[2] / W  # the grad norm is the same on every process
    if not (math.isfinite(loss_t) and math.isfinite(gnorm)):
        loop.opt.zero_grad(set_to_none=True)
        what = "loss" if not math.isfinite(loss_t) else "gradient norm"
        raise NonFiniteError(f"non-finite {what} (loss={loss_t}, grad_norm={gnorm})")
    return {"loss": loss_t, "grad_norm": gnorm, "tokens": tokens, **dict(zip(keys, vals[3:]))}


def optimizer_step(loop: Loop) -> None:
    loop.opt.step()
    loop.sched.step()
    loop.opt.zero_grad(set_to_none=True)


def _accumulate(loop: Loop, fb, rb, f_idx, lo, hi, norm) -> tuple[float, int, dict]:
    """Forward + backward over this process's share [lo, hi) of the global batch in micro-batches."""
    acc, W, device, pad = loop.acc, loop.acc.num_processes, loop.acc.device, loop.pad
    weight = 1.0
    if hi <= lo:  # more processes than examples: run one example with weight 0 so that DDP's all-reduce still meets
        lo, hi, weight = 0, 1, 0.0
    f_ord, r_ord = list(range(lo, hi)), list(range(lo, hi))
    if hi - lo > loop.micro:  # several micro-batches: bucket by length so padding stays small
        f_ord.sort(key=lambda i: len(fb[i][0]))
        r_ord.sort(key=lambda i: len(rb[i][0]))
    chunks = [(f_ord[c : c + loop.micro], r_ord[c : c + loop.micro]) for c in range(0, hi - lo, loop.micro)]
    # kl_unmasked averages over every padded position (the reference code's batchmean): pad each micro-batch to the
    # global batch's length so that micro-batches and processes still add up to the one-batch loss
    r_len = max(len(ids) for ids, _ in rb) if getattr(loop.mcfg, "retain", None) == "kl_unmasked" else None
    logs_sum: dict[str, float] = {}
    loss_sum, n_tok = 0.0, 0
    for ci, (fi, ri) in enumerate(chunks):
        fbatch = _device_batch(collate([fb[i] for i in fi], pad), device)
        rbatch = _device_batch(collate([rb[i] for i in ri], pad, pad_to=r_len), device)
        idx = torch.tensor([f_idx[i] for i in fi])
        seen = []  # (B,) attention masks of what went through the trainable model, for the token count

        def policy(*batches, full_logits=False, seen=seen):
            seen.extend(b["attention_mask"] for b in batches)
            with loop.autocast():
                if len(batches) == 1:
                    return loop.wrapped(**batches[0], full_logits=full_logits)
                out = loop.wrapped(**_pad_cat(list(batches), pad), full_logits=full_logits)
            return split_output(out, [b["input_ids"].shape[0] for b in batches])

        def reference(batch, full_logits=False):
            with torch.no_grad(), loop.autocast():
                return SequenceLogProbs(loop.ref_model)(**batch, full_logits=full_logits)

        ctx = _Ctx(
            policy,
            reference if loop.ref_model is not None else None,
            (lambda i: loop.ref_cache[i]) if loop.ref_cache is not None else None,
            norm,
        )
        sync = contextlib.nullcontext() if ci == len(chunks) - 1 else acc.no_sync(loop.wrapped)
        with sync:
            loss, logs = loop.method.step(ctx, {"forget": fbatch, "retain": rbatch, "forget_idx": idx}, loop.mcfg)
            acc.backward(loss * (W * weight))  # DDP averages over processes; the loss is already globally normalised
        loss_sum += float(loss.detach()) * weight
        n_tok += int(sum(int(m.sum()) for m in seen) * weight)
        for k, v in logs.items():  # logs are normalised by the global counts too: they add up like the loss
            logs_sum[k] = logs_sum.get(k, 0.0) + float(v) * weight
    return loss_sum, n_tok, logs_sum


def _grad_norm(params) -> torch.Tensor:
    g = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(g).norm() if g else torch.zeros(())


def _finite(params) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


# ----------------------------------------------------------------------------------------------- the loop
def unlearn_model(
    model,
    tokenizer,
    fmt,
    forget: list[dict],
    retain: list[dict],
    method,
    mcfg,
    tcfg: TrainConfig,
    seed: int,
    rdir: Path | None,
    eval_fn: Callable | None = None,
    progress: bool = True,
    accelerator=None,
    log=print,
) -> tuple[torch.nn.Module, dict]:
    """Unlearn ``forget`` from ``model`` with ``method`` (a MethodSpec); returns (model, summary).

    ``eval_fn(model) -> dict`` runs on the main process every ``tcfg.eval_every`` steps (rows in trace.jsonl).
    With ``rdir``, checkpoints go to ``rdir/checkpoint`` every ``tcfg.checkpoint_every`` steps and an existing one
    is resumed from.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    if not forget:
        raise UnlearnError("the forget set is empty")
    if not retain:
        retain = forget[:1]  # methods without a retain term never read it; keeps the sampler defined
    f_items = [encode_qa(tokenizer, fmt, r["question"], r["answer"], tcfg.max_length) for r in forget]
    r_items = [encode_qa(tokenizer, fmt, r["question"], r["answer"], tcfg.max_length) for r in retain]
    spe, total = total_steps(len(f_items), tcfg)
    W = accelerator.num_processes if accelerator is not None else 1
    if tcfg.batch_size % W:
        raise UnlearnError(f"batch_size={tcfg.batch_size} must be divisible by the number of processes ({W})")
    loop = setup(model, f_items, method, mcfg, tcfg, tokenizer.pad_token_id, spe, total, accelerator, log)
    acc = loop.acc

    # ---- resume
    start, n_tok_total = 0, 0
    ckpt = Path(rdir) / "checkpoint" if rdir else None
    if ckpt is not None:
        _recover_checkpoint(ckpt)
        if (ckpt / "state.json").exists():
            start, n_tok_total = _load_checkpoint(ckpt, loop.model, loop.opt, loop.sched)
            log(f"resuming from step {start} ({ckpt})")
        if acc.is_main_process:
            _truncate_trace(Path(rdir) / "trace.jsonl", start)  # rows after the checkpoint are written again
        acc.wait_for_everyone()

    def fail(msg: str, step: int):
        if rdir and acc.is_main_process:
            has = (ckpt / "state.json").exists()
            write_status(rdir, "failed", reason=msg, step=step, last_checkpoint=str(ckpt) if has else None)
        acc.wait_for_everyone()
        kept = f"; last good checkpoint kept in {ckpt}" if ckpt is not None and (ckpt / "state.json").exists() else ""
        raise NonFiniteError(f"{msg} at step {step}; stopped{kept}")

    t_start = time.time()
    show = progress and acc.is_main_process
    bar = tqdm(total=total, initial=start, desc=f"unlearn {method.name}", disable=not show)
    last: dict = {}
    for step in range(start, total):
        f_idx, r_idx = step_indices(step, len(f_items), len(r_items), tcfg.batch_size, seed)
        t0 = time.time()
        try:
            res = train_step(loop, [f_items[i] for i in f_idx], [r_items[i] for i in r_idx], f_idx)
        except NonFiniteError as e:
            fail(str(e), step)
        optimizer_step(loop)
        n_tok_total += res["tokens"]
        dt = time.time() - t0
        last = {
            "step": step + 1,
            "epoch": round((step + 1) / spe, 3),
            "lr": loop.sched.get_last_lr()[0],
            "tokens_per_s": res["tokens"] / max(dt, 1e-9),
            **res,
        }
        if rdir and acc.is_main_process:
            append_jsonl(Path(rdir) / "trace.jsonl", last)
        bar.update(1)
        bar.set_postfix(loss=f"{res['loss']:.3f}", fl=f"{res.get('forget_logp', 0):.2f}")
        done = step + 1 == total
        if eval_fn is not None and tcfg.eval_every and (step + 1) % tcfg.eval_every == 0 and not done:
            if acc.is_main_process:
                m = loop.model
                m.eval()
                append_jsonl(Path(rdir) / "trace.jsonl", {"step": step + 1, "eval": eval_fn(m)})
                m.train()
            acc.wait_for_everyone()
        if ckpt is not None and tcfg.checkpoint_every and (step + 1) % tcfg.checkpoint_every == 0 and not done:
            if not _finite(loop.params):  # never let a broken model replace the last good checkpoint
                fail("non-finite weights after the optimizer step", step)
            if acc.is_main_process:
                _save_checkpoint(ckpt, loop.model, loop.opt, loop.sched, step + 1, n_tok_total)
            acc.wait_for_everyone()
    bar.close()
    if not _finite(loop.params):
        fail("non-finite weights after the optimizer step", total - 1)
    final = loop.model
    if tcfg.lora.r > 0:
        final = final.merge_and_unload()
    final.eval()
    summary = {
        "steps": total,
        "tokens": n_tok_total,
        "seconds": round(time.time() - t_start, 2),
        "world_size": acc.num_processes,
        "micro_batch_size": loop.micro,
        "precision": "bf16" if loop.bf16 else "fp32",
        **{k: v for k, v in last.items() if k in ("loss", "forget_logp", "retain_logp")},
    }
    return final, summary


# ----------------------------------------------------------------------------------------------- checkpoints
def _save_checkpoint(ckpt: Path, model, opt, sched, step: int, tokens: int) -> None:
    """Write ``ckpt.tmp`` completely, then swap it in (``ckpt`` -> ``ckpt.old`` -> removed)."""
    from safetensors.torch import save_model

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
    torch.save(opt.state_dict(), tmp / "optimizer.pt")  # our own file; reloaded with weights_only=True
    # state.json last: a tmp folder with it is complete
    atomic_write_json(tmp / "state.json", {"step": step, "tokens": tokens, "scheduler": sched.state_dict()})
    old = ckpt.with_name(ckpt.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _recover_checkpoint(ckpt: Path) -> None:
    """After a kill between the two renames of `_save_checkpoint`, put the newest complete checkpoint back."""
    if (ckpt / "state.json").exists():
        return
    for cand in (ckpt.with_name(ckpt.name + ".tmp"), ckpt.with_name(ckpt.name + ".old")):
        if (cand / "state.json").exists():
            if ckpt.exists():
                shutil.rmtree(ckpt)
            os.replace(cand, ckpt)
            return


def _load_checkpoint(ckpt: Path, model, opt, sched) -> tuple[int, int]:
    from safetensors.torch import load_model

    state = json.loads((ckpt / "state.json").read_text())
    load_model(model, str(ckpt / "model.safetensors"), device=str(next(model.parameters()).device))
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    sched.load_state_dict(state["scheduler"])
    return int(state["step"]), int(state.get("tokens", 0))


def _truncate_trace(path: Path, step: int) -> None:
    """Drop trace rows written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    atomic_write_jsonl(path, [r for r in read_jsonl(path, tolerant=True) if r.get("step", 0) <= step])


def clear_checkpoint(rdir: Path) -> None:
    for name in ("checkpoint", "checkpoint.tmp", "checkpoint.old"):
        p = Path(rdir) / name
        if p.exists():
            shutil.rmtree(p)


__all__ = [
    "unlearn_model",
    "setup",
    "train_step",
    "optimizer_step",
    "Loop",
    "NonFiniteError",
    "step_indices",
    "total_steps",
    "lr_lambda",
    "clear_checkpoint",
]
