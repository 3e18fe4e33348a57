"""Cost of a run in the units every method shares: optimizer steps, tokens through the trainable model, seconds.

Registered here, next to `cost_metrics`, which computes them from the training loop's summary; closed-form edits
report ``edit_seconds`` (metrics/diffusion.py) instead.
"""

from __future__ import annotations

from unlearn.metrics import register_metric

register_metric("cost_steps", "cost", "lower", "optimizer steps the unlearning took", "[0, inf)")
register_metric("cost_tokens", "cost", "lower", "real (non-pad) tokens through the trainable model, all processes",
                "[0, inf)")  # fmt: skip
register_metric("cost_seconds", "cost", "lower", "wall time of the whole run: loading, unlearning, evaluation",
                "[0, inf)")  # fmt: skip
register_metric("cost_train_seconds", "cost", "lower", "wall time of the unlearning loop alone", "[0, inf)")


def cost_metrics(summary: dict, run_seconds: float) -> dict[str, float]:
    """The cost keys from `unlearn.train.unlearn_model`'s summary and the run's wall time."""
    return {
        "cost_steps": summary["steps"],
        "cost_tokens": summary["tokens"],
        "cost_seconds": round(run_seconds, 2),
        "cost_train_seconds": summary["seconds"],
    }
