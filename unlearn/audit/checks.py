"""Checks on an untrusted audit candidate, run before any of its weights are loaded as a model.

An audit judges a checkpoint made by someone else, so the candidate directory is treated as hostile input:

* **No pickles.** ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` / ``.pkl`` files are pickle streams, and unpickling
  one runs whatever code its author put in it. A candidate whose weights are only pickles is refused; pickles next
  to safetensors are listed and ignored. Nothing here opens a pickle, not even with ``torch.load``.
* **No remote code.** A ``config.json`` (or ``tokenizer_config.json``) with ``auto_map`` asks for the author's
  Python classes; we never set ``trust_remote_code``, so such a candidate is refused up front with a clear line
  instead of failing somewhere inside transformers.
* **Same model, same tokenizer.** A candidate is only comparable with the original when it has the same
  architecture, the same tensor names and shapes (read from the safetensors headers, no tensor data) and the same
  vocabulary and special tokens; otherwise every number of the audit would compare different things.
* **LoRA adapters** are applied to the original, never to a base the adapter names: the base it names must be
  byte-identical to the original (sha256 of the weight files), then the adapter is merged so the audit sees a
  plain causal LM. Only ``adapter_config.json`` and ``adapter_model.safetensors`` are copied to a private folder
  and loaded from there, so no other file of the candidate can be read by peft.

``file_digests`` records the full sha256 of every weight, config and tokenizer file, for provenance.
Aliases (``tiny``) resolve through `unlearn.targets.resolve.resolve_paths`; HF ids resolve to their snapshot in
the local Hugging Face cache only (offline).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from unlearn.errors import UnlearnError
from unlearn.targets.llm import check_weights_dir, load_causal_lm, load_tokenizer

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # either one makes a loadable tokenizer
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_HEADER = 100 << 20  # a safetensors header larger than 100 MiB is not a real checkpoint
SHOW = 3  # differing names / shapes quoted in an error line


@dataclass
class CandidateInfo:
    """What `inspect_candidate` found in a candidate directory (nothing of it has been loaded)."""

    path: str  # the local directory (a HF id or alias resolved to it)
    kind: str  # "full" | "lora"
    weight_files: list[str]  # safetensors files, relative to path
    ignored_pickles: list[str] = field(default_factory=list)  # pickle-format files present but never opened
    adapter_config: dict | None = None  # lora only
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- resolution
def local_model_dir(name: str | Path) -> Path:
    """The local directory of a model named by a directory, an alias or a HF id in the offline cache.

    A path that exists must be a directory; a HF id must already be cached (nothing is downloaded).
    """
    name = str(name)
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UnlearnError(f"{name}: a model must be a directory in Hugging Face format, not a file")
        return p
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UnlearnError(f"model directory not found: {name}")
    from unlearn.config import MODEL_ALIASES

    target = MODEL_ALIASES.get(name, name)
    if target.startswith("embedded:"):
        from unlearn.targets.resolve import resolve_paths

        _, tdir, _, _, _ = resolve_paths(name, "tinyfacts", "forget10", need_oracle=False, log=lambda *a: None)
        return Path(tdir)
    return _cached_snapshot(target)


def _cached_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError, EntryNotFoundError):
        raise UnlearnError(
            f"{repo_id}: not a local directory and not in the Hugging Face cache (offline: put it in HF_HOME or pass "
            "a local directory)"
        ) from None


# ----------------------------------------------------------------------------------------------- provenance
def _is_digested(rel: Path) -> bool:
    name = rel.name
    if name.endswith((".safetensors", ".json", ".model")):
        return True
    return name.endswith(".txt") and (name.startswith("vocab") or name.startswith("merges"))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(path: str | Path) -> dict[str, str]:
    """Full sha256 (hex) of every weight (*.safetensors), config (*.json) and tokenizer file (*.model, vocab*.txt,
    merges*.txt) of a model, keyed by path relative to its directory (posix). Pickles are never digested."""
    root = local_model_dir(path)
    out = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file() or not _is_digested(rel):
            continue
        out[rel.as_posix()] = sha256_file(f)
    return out


def _weight_digests(path: Path) -> dict[str, str]:
    return {k: v for k, v in file_digests(path).items() if k.endswith(".safetensors")}


# ----------------------------------------------------------------------------------------------- inspection
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnlearnError(f"{path}: not a readable JSON file ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UnlearnError(f"{path}: expected a JSON object")
    return data


def _refuse_remote_code(root: Path) -> None:
    for name in ("config.json", "tokenizer_config.json"):
        f = root / name
        if f.is_file() and _read_json(f).get("auto_map"):
            raise UnlearnError(
                f"{f}: declares custom code (auto_map); remote code is never run, so this candidate is refused "
                "(save it with a standard transformers architecture)"
            )


def inspect_candidate(path: str | Path) -> CandidateInfo:
    """Classify a candidate (full model or peft LoRA adapter) from file names and JSON only; refuse unsafe ones.

    Refused, with one line: a missing path, a file, a directory without safetensors weights (pickles alone are
    never loaded), a config with ``auto_map`` (custom code), an adapter without ``adapter_model.safetensors`` or of
    a peft type other than LoRA. Pickle files beside safetensors are listed in ``ignored_pickles`` and a warning.
    """
    root = local_model_dir(path)
    pickles = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)
    st = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix == ".safetensors")
    warnings = []
    if (root / ADAPTER_CONFIG).is_file():
        cfg = _read_json(root / ADAPTER_CONFIG)
        if not (root / ADAPTER_WEIGHTS).is_file():
            if pickles:
                raise UnlearnError(
                    f"{root}: adapter weights are pickle files ({', '.join(pickles[:SHOW])}); only "
                    f"{ADAPTER_WEIGHTS} is loaded (convert it with a trusted tool first)"
                )
            raise UnlearnError(f"{root}: {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")
        peft_type = str(cfg.get("peft_type", "")).upper()
        if peft_type != "LORA":
            raise UnlearnError(f"{root}: peft adapter of type {peft_type or '?'}; only LoRA adapters can be audited")
        kind, weights = "lora", [ADAPTER_WEIGHTS]
        _refuse_remote_code(root)
    else:
        if not (root / "config.json").is_file():
            raise UnlearnError(f"{root}: no config.json (not a Hugging Face model directory or a peft adapter)")
        check_weights_dir(root)  # pickles only, or nothing: one line, nothing opened
        _refuse_remote_code(root)
        kind, weights, cfg = "full", st, None
    if pickles:
        warnings.append(
            f"{root}: ignored pickle file(s) {', '.join(pickles[:SHOW])}{' ...' if len(pickles) > SHOW else ''} "
            "(never unpickled; only safetensors are loaded)"
        )
    return CandidateInfo(str(root), kind, weights, pickles, cfg, warnings)


# ----------------------------------------------------------------------------------------------- compatibility
def safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors file's header (8-byte little-endian length, then JSON)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError("truncated")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or n > path.stat().st_size - 8:
                raise ValueError("bad header length")
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UnlearnError(f"{path}: not a valid safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise UnlearnError(f"{path}: not a valid safetensors file (header is not an object)")
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("shape"), list):
            raise UnlearnError(f"{path}: not a valid safetensors file (tensor {name!r} has no shape)")
        out[name] = (str(meta.get("dtype")), tuple(int(s) for s in meta["shape"]))
    return out


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} over all safetensors files of a model directory (headers only)."""
    root = Path(path)
    out = {}
    for f in sorted(root.glob("*.safetensors")):
        out.update({k: shape for k, (_, shape) in safetensors_header(f).items()})
    return out


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in TOKENIZER_FILES)


