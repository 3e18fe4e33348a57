"""A per-process memory estimate of one training run, printed before training (`unlearn.train.setup`).

Terms, in bytes (``P`` all parameters, ``P_t`` the trained ones, ``s(p)`` a parameter's element size):

* weights   = sum_P numel * s(p)
* gradients = sum_{P_t} numel * s(p)            (a gradient has its parameter's dtype)
* optimizer = AdamW's two moments + its float32 ``step`` scalar per tensor:
  sum_{P_t} 2 * numel * s(p) + 4; with ``master_weights=fp32`` every non-float32 trained tensor instead has a
  float32 master (4 * numel) whose moments are float32 (2 * 4 * numel) + 4
* reference = weights when the method keeps a frozen copy (``needs_reference``), else 0
* activations per micro-batch (decoder-only transformer, ``B`` sequences of length ``T``, ``L`` layers, model width
  ``d``, ``h`` heads, MLP width ``I``, vocabulary ``V``, activation element size ``a``):
  ``L * B * T * a * (10 d + 3 I + 2 h T)`` saved for backward (norm inputs, q/k/v, attention output and its
  projection, residuals: 10 d; gate, up and their product: 3 I; scores and probabilities: 2 h T), or with gradient
  checkpointing ``L * B * T * a * d`` (the block inputs) plus one block's full term (recomputed during backward);
  plus the logits the LM head materialises at answer positions only (`unlearn.targets.llm.SequenceLogProbs`):
  ``N * V * (a + 4)`` (the logits and the one float32 copy log-softmax reduces), ``N <= B * T`` answer tokens.

Under FSDP (``sharding=fsdp``) weights, gradients, optimizer state and the reference are divided by the world size;
activations are per process either way.
"""

from __future__ import annotations

import torch


def state_bytes(named_params: list, trained_ids: set, master_fp32: bool) -> dict:
    """{weights, gradients, optimizer} bytes of the model's parameters (``named_params``: all of them)."""
    w = g = o = 0
    for _, p in named_params:
        n, s = p.numel(), p.element_size()
        w += n * s
        if id(p) not in trained_ids:
            continue
        g += n * s
        if master_fp32 and p.dtype != torch.float32:
            o += 4 * n + 2 * 4 * n + 4  # master, two float32 moments, step
        else:
            o += 2 * n * s + 4  # two moments in the parameter's dtype, float32 step
    return {"weights": w, "gradients": g, "optimizer": o}


def activation_bytes(n_layers: int, d: int, heads: int, inter: int, vocab: int, seqs: int, seq_len: int,
                     answer_tokens: int, elem: int, checkpointing: bool) -> int:  # fmt: skip
    """Bytes saved for backward by one micro-batch of ``seqs`` sequences of ``seq_len`` tokens (module docstring)."""
    per_layer = seqs * seq_len * elem * (10 * d + 3 * inter + 2 * heads * seq_len)
    if checkpointing:
        layers = n_layers * seqs * seq_len * elem * d + per_layer
    else:
        layers = n_layers * per_layer
    return layers + answer_tokens * vocab * (elem + 4)


def estimate(model, trained: list, tcfg, reference: bool, micro: int, seq_len: int, world: int = 1) -> dict:
    """The breakdown in bytes for ``model`` training ``trained`` ([(name, param)]) with micro-batches of ``micro``
    forget + ``micro`` retain sequences of up to ``seq_len`` tokens (a bound on the answer tokens too)."""
    cfg = model.config
    master = getattr(tcfg, "master_weights", "none") == "fp32"
    out = state_bytes(list(model.named_parameters()), {id(p) for _, p in trained}, master)
    out["reference"] = out["weights"] if reference else 0
    if getattr(tcfg, "sharding", "none") == "fsdp" and world > 1:
        out = {k: v // world for k, v in out.items()}
    elem = 2 if next(model.parameters()).dtype == torch.bfloat16 or torch.cuda.is_available() else 4
    inter = getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    out["activations"] = activation_bytes(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, inter,
                                          cfg.vocab_size, 2 * micro, seq_len, 2 * micro * seq_len, elem,
                                          bool(getattr(tcfg, "gradient_checkpointing", False)))  # fmt: skip
    out["total"] = sum(out.values())
    return out


def describe(est: dict) -> str:
    """One line: ``memory estimate per process: 1.23 GiB (weights ..., gradients ..., ...)``."""
    gib = {k: v / 2**30 for k, v in est.items()}
    parts = ", ".join(f"{k} {v:.3f}" for k, v in gib.items() if k != "total")
    return f"memory estimate per process: {gib['total']:.3f} GiB ({parts} GiB)"


def choose_micro(share: int, act_bytes, free_bytes: int, reserve: int, margin: float = 0.8, reduce_min=None) -> int:
    """The largest micro-batch ``m <= share`` whose activations ``act_bytes(m)`` fit ``margin * free_bytes - reserve``
    (``reserve``: gradients and optimizer state, not allocated yet), at least 1; ``reduce_min(int) -> int`` makes
    every process use the smallest choice (an all-reduce MIN), so all of them run the same micro-batches."""
    budget = margin * free_bytes - reserve
    lo, hi = 1, max(1, share)
    while lo < hi:  # act_bytes grows with m: binary search for the last m that fits
        mid = (lo + hi + 1) // 2
        if act_bytes(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return int(reduce_min(lo)) if reduce_min is not None else lo
