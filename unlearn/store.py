"""Run directories and atomic writes.

Layout (docs/runs.md): ``runs/<benchmark>/<model>/<method>/<split or concept>/seed<k>/`` holding config.json,
metrics.json, examples.jsonl, trace.jsonl and optionally checkpoint/. Every file is written to a temporary
file in the same folder and renamed into place, so a killed process never leaves half a file behind.
A run is *finished* when metrics.json exists; ``status.json`` records running / failed states.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def unlearn_home() -> Path:
    """Cache root for built targets and cached evaluations: ``$UNLEARN_HOME`` (default ``~/.cache/unlearn``)."""
    return Path(os.environ.get("UNLEARN_HOME", Path.home() / ".cache" / "unlearn")).expanduser()


def safe_name(name: str) -> str:
    """Make a model id or path one folder name: ``meta-llama/Llama-3.2-1B`` -> ``meta-llama--Llama-3.2-1B``."""
    name = str(name).rstrip("/")
    if os.sep in name and Path(name).exists():
        name = Path(name).name  # a local directory: its last component names it
    name = name.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", name) or "model"


def run_dir(out: str | Path, benchmark: str, model: str, method: str, split: str, seed: int) -> Path:
    """The directory of one run."""
    return Path(out) / safe_name(benchmark) / safe_name(model) / safe_name(method) / safe_name(split) / f"seed{seed}"


def _json_default(obj: Any):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """Replace non-finite floats by None so the JSON stays standard (NaN is not valid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    text = "".join(json.dumps(_clean(r), default=_json_default) + "\n" for r in rows)
    atomic_write_text(path, text)


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one line (used for trace.jsonl; a torn last line is dropped by `read_jsonl(tolerant=True)`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_clean(row), default=_json_default) + "\n")
        f.flush()


def source_hash(rels: Iterable[str], salt: str = "") -> str:
    """12 hex of sha256(salt + the bytes of each package file in ``rels``, relative to ``unlearn/``; a missing file
    counts as empty): the code version that keys a cached evaluation, so a code change never reuses a stale one."""
    import hashlib

    root = Path(__file__).resolve().parent
    h = hashlib.sha256(salt.encode())
    for rel in rels:
        f = root / rel
        h.update(f.read_bytes() if f.exists() else b"")
    return h.hexdigest()[:12]


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | Path, tolerant: bool = False) -> list[dict]:
    """Read a JSONL file. ``tolerant`` skips a torn final line (a process killed mid-append)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if tolerant and i == len(lines) - 1:
                break
            raise
    return rows


def is_finished(rdir: str | Path) -> bool:
    return (Path(rdir) / "metrics.json").exists()


def write_status(rdir: str | Path, state: str, **info: Any) -> None:
    atomic_write_json(Path(rdir) / "status.json", {"state": state, **info})


def read_status(rdir: str | Path) -> dict:
    p = Path(rdir) / "status.json"
    return read_json(p) if p.exists() else {}
