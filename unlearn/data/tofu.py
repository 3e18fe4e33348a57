"""Loader for the real TOFU dataset (``locuslab/TOFU``) that maps every config to our record schema.

TOFU ships one config per split, each with a single ``train`` split:

* plain QA (``question``, ``answer``): ``full``, ``forget01/05/10``, ``retain90/95/99``, ``holdout01/05/10``,
  ``real_authors``, ``world_facts``;
* evaluation sets with perturbations (``*_perturbed``): ``question``, ``answer``, ``perturbed_answer`` (a list
  of wrong answers) and, for the forget / retain sets, ``paraphrased_answer`` (plus ``paraphrased_question``
  where TOFU has one).

Field mapping to :class:`~unlearn.data.schema.Record` (TOFU's names are already ours, so it is mostly a copy):

==========================  ===========================================================================
ours                        from TOFU
==========================  ===========================================================================
``question``, ``answer``    copied (required, non-empty strings)
``paraphrased_answer``      copied where present; in ``real_authors*`` / ``world_facts*`` it is **the
                            answer itself**, because TOFU's truth ratio uses the original answer as the
                            "correct" side on those utility sets (``base_answer_key: answer`` in TOFU's
                            ``eval_everything.yaml``) and they carry no paraphrase
``perturbed_answer``        copied (list of strings)
``paraphrased_question``    copied where present
``entity``                  TOFU has none: left absent (kept if a local file has one)
``split``                   the config name (``forget10_perturbed`` ...)
==========================  ===========================================================================

Other TOFU columns (e.g. multiple-choice ``option1..4``) are dropped. Records of the ``*_perturbed`` configs must
carry ``paraphrased_answer`` and ``perturbed_answer`` (the truth ratio needs both); a record that breaks the
schema is rejected with the file, line number and field.

Local files are read with the standard ``json`` module rather than ``datasets`` so that every error can name the
exact line; both JSON lines (TOFU's own ``*.json`` files are one object per line) and a JSON list are accepted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from unlearn.data.schema import Record, validate_record
from unlearn.errors import UnlearnError, unknown_name

HUB_ID = "locuslab/TOFU"

TOFU_CONFIGS: tuple[str, ...] = (
    "full",
    "forget01",
    "forget05",
    "forget10",
    "retain90",
    "retain95",
    "retain99",
    "holdout01",
    "holdout05",
    "holdout10",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors",
    "real_authors_perturbed",
    "world_facts",
    "world_facts_perturbed",
)
PERTURBED_CONFIGS = tuple(c for c in TOFU_CONFIGS if c.endswith("_perturbed"))
# Utility sets whose truth ratio compares the perturbed answers with the original answer (no paraphrase).
ANSWER_AS_PARAPHRASE = ("real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed")

_COPIED = ("question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question", "entity")
_NOT_JSON = (".parquet", ".arrow", ".csv", ".tsv", ".txt", ".gz", ".zip")


def to_record(row: Mapping[str, Any], config: str, where: str) -> Record:
    """Map one TOFU row to our schema and validate it.

    Args:
        row: A TOFU record as read from the hub or a local file.
        config: The TOFU config it belongs to; becomes the record's ``split``.
        where: Location for error messages (``file:line`` or ``locuslab/TOFU[config] row i``).

    Returns:
        The validated record.

    Raises:
        UnlearnError: If the row breaks the schema; the message names ``where`` and the field.
    """
    if config not in TOFU_CONFIGS:
        raise unknown_name("TOFU config", config, TOFU_CONFIGS)
    if not isinstance(row, Mapping):
        return validate_record(row, where)  # raises "expected a JSON object"
    mapped: dict[str, Any] = {k: row[k] for k in _COPIED if row.get(k) is not None}
    if config in ANSWER_AS_PARAPHRASE and "paraphrased_answer" not in mapped and "answer" in mapped:
        mapped["paraphrased_answer"] = mapped["answer"]
    mapped["split"] = config
    return validate_record(mapped, where, require_perturbed=config in PERTURBED_CONFIGS)


def load_tofu(config: str, data_files: str | Path | None = None, cache_dir: str | Path | None = None) -> list[Record]:
    """Load one TOFU config as validated records.

    Args:
        config: One of :data:`TOFU_CONFIGS`.
        data_files: A local file in TOFU's format (JSON lines or a JSON list). ``None`` loads ``locuslab/TOFU``
            through ``datasets.load_dataset`` (which needs the hub or a cached copy under ``HF_HOME``).
        cache_dir: Passed to ``datasets.load_dataset`` as its cache directory; unused for local files.

    Returns:
        The records, each with ``split`` set to ``config``.

    Raises:
        UnlearnError: Unknown config, unreachable hub, missing or unreadable file, or a record that breaks the
            schema (the message names the file, line and field).
    """
    if config not in TOFU_CONFIGS:
        raise unknown_name("TOFU config", config, TOFU_CONFIGS)
    if data_files is not None:
        path = Path(data_files)
        records = [to_record(obj, config, where) for where, obj in _iter_json_objects(path)]
        if not records:
            raise UnlearnError(f"{path}: no records")
        return records
    rows = _load_from_hub(config, cache_dir)
    records = [to_record(row, config, f"{HUB_ID}[{config}] row {i}") for i, row in enumerate(rows)]
    if not records:
        raise UnlearnError(f"{HUB_ID}[{config}]: no records")
    return records


def _load_from_hub(config: str, cache_dir: str | Path | None) -> Any:
    import datasets  # deferred: importing datasets is slow and local files do not need it

    datasets.utils.logging.set_verbosity_error()  # offline, it warns once per config that it reads the cache
    try:
        return datasets.load_dataset(
            HUB_ID, config, split="train", cache_dir=None if cache_dir is None else str(cache_dir)
        )
    except Exception as e:  # offline, not cached, gated, corrupt cache ...: all fixable by the user
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UnlearnError(
            f"cannot load TOFU config {config!r} from {HUB_ID} ({type(e).__name__}: {reason}); "
            f"set HF_HOME to a Hugging Face cache that holds {HUB_ID}, or pass a local copy in TOFU's format "
            f"(JSON lines or a JSON list), e.g. --forget FILE"
        ) from None


def _iter_json_objects(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``("file:line", object)`` for each record of a JSON-lines file or a JSON list."""
    if not path.exists():
        raise UnlearnError(f"data file not found: {path}")
    if path.is_dir():
        raise UnlearnError(f"{path}: is a directory; expected a JSON-lines or JSON file")
    if path.suffix.lower() in _NOT_JSON:
        raise UnlearnError(f"{path}: unsupported format {path.suffix!r}; give JSON lines or a JSON list")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UnlearnError(f"{path}: cannot read ({e})") from None
    if text.lstrip().startswith("["):
        yield from _iter_json_list(path, text)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UnlearnError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        yield f"{path}:{lineno}", obj


def _iter_json_list(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """Decode a JSON list item by item so each item can be reported by the line it starts on."""
    decoder = json.JSONDecoder()

    def lineno(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip_ws(text.index("[") + 1)
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise UnlearnError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            yield f"{path}:{lineno(pos)}", obj
            pos = skip_ws(end)
            if pos < len(text) and text[pos] == ",":
                pos = skip_ws(pos + 1)
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            raise UnlearnError(f"{path}:{lineno(pos)}: malformed JSON (expected ',' or ']' in the list)")
    if text[pos:].strip():
        raise UnlearnError(f"{path}:{lineno(skip_ws(pos))}: malformed JSON (extra data after the list)")
