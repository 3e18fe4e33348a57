"""The one training loop every gradient-based LLM unlearning method runs in.

* Data: one optimizer step = ``batch_size`` forget examples (a shuffled pass per epoch) each paired with a retain
  example drawn uniformly with replacement (TOFU, algorithms.md §0.2). The order is a pure function of
  (seed, step), so a resumed or multi-process run sees exactly the same batches.
* Exactness across processes and micro-batches: a method normalises by the *global* counts of the step
  (``ctx.norm``), every process takes a contiguous share of the global batch, and the loss is multiplied by the
  world size because DDP averages gradients. One process and two give the same update up to float summation order.
* Forget and retain sequences of a micro-batch go through the model in ONE forward pass (padded together).
* AdamW (fused on CUDA), linear warm-up then linear decay (or constant), gradient clipping, bf16 autocast on GPU.
* Micro-batch size: the whole per-process share on CPU; on GPU the share is halved on out-of-memory until it fits.
* Checkpoints (``checkpoint/``: safetensors weights, optimizer state, step) every N steps, written atomically; a
  restarted run resumes from the last one. A non-finite loss or gradient stops the run, keeps the last good
  checkpoint and records the failure in ``status.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from unlearn.config import TrainConfig
from unlearn.errors import UnlearnError
from unlearn.store import append_jsonl, atomic_write_json, read_jsonl, write_status
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
    spe = math.ceil(n_forget / cfg.batch_size)
    return spe, max(1, math.ceil(cfg.epochs * spe))


def lr_lambda(cfg: TrainConfig, spe: int, total: int) -> Callable[[int], float]:
    warm = int(round(cfg.warmup_epochs * spe))

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / (warm + 1)
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total - s) / max(1, total - warm))

    return f


@dataclass
class _Ctx:
    policy: Callable
    reference: Callable | None
    ref_forget_logp: Callable | None
    norm: dict


def _device_batch(b: dict, device) -> dict:
    return {k: v.to(device) for k, v in b.items()}


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


def unlearn_model(model, tokenizer, fmt, forget: list[dict], retain: list[dict], method, mcfg, tcfg: TrainConfig,
                  seed: int, rdir: Path | None, eval_fn: Callable | None = None, progress: bool = True,
                  accelerator=None, log=print) -> tuple[torch.nn.Module, dict]:
    """Unlearn ``forget`` from ``model`` with ``method`` (a MethodSpec); returns (model, summary).

    ``eval_fn(model) -> dict`` runs on the main process every ``tcfg.eval_every`` steps (rows in trace.jsonl).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    cuda = torch.cuda.is_available()
    bf16 = tcfg.precision == "bf16" or (tcfg.precision == "auto" and cuda)
    acc = accelerator or Accelerator(mixed_precision="bf16" if bf16 else "no")
    W, rank = acc.num_processes, acc.process_index
    torch.manual_seed(seed)
    if not forget:
        raise UnlearnError("the forget set is empty")
    if not retain:
        retain = forget[:1]  # methods without a retain term never read it; keeps the sampler defined
    f_items = [encode_qa(tokenizer, fmt, r["question"], r["answer"], tcfg.max_length) for r in forget]
    r_items = [encode_qa(tokenizer, fmt, r["question"], r["answer"], tcfg.max_length) for r in retain]
    pad = tokenizer.pad_token_id
    spe, total = total_steps(len(f_items), tcfg)
    if tcfg.batch_size % W:
        raise UnlearnError(f"batch_size={tcfg.batch_size} must be divisible by the number of processes ({W})")

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
            # with frozen embeddings no input requires grad, so checkpointed blocks would get no gradient
            model.enable_input_require_grads()
    model.train()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 and cuda else contextlib.nullcontext

    # Reference log-probs of the forget set never change: compute once (saves NPO one forward pass per step).
    ref_cache = None
    if ref_model is not None:
        ref_wrap = SequenceLogProbs(ref_model)
        vals = []
        with torch.no_grad(), autocast():
            for i in range(0, len(f_items), 64):
                b = _device_batch(collate(f_items[i : i + 64], pad), device)
                vals.append(ref_wrap(**b)["seq_logp"].float().cpu())
        ref_cache = torch.cat(vals)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, fused=cuda or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg, spe, total))
    wrapped = SequenceLogProbs(model)
    wrapped, opt = acc.prepare(wrapped, opt)

    # ---- resume
    start = 0
    ckpt = Path(rdir) / "checkpoint" if rdir else None
    if ckpt is not None and (ckpt / "state.json").exists():
        start = _load_checkpoint(ckpt, acc.unwrap_model(wrapped).lm, opt, sched)
        if acc.is_main_process:
            _truncate_trace(Path(rdir) / "trace.jsonl", start)
        log(f"resuming from step {start} ({ckpt})")

    micro = tcfg.micro_batch_size or tcfg.batch_size // W
    n_tok_total = 0
    t_start = time.time()
    bar = tqdm(total=total, initial=start, desc=f"unlearn {method.name}", disable=not (progress and acc.is_main_process))
    last_logs: dict = {}
    for step in range(start, total):
        f_idx, r_idx = step_indices(step, len(f_items), len(r_items), tcfg.batch_size, seed)
        fb = [f_items[i] for i in f_idx]
        rb = [r_items[i] for i in r_idx]
        norm = {"forget_seqs": float(len(fb)), "retain_seqs": float(len(rb)),
                "forget_tokens": float(sum(sum(x != -100 for x in lab[1:]) for _, lab in fb)),
                "retain_tokens": float(sum(sum(x != -100 for x in lab[1:]) for _, lab in rb))}
        share = math.ceil(len(fb) / W)
        lo, hi = rank * share, min(len(fb), (rank + 1) * share)
        t0 = time.time()
        while True:
            try:
                logs, loss_sum, n_tok = _accumulate(acc, wrapped, ref_model, ref_cache, method, mcfg, fb, rb, f_idx,
                                                     lo, hi, micro, norm, pad, device, autocast, W)
                break
            except torch.cuda.OutOfMemoryError:
                if micro <= 1:
                    raise
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                micro = max(1, micro // 2)
                log(f"out of GPU memory: micro-batch size -> {micro}")
        gnorm = acc.clip_grad_norm_(params, tcfg.max_grad_norm) if tcfg.max_grad_norm > 0 else _grad_norm(params)
        gnorm = float(gnorm)
        loss_t = acc.reduce(torch.tensor([loss_sum], device=device), reduction="sum").item()
        if not (math.isfinite(loss_t) and math.isfinite(gnorm)):
            opt.zero_grad(set_to_none=True)
            msg = (f"non-finite {'loss' if not math.isfinite(loss_t) else 'gradient norm'} at step {step} "
                   f"(loss={loss_t}, grad_norm={gnorm}); stopped")
            if rdir and acc.is_main_process:
                has = (Path(rdir) / "checkpoint" / "state.json").exists()
                write_status(rdir, "failed", reason=msg, step=step, last_checkpoint=str(ckpt) if has else None)
            acc.wait_for_everyone()
            raise UnlearnError(msg + (f"; last good checkpoint kept in {ckpt}" if ckpt else ""))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        n_tok = int(acc.reduce(torch.tensor([n_tok], device=device), reduction="sum").item())
        n_tok_total += n_tok
        dt = time.time() - t0
        last_logs = {"step": step + 1, "epoch": round((step + 1) / spe, 3), "loss": loss_t, "lr": sched.get_last_lr()[0],
                     "grad_norm": gnorm, "tokens": n_tok, "tokens_per_s": n_tok / max(dt, 1e-9), **logs}
        if rdir and acc.is_main_process:
            append_jsonl(Path(rdir) / "trace.jsonl", last_logs)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_t:.3f}", fl=f"{logs.get('forget_logp', 0):.2f}")
        done = step + 1 == total
        if eval_fn is not None and tcfg.eval_every and (step + 1) % tcfg.eval_every == 0 and not done:
            if acc.is_main_process:
                model_now = acc.unwrap_model(wrapped).lm
                model_now.eval()
                append_jsonl(Path(rdir) / "trace.jsonl", {"step": step + 1, "eval": eval_fn(model_now)})
                model_now.train()
            acc.wait_for_everyone()
        if ckpt is not None and tcfg.checkpoint_every and (step + 1) % tcfg.checkpoint_every == 0 and not done:
            if acc.is_main_process:
                _save_checkpoint(ckpt, acc.unwrap_model(wrapped).lm, opt, sched, step + 1)
            acc.wait_for_everyone()
    bar.close()
    final = acc.unwrap_model(wrapped).lm
    if tcfg.lora.r > 0:
        final = final.merge_and_unload()
    final.eval()
    summary = {"steps": total, "tokens": n_tok_total, "seconds": round(time.time() - t_start, 2),
               "world_size": W, "micro_batch_size": micro, "precision": "bf16" if bf16 else "fp32", **{
                   k: v for k, v in last_logs.items() if k in ("loss", "forget_logp", "retain_logp")}}
    return final, summary


