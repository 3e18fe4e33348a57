"""`unlearn concept-vectors`: bad input is one line and exit 2; a user concept file is located and validated."""

from __future__ import annotations

import json

import pytest

from unlearn.cli import main
from unlearn.concepts import load_vectors


def _rc(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err.strip().splitlines()


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["concept-vectors", "sweep"], "unknown concept-vectors action 'sweep'"),
        (["concept-vectors", "locate", "--concepts", "/nonexistent/c.json"], "file not found"),
        (["concept-vectors", "locate", "--modes", "zero,blur"], "unknown ablation mode 'blur'"),
        (["concept-vectors", "locate", "--model", "some-org/model"], "only for the embedded target"),
        (["concept-vectors", "locate", "--layers", "1,x"], "comma-separated integers"),
    ],
)
def test_bad_arguments(argv, msg, capsys, tmp_path):
    rc, _, err = _rc([*argv, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err) == 1 and msg in err[0], err


def test_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc, _, err = _rc(["concept-vectors", "locate", "--concepts", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err) == 1 and "not valid JSON" in err[0]
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps({"c": {"tokens": "not a list"}}))
    rc, _, err = _rc(["concept-vectors", "locate", "--concepts", str(shape), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "non-empty list of token strings" in err[0]
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"c": ["word"]}))
    rc, _, err = _rc(["concept-vectors", "locate", "--model", str(tmp_path / "no_model"), "--concepts", str(good),
                      "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert rc == 2 and len(err) == 1 and "not found" in err[0], err
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _, err = _rc(["concept-vectors", "locate", "--concepts", str(good), "--out", str(afile)], capsys)
    assert rc == 2 and "not a directory" in err[0]


def test_locate_and_validate_a_user_concept_file(tiny, tiny_target_dir, tmp_path, capsys):
    recs = tiny[2]["forget10"]
    by_ent: dict = {}
    for r in recs:
        by_ent.setdefault(r["entity"], []).append(r)
    concepts = {
        e: {"tokens": [e, *[x["answer"] for x in rs]], "questions": [[x["question"], x["answer"]] for x in rs]}
        for e, rs in list(by_ent.items())[:3]
    }
    cfile = tmp_path / "concepts.json"
    cfile.write_text(json.dumps(concepts))
    model = str(tiny_target_dir / "model")
    rc, _, err = _rc(["concept-vectors", "locate", "--model", model, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "pass --concepts" in err[0]
    rc, out, err = _rc(["concept-vectors", "validate", "--model", model, "--concepts", str(cfile), "--modes", "zero",
                        "--out", str(tmp_path / "o"), "--no-progress"], capsys)  # fmt: skip
    assert rc == 0, err
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert files == ["model.csv", "model.json"]
    doc = load_vectors(tmp_path / "o" / "model.json")
    assert doc["model_digest"] and doc["settings"]["layers"] == [1]  # 2 layers: every layer but the first
    assert {v["concept"] for v in doc["vectors"]} <= set(concepts)
    for v in doc["vectors"]:
        assert set(v["validation"]) == {"zero"} and isinstance(v["passed"], bool)
        # unrelated questions: every question of the (up to 5) other concepts, here the other 2
        assert v["validation"]["zero"]["n_unrelated"] == sum(len(c["questions"]) for k, c in concepts.items()
                                                           if k != v["concept"])  # fmt: skip
    assert "validated" in out
    lines = (tmp_path / "o" / "model.csv").read_text().splitlines()
    assert lines[0].startswith("concept,kind,layer,column") and len(lines) == 1 + len(doc["vectors"])
