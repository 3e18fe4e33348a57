"""Metric tables as people read them: one row per registered key, one column per model, the better direction.

Every key of the columns is shown (the union, in first-seen order; ``-`` where a model lacks it): a registered
key gets its direction from the registry, an unregistered one (which a test forbids in metrics.json) is shown
with ``?`` rather than hidden.
"""

from __future__ import annotations

from unlearn.metrics import lookup

_BETTER = {"higher": "higher", "lower": "lower", "oracle": "~oracle", "none": ""}


def format_table(cols: dict[str, dict], keys: list[str] | None = None) -> str:
    if keys is None:
        keys = list(dict.fromkeys(k for c in cols.values() for k in c if k != "schema_version"))
    if not keys:
        return "(no metrics)"
    w = max(len(k) for k in keys) + 2
    head = "metric".ljust(w) + "".join(f"{c:>14}" for c in cols) + "   better"
    lines = [head, "-" * len(head)]
    for k in keys:
        info = lookup(k)
        better = _BETTER[info.direction] if info is not None else "?"
        vals = "".join(f"{fmt_value(c.get(k)):>14}" for c in cols.values())
        lines.append(f"{k.ljust(w)}{vals}   {better}")
    return "\n".join(lines)


def fmt_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    return str(v)