def _accumulate(acc, wrapped, ref_model, ref_cache, method, mcfg, fb, rb, f_idx, lo, hi, micro, norm, pad, device,
                autocast, W):
    """Forward + backward over this process's share [lo, hi) of the global batch in micro-batches."""
    logs_sum: dict[str, float] = {}
    loss_sum, n_tok, chunks = 0.0, 0, list(range(lo, hi, micro)) or [lo]
    for ci, c in enumerate(chunks):
        sl = slice(c, min(hi, c + micro))
        fbatch = _device_batch(collate(fb[sl], pad), device)
        rbatch = _device_batch(collate(rb[sl], pad), device)
        n_tok += int(fbatch["attention_mask"].sum() + rbatch["attention_mask"].sum())
        idx = torch.tensor(f_idx[sl])

        def policy(*batches, full_logits=False):
            if len(batches) == 1:
                return wrapped(**batches[0], full_logits=full_logits)
            out = wrapped(**_pad_cat(list(batches), pad), full_logits=full_logits)
            return split_output(out, [b["input_ids"].shape[0] for b in batches])

        def reference(batch, full_logits=False):
            with torch.no_grad(), autocast():
                return SequenceLogProbs(ref_model)(**batch, full_logits=full_logits)

        ctx = _Ctx(policy, reference if ref_model is not None else None,
                   (lambda i: ref_cache[i]) if ref_cache is not None else None, norm)
        sync = contextlib.nullcontext() if ci == len(chunks) - 1 else acc.no_sync(wrapped)
        with sync:
            loss, logs = method.step(ctx, {"forget": fbatch, "retain": rbatch, "forget_idx": idx}, mcfg)
            acc.backward(loss * W)  # DDP averages over processes; the loss is already globally normalised
        loss_sum += float(loss)
        share = (sl.stop - sl.start) / max(1, hi - lo)
        for k, v in logs.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + float(v) * share
    return logs_sum, loss_sum, n_tok


