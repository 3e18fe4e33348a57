"""Privacy accounting of a DP-trained starting model (DP2Unlearning's base), as metrics.json keys.

The values come from the base's model card (`unlearn.targets.dp_build`), which holds opacus' RDP accountant's epsilon
for the (noise multiplier, sampling rate, steps) the base's DP-SGD actually used. They describe the run and are not
better one way or the other (direction ``none``); the costs are the one-off price of the base, paid before any
deletion request, reported next to the unlearning run's own ``cost_*`` keys.
"""

from __future__ import annotations

import math

from unlearn.metrics import register_metric

for _name, _desc in (
    ("dp_epsilon", "the DP base's epsilon from the RDP accountant for the steps it took (inf: non-private)"),
    ("dp_delta", "the DP base's delta"),
    ("dp_privacy_unit", "what one clipped, Poisson-sampled unit of the base's DP-SGD is: record | entity | none"),
    ("dp_noise_multiplier", "DP-SGD noise multiplier sigma (noise std = sigma x clipping norm)"),
    ("dp_sampling_rate", "Poisson sampling rate q of the privacy units per step"),
    ("dp_steps", "DP-SGD steps of the base's private stage"),
    ("dp_base_retain_acc", "exact match of the DP base on the retain split, before unlearning"),
):
    register_metric(_name, "privacy", "none", _desc)
for _name, _desc in (
    ("dp_base_cost_steps", "optimizer steps of the DP base (public + private stage), paid once"),
    ("dp_base_cost_seconds", "training seconds of the DP base (public + private stage), paid once"),
    ("dp_base_cost_tokens", "tokens through the model in the DP base's private stage (with its public rows)"),
    ("retrain_cost_steps", "optimizer steps of retraining from scratch on the retained data (the oracle's build)"),
):
    register_metric(_name, "cost", "none", _desc, "[0, inf)")


def dp_metrics(card: dict, retrain_steps: int) -> dict:
    """The keys above from a DP base's ``card.json`` and the retrain-from-scratch step count."""
    eps = card["epsilon"]
    return {
        "dp_epsilon": math.inf if eps is None else float(eps),
        "dp_delta": card["delta"],
        "dp_privacy_unit": card["privacy_unit"],
        "dp_noise_multiplier": card["noise_multiplier"],
        "dp_sampling_rate": card["sample_rate"],
        "dp_steps": card["steps"],
        "dp_base_retain_acc": card["accuracy"][card["retain_of"]],
        "dp_base_cost_steps": card["steps"] + card["public_stage"]["steps"],
        "dp_base_cost_seconds": round(card["seconds"] + card["public_stage"]["seconds"], 1),
        "dp_base_cost_tokens": card["tokens"],
        "retrain_cost_steps": retrain_steps,
    }
