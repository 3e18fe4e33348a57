"""Metric registry: every metric the suite reports, with its family and the direction that is better.

Directions:
    ``higher``  higher is better (e.g. retain accuracy, model utility, forget quality)
    ``lower``   lower is better (e.g. an MIA AUC above 0.5 on a model that should have forgotten)
    ``oracle``  closest to the retain-only oracle's value is best (e.g. forget accuracy: the ideal unlearned
                model forgets as much as the oracle, no more)

Metric *functions* live in the family modules (logit.py, mia.py, ...) and never import methods or training.
"""

from __future__ import annotations

from dataclasses import dataclass

from unlearn.errors import unknown_name

DIRECTIONS = ("higher", "lower", "oracle")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    family: str  # logit | mia | representation | concept_vectors | path | diffusion | lm_eval | cost
    direction: str  # higher | lower | oracle
    description: str
    range: str = ""  # e.g. "[0, 1]"


METRICS: dict[str, MetricInfo] = {}


def register_metric(name: str, family: str, direction: str, description: str, range: str = "") -> MetricInfo:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    info = MetricInfo(name, family, direction, description, range)
    METRICS[name] = info
    return info


def get_metric(name: str) -> MetricInfo:
    _load_all()
    if name not in METRICS:
        raise unknown_name("metric", name, METRICS)
    return METRICS[name]


def _load_all() -> None:
    """Import every family module so that its registrations run (cheap: they import no heavy libraries)."""
    import importlib
    import pkgutil

    import unlearn.metrics as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"unlearn.metrics.{m.name}")


def all_metrics() -> dict[str, MetricInfo]:
    _load_all()
    return dict(METRICS)


def metrics_table() -> str:
    """The registry as a markdown table (what `unlearn list metrics` prints and the docs embed)."""
    rows = ["| metric | family | better | range | description |", "| --- | --- | --- | --- | --- |"]
    for m in sorted(all_metrics().values(), key=lambda m: (m.family, m.name)):
        better = {"higher": "higher", "lower": "lower", "oracle": "closest to oracle"}[m.direction]
        rows.append(f"| `{m.name}` | {m.family} | {better} | {m.range} | {m.description} |")
    return "\n".join(rows)


def write_metrics_doc(path) -> None:
    """Write the registry as a markdown page (``docs/metrics.md``): regenerate it after registering a metric with
    ``python -c "from unlearn.metrics import write_metrics_doc; write_metrics_doc('docs/metrics.md')"``."""
    from unlearn.store import atomic_write_text

    text = (
        "# Metrics\n\n"
        "Generated from the metric registry (`unlearn.metrics.write_metrics_doc`); do not edit by hand.\n"
        "*closest to oracle* means the best value is the retain-only oracle's (the model trained without the "
        "forget set).\n\n" + metrics_table() + "\n"
    )
    atomic_write_text(path, text)