def _grad_norm(params) -> torch.Tensor:
    g = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(g).norm() if g else torch.zeros(())


# ----------------------------------------------------------------------------------------------- checkpoints
def _save_checkpoint(ckpt: Path, model, opt, sched, step: int) -> None:
    from safetensors.torch import save_model

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
    torch.save(opt.state_dict(), tmp / "optimizer.pt")  # our own file; reloaded with weights_only=True
    (tmp / "state.json").write_text(json.dumps({"step": step, "scheduler": sched.state_dict()}))
    old = ckpt.with_name(ckpt.name + ".old")
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    if old.exists():
        shutil.rmtree(old)


def _load_checkpoint(ckpt: Path, model, opt, sched) -> int:
    from safetensors.torch import load_model

    state = json.loads((ckpt / "state.json").read_text())
    load_model(model, str(ckpt / "model.safetensors"), device=str(next(model.parameters()).device))
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    sched.load_state_dict(state["scheduler"])
    return int(state["step"])


def _truncate_trace(path: Path, step: int) -> None:
    """Drop trace rows written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path, tolerant=True) if r.get("step", 0) <= step]
    from unlearn.store import atomic_write_jsonl

    atomic_write_jsonl(path, rows)


def clear_checkpoint(rdir: Path) -> None:
    for name in ("checkpoint", "checkpoint.tmp", "checkpoint.old"):
        p = Path(rdir) / name
        if p.exists():
            shutil.rmtree(p)


__all__ = ["unlearn_model", "step_indices", "total_steps", "lr_lambda", "clear_checkpoint", "atomic_write_json"]