def _fmt_shape(s) -> str:
    return "missing" if s is None else "x".join(map(str, s)) or "scalar"


def _compare_tokenizers(original: Path, candidate: Path) -> None:
    a, b = load_tokenizer(str(original)), load_tokenizer(str(candidate))
    va, vb = a.get_vocab(), b.get_vocab()
    differ = sorted(t for t in set(va) | set(vb) if va.get(t) != vb.get(t))
    if differ:
        ex = ", ".join(repr(t) for t in differ[:SHOW])
        raise UnlearnError(
            f"{candidate}: foreign tokenizer: {len(differ)} token(s) differ from the original's vocabulary "
            f"({len(va)} vs {len(vb)} tokens; e.g. {ex})"
        )
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if getattr(a, attr) != getattr(b, attr):
            raise UnlearnError(
                f"{candidate}: foreign tokenizer: {attr} is {getattr(b, attr)} (original: {getattr(a, attr)})"
            )
    sa, sb = set(a.all_special_tokens), set(b.all_special_tokens)
    if sa != sb:
        raise UnlearnError(
            f"{candidate}: foreign tokenizer: special tokens differ (only in candidate: {sorted(sb - sa)[:SHOW]}, "
            f"only in original: {sorted(sa - sb)[:SHOW]})"
        )


