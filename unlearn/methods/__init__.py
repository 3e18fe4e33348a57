"""Unlearning methods: one file each, registered by the name the CLI uses.

A gradient method is a `Method`: a config dataclass, a pure loss function (in its module) and a thin ``step``
that runs the forward passes it needs and returns ``(loss, logs)``. The training loop (`unlearn/train.py`) owns
optimisation, batching, precision, checkpoints and multi-process; a method only computes its loss.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from unlearn.errors import unknown_name

# module -> names it registers; imported lazily so `unlearn --help` stays fast.
_MODULES = {
    "ga": "unlearn.methods.ga",
    "graddiff": "unlearn.methods.graddiff",
    "npo": "unlearn.methods.npo",
    "simnpo": "unlearn.methods.simnpo",
    "uce": "unlearn.methods.uce",
    "rece": "unlearn.methods.rece",
}


class StepContext(Protocol):
    """What the loop hands a method's step.

    ``policy(batch, full_logits=False)`` runs the trainable model (through the DDP wrapper) and returns a dict with
    ``seq_logp`` (B,), ``n_tokens`` (B,) and, for KL terms, ``logits`` (N, V) at answer positions and ``row`` (N,).
    ``reference(batch, full_logits=False)`` does the same under ``no_grad`` on the frozen pre-unlearning model
    (None when the method needs none). ``ref_forget_logp(idx)`` returns cached reference sequence log-probs of
    forget examples (B,). ``norm`` holds the global normalisers of this optimizer step: ``forget_seqs``,
    ``forget_tokens``, ``retain_seqs``, ``retain_tokens`` — so that micro-batching and processes sum to exactly the
    one-process gradient.
    """

    policy: Callable[..., dict]
    reference: Callable[..., dict] | None
    ref_forget_logp: Callable[[torch.Tensor], torch.Tensor] | None
    norm: dict[str, float]


class Method(Protocol):
    def __call__(self, ctx: StepContext, batch: dict, cfg: Any) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    step: Callable  # step(ctx, batch, cfg) -> (loss, logs); None for closed-form methods
    needs_reference: Callable[[Any], bool]  # cfg -> whether a frozen reference model is needed
    target: str  # "llm" | "diffusion"
    description: str


METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    config_cls: type,
    description: str,
    target: str = "llm",
    needs_reference: Callable[[Any], bool] = lambda cfg: False,
):
    """Decorator registering a step function under ``name``."""

    def deco(step):
        METHODS[name] = MethodSpec(name, config_cls, step, needs_reference, target, description)
        return step

    return deco


def get_method(name: str, target: str = "llm") -> MethodSpec:
    valid = [n for n in _MODULES]
    if name not in _MODULES:
        raise unknown_name("method", name, valid)
    importlib.import_module(_MODULES[name])
    if name not in METHODS:
        raise unknown_name("method", name, [n for n in METHODS])
    spec = METHODS[name]
    if spec.target != target:
        ok = [n for n in _MODULES if _target_of(n) == target]
        raise unknown_name(f"{target} method", name, ok)
    return spec


def _target_of(name: str) -> str | None:
    try:
        importlib.import_module(_MODULES[name])
    except ImportError:
        return None
    return METHODS[name].target if name in METHODS else None


def list_methods() -> list[MethodSpec]:
    for m in _MODULES.values():
        try:
            importlib.import_module(m)
        except ImportError:
            continue
    return [METHODS[n] for n in sorted(METHODS)]
