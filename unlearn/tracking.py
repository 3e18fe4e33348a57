"""Experiment tracking (``--set report_to=none|tensorboard|wandb|trackio``) through accelerate's trackers.

The loop's trace rows (``unlearn.loop.run_loop``: loss, lr, grad norm, tokens/s and the method's logs) become
``train/<key>`` scalars and its periodic evaluations (the ``eval`` rows, ``eval_every``) ``eval/<metric>`` scalars, at
the row's step, on the main process only. The tracker classes are accelerate's own (`accelerate.tracking`),
instantiated here rather than through ``Accelerator(log_with=...)`` because the Accelerator exists before the run
directory is known (`unlearn.commands.run.make_accelerator`) and a one-process run has no Accelerator at all.

* ``tensorboard`` (a dependency): event files in ``<run dir>/tracking/``; local files only, works offline. A resumed
  run purges the events after the checkpoint it resumes from (SummaryWriter's ``purge_step``), as trace.jsonl drops
  its rows; ``--force`` and a clean restart remove ``tracking/`` with the run's other files.
* ``wandb`` (extra ``unlearn[wandb]``): files in ``<run dir>/tracking/wandb/``; ``WANDB_MODE`` is respected when set,
  else offline mode when ``HF_HUB_OFFLINE`` is set (``wandb sync`` uploads the run later), else wandb's default.
* ``trackio`` (extra ``unlearn[trackio]``): trackio's local store (``TRACKIO_DIR``, default under the Hugging Face
  cache); local-first, works offline.

A missing extra is a one-line `UnlearnError` naming it (`check_report_to`, called before the run directory is
claimed, so nothing is written).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

from unlearn.errors import UnlearnError

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
# report_to -> (the module it imports, the pip extra that installs it)
_NEEDS = {"tensorboard": ("tensorboard", None), "wandb": ("wandb", "wandb"), "trackio": ("trackio", "trackio")}
PROJECT = "unlearn"  # the wandb / trackio project every run is filed under
TRACKING_DIR = "tracking"  # below the run directory


def check_report_to(report_to: str) -> None:
    """Raise a one-line UnlearnError when ``report_to`` is unknown or its package is not installed."""
    if report_to not in REPORT_TO:
        raise UnlearnError(f"report_to={report_to!r}: must be one of {', '.join(REPORT_TO)}")
    if report_to == "none":
        return
    module, extra = _NEEDS[report_to]
    if importlib.util.find_spec(module) is None:
        how = f"pip install 'unlearn[{extra}]'" if extra else f"pip install {module} (a dependency of unlearn)"
        raise UnlearnError(f"report_to={report_to} needs the {module} package, which is not installed: {how}")


class Tracker:
    """``track(row, step)`` for `unlearn.loop.run_loop`: logs one trace row's scalars; `close` ends the run."""

    def __init__(self, tracker):
        self.tracker = tracker  # an accelerate GeneralTracker, already started

    def __call__(self, row: dict, step: int) -> None:
        values = scalars(row)
        if values:
            self.tracker.log(values, step=int(step))

    def close(self) -> None:
        self.tracker.finish()


def scalars(row: dict) -> dict[str, float]:
    """A trace row -> ``{"train/<key>": v}`` (a step row) or ``{"eval/<metric>": v}`` (an ``eval`` row); finite
    numbers only (bools, strings and the step itself are not scalars to plot)."""
    if isinstance(row.get("eval"), dict):
        items, prefix = row["eval"].items(), "eval/"
    else:
        items, prefix = ((k, v) for k, v in row.items() if k != "step"), "train/"
    return {f"{prefix}{k}": float(v) for k, v in items
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}  # fmt: skip


def _resume_step(rdir: Path) -> int:
    """The step of the checkpoint a run in ``rdir`` resumes from (0 without one), read as `unlearn.loop` does."""
    for name in ("checkpoint", "checkpoint.tmp", "checkpoint.old"):  # recover_checkpoint's order
        p = Path(rdir) / name / "state.json"
        if p.exists():
            try:
                return int(json.loads(p.read_text())["step"])
            except (ValueError, KeyError, OSError):
                return 0
    return 0


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def open_tracker(report_to: str, rdir: Path, name: str, config: dict | None = None) -> Tracker | None:
    """Start the ``report_to`` tracker of the run in ``rdir`` (call on the main process only); None for ``none``.

    Args:
        report_to: one of `REPORT_TO`.
        rdir: the run directory (tensorboard and wandb write below ``rdir/tracking``).
        name: the run's name in wandb / trackio (its path in the run tree).
        config: the run's resolved settings, stored with the wandb / trackio run.
    """
    check_report_to(report_to)
    if report_to == "none":
        return None
    from accelerate import PartialState
    from accelerate.tracking import TensorBoardTracker, TrackioTracker, WandBTracker

    logdir = Path(rdir) / TRACKING_DIR
    logdir.mkdir(parents=True, exist_ok=True)
    if report_to == "tensorboard":
        # events after the resumed checkpoint are hidden, as trace.jsonl rewrites its rows after it (a run with
        # no checkpoint rewrites every row: purge from step 0)
        start = _resume_step(rdir)
        t = TensorBoardTracker("", logdir, purge_step=start + 1 if start else 0)
    elif report_to == "wandb":
        kw = {"dir": str(logdir), "name": name, "config": config or {}}
        if not os.environ.get("WANDB_MODE") and _offline():
            kw["mode"] = "offline"
        t = WandBTracker(PROJECT, **kw)
    else:
        t = TrackioTracker(PROJECT, name=name, config=config or {})
    # accelerate's trackers log through its process state: a one-process run builds it here, as the Accelerator that
    # `unlearn.train.setup` makes next would (the same default state); under a launch it already exists
    PartialState()
    t.start()
    return Tracker(t)
