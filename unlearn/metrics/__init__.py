"""Metric registry: the single source of truth for every key a ``metrics.json`` may hold.

Each metric is registered next to the code that computes it (the family modules of this package), with its
family and the direction that is better:

    ``higher``  higher is better (e.g. retain accuracy, model utility, forget quality)
    ``lower``   lower is better (e.g. attack success after erasure)
    ``oracle``  closest to the retain-only oracle's value is best (e.g. forget accuracy: the ideal unlearned
                model forgets as much as the oracle, no more)
    ``none``    descriptive, not a score (counts, settings such as ``dp_epsilon``)

A name may be a **template** whose ``{placeholders}`` range over the values given (``{set}_acc`` with
``set in (retain, world_facts, ...)``) or over any identifier (``{task}``) when no values are given; so families
over sets, layers or tasks register once. Exact names win over templates; templates are tried in registration
order. ``metrics.json`` holds ``schema_version`` plus registered scalar keys only; `check_keys` says which keys of
a dict are not registered.

Metric *functions* live in the family modules (logit.py, mia.py, ...) and never import methods or training.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field

from unlearn.errors import unknown_name

DIRECTIONS = ("higher", "lower", "oracle", "none")
RESERVED = ("schema_version",)


@dataclass(frozen=True)
class MetricInfo:
    name: str  # the registered name or template
    family: str  # logit | mia | representation | concept_vectors | path | diffusion | lm_eval | cost | ...
    direction: str  # higher | lower | oracle | none
    description: str
    range: str = ""  # e.g. "[0, 1]"
    values: dict = field(default_factory=dict)  # placeholder -> allowed values (empty: any identifier)

    @property
    def is_template(self) -> bool:
        return "{" in self.name


METRICS: dict[str, MetricInfo] = {}
_PATTERNS: dict[str, re.Pattern] = {}


def _pattern(name: str, values: dict) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", name):
        out.append(re.escape(name[pos : m.start()]))
        opts = values.get(m.group(1))
        out.append("(?:" + "|".join(re.escape(str(v)) for v in opts) + ")" if opts else r"[A-Za-z0-9_.\-]+?")
        pos = m.end()
    out.append(re.escape(name[pos:]))
    return re.compile("".join(out) + r"\Z")


def register_metric(
    name: str, family: str, direction: str, description: str, range: str = "", values: dict | None = None
) -> MetricInfo:
    """Register ``name`` (or a template with ``{placeholders}``; ``values`` restricts what each may be)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    info = MetricInfo(name, family, direction, description, range, {k: tuple(v) for k, v in (values or {}).items()})
    METRICS[name] = info
    if info.is_template:
        _PATTERNS[name] = _pattern(name, info.values)
    return info


_LOADED: list[bool] = []


def _load_all() -> None:
    """Import every family module once so that its registrations run (cheap: they import no heavy libraries)."""
    if _LOADED:
        return
    import unlearn.metrics as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"unlearn.metrics.{m.name}")
    _LOADED.append(True)


def lookup(key: str) -> MetricInfo | None:
    """The registration a concrete key matches (exact name first, then templates), or None."""
    _load_all()
    if key in METRICS and not METRICS[key].is_template:
        return METRICS[key]
    for name, pat in _PATTERNS.items():
        if pat.match(key):
            return METRICS[name]
    return None


def get_metric(key: str) -> MetricInfo:
    info = lookup(key)
    if info is None:
        raise unknown_name("metric", key, [n for n in METRICS])
    return info


def check_keys(metrics: dict) -> list[str]:
    """Keys of a metrics dict that are not registered scalars (``schema_version`` aside)."""
    bad = []
    for k, v in metrics.items():
        if k in RESERVED:
            continue
        if lookup(k) is None or not (v is None or isinstance(v, (int, float, bool, str))):
            bad.append(k)
    return bad


def all_metrics() -> dict[str, MetricInfo]:
    _load_all()
    return dict(METRICS)


def metrics_table() -> str:
    """The registry as a markdown table (what `unlearn list metrics` prints and the docs embed)."""
    better_of = {"higher": "higher", "lower": "lower", "oracle": "closest to oracle", "none": "(descriptive)"}
    rows = ["| metric | family | better | range | description |", "| --- | --- | --- | --- | --- |"]
    for m in sorted(all_metrics().values(), key=lambda m: (m.family, m.name)):
        name = f"`{m.name}`"
        if m.values:
            name += " (" + "; ".join(f"{k} in {', '.join(map(str, v))}" for k, v in m.values.items()) + ")"
        rows.append(f"| {name} | {m.family} | {better_of[m.direction]} | {m.range} | {m.description} |")
    return "\n".join(rows)


def metrics_doc() -> str:
    return (
        "# Metrics\n\n"
        "Generated from the metric registry (`unlearn.metrics.write_metrics_doc`); do not edit by hand.\n"
        "*closest to oracle* means the best value is the retain-only oracle's (the model trained without the "
        "forget set). A name with `{placeholders}` is a template: one registration for a family of keys, with the "
        "values each placeholder takes.\n\n" + metrics_table() + "\n"
    )


def write_metrics_doc(path) -> None:
    """Write the registry as a markdown page (``docs/metrics.md``): regenerate it after registering a metric with
    ``python -c "from unlearn.metrics import write_metrics_doc; write_metrics_doc('docs/metrics.md')"``."""
    from unlearn.store import atomic_write_text

    atomic_write_text(path, metrics_doc())
