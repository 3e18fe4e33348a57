"""The repository stands on its own: no source, test or benchmark file cites a page outside it or a machine path.

Conventions that code relies on are written in docs/conventions.md; cite its sections (``docs/conventions.md#npo``).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("unlearn", "tests", "benchmarks")
SUFFIXES = {".py", ".md", ".yaml", ".yml"}
# pages of the research spec that are not in the repository, the folder they live in, and machine paths
MACHINE_ROOT = "/" + "work" + "/"  # a machine path, spelled in pieces so this file does not name one itself
SPEC_PAGES = r"algorithms\.md|evaluators\.md|peers\.md|style-and-stack\.md|DESIGN\.md"
FORBIDDEN = re.compile(r"shared/|" + SPEC_PAGES + "|" + MACHINE_ROOT)


def test_no_citation_outside_the_repository():
    hits = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in SUFFIXES or not path.is_file() or path.resolve() == Path(__file__).resolve():
                continue
            for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if FORBIDDEN.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
    assert not hits, "cite docs/conventions.md (or inline the sentence) instead of:\n" + "\n".join(hits)


def test_cited_conventions_sections_exist():
    doc = (ROOT / "docs" / "conventions.md").read_text(encoding="utf-8")
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", doc, re.M)}
    missing = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in SUFFIXES and path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")
                cited = re.findall(r"conventions\.md#([\w-]+)", text)
                missing += [f"{path.relative_to(ROOT)}: #{a}" for a in cited if a not in anchors]
    assert not missing, "no such section in docs/conventions.md:\n" + "\n".join(missing)
