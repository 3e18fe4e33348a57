"""The one run lifecycle every workflow (run, eval, erase, audit, paths, ...) goes through.

A run directory moves through ``claim -> running -> finished | failed``:

1. **Claim** (`claim_run`): the directory is checked before anything is computed.

   ============================  ==========================  =================================================
   state of the directory        flag                        outcome
   ============================  ==========================  =================================================
   absent / empty                any                         new run
   finished (metrics.json)       none                        error naming ``--force`` / ``--reuse``
   finished                      ``--reuse``, same config    shown, nothing recomputed
   finished                      ``--reuse``, other config   error (the resolved configs differ)
   finished                      ``--force``                 its files are removed, new run
   unfinished, same config       any                         resumed (from the last checkpoint, if any)
   unfinished, other config      any                         restarted cleanly (old checkpoint/trace removed)
   held by a live process        any                         error (the lock names pid and host)
   held by a dead process        any                         the stale lock is taken over, and said so
   a file / not writable         any                         error
   ============================  ==========================  =================================================

2. **Running**: ``config.json`` (the resolved config + provenance: package versions, git sha, data and weight
   hashes) and ``status.json`` = ``running`` are written first, atomically.
3. **Finished**: ``metrics.json`` last (it marks the run done), then ``status.json`` = ``finished``.
   On an exception, SIGINT or SIGTERM, ``status.json`` says ``failed`` with the reason; after SIGKILL the lock's
   process is dead, so the same command takes the lock over and resumes or restarts.

"Same config" compares the ``resolved`` part of config.json only: provenance (versions, sha, timestamps) may differ
between two invocations of one run. Only the main process of a multi-process launch claims and writes; the
others call `claim_run` with ``main=False`` and get the same decision without touching the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.errors import UnlearnError
from unlearn.store import SCHEMA_VERSION, atomic_write_json, read_json, write_status

# files a run writes; --force and a clean restart remove exactly these (never anything else in the folder)
RUN_FILES = ("metrics.json", "examples.jsonl", "trace.jsonl", "status.json", "config.json", "layers.csv",
             "layers.png", "rounds.jsonl", "grid.png", "report.json", "report.md", "report.html",
             "recovery.png", "path_dependence.csv", "path_dependence_summary.json", "path_dependence.png")  # fmt: skip
RUN_DIRS = ("checkpoint", "checkpoint.tmp", "checkpoint.old", "model", "model.tmp", "path_runs", "tracking")
LOCK = ".lock"


# ----------------------------------------------------------------------------------------------- provenance
def git_sha() -> str | None:
    """The package's git commit, or None outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    """Package versions and the git sha, recorded in every config.json."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("unlearn", "torch", "transformers", "accelerate", "diffusers", "tokenizers", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["git_sha"] = git_sha()
    return out


