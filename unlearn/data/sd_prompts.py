"""Prompt sets for judging concept erasure on a real text-to-image model (Stable Diffusion): a CSV file.

Columns (header row required, any order, extra columns ignored):

* ``prompt``: the text given to the model;
* ``concept``: the concept the prompt depicts (``church``, ``golf ball`` ...), the label the judge checks;
* ``set``: ``forget`` | ``retain`` | ``paraphrase``: what the row is for *when its concept is the erased one*;
* ``domain`` (optional, default ``object``): the concept's family (UnlearnCanvas' "domain": object, scene, style);
  the judge chooses among the concepts of one domain, and retention is split in-domain / cross-domain by it.

For an erased concept C (`select`): the forget rows are C's ``forget`` rows, the paraphrase attack C's ``paraphrase``
rows; every ``forget`` or ``retain`` row of another concept is a retain row (that concept must survive), so one file
serves every concept it names. The default file (``unlearn/assets/sd_prompts/objects.csv``) covers the ten
Imagenette classes that ESD and UCE erase, plus five scenes for cross-domain retention (docs/diffusion-sd-eval.md).
A malformed file is one `UnlearnError` line naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from unlearn.errors import UnlearnError

SETS = ("forget", "retain", "paraphrase")
REQUIRED_COLUMNS = ("prompt", "concept", "set")
DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "sd_prompts" / "objects.csv"


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    concept: str
    set: str  # forget | retain | paraphrase (the file's role; `select` turns it into the role for one concept)
    domain: str = "object"


def load_prompts(path: str | Path | None = None) -> list[PromptRow]:
    """The rows of a prompts CSV (default: `DEFAULT_PROMPTS`); one-line errors for anything malformed."""
    p = Path(path).expanduser() if path is not None else DEFAULT_PROMPTS
    if not p.is_file():
        raise UnlearnError(f"--prompts {p}: no such file (a CSV with columns prompt, concept, set)")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise UnlearnError(f"{p}: missing column(s) {', '.join(missing)} in the header (need prompt, "
                                   "concept, set; optional domain)")  # fmt: skip
            reader.fieldnames = header
            rows = []
            for row in reader:
                line = reader.line_num
                if None in row:  # more cells than the header names
                    raise UnlearnError(f"{p}:{line}: more cells than columns in the header")
                vals = {k: (row.get(k) or "").strip() for k in (*REQUIRED_COLUMNS, "domain")}
                if not any(vals.values()):
                    continue  # a blank line
                if any("\n" in v for v in vals.values()):
                    raise UnlearnError(f"{p}:{line}: a cell spans several lines (an unclosed quote?)")
                for k in REQUIRED_COLUMNS:
                    if not vals[k]:
                        raise UnlearnError(f"{p}:{line}: empty {k!r}")
                if vals["set"] not in SETS:
                    raise UnlearnError(f"{p}:{line}: set {vals['set']!r} is not one of {', '.join(SETS)}")
                rows.append(PromptRow(vals["prompt"], vals["concept"], vals["set"], vals["domain"] or "object"))
    except UnicodeDecodeError as e:
        raise UnlearnError(f"{p}: not a UTF-8 text file ({e.reason})") from None
    except csv.Error as e:
        raise UnlearnError(f"{p}: not a readable CSV ({e})") from None
    if not rows:
        raise UnlearnError(f"{p}: no prompt rows")
    domains: dict[str, str] = {}
    for r in rows:
        if domains.setdefault(r.concept, r.domain) != r.domain:
            raise UnlearnError(f"{p}: concept {r.concept!r} is in two domains ({domains[r.concept]}, {r.domain})")
    return rows


def select(rows: list[PromptRow], concept: str, source: str = "--prompts") -> dict[str, list[PromptRow]]:
    """{forget, paraphrase, retain} rows for the erased ``concept`` (module docstring); forget must not be empty."""
    forget = [r for r in rows if r.concept == concept and r.set == "forget"]
    if not forget:
        names = sorted({r.concept for r in rows if r.set == "forget"})
        raise UnlearnError(f"{source}: no forget prompts for concept {concept!r}; concepts with forget prompts: "
                           f"{', '.join(names) or 'none'}")  # fmt: skip
    return {
        "forget": forget,
        "paraphrase": [r for r in rows if r.concept == concept and r.set == "paraphrase"],
        "retain": [r for r in rows if r.concept != concept and r.set in ("forget", "retain")],
    }


__all__ = ["PromptRow", "load_prompts", "select", "DEFAULT_PROMPTS", "SETS"]
