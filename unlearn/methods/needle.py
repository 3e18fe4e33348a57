"""Needle: gradient ascent on the forget set restricted to the forget entities' concept vectors.

The oracle-style baseline of Hong et al., "Intrinsic Evaluation of Unlearning Using Parametric Knowledge Traces"
(https://arxiv.org/abs/2406.11614, ``forget.py --ft_type Needle`` in https://github.com/yihuaihong/ConceptVectors):
optionally perturb each concept vector ``v_{L,D}`` once with Gaussian noise, then ascend the forget NLL with every
parameter frozen except those vectors:

    θ* = argmin_{v_{L,D} : (L, D) ∈ S}  (1 / N) Σ_b log p_θ(y_b | x_b)        (everything outside S fixed)

where ``S`` is the set of validated concept vectors (`unlearn.concepts`) of the entities in the forget set and
``N`` the number of answer tokens of the batch (the token-mean NLL of GA, docs/conventions.md#ga).

How it runs in the loop core: ``prepare`` reads the forget records' entities, picks their vectors from the vectors
file and adds the initial noise; ``trainable`` hands the loop only the down-projection weights that hold them and
``grad_mask`` a 0/1 mask selecting their columns, so no other entry receives a gradient. The loop never
weight-decays masked parameters: the reference trains with AdamW ``weight_decay=0.01``, and decoupled decay
shrinks *every* entry of the masked layer (and of the input embedding it also leaves trainable) by ``1 - lr·wd``
per step whatever its gradient, so there the "untouched" columns move too. Here they stay bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from unlearn.concepts import load_vectors, package_vectors_path
from unlearn.errors import UnlearnError
from unlearn.methods import register_method
from unlearn.targets.arch import arch


@dataclass
class NeedleConfig:
    vectors: str = ""  # vectors JSON (`unlearn concept-vectors`); "" = the embedded TinyFacts target's shipped file
    entities: list[str] = field(default_factory=list)  # concepts to erase; empty = the forget records' entities
    require_validated: bool = True  # only vectors that passed causal validation (False: any located vector)
    # Initial noise std. The reference adds N(0, 0.1²) once; its size only means something relative to the
    # column norm (0.1·sqrt(d)/‖v‖: ~1.4 on the embedded target, where such noise alone changed no answer in
    # validation), so by default Needle is the pure restricted ascent; 0.1 reproduces the reference.
    noise_std: float = 0.0
    forget_weight: float = 1.0  # scale of the ascent term (the reference: 1)

    RANGES: ClassVar[dict[str, str]] = {"noise_std": ">= 0", "forget_weight": ">= 0"}


def needle_loss(forget_logp: torch.Tensor, total_tokens: float | torch.Tensor) -> torch.Tensor:
    """``sum_b log p(y_b|x_b) / sum_b |y_b|`` over the forget batch (``forget_logp`` (B,) summed per sequence);
    minimising it ascends the forget NLL. The restriction to the concept vectors is the mask, not the loss."""
    return forget_logp.sum() / total_tokens


def selected(cfg: NeedleConfig) -> list[dict]:
    """The vectors of ``cfg.entities`` in ``cfg.vectors`` (validated ones unless ``require_validated`` is off)."""
    path = cfg.vectors or package_vectors_path("tinyfacts")
    doc = load_vectors(path)
    want = set(cfg.entities)
    vecs = [v for v in doc["vectors"] if v["concept"] in want and (v.get("passed") or not cfg.require_validated)]
    if not vecs:
        n_loc = len({v["concept"] for v in doc["vectors"] if v["concept"] in want})
        hint = f"; {n_loc} have located but unvalidated ones (method.require_validated=false)" if n_loc else ""
        kind = "validated " if cfg.require_validated else ""
        raise UnlearnError(
            f"needle: none of the {len(want)} forget entities has a {kind}concept vector in {path}{hint}"
        )
    return vecs


def _layers(vecs: list[dict]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for v in vecs:
        out.setdefault(int(v["layer"]), []).append(int(v["column"]))
    return out


def prepare(model, cfg: NeedleConfig, forget: list[dict]) -> None:
    """Fill ``cfg.entities`` from the forget records, check the vectors belong to ``model`` and add the noise."""
    if not cfg.entities:
        ents = sorted({r["entity"] for r in forget if r.get("entity")})
        if not ents:
            raise UnlearnError("needle: the forget records name no entity; set method.entities")
        cfg.entities = ents
    vecs = selected(cfg)
    a = arch(model)
    for v in vecs:
        if not 0 <= v["layer"] < a.n_layers or not 0 <= v["column"] < a.value_matrix(v["layer"]).shape[0]:
            raise UnlearnError(f"needle: vector {v['concept']!r} ({v['layer']}, {v['column']}) is not in this model")
        norm = float(a.value_matrix(v["layer"])[v["column"]].detach().float().norm())
        if "norm" in v and not math.isclose(norm, v["norm"], rel_tol=1e-3, abs_tol=1e-5):
            raise UnlearnError(
                f"needle: the vectors file was made for another model (‖v‖ of {v['concept']!r} is {norm:.4f}, "
                f"the file says {v['norm']:.4f}); regenerate it with `unlearn concept-vectors locate`"
            )
    if cfg.noise_std > 0:
        # seeded by the run (unlearn_model seeds torch first), so every process adds the same noise
        gen = torch.Generator().manual_seed(torch.initial_seed())
        with torch.no_grad():
            for v in vecs:
                W = a.value_matrix(v["layer"])  # (d_ff, d_model) view
                noise = torch.randn(W.shape[1], generator=gen) * cfg.noise_std
                W[v["column"]] += noise.to(W.device, W.dtype)


def trainable(model, cfg: NeedleConfig) -> list:
    a = arch(model)
    return [(a.down_param_name(L), a.down_proj(L).weight) for L in sorted(_layers(selected(cfg)))]


def grad_mask(model, cfg: NeedleConfig) -> dict:
    """{down-projection weight name: 0/1 mask} with ones on the selected value vectors (columns of a Linear)."""
    a = arch(model)
    masks = {}
    for L, cols in _layers(selected(cfg)).items():
        w = a.down_proj(L).weight
        m = torch.zeros_like(w)
        (m if a.value_axis == 0 else m.T)[cols] = 1  # rows of the (d_ff, d_model) view = value vectors
        masks[a.down_param_name(L)] = m
    return masks


@register_method("needle", NeedleConfig, "Gradient ascent on the forget entities' concept vectors only (Hong et al.)",
                 trainable=trainable, grad_mask=grad_mask, prepare=prepare)  # fmt: skip
def step(ctx, batch: dict, cfg: NeedleConfig):
    out = ctx.policy(batch["forget"])
    loss = cfg.forget_weight * needle_loss(out["seq_logp"], ctx.norm["forget_tokens"])
    return loss, {"forget_logp": out["seq_logp"].detach().sum() / ctx.norm["forget_tokens"]}