def files_hash(path: str | Path | None, patterns=("*.safetensors", "*.json", "*.model", "*.txt")) -> str | None:
    """sha256 over the weight/config/tokenizer files of a model directory (name + content), or None."""
    import hashlib

    if path is None or not Path(path).is_dir():
        return None
    h = hashlib.sha256()
    files = sorted({f for pat in patterns for f in Path(path).rglob(pat) if f.is_file() and f.name != "card.json"})
    for f in files:
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def weights_ident(path: str | Path | None) -> str | None:
    """What identifies a fixed model's files in a cache key: `files_hash` of a local directory, or of a hub id's
    cached snapshot (its latest cached revision), or None when neither is on disk.

    A snapshot's files are links to blobs named by their content hash (sha256 for LFS weights, the git blob sha1
    otherwise), so a snapshot is identified by those names without reading gigabytes of weights again.
    """
    import hashlib

    if path is None:
        return None
    if Path(path).is_dir():
        return files_hash(path)
    if str(path).count("/") != 1:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        snap = Path(snapshot_download(str(path), local_files_only=True))
    except (OSError, ValueError, EntryNotFoundError):  # not cached (or not a repo id): the caller loads, then asks
        return None
    h = hashlib.sha256()
    files = sorted({f for pat in ("*.safetensors", "*.json", "*.model", "*.txt") for f in snap.rglob(pat)})
    for f in files:
        h.update(str(f.relative_to(snap)).encode())
        h.update(Path(os.readlink(f)).name.encode() if f.is_symlink() else f.read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire_lock(rdir: Path, log) -> Path:
    """Take ``rdir/.lock`` (pid, host) or refuse; a stale lock of a dead process on this host is taken over."""
    p = rdir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(p.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                held = {}
            pid, host = int(held.get("pid") or 0), held.get("host")
            if pid == os.getpid() and host == me["host"]:
                return p  # re-entrant: this process already holds it
            if host == me["host"] and pid and _pid_alive(pid):
                raise UnlearnError(f"{rdir} is held by a live process (pid {pid} on {host}); wait for it or "
                                   "choose another --out") from None  # fmt: skip
            if host not in (None, me["host"]):
                raise UnlearnError(f"{rdir} is locked by pid {pid} on host {host}; if that run is dead, delete "
                                   f"{p} and retry") from None  # fmt: skip
            log(f"{rdir}: taking over the stale lock of dead process {pid}")
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return p
    raise UnlearnError(f"{rdir}: could not take the lock {p}")


def release_lock(rdir: Path) -> None:
    p = Path(rdir) / LOCK
    try:
        held = json.loads(p.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return
    if held.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# ----------------------------------------------------------------------------------------------- claim
def check_out_dir(path: str | Path, what: str = "--out") -> Path:
    """``path`` must be a directory we can write (created if missing): else one line."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UnlearnError(f"{what} {p} is a file, not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnlearnError(f"{what} {p}: cannot create it ({e.strerror or e})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UnlearnError(f"{what} {p} is not writable")
    return p


def clear_run(rdir: Path) -> None:
    """Remove the files a run writes (nothing else in the folder)."""
    for f in RUN_FILES:
        (rdir / f).unlink(missing_ok=True)
    for d in RUN_DIRS:
        if (rdir / d).exists():
            shutil.rmtree(rdir / d)


@dataclass
class Run:
    """A claimed run directory. ``mode``: new | resume | restart | reuse."""

    rdir: Path
    mode: str
    resolved: dict
    main: bool = True
    provenance: dict = field(default_factory=dict)
    _signals: dict = field(default_factory=dict, repr=False)

    @property
    def reused(self) -> bool:
        return self.mode == "reuse"

    def start(self, **status: Any) -> None:
        """Write config.json and status ``running`` first; install SIGTERM handling (it fails the run cleanly)."""
        if not self.main or self.reused:
            return
        config = {"schema_version": SCHEMA_VERSION, "resolved": self.resolved,
                  "provenance": {"versions": versions(), **self.provenance}}  # fmt: skip
        atomic_write_json(self.rdir / "config.json", config)
        write_status(self.rdir, "running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), mode=self.mode, **status)
        if hasattr(signal, "SIGTERM"):
            try:
                self._signals[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_interrupt)
            except ValueError:  # not the main thread: no handler, the default (die) still leaves a stale lock
                pass

    def finish(self, metrics: dict, **status: Any) -> None:
        """metrics.json last (with ``schema_version``), then status ``finished``; release the lock."""
        if self.main and not self.reused:
            atomic_write_json(self.rdir / "metrics.json", {"schema_version": SCHEMA_VERSION, **metrics})
            write_status(self.rdir, "finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), **status)
        self.close()

    def fail(self, reason: str) -> None:
        if self.main and not self.reused and not (self.rdir / "metrics.json").exists():
            prev = _read_status(self.rdir)
            if prev.get("state") != "failed":  # keep a more specific reason written earlier (e.g. by the loop)
                write_status(self.rdir, "failed", reason=reason, failed=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.close()

    def close(self) -> None:
        for sig, old in self._signals.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, old)
        self._signals.clear()
        if self.main:
            release_lock(self.rdir)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, et, ev, tb) -> bool:
        if et is None:
            self.close()
        elif issubclass(et, KeyboardInterrupt):
            self.fail("interrupted (SIGINT or SIGTERM)")
        else:
            self.fail(f"{et.__name__}: {ev}".splitlines()[0][:500])
        return False


def _raise_interrupt(signum, frame):  # SIGTERM -> the same clean path as Ctrl-C
    raise KeyboardInterrupt(f"signal {signum}")


def _read_status(rdir: Path) -> dict:
    p = rdir / "status.json"
    try:
        return read_json(p) if p.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def read_resolved(rdir: str | Path) -> dict | None:
    """The ``resolved`` config of a run directory (None when absent); pre-lifecycle configs are read whole."""
    p = Path(rdir) / "config.json"
    if not p.exists():
        return None
    try:
        cfg = read_json(p)
    except (OSError, json.JSONDecodeError):
        return None
    return cfg.get("resolved", cfg) if isinstance(cfg, dict) else None


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def claim_run(
    rdir: str | Path,
    resolved: dict,
    *,
    force: bool = False,
    reuse: bool = False,
    main: bool = True,
    log=print,
    provenance: dict | None = None,
) -> Run:
    """Claim ``rdir`` for a run whose resolved config is ``resolved`` (see the module table). Raises UnlearnError."""
    rdir = Path(rdir)
    if force and reuse:
        raise UnlearnError("--force and --reuse contradict each other; pass one")
    resolved = json.loads(_canon(resolved))  # what will be written: JSON types only, so comparisons are exact
    if not main:  # the main process decides and writes; the others only follow
        mode = "reuse" if reuse and (rdir / "metrics.json").exists() else "new"
        return Run(rdir, mode, resolved, main=False)
    check_out_dir(rdir.parent, "--out")
    check_out_dir(rdir, "run directory")
    _acquire_lock(rdir, log)
    try:
        old = read_resolved(rdir)
        same = old is not None and _canon(old) == _canon(resolved)
        if (rdir / "metrics.json").exists():
            if reuse:
                if not same:
                    raise UnlearnError(f"{rdir} is finished with a different resolved config; --force replaces it")
                log(f"{rdir} is finished with these settings; showing it (--force re-runs it)")
                run = Run(rdir, "reuse", resolved)
                release_lock(rdir)
                return run
            if not force:
                raise UnlearnError(f"{rdir} is already finished; pass --force to run it again or --reuse to show it")
            clear_run(rdir)
            mode = "new"
        elif old is not None and not same:
            log(f"{rdir}: an unfinished run with different settings is there; restarting it cleanly")
            clear_run(rdir)
            mode = "restart"
        elif old is not None:
            mode = "resume"
        else:
            if force:
                clear_run(rdir)
            mode = "new"
    except BaseException:
        release_lock(rdir)
        raise
    return Run(rdir, mode, resolved, provenance=dict(provenance or {}))


__all__ = ["Run", "claim_run", "check_out_dir", "clear_run", "read_resolved", "versions", "git_sha", "files_hash"]
