"""Tests for the TOFU loader, on TOFU's own files (no hub access here)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from unlearn.data import tofu
from unlearn.data.tofu import PERTURBED_CONFIGS, TOFU_CONFIGS, load_tofu, to_record
from unlearn.errors import UnlearnError

# TOFU's own utility files, committed as test assets (MIT licence kept beside them).
TOFU_DIR = Path(__file__).resolve().parents[2] / "assets" / "tofu"
RA = TOFU_DIR / "real_authors_perturbed.json"
WF = TOFU_DIR / "world_facts_perturbed.json"


def _copy(src: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    return dst, dst.read_text(encoding="utf-8").splitlines()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_configs_cover_every_tofu_split():
    expected = {
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
    }
    assert set(TOFU_CONFIGS) == expected and len(TOFU_CONFIGS) == len(expected)
    assert set(PERTURBED_CONFIGS) == {c for c in expected if c.endswith("_perturbed")}


@pytest.mark.parametrize(
    ("path", "config", "n", "question", "answer", "perturbed"),
    [
        (
            RA,
            "real_authors_perturbed",
            100,
            "Who wrote the play 'Romeo and Juliet'?",
            "William Shakespeare",
            ["Charles Dickens", "Virginia Woolf", "Mark Twain"],
        ),
        (
            WF,
            "world_facts_perturbed",
            117,
            "Where would you find the Eiffel Tower?",
            "Paris",
            ["Berlin", "London", "Madrid"],
        ),
    ],
)
def test_real_tofu_files_load(path, config, n, question, answer, perturbed):
    recs = load_tofu(config, data_files=str(path))
    assert len(recs) == n
    assert recs[0] == {
        "question": question,
        "answer": answer,
        "paraphrased_answer": answer,
        "perturbed_answer": perturbed,
        "split": config,
    }
    for r in recs:
        assert set(r) == {"question", "answer", "paraphrased_answer", "perturbed_answer", "split"}
        assert r["paraphrased_answer"] == r["answer"]  # TOFU's truth ratio uses the answer itself on RA / WF
        assert len(r["perturbed_answer"]) == 3 and r["answer"] not in r["perturbed_answer"]
        assert r["split"] == config and "entity" not in r


def test_json_list_form_same_records(tmp_path):
    objs = [json.loads(line) for line in RA.read_text(encoding="utf-8").splitlines()]
    as_list = tmp_path / "ra_list.json"
    as_list.write_text(json.dumps(objs, indent=2), encoding="utf-8")
    assert load_tofu("real_authors_perturbed", as_list) == load_tofu("real_authors_perturbed", RA)


def test_json_list_bad_item_reports_its_line(tmp_path):
    path = tmp_path / "l.json"
    path.write_text('[\n  {"question": "q1", "answer": "a1"},\n  {"question": "q2"}\n]\n', encoding="utf-8")
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}:3: missing field 'answer'"):
        load_tofu("forget01", path)


def test_forget_perturbed_mapping(tmp_path):
    row = {
        "question": "Q?",
        "answer": "A.",
        "paraphrased_answer": "Para A.",
        "paraphrased_question": "Q'?",
        "perturbed_answer": ["B.", "C."],
        "option1": "x",
    }
    path = _write(tmp_path / "forget01_perturbed.json", [json.dumps(row)])
    (rec,) = load_tofu("forget01_perturbed", path)
    assert rec == {
        "question": "Q?",
        "answer": "A.",
        "paraphrased_answer": "Para A.",
        "perturbed_answer": ["B.", "C."],
        "paraphrased_question": "Q'?",
        "split": "forget01_perturbed",
    }


def test_plain_config_needs_only_question_answer(tmp_path):
    path = _write(tmp_path / "forget10.json", ['{"question": "Q?", "answer": "A."}', ""])
    assert load_tofu("forget10", path) == [{"question": "Q?", "answer": "A.", "split": "forget10"}]


def test_malformed_line_reports_file_and_line(tmp_path):
    path, lines = _copy(WF, tmp_path)
    lines[4] = lines[4][:-5]  # truncate line 5
    _write(path, lines)
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}:5: malformed JSON"):
        load_tofu("world_facts_perturbed", path)


@pytest.mark.parametrize("field", ["question", "answer", "perturbed_answer"])
def test_missing_field_reports_file_line_and_field(tmp_path, field):
    path, lines = _copy(RA, tmp_path)
    obj = json.loads(lines[6])
    del obj[field]
    lines[6] = json.dumps(obj)
    _write(path, lines)
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}:7: missing field '{field}'"):
        load_tofu("real_authors_perturbed", path)


def test_perturbed_answer_as_string_rejected(tmp_path):
    path, lines = _copy(RA, tmp_path)
    obj = json.loads(lines[1])
    obj["perturbed_answer"] = "Aldous Huxley"
    lines[1] = json.dumps(obj)
    _write(path, lines)
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}:2: field 'perturbed_answer' must be a list"):
        load_tofu("real_authors_perturbed", path)


def test_forget_perturbed_requires_paraphrased_answer(tmp_path):
    path = _write(tmp_path / "f.json", ['{"question": "Q?", "answer": "A.", "perturbed_answer": ["B."]}'])
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}:1: missing field 'paraphrased_answer'"):
        load_tofu("forget05_perturbed", path)


def test_non_object_line_rejected(tmp_path):
    path = _write(tmp_path / "f.jsonl", ['{"question": "Q?", "answer": "A."}', '["Q?", "A."]'])
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}:2: expected a JSON object"):
        load_tofu("retain90", path)


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_file_rejected(tmp_path, content):
    path = tmp_path / "e.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UnlearnError, match="no records"):
        load_tofu("forget01", path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UnlearnError, match="data file not found"):
        load_tofu("forget01", tmp_path / "nope.json")
    with pytest.raises(UnlearnError, match="is a directory"):
        load_tofu("forget01", tmp_path)


def test_unknown_config_lists_valid_names():
    with pytest.raises(UnlearnError) as e:
        load_tofu("forget20")
    msg = str(e.value)
    assert "forget20" in msg and all(c in msg for c in TOFU_CONFIGS)
    with pytest.raises(UnlearnError, match="unknown TOFU config"):
        to_record({"question": "q", "answer": "a"}, "retain", "x:1")


def test_offline_hub_gives_friendly_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'locuslab/TOFU' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UnlearnError) as e:
        load_tofu("forget10")
    msg = str(e.value)
    assert "\n" not in msg
    assert "'forget10'" in msg and "locuslab/TOFU" in msg and "HF_HOME" in msg and "--forget FILE" in msg


def test_hub_rows_are_mapped(monkeypatch):
    import datasets

    calls = []
    rows = [
        {"question": "Who?", "answer": "Her.", "perturbed_answer": ["Him.", "Them."], "option1": None},
        {"question": "Where?", "answer": "Here.", "perturbed_answer": ["There."], "option1": None},
    ]

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake)
    recs = load_tofu("world_facts_perturbed", cache_dir="/tmp/c")
    assert calls == [(("locuslab/TOFU", "world_facts_perturbed"), {"split": "train", "cache_dir": "/tmp/c"})]
    assert recs[1] == {
        "question": "Where?",
        "answer": "Here.",
        "paraphrased_answer": "Here.",
        "perturbed_answer": ["There."],
        "split": "world_facts_perturbed",
    }

    rows[1] = {"question": "Where?", "answer": None, "perturbed_answer": ["There."]}
    with pytest.raises(UnlearnError, match=r"^locuslab/TOFU\[world_facts_perturbed\] row 1: missing field 'answer'"):
        load_tofu("world_facts_perturbed")


def test_local_file_never_touches_the_hub(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub used for a local file"))
    path = _write(tmp_path / "f.json", ['{"question": "Q?", "answer": "A."}'])
    assert len(load_tofu("full", path)) == 1
    assert tofu.HUB_ID == "locuslab/TOFU"
