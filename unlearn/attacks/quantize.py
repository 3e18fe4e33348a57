"""Quantization attack: does rounding the weights to a low-bit grid bring the forgotten answers back?

Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization" (ICLR 2025, https://arxiv.org/abs/2410.16454,
code https://github.com/zzwjames/FailureLLMUnlearning) show that unlearned models quantized to 4 bits recover much of
what gradient ascent or NPO removed (their abstract: 21% of the forgotten knowledge kept at full precision, 83% after
4-bit quantization). Methods that protect utility keep their updates small, and an update smaller than half a
quantization bin rounds to the same grid point as the original weight: the quantized unlearned model *is* the
quantized original. An audit runs this attack identically on a candidate and on its control.

What is implemented here is round-to-nearest (RTN) fake quantization in plain torch, which runs on CPU: each weight is
rounded onto its group's integer grid and mapped straight back to float, so the copy runs with the ordinary float
kernels and is the model a real low-bit kernel would compute with (up to its arithmetic). RTN is the grid GPTQ and
AWQ round onto; GPTQ only chooses the rounding more cleverly (error feedback between columns) and AWQ rescales salient
channels first, so RTN is the simplest member of the family the paper tests, not a replacement for them.

Two presets (`PRESETS`):

* ``int8``: symmetric absmax, one scale per output row: the vector-wise quantization bitsandbytes' LLM.int8() applies
  to the non-outlier part of a matrix (its outlier columns, kept in fp16 there, are quantized here too).
* ``int4``: asymmetric (scale and zero point), groups of 128 input columns: the GPTQ / AWQ default group size. Rows
  narrower than 128 form one group.

Only ``nn.Linear`` weights (and transformers' ``Conv1D``, GPT-2's transposed Linear) are quantized; biases, norms,
the token embeddings and the LM head stay at full precision, as GPTQ, AWQ and bitsandbytes leave them by default.

On a GPU with bitsandbytes installed (`bitsandbytes_available`), the audit may load the model through bitsandbytes'
real kernels instead. This module only provides the check: no GPU was available where it was written, so a
bitsandbytes path could not be tested and is not implemented here.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass

import torch
from torch import nn

from unlearn.errors import UnlearnError, unknown_name


# ----------------------------------------------------------------------------------------------- tensors
def _rtn_groups(x: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Fake-quantize float32 groups along the last dim. (..., g) -> (..., g); constant groups come back unchanged."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = x.abs().amax(-1, keepdim=True) / qmax  # (..., 1)
        ok = scale > 0
        s = torch.where(ok, scale, torch.ones_like(scale))  # guard: an all-zero group would divide by 0
        deq = torch.clamp(torch.round(x / s), -qmax, qmax) * s
    else:
        qmax = 2**bits - 1
        lo = x.amin(-1, keepdim=True)  # (..., 1)
        scale = (x.amax(-1, keepdim=True) - lo) / qmax  # (..., 1)
        ok = scale > 0
        s = torch.where(ok, scale, torch.ones_like(scale))  # guard: a constant group has max == min
        zero = torch.round(-lo / s)  # (..., 1): the integer that represents 0.0
        deq = (torch.clamp(torch.round(x / s) + zero, 0, qmax) - zero) * s
    return torch.where(ok, deq, x)


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int | None = 0, symmetric: bool = False) -> torch.Tensor:
    """Round-to-nearest fake quantization of a (out, in) weight; a new tensor of ``w``'s dtype and shape.

    Each output row is cut into groups of ``group_size`` consecutive input columns (0 or None, or a size of at least
    ``in``: the whole row is one group, i.e. per-channel). When ``in`` is not a multiple of ``group_size`` the last
    group is shorter; it gets its own scale from its own values. Per group:

    * asymmetric: ``scale = (max - min) / (2^bits - 1)``, ``zero = round(-min / scale)``,
      ``q = clamp(round(w / scale) + zero, 0, 2^bits - 1)``, ``w' = (q - zero) * scale``;
    * symmetric (absmax): ``scale = max|w| / (2^(bits-1) - 1)``, ``q = clamp(round(w / scale), -qmax, qmax)``,
      ``w' = q * scale``.

    A group whose scale is 0 (constant, or all zeros when symmetric) is returned unchanged. The arithmetic is float32
    whatever ``w``'s dtype; ``|w - w'| <= scale / 2`` for every entry (up to float rounding). ``round`` is torch's
    round-half-to-even.
    """
    if w.ndim != 2:
        raise UnlearnError(f"quantize_tensor expects a 2-D (out, in) weight, got shape {tuple(w.shape)}")
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise UnlearnError(f"quantization bits must be an integer from 2 to 16, got {bits!r}")
    if group_size is not None and group_size < 0:
        raise UnlearnError(f"quantization group size must be >= 0 (0: one group per row), got {group_size}")
    out, n_in = w.shape
    g = n_in if not group_size or group_size >= n_in else group_size
    x = w.detach().float()  # (out, in)
    n_full = n_in // g
    parts = []
    if n_full:
        full = x[:, : n_full * g].reshape(out, n_full, g)  # (out, groups, g)
        parts.append(_rtn_groups(full, bits, symmetric).reshape(out, n_full * g))
    if n_in % g:
        parts.append(_rtn_groups(x[:, n_full * g :], bits, symmetric))  # (out, in % g): the short last group
    return torch.cat(parts, dim=1).to(w.dtype)


# ----------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class QuantConfig:
    """One weight-quantization scheme (see `quantize_tensor` for the arithmetic)."""

    bits: int  # bits per weight: 2^bits levels (asymmetric) or 2^bits - 1 (symmetric)
    group_size: int | None = 0  # input columns per scale; 0 / None: one scale per output row
    symmetric: bool = False  # True: absmax, zero point fixed at 0; False: min/max with a zero point
    skip: tuple[str, ...] = ("embed", "lm_head")  # Linear layers whose qualified name contains one stay full precision


PRESETS: dict[str, QuantConfig] = {
    # LLM.int8()'s vector-wise quantization: absmax per output row
    "int8": QuantConfig(bits=8, group_size=0, symmetric=True),
    # GPTQ / AWQ's usual 4-bit setting: asymmetric, groups of 128 input columns (whole rows when narrower)
    "int4": QuantConfig(bits=4, group_size=128, symmetric=False),
}


def get_preset(name: str) -> QuantConfig:
    """The preset called ``name``; a one-line `UnlearnError` listing the valid names otherwise."""
    if name not in PRESETS:
        raise unknown_name("quantization preset", name, PRESETS)
    return PRESETS[name]


# ----------------------------------------------------------------------------------------------- models
def _quantizable(model: nn.Module):
    """(name, module, transposed) per Linear-like layer: nn.Linear (out, in) and transformers' Conv1D (in, out)."""
    conv1d = ()
    try:
        conv1d = (importlib.import_module("transformers.pytorch_utils").Conv1D,)
    except (ImportError, AttributeError):
        pass
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            yield name, mod, False
        elif conv1d and isinstance(mod, conv1d):
            yield name, mod, True


