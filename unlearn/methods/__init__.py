"""Unlearning methods: one file each, registered under ``(kind, name)``; ``kind`` is ``llm`` or ``diffusion``.

Two shapes of method:

* **gradient** methods: a config dataclass, a pure loss function (in their module) and a thin ``step(ctx, batch,
  cfg) -> (loss, logs)`` that runs the forward passes it needs. The loop core (`unlearn/loop.py`, with the LLM and
  diffusion tasks in `unlearn/train.py` and `unlearn/diffusion_train.py`) owns optimisation, batching, precision,
  checkpoints, the non-finite guard and multi-process; a method only computes its loss. The `MethodSpec` hooks are
  the loop's extension points:

  - ``trainable(model, cfg) -> list[(name, param)]``: restrict the trained parameters (default: all);
  - ``grad_mask(model, cfg) -> {param_name: mask}``: multiply those parameters' gradients by a 0/1 mask each step;
  - a step may return ``({name: loss, ...}, logs)`` and the spec a ``transform_grads(grads, cfg) -> grads`` that
    combines the per-loss gradients (``{name: [grad per trainable param]}``) into the ones the optimizer applies;
  - ``make_aux(model, cfg, device) -> {name: module or optimizer}``: auxiliary modules with their own optimizer,
    handed to the step as ``ctx.aux`` and saved in checkpoints with the model;
  - ``prepare(model, cfg, forget_records) -> None`` (LLM task): one-time setup that needs the forget records, run
    before the parameters are chosen (Needle: the forget entities' concept vectors, its initial noise);
  - ``budget``: ``forget`` (an epoch = one pass over the forget set) or ``retain`` (over the retain set);
  - ``forget_targets(forget_records, cfg, seed) -> list[str]`` (LLM task): a second answer per forget record (the
    refusal methods' "I don't know" answers), tokenized once and handed to the step as ``batch["forget_alt"]``, row
    for row with ``batch["forget"]``;
  - ``run_label(cfg) -> str``: the name a run of this configuration is filed under (ESD's variants: ``esd-x``);
    ``label_keys``: the settings that label already shows, as method-config field names (``variant``) or
    ``train.<field>`` for training settings. `unlearn run` files a run under ``<run label>+<TAG>`` with ``--name``,
    else ``<run label>+<hash>`` when ``--config`` / ``--set`` change any other setting from its default
    (`unlearn.runner.run_label`): a label of ``dp2+<unit>-eps<E>`` with ``label_keys=("unit", "epsilon")`` keeps
    ``dp2+example-eps8`` for ``--set epsilon=8`` and gives ``dp2+example-eps8+3f2a`` once ``lr`` changes too;
  - ``start_from(cfg, train_cfg, ctx) -> (weights dir, info)`` (LLM task): the weights to unlearn from instead
    of the target's, with what the runner records about them (DP2Unlearning's DP base: its card, from which
    `unlearn.metrics.privacy` computes the ``dp_*`` keys; ``info["retain"]``, if given, replaces the retain set);
    it may set ``train_cfg.epochs``
    when ``ctx["user_keys"]`` lacks it; runs before the run directory is claimed;
  - ``train_defaults``: ``{field: value}`` replacing the training config's defaults for this method (ESD's
    150 steps), applied before ``--config`` / ``--set``;
  - the LLM step context's ``hidden(*batches, layer=L, reference=False)`` returns the residual stream after
    decoder block ``L`` (0-based), (B, T, d) per batch, from ONE forward pass of the trainable model (with grad,
    through the DDP wrapper) or of the frozen reference (``needs_reference`` must say so): RMU's activations.

Records: a forget / retain record with ``text`` and no ``question`` (a raw corpus such as WMDP's) is trained on as
plain text, every token a label (`unlearn.targets.llm.encode_text`).

* **closed-form** edits (UCE, RECE): ``apply(target, erase, cfg, preserve, on_round=None) -> info`` with one
  signature for all, ``info["edit_seconds"]`` always set.

The registry holds only the names the CLI accepts; lookups name the kind and list that kind's valid names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from unlearn.errors import unknown_name

KINDS = ("llm", "diffusion")

# (kind, name) -> the module that registers it; imported on lookup so `unlearn --help` stays fast.
_MODULES: dict[tuple[str, str], str] = {
    ("llm", "ga"): "unlearn.methods.ga",
    ("llm", "graddiff"): "unlearn.methods.graddiff",
    ("llm", "npo"): "unlearn.methods.npo",
    ("llm", "simnpo"): "unlearn.methods.simnpo",
    ("llm", "needle"): "unlearn.methods.needle",
    ("llm", "rmu"): "unlearn.methods.rmu",
    ("llm", "idknll"): "unlearn.methods.idk",
    ("llm", "idkdpo"): "unlearn.methods.idk",
    ("llm", "undial"): "unlearn.methods.undial",
    ("llm", "dp2"): "unlearn.methods.dp2",
    ("diffusion", "uce"): "unlearn.methods.uce",
    ("diffusion", "rece"): "unlearn.methods.rece",
    ("diffusion", "ga"): "unlearn.methods.diffusion_grad",
    ("diffusion", "npo"): "unlearn.methods.diffusion_grad",
    ("diffusion", "esd"): "unlearn.methods.esd",
    ("diffusion", "all_but_one"): "unlearn.methods.all_but_one",
    ("diffusion", "doco"): "unlearn.methods.doco",
}


class StepContext(Protocol):
    """What the loop hands a gradient method's step.

    LLM task: ``policy(*batches, full_logits=False)`` runs the trainable model (through the DDP wrapper) on one or
    several batches in one forward pass and returns a dict with ``seq_logp`` (B,), ``n_tokens`` (B,) and, for KL
    terms, ``logits`` (N, V) at answer positions and ``row`` (N,). ``reference(batch, full_logits=False)`` does the
    same under ``no_grad`` on the frozen pre-unlearning model (None when the method needs none).
    ``ref_forget_logp(idx)`` returns cached reference sequence log-probs of forget examples (B,) (when the spec's
    ``reference_logps`` or ``needs_reference`` says so; computed from the model itself before the first update, so
    no frozen copy exists unless ``needs_reference`` asks for one). ``norm`` holds
    the global normalisers of this optimizer step: ``forget_seqs``, ``forget_tokens``, ``retain_seqs``,
    ``retain_tokens`` (and ``forget_alt_seqs`` / ``forget_alt_tokens`` with ``forget_targets``) — so that
    micro-batching and processes sum to exactly the one-process gradient. ``hidden(*batches, layer, reference)``:
    block outputs (see the module docstring).

    Diffusion task: ``policy(batch)`` returns the per-sample denoising loss (B,) of the trainable UNet and
    ``reference(batch)`` the frozen one's at the same (t, noise); ``norm`` holds ``forget_seqs``/``retain_seqs``;
    ``predict(batch, cond=None, reference=False, space="model"|"eps"|"x0")`` the raw UNet output (B, C, H, W) at
    the batch's x_t, ``encode(prompts)`` extra text embeddings and ``concept`` the erased word
    (`unlearn.diffusion_train`).

    Both: ``aux`` is the method's auxiliary modules / optimizers (``make_aux``), or an empty dict.
    """

    policy: Callable[..., Any]
    reference: Callable[..., Any] | None
    ref_forget_logp: Callable[[torch.Tensor], torch.Tensor] | None
    norm: dict[str, float]
    aux: dict
    hidden: Callable[..., list] | None


class Method(Protocol):
    def __call__(self, ctx: StepContext, batch: dict, cfg: Any) -> tuple[torch.Tensor | dict, dict[str, float]]: ...


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: str  # llm | diffusion
    config_cls: type
    description: str
    step: Callable | None = None  # gradient methods: step(ctx, batch, cfg) -> (loss or {name: loss}, logs)
    apply: Callable | None = None  # closed-form edits: apply(target, erase, cfg, preserve, on_round=None) -> info
    # whether a frozen reference module is needed (ctx.reference: KL retain terms, hidden(reference=True) ...)
    needs_reference: Callable[[Any], bool] = lambda cfg: False
    # whether the step reads ctx.ref_forget_logp (cached once before any update; no copy of the model on its own)
    reference_logps: Callable[[Any], bool] = lambda cfg: False
    trainable: Callable | None = None  # (model, cfg) -> [(name, param)]; None = every parameter
    grad_mask: Callable | None = None  # (model, cfg) -> {param name: 0/1 mask tensor}
    transform_grads: Callable | None = None  # ({loss name: [grad]}, cfg) -> [grad]
    make_aux: Callable | None = None  # (model, cfg, device) -> {name: module | optimizer}
    prepare: Callable | None = None  # (model, cfg, forget records) -> None: once, before parameters are chosen
    budget: str = "forget"  # forget | retain: the set an epoch passes over
    forget_targets: Callable | None = None  # (forget records, cfg, seed) -> [str]: batch["forget_alt"] answers
    run_label: Callable | None = None  # (cfg) -> run-directory / leaderboard name (ESD: esd-x, esd-u); None = name
    label_keys: tuple = ()  # config fields run_label already shows (ESD: variant): no +hash of their own
    train_defaults: dict | None = None  # the method's own training-config defaults (steps, lr ...); --set wins
    start_from: Callable | None = None  # (cfg, train cfg, ctx) -> (weights dir, info): DP2's DP base

    @property
    def target(self) -> str:  # the older name of ``kind``
        return self.kind

    @property
    def closed_form(self) -> bool:
        return self.apply is not None


METHODS: dict[tuple[str, str], MethodSpec] = {}


def register_method(name: str, config_cls: type, description: str, kind: str = "llm", **hooks):
    """Decorator registering a gradient step under ``(kind, name)``; ``hooks`` are `MethodSpec` fields."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def deco(step):
        METHODS[(kind, name)] = MethodSpec(name, kind, config_cls, description, step=step, **hooks)
        return step

    return deco


def register_edit(name: str, config_cls: type, description: str, kind: str = "diffusion"):
    """Decorator registering a closed-form edit ``apply(target, erase, cfg, preserve, on_round=None)``."""

    def deco(apply):
        METHODS[(kind, name)] = MethodSpec(name, kind, config_cls, description, apply=apply)
        return apply

    return deco


def names(kind: str) -> list[str]:
    return sorted({n for k, n in _MODULES if k == kind} | {n for k, n in METHODS if k == kind})


def get_method(name: str, kind: str = "llm") -> MethodSpec:
    """The method ``name`` of ``kind``; an unknown name lists that kind's methods."""
    if kind not in KINDS:
        raise unknown_name("method kind", kind, KINDS)
    if (kind, name) not in METHODS and (kind, name) in _MODULES:
        importlib.import_module(_MODULES[(kind, name)])
    if (kind, name) not in METHODS:
        raise unknown_name(f"{kind} method", name, names(kind))
    return METHODS[(kind, name)]


def list_methods() -> list[MethodSpec]:
    """Every registered method, sorted by (name, kind)."""
    for mod in sorted(set(_MODULES.values())):
        importlib.import_module(mod)
    return [METHODS[k] for k in sorted(METHODS, key=lambda k: (k[1], k[0]))]
