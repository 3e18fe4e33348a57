"""The TOFU record schema every forget / retain / utility set uses, and its validation.

A record is a dict::

    {"question": str, "answer": str, "paraphrased_answer": str, "perturbed_answer": [str, ...],
     "paraphrased_question": str (optional), "entity": str (optional), "split": str (optional)}

A record that breaks the schema is rejected with the file, line number and field, never skipped silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from unlearn.errors import UnlearnError

REQUIRED = ("question", "answer")
OPTIONAL_STR = ("paraphrased_answer", "paraphrased_question", "entity", "split")


class Record(TypedDict, total=False):
    question: str
    answer: str
    paraphrased_answer: str
    perturbed_answer: list[str]
    paraphrased_question: str
    entity: str
    split: str


def validate_record(obj: Any, where: str, require_perturbed: bool = False) -> Record:
    """Check one record; raise `UnlearnError` naming ``where`` (``file:line``) and the field.

    ``paraphrased_answer`` and ``perturbed_answer`` are optional for plain training data but needed by the truth
    ratio; ``require_perturbed`` makes them mandatory.
    """
    if not isinstance(obj, dict):
        raise UnlearnError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for k in REQUIRED:
        if k not in obj:
            raise UnlearnError(f"{where}: missing field {k!r}")
        if not isinstance(obj[k], str) or not obj[k].strip():
            raise UnlearnError(f"{where}: field {k!r} must be a non-empty string")
    for k in OPTIONAL_STR:
        if k in obj and obj[k] is not None and (not isinstance(obj[k], str) or not obj[k].strip()):
            raise UnlearnError(f"{where}: field {k!r} must be a non-empty string")
    if "perturbed_answer" in obj and obj["perturbed_answer"] is not None:
        pa = obj["perturbed_answer"]
        if isinstance(pa, str):
            raise UnlearnError(f"{where}: field 'perturbed_answer' must be a list of strings, got a string")
        if not isinstance(pa, list) or not pa or not all(isinstance(x, str) and x.strip() for x in pa):
            raise UnlearnError(f"{where}: field 'perturbed_answer' must be a non-empty list of non-empty strings")
    if require_perturbed:
        for k in ("paraphrased_answer", "perturbed_answer"):
            if not obj.get(k):
                raise UnlearnError(f"{where}: missing field {k!r} (needed for the truth ratio)")
    rec: Record = {k: obj[k] for k in (*REQUIRED, *OPTIONAL_STR, "perturbed_answer") if obj.get(k) is not None}
    return rec


def load_records(path: str | Path, require_perturbed: bool = False) -> list[Record]:
    """Load a JSONL file of records (or a JSON list), validating each one."""
    path = Path(path)
    if not path.exists():
        raise UnlearnError(f"data file not found: {path}")
    if path.is_dir():
        raise UnlearnError(f"{path}: is a directory; expected a JSON-lines or JSON file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UnlearnError(f"{path}: cannot read ({e})") from None
    records: list[Record] = []
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UnlearnError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        for i, obj in enumerate(items):
            records.append(validate_record(obj, f"{path}: item {i}", require_perturbed))
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UnlearnError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            records.append(validate_record(obj, f"{path}:{lineno}", require_perturbed))
    if not records:
        raise UnlearnError(f"{path}: no records")
    return records
