"""The shipped concept vectors of the embedded target: the package copy is the top-level copy, and both describe
the shipped weights (digest and every vector's norm), so a rebuilt target cannot silently keep stale vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearn.concepts import load_vectors, package_vectors_path

ROOT = Path(__file__).resolve().parents[2]
TOP = ROOT / "concept_vectors" / "tinyfacts.json"
TARGET = ROOT / "unlearn" / "assets" / "tinyfacts" / "target"


def test_package_copy_equals_top_level_copy():
    assert package_vectors_path("tinyfacts").read_bytes() == TOP.read_bytes()


def test_vectors_match_the_shipped_target():
    doc = load_vectors(package_vectors_path("tinyfacts"))
    card = json.loads((TARGET / "card.json").read_text())
    assert doc["model_digest"] == card["digest"], "stale: regenerate with `unlearn concept-vectors validate`"
    from unlearn.targets.arch import arch
    from unlearn.targets.llm import load_causal_lm

    a = arch(load_causal_lm(str(TARGET)))
    for v in doc["vectors"]:
        assert float(a.value_matrix(v["layer"])[v["column"]].detach().float().norm()) == pytest.approx(
            v["norm"], rel=1e-4
        ), v["concept"]
    s = doc["summary"]
    for kind, row in s.items():
        assert row["validated"] == sum(v["kind"] == kind and v["passed"] for v in doc["vectors"])
        assert row["located"] == sum(v["kind"] == kind for v in doc["vectors"])
