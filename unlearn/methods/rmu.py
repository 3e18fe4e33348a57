"""RMU: Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark",
https://arxiv.org/abs/2403.03218, reference code https://github.com/centerforaisafety/wmdp, ``rmu/unlearn.py``).

Push the forget inputs' residual stream after decoder block ``l`` towards a fixed random direction scaled by ``c``
and keep the retain inputs' residual stream where the frozen pre-unlearning model has it (paper Eq. 1-3)::

    L = (1/N_f) Σ_{(b,t) ∈ M_f} (1/d) ‖h_l^θ(x_f)_{b,t} - c·u‖²
        + α · (1/N_r) Σ_{(b,t) ∈ M_r} (1/d) ‖h_l^θ(x_r)_{b,t} - h_l^frozen(x_r)_{b,t}‖²

``u`` is one vector drawn uniform on [0, 1)^d and normalised to unit length, fixed for the whole run (seeded). Only
the MLP down-projection weights of layers ``l-2, l-1, l`` are trained (the reference: zephyr-7b, ``--layer_id 7
--layer_ids 5,6,7 --param_ids 6``, AdamW lr 5e-5).

Positions (docs/methods/rmu.md): the reference's ``mse_loss`` averages over every position, padding included. Here
``M`` is the set of states that *predict* a label: position ``t`` counts when ``labels[t+1] != -100`` (for a QA
record the last prompt token up to the second-to-last answer token; a text-only record labels every token, so
every state but the last), and ``N_f`` / ``N_r`` are the loop's global answer-token counts (``ctx.norm``), which
count exactly those positions, so micro-batches and processes add up to the one-batch loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from unlearn.errors import UnlearnError
from unlearn.methods import register_method
from unlearn.targets.arch import arch


@dataclass
class RMUConfig:
    layer: int = 7  # decoder block (0-based) whose output is steered (the reference's --layer_id, for 7B models)
    steer: float = 20.0  # steering coefficient c (reference script default; the zephyr release used 6.5, unverified)
    alpha: float = 100.0  # retain weight α (reference script default; the zephyr release used 1200, unverified)
    # trained down-projections; empty = layers max(0, layer-2)..layer (the reference's --layer_ids 5,6,7 for 7)
    layers: list[int] = field(default_factory=list)
    # "down_proj": those layers' MLP down-projection weights (reference); "all": every parameter (open-unlearning)
    params: Literal["down_proj", "all"] = "down_proj"
    seed: int = -1  # seed of the random direction u; -1 = the run seed

    RANGES: ClassVar[dict[str, str]] = {
        "layer": ">= 0", "steer": ">= 0", "alpha": ">= 0", "layers": ">= 0", "seed": ">= -1",
    }  # fmt: skip


def steer_direction(d: int, seed: int) -> torch.Tensor:
    """The fixed unit direction u (d,): uniform on [0, 1)^d from a generator seeded with ``seed``, normalised."""
    u = torch.rand(d, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
    return u / u.norm()


def masked_sq(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Σ_{(b,t): mask} (1/d) ‖h_{b,t} - target_{b,t}‖²`` (a sum over positions, a mean over d).

    Args:
        h: (B, T, d) hidden states.
        target: (d,) or (B, T, d), broadcast against ``h``.
        mask: (B, T) bool, the positions that count.
    """
    per_pos = (h.float() - target.float()).pow(2).mean(-1)  # (B, T)
    return (per_pos * mask.to(per_pos.dtype)).sum()


def rmu_loss(h_f: torch.Tensor, mask_f: torch.Tensor, h_r: torch.Tensor, h_r_ref: torch.Tensor,
             mask_r: torch.Tensor, u: torch.Tensor, c: float, alpha: float, n_f: float,
             n_r: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The RMU loss ``forget + α·retain`` (module docstring), with its two terms.

    Args:
        h_f: (B_f, T_f, d) trainable model's block-``l`` output on forget inputs.
        mask_f: (B_f, T_f) bool, forget positions that count.
        h_r: (B_r, T_r, d) trainable model's block-``l`` output on retain inputs.
        h_r_ref: (B_r, T_r, d) the frozen model's, same inputs (no grad).
        mask_r: (B_r, T_r) bool, retain positions that count.
        u: (d,) unit direction; c: steering coefficient; alpha: retain weight.
        n_f, n_r: normalisers (masked positions of the global batch); ``mask.sum()`` gives the plain mean.
    Returns:
        (loss, forget term, retain term): scalars, the terms before α.
    """
    forget = masked_sq(h_f, c * u.to(h_f.device), mask_f) / n_f
    retain = masked_sq(h_r, h_r_ref.detach(), mask_r) / n_r
    return forget + alpha * retain, forget, retain


def _seed(cfg: RMUConfig) -> int:
    return cfg.seed if cfg.seed >= 0 else torch.initial_seed()  # unlearn_model seeds torch with the run seed


def train_layers(model, cfg: RMUConfig) -> list[int]:
    """The layers whose down-projection is trained; UnlearnError if ``cfg.layer`` or one is not in the model."""
    n = arch(model).n_layers
    layers = sorted(set(cfg.layers)) if cfg.layers else list(range(max(0, cfg.layer - 2), cfg.layer + 1))
    bad = [L for L in [cfg.layer, *layers] if not 0 <= L < n]
    if bad:
        raise UnlearnError(f"rmu: layer {bad[0]} is out of range (the model has {n} blocks, 0..{n - 1}); set layer=")
    return layers


def prepare(model, cfg: RMUConfig, forget: list[dict]) -> None:
    """Check the layers and pin the direction's seed (the run seed unless ``seed`` is set) for the whole run."""
    train_layers(model, cfg)
    if cfg.seed < 0:
        cfg.seed = int(torch.initial_seed())


def trainable(model, cfg: RMUConfig) -> list:
    if cfg.params == "all":
        train_layers(model, cfg)
        return [(n, p) for n, p in model.named_parameters()]
    a = arch(model)
    return [(a.down_param_name(L), a.down_proj(L).weight) for L in train_layers(model, cfg)]


@register_method("rmu", RMUConfig, "Representation Misdirection: steer forget activations to c*u (Li et al.)",
                 needs_reference=lambda cfg: True, trainable=trainable, prepare=prepare)  # fmt: skip
def step(ctx, batch: dict, cfg: RMUConfig):
    f, r = batch["forget"], batch["retain"]
    h_f, h_r = ctx.hidden(f, r, layer=cfg.layer)  # one forward pass of the trainable model
    (h_r_ref,) = ctx.hidden(r, layer=cfg.layer, reference=True)
    u = steer_direction(h_f.shape[-1], _seed(cfg))
    # the state at t predicts label t+1: the same positions as ctx.norm's answer-token counts
    loss, forget, retain = rmu_loss(
        h_f[:, :-1], f["labels"][:, 1:] != -100, h_r[:, :-1], h_r_ref[:, :-1], r["labels"][:, 1:] != -100,
        u, cfg.steer, cfg.alpha, ctx.norm["forget_tokens"], ctx.norm["retain_tokens"],
    )  # fmt: skip
    return loss, {"forget_mse": forget.detach(), "retain_mse": retain.detach()}