def check_compatible(original_dir: str | Path, candidate_dir: str | Path) -> list[str]:
    """Refuse a full candidate that is not the original's architecture, shapes and tokenizer; return warnings.

    Reads only JSON configs, safetensors headers and tokenizer files. A candidate without tokenizer files is
    allowed (the original's tokenizer is used) with a warning.
    """
    orig, cand = local_model_dir(original_dir), local_model_dir(candidate_dir)
    _refuse_remote_code(cand)
    ca, cb = _read_json(orig / "config.json"), _read_json(cand / "config.json")
    for key in ("model_type", "architectures"):
        if ca.get(key) != cb.get(key):
            raise UnlearnError(f"{cand}: {key} is {cb.get(key)!r}, the original's is {ca.get(key)!r}")
    sa, sb = tensor_shapes(orig), tensor_shapes(cand)
    differ = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))
    if differ:
        ex = ", ".join(f"{k} ({_fmt_shape(sb.get(k))} vs original {_fmt_shape(sa.get(k))})" for k in differ[:SHOW])
        raise UnlearnError(f"{cand}: {len(differ)} tensor(s) differ in name or shape from the original: {ex}")
    warnings = []
    if _has_tokenizer(cand):
        _compare_tokenizers(orig, cand)
    else:
        warnings.append(f"{cand}: no tokenizer files; the original's tokenizer is used")
    return warnings


# ----------------------------------------------------------------------------------------------- LoRA
def _resolve_base(base: str | None, adapter_dir: Path) -> Path:
    hint = "pass an adapter whose base_model_name_or_path is the original (a local directory or a cached HF id)"
    if not base:
        raise UnlearnError(f"{adapter_dir}: the adapter names no base model (base_model_name_or_path); {hint}")
    for p in (Path(base).expanduser(), adapter_dir / base):
        if p.is_dir():
            return p
    try:
        return _cached_snapshot(base)
    except UnlearnError:
        raise UnlearnError(f"{adapter_dir}: cannot resolve the adapter's base model {base!r}; {hint}") from None


def check_adapter(original_dir: str | Path, info: CandidateInfo) -> list[str]:
    """Refuse a LoRA adapter whose base is not byte-identical to the original (sha256 of the weight files) or whose
    tokenizer (when it ships one) differs from the original's; return warnings."""
    if info.kind != "lora":
        raise UnlearnError(f"{info.path}: not a LoRA adapter")
    orig = local_model_dir(original_dir)
    adapter = Path(info.path)
    base_name = (info.adapter_config or {}).get("base_model_name_or_path")
    base = _resolve_base(base_name, adapter)
    if base.resolve() != orig.resolve():
        wa, wb = _weight_digests(orig), _weight_digests(base)
        if not wb or wa != wb:
            raise UnlearnError(
                f"{adapter}: the adapter's base {base_name!r} is not the original (its weight files' sha256 differ); "
                "pass an adapter trained on the original"
            )
    warnings = []
    if _has_tokenizer(adapter):
        _compare_tokenizers(orig, adapter)
    return warnings


def load_candidate(original_dir: str | Path, candidate_dir: str | Path, info: CandidateInfo, dtype=None, device=None):
    """The candidate as a plain causal LM: a full model loaded from safetensors, or the original with the LoRA
    adapter merged in (`merge_and_unload`). Call `inspect_candidate` and `check_compatible` / `check_adapter` first.
    """
    if info.kind == "full":
        return load_causal_lm(str(local_model_dir(candidate_dir)), dtype=dtype, device=device)
    if info.kind != "lora":
        raise UnlearnError(f"{info.path}: unknown candidate kind {info.kind!r}")
    from peft import PeftModel

    src = local_model_dir(candidate_dir)
    base = load_causal_lm(str(local_model_dir(original_dir)), dtype=dtype, device=device)
    with tempfile.TemporaryDirectory(prefix="unlearn-adapter-") as tmp:
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):  # only these two files are visible to peft
            shutil.copyfile(src / name, Path(tmp) / name)
        try:
            model = PeftModel.from_pretrained(base, tmp, is_trainable=False)
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UnlearnError(f"{src}: the adapter does not fit the original ({msg})") from None
    merged = model.merge_and_unload()
    merged.eval()
    return merged


def weights_equal(model_a, model_b) -> bool:
    """True when both models have the same state_dict names and every tensor is equal (shape, dtype and values)."""
    import torch

    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys():
        return False
    for k, ta in sa.items():
        tb = sb[k]
        if ta.shape != tb.shape or ta.dtype != tb.dtype or not torch.equal(ta.cpu(), tb.cpu()):
            return False
    return True