def quantized_copy(model: nn.Module, cfg: QuantConfig) -> tuple[nn.Module, dict]:
    """A fake-quantized deep copy of ``model``; ``model`` itself is not modified.

    Every ``nn.Linear`` (and ``Conv1D``) weight whose qualified module name contains none of ``cfg.skip`` is replaced
    by `quantize_tensor` of it; a weight shared with the input embeddings (a tied head) is never quantized. Returns
    ``(copy, info)`` with info keys ``n_quantized`` (layers), ``n_params`` (weights quantized), ``rel_change``
    (mean |w' - w| over those weights divided by their mean |w|) and ``skipped`` (names of Linear layers kept at full
    precision).
    """
    q = copy.deepcopy(model)
    emb = q.get_input_embeddings() if hasattr(q, "get_input_embeddings") else None
    emb_w = emb.weight if emb is not None else None
    n_layers, n_params, abs_change, abs_w = 0, 0, 0.0, 0.0
    skipped = []
    with torch.no_grad():
        for name, mod, transposed in _quantizable(q):
            w = mod.weight  # (out, in) for Linear, (in, out) for Conv1D
            if any(s in name for s in cfg.skip) or w is emb_w:
                skipped.append(name)
                continue
            w2 = w.T if transposed else w  # (out, in)
            new = quantize_tensor(w2, cfg.bits, cfg.group_size, cfg.symmetric)  # (out, in)
            abs_change += (new.float() - w2.float()).abs().sum().item()
            abs_w += w2.float().abs().sum().item()
            w.copy_(new.T if transposed else new)
            n_layers += 1
            n_params += w.numel()
    if n_layers == 0:
        raise UnlearnError(
            f"quantization found no Linear layers to quantize in {type(model).__name__} (skip: {', '.join(cfg.skip)})"
        )
    info = {
        "n_quantized": n_layers,
        "n_params": n_params,
        "rel_change": abs_change / abs_w if abs_w > 0 else 0.0,
        "skipped": skipped,
    }
    return q, info


def bitsandbytes_available() -> bool:
    """True only when CUDA is available and bitsandbytes imports (its kernels need a GPU).

    The audit may then quantize through bitsandbytes (``load_in_8bit`` / ``load_in_4bit``) instead of `quantized_copy`;
    this module implements only the check.
    """
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("bitsandbytes")
    except Exception:  # a broken install (missing CUDA libraries) fails with errors other than ImportError
        return False
    return True
