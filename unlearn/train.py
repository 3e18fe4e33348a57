"""The LLM task of the loop core: causal LMs unlearning on (question, answer) pairs.

The core (`unlearn/loop.py`) owns the optimizer, schedule, data order, gradient hooks, non-finite guard,
checkpoints, trace and progress; this module supplies what is specific to causal LMs:

* Data: one optimizer step = ``batch_size`` examples of the method's budget set (forget by default, a shuffled
  pass per epoch) each paired with one of the other set drawn uniformly with replacement (TOFU's sampler).
* Exactness across processes and micro-batches: a method normalises by the *global* counts of the step
  (``ctx.norm``), every process takes a contiguous share of the global batch, and the loss is multiplied by the
  world size because DDP (and FSDP) average gradients. One process and two give the same update up to float
  summation order. ``sharding=fsdp`` shards the model (and the frozen reference) with ``fully_shard``
  (`unlearn.sharding`); the model it returns is then a consolidated plain copy on every process.
* Forget and retain sequences of a micro-batch go through the model in ONE forward pass (padded together); when a
  share is split into several micro-batches, sequences are sorted by length first (less padding).
* AdamW (fused on CUDA), bf16 autocast on GPU (set by ``precision``, whether or not the accelerator was configured
  for mixed precision), LoRA through peft, gradient checkpointing.
* Micro-batch size (``micro_batch_size=0``): the whole per-process share on CPU; on GPU the largest that free memory
  holds by the activation estimate (`unlearn.memory.choose_micro`, the same on every rank); on GPU out-of-memory it
  is halved until it fits and kept.
* The frozen reference: its forget log-probs are cached once, from the model itself before any update (spec's
  ``reference_logps``); a full copy is made only when the method says it needs a frozen module
  (``needs_reference``: KL retain terms, reference hidden states).

`setup` / `train_step` / `optimizer_step` are the pieces; `unlearn_model` hands them to the core's `run_loop`. The
speed benchmark (benchmarks/speed/train_speed.py) calls the same pieces.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn import sharding
from unlearn.config import TrainConfig
from unlearn.errors import UnlearnError
from unlearn.loop import (
    Core,
    NonFiniteError,
    check_finite,
    clear_checkpoint,
    lr_lambda,
    make_core,
    run_loop,
    select_params,
    step_indices,
    total_steps,
)
from unlearn.targets.llm import SequenceLogProbs, collate, encode_record, split_output


@dataclass
class _Ctx:
    policy: Callable
    reference: Callable | None
    ref_forget_logp: Callable | None
    norm: dict
    aux: dict = field(default_factory=dict)
    hidden: Callable | None = None


@dataclass
class Loop:
    """Everything one optimizer step needs (built by `setup`)."""

    acc: Any  # accelerate.Accelerator
    wrapped: torch.nn.Module  # SequenceLogProbs(model), wrapped (DDP on several processes by default)
    ref_model: torch.nn.Module | None  # frozen pre-unlearning copy (KL retain terms)
    ref_cache: torch.Tensor | None  # (n_forget,) reference sequence log-probs of the forget items
    method: Any  # MethodSpec
    mcfg: Any  # the method's config
    tcfg: TrainConfig
    core: Core  # optimizer, schedule, gradient hooks
    pad: int
    micro: int  # per-process micro-batch size (halved on GPU out-of-memory)
    autocast: Callable
    bf16: bool
    log: Callable = print
    stats: dict = field(default_factory=dict)
    ref_wrap: torch.nn.Module | None = None  # SequenceLogProbs(ref_model) sharded as one FSDP root (sharding=fsdp)

    @property
    def model(self) -> torch.nn.Module:
        """The trainable causal LM (peft model under LoRA)."""
        return self.acc.unwrap_model(self.wrapped).lm

    @property
    def params(self) -> list:
        return self.core.params

    @property
    def opt(self):
        return self.core.opt

    @property
    def sched(self):
        return self.core.sched


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


def _default_wrap(module, acc):
    return acc.prepare(module)


def _min_over_ranks(acc, m: int) -> int:
    """The smallest ``m`` over all processes (every rank must run the same micro-batches)."""
    if acc.num_processes == 1:
        return m
    t = torch.tensor([m], device=acc.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def _forget_logps(model, f_items, pad_id, device, autocast, chunk: int) -> torch.Tensor:
    """(n_forget,) float32 sequence log-probs of the forget items under ``model`` (no grad), ``chunk`` at a time."""
    ref_wrap, vals = SequenceLogProbs(model), []
    with torch.no_grad(), autocast():
        for i in range(0, len(f_items), chunk):
            b = _device_batch(collate(f_items[i : i + chunk], pad_id), device)
            vals.append(ref_wrap(**b)["seq_logp"].float())
    return torch.cat(vals).cpu()


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
    wrap: Callable | None = None,
    wrap_optimizer: Callable | None = None,
) -> Loop:
    """Move ``model`` to the device, add LoRA / checkpointing, build the core, cache reference log-probs.

    Args:
        f_items: the forget set as (ids, labels) pairs; their reference log-probs are computed once here.
        spe, total: steps per epoch and total steps (for the LR schedule).
        wrap: ``wrap(module, accelerator) -> module`` wraps the trainable module for several processes (default:
            ``accelerator.prepare``, i.e. DDP); a sharding wrapper plugs in here.
        wrap_optimizer: ``wrap_optimizer(core, wrapped) -> None`` may replace ``core.opt`` (e.g. a DP optimizer).
    """
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    bf16 = tcfg.precision == "bf16" or (tcfg.precision == "auto" and cuda)
    acc = accelerator or Accelerator()  # mixed precision is ours (autocast below), not accelerate's
    device = acc.device
    ref_model = None
    if method.needs_reference(mcfg):  # a frozen module the step runs (KL retain terms, hidden(reference=True))
        ref_model = copy.deepcopy(model).to(device).eval()
        ref_model.requires_grad_(False)
    model.to(device)
    micro = tcfg.micro_batch_size or max(1, tcfg.batch_size // acc.num_processes)
    use_ac = bf16 and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_ac else contextlib.nullcontext
    # Reference log-probs of the forget set never change: compute them once (saves NPO a forward pass per step).
    # Before any update, LoRA or checkpointing the model IS the reference: without a copy they come from it, in eval
    # mode, by the same code path as from a copy (bit-identical; tests/unlearn/test_memory.py).
    ref_cache = None
    if ref_model is not None or method.reference_logps(mcfg):
        src = ref_model if ref_model is not None else model
        was = src.training
        src.eval()
        ref_cache = _forget_logps(src, f_items, pad_id, device, autocast, max(1, min(micro, 64)))
        src.train(was)
    if tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if tcfg.lora.r > 0:
        if method.trainable is not None or method.grad_mask is not None:
            raise UnlearnError(f"{method.name} chooses its own parameters; it cannot be combined with LoRA (lora.r=0)")
        model = _apply_lora(model, tcfg)
        if tcfg.gradient_checkpointing:
            # with frozen embeddings no input requires grad, so reentrant-checkpointed blocks would get no gradient
            model.enable_input_require_grads()
    model.train()
    # autocast on our side too (above): an accelerator passed in by `accelerate launch` may not have mixed precision

    named = select_params(model, method, mcfg)
    masks = method.grad_mask(model, mcfg) if method.grad_mask is not None else {}
    aux = method.make_aux(model, mcfg, device) if method.make_aux is not None else {}
    from unlearn.memory import choose_micro, describe, estimate

    seq_len = min(tcfg.max_length, max(len(ids) for ids, _ in f_items))
    if tcfg.micro_batch_size == 0 and device.type == "cuda":  # the largest micro-batch free memory holds
        # (halving on out-of-memory in train_step stays the fallback)
        def act(m: int) -> int:
            return estimate(model, named, tcfg, ref_model is not None, m, seq_len, acc.num_processes)["activations"]

        state = estimate(model, named, tcfg, ref_model is not None, 1, seq_len, acc.num_processes)
        micro = choose_micro(micro, act, torch.cuda.mem_get_info(device)[0], state["gradients"] + state["optimizer"],
                             reduce_min=lambda m: _min_over_ranks(acc, m))  # fmt: skip
    mem = estimate(model, named, tcfg, ref_model is not None, micro, seq_len, acc.num_processes)
    if acc.is_main_process:
        log(describe(mem))
    lp = SequenceLogProbs(model)
    wrapped = (wrap or _default_wrap)(lp, acc)
    # the optimizer is built after wrapping: fully_shard replaces the parameters by DTensors (same names), and
    # AdamW (and fp32 masters) over the unsharded ones would be built once for nothing
    now = dict(model.named_parameters())
    sharded = any(now.get(n) is not p for n, p in named)
    if sharded:
        named = [(n, now[n]) for n, _ in named]
    core = make_core(acc, named, tcfg, spe, total, spec=method, mcfg=mcfg, aux=aux, masks=masks,
                     fused=cuda or None)  # fmt: skip
    core.sharded = sharded
    ref_wrap = wrap.reference(ref_model, acc) if ref_model is not None and hasattr(wrap, "reference") else None
    core.opt = acc.prepare_optimizer(core.opt)
    if wrap_optimizer is not None:
        wrap_optimizer(core, wrapped)
    # accelerate's mixed precision would cast every output to float32, i.e. copy the (N, V) answer logits: we
    # autocast ourselves and keep the logits in bf16 (token_logps makes the one float32 copy it reduces)
    lp.__dict__.pop("forward", None)
    loop = Loop(acc, wrapped, ref_model, ref_cache, method, mcfg, tcfg, core, pad_id, micro, autocast, bf16, log,
                ref_wrap=ref_wrap)  # fmt: skip
    loop.stats["memory_estimate"] = mem
    return loop


def train_step(loop: Loop, fb: list, rb: list, f_idx: list[int], fa: list | None = None) -> dict:
    """Forward + backward of one global batch (this process's share), combine/mask/clip, check; the optimizer is
    NOT stepped.

    Args:
        fb, rb: the global batch's forget and retain (ids, labels) pairs (same on every process).
        f_idx: indices of ``fb`` in the forget set (for the cached reference log-probs).
        fa: the forget examples' alternate-answer (ids, labels) pairs, row for row with ``fb`` (``forget_targets``).
    Returns:
        ``loss`` (global), ``grad_norm`` (before clipping), ``tokens`` (real, non-pad tokens through the trainable
        model, all processes) and the method's logs summed over the global batch's normalised contributions.
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
    if fa is not None:
        norm.update(forget_alt_seqs=float(len(fa)), forget_alt_tokens=float(sum(_n_answer(lab) for _, lab in fa)))
    share = math.ceil(len(fb) / W)
    lo, hi = acc.process_index * share, min(len(fb), (acc.process_index + 1) * share)
    while True:
        try:
            loss_sum, n_tok, logs = _accumulate(loop, fb, rb, f_idx, lo, hi, norm, fa)
            break
        except torch.cuda.OutOfMemoryError:
            if loop.micro <= 1:
                raise
            loop.core.zero_grad()
            torch.cuda.empty_cache()
            loop.micro = max(1, loop.micro // 2)
            loop.log(f"out of GPU memory: micro-batch size -> {loop.micro}")
    gnorm = loop.core.finish_grads()  # the same on every process: DDP has averaged the gradients
    # one all-reduce for the loss, the token count and the logs; (2 + n_logs,)
    keys = sorted(logs)
    vec = torch.tensor([loss_sum, float(n_tok), *[logs[k] for k in keys]], dtype=torch.float64, device=acc.device)
    vec = acc.reduce(vec, reduction="sum") if W > 1 else vec
    vals = vec.tolist()
    loss_t, tokens = vals[0], int(vals[1])
    g = float(gnorm.detach().double()) if torch.is_tensor(gnorm) else float(gnorm)
    try:
        check_finite(loss_t, g)
    except NonFiniteError:
        loop.core.zero_grad()
        raise
    return {"loss": loss_t, "grad_norm": g, "tokens": tokens, **dict(zip(keys, vals[2:]))}


def optimizer_step(loop: Loop) -> None:
    loop.core.step()


def _accumulate(loop: Loop, fb, rb, f_idx, lo, hi, norm, fa=None) -> tuple[float, int, dict]:
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
        abatch = _device_batch(collate([fa[i] for i in fi], pad), device) if fa is not None else None
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
                return _ref(loop)(**batch, full_logits=full_logits)

        def hidden(*batches, layer: int, reference: bool = False, seen=seen):
            return _hidden(loop, list(batches), layer, reference, seen)

        ctx = _Ctx(
            policy,
            reference if loop.ref_model is not None else None,
            (lambda i: loop.ref_cache[i]) if loop.ref_cache is not None else None,
            norm,
            loop.core.aux,
            hidden,
        )
        sync = contextlib.nullcontext() if ci == len(chunks) - 1 else acc.no_sync(loop.wrapped)
        batch = {"forget": fbatch, "retain": rbatch, "forget_idx": idx}
        if abatch is not None:
            batch["forget_alt"] = abatch
        with sync:
            loss, logs = loop.method.step(ctx, batch, loop.mcfg)
            # DDP averages over processes; the loss is already globally normalised
            loop.core.backward(loss, W * weight)
        total_loss = sum(loss.values()) if isinstance(loss, dict) else loss
        loss_sum += float(total_loss.detach()) * weight
        n_tok += int(sum(int(m.sum()) for m in seen) * weight)
        for k, v in logs.items():  # logs are normalised by the global counts too: they add up like the loss
            logs_sum[k] = logs_sum.get(k, 0.0) + float(v) * weight
    return loss_sum, n_tok, logs_sum


def _ref(loop: Loop) -> torch.nn.Module:
    """The reference's log-prob module: its sharded root under FSDP (every call gathers through it)."""
    return loop.ref_wrap if loop.ref_wrap is not None else SequenceLogProbs(loop.ref_model)


def _hidden(loop: Loop, batches: list[dict], layer: int, reference: bool, seen: list) -> list[torch.Tensor]:
    """The residual stream after decoder block ``layer`` for each batch, from one forward pass (see `ctx.hidden`).

    A forward hook on the block captures its output while the whole model runs: the trainable model through its
    (DDP) wrapper, so gradients synchronise as for any other loss, or the frozen reference under no_grad.
    Returns one (B_i, T_i, d) tensor per batch, each cut back to its own padded length.
    """
    from unlearn.targets.arch import arch

    if reference and loop.ref_model is None:
        raise UnlearnError(f"{loop.method.name}: hidden(reference=True) needs needs_reference to be true")
    model = loop.ref_model if reference else loop.model
    blocks = arch(model).blocks
    if not 0 <= layer < len(blocks):
        raise UnlearnError(f"{loop.method.name}: layer {layer} is out of range (the model has {len(blocks)} blocks)")
    store: list[torch.Tensor] = []
    handle = blocks[layer].register_forward_hook(lambda m, i, o: store.append(o[0] if isinstance(o, tuple) else o))
    b = batches[0] if len(batches) == 1 else _pad_cat(batches, loop.pad)
    try:
        if reference:
            with torch.no_grad(), loop.autocast():
                _ref(loop)(**b)
        else:
            seen.extend(x["attention_mask"] for x in batches)
            with loop.autocast():
                loop.wrapped(**b)
    finally:
        handle.remove()
    H = store[0]  # (sum B_i, T, d); a checkpointed block recomputes later, after the hook is gone
    out, start = [], 0
    for x in batches:
        B, T = x["input_ids"].shape
        out.append(H[start : start + B, :T])
        start += B
    return out


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
    wrap: Callable | None = None,
    wrap_optimizer: Callable | None = None,
    track: Callable | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Unlearn ``forget`` from ``model`` with ``method`` (a MethodSpec); returns (model, summary).

    ``eval_fn(model) -> dict`` runs on the main process before the first step, every ``tcfg.eval_every`` steps and
    after the last (``{"step", "eval"}`` rows in trace.jsonl; needs ``rdir``).
    With ``rdir``, checkpoints go to ``rdir/checkpoint`` every ``tcfg.checkpoint_every`` steps and an existing one
    is resumed from. ``wrap`` / ``wrap_optimizer``: see `setup`. ``track(row, step)``: every trace row, on the main
    process (`unlearn.loop.run_loop`).
    """
    torch.manual_seed(seed)
    if not forget:
        raise UnlearnError("the forget set is empty")
    if method.budget == "retain" and not retain:
        raise UnlearnError(f"{method.name} trains on the retain set, which is empty")
    if not retain:
        retain = forget[:1]  # methods without a retain term never read it; keeps the sampler defined
    f_items = [encode_record(tokenizer, fmt, r, tcfg.max_length) for r in forget]
    r_items = [encode_record(tokenizer, fmt, r, tcfg.max_length) for r in retain]
    a_items = None
    if method.forget_targets is not None:  # e.g. the refusal methods' "I don't know" answers, one per record
        alts = list(method.forget_targets(forget, mcfg, seed))
        if len(alts) != len(forget):
            raise UnlearnError(f"{method.name}: forget_targets gave {len(alts)} answers for {len(forget)} records")
        a_items = [encode_record(tokenizer, fmt, r, tcfg.max_length, answer=a) for r, a in zip(forget, alts)]
    on_retain = method.budget == "retain"
    spe, total = total_steps(len(r_items) if on_retain else len(f_items), tcfg)
    W = accelerator.num_processes if accelerator is not None else 1
    if tcfg.batch_size % W:
        raise UnlearnError(f"batch_size={tcfg.batch_size} must be divisible by the number of processes ({W})")
    if wrap is None:  # sharding=fsdp under several processes: fully_shard layer by layer (unlearn/sharding.py)
        wrap = sharding.wrapper(tcfg, accelerator, method, mcfg, log)
    if method.prepare is not None:  # e.g. Needle: which columns the forget records' entities own
        method.prepare(model, mcfg, forget)
    loop = setup(model, f_items, method, mcfg, tcfg, tokenizer.pad_token_id, spe, total, accelerator, log,
                 wrap=wrap, wrap_optimizer=wrap_optimizer)  # fmt: skip

    def step_fn(step: int) -> dict:
        if on_retain:  # an epoch passes over the retain set; forget examples are drawn with replacement
            r_idx, f_idx = step_indices(step, len(r_items), len(f_items), tcfg.batch_size, seed)
        else:
            f_idx, r_idx = step_indices(step, len(f_items), len(r_items), tcfg.batch_size, seed)
        fa = [a_items[i] for i in f_idx] if a_items is not None else None
        return train_step(loop, [f_items[i] for i in f_idx], [r_items[i] for i in r_idx], f_idx, fa)

    def postfix(res):
        return {"loss": f"{res['loss']:.3f}", "fl": f"{res.get('forget_logp', 0):.2f}"}

    last, n_tok_total, seconds = run_loop(
        loop.core, loop.model, step_fn, total, spe, rdir, f"unlearn {method.name}", progress=progress,
        eval_fn=eval_fn, eval_every=tcfg.eval_every, log=log, postfix=postfix, track=track,
    )  # fmt: skip
    final = loop.model
    if loop.core.sharded:  # a plain copy on every rank: evaluation and --save-model run on it (no collectives)
        final = sharding.consolidate(final)
    if tcfg.lora.r > 0:
        final = final.merge_and_unload()
    final.eval()
    summary = {
        "steps": total,
        "tokens": n_tok_total,
        "seconds": seconds,
        "world_size": loop.acc.num_processes,
        "micro_batch_size": loop.micro,
        "precision": "bf16" if loop.bf16 else "fp32",
        "memory_estimate": loop.stats["memory_estimate"],  # bytes per process (unlearn/memory.py)
        **{k: v for k, v in last.items() if k in ("loss", "forget_logp", "retain_logp")},
        **getattr(wrap, "summary", {}),  # FSDP: the parameter elements this rank held
    }
    return final, summary


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
