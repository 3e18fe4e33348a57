"""Tests for record validation and loading (unlearn.data.schema)."""

from __future__ import annotations

import json
import re

import pytest

from unlearn.data.schema import load_records, validate_record
from unlearn.errors import UnlearnError

GOOD = {
    "question": "Q?",
    "answer": "A.",
    "paraphrased_answer": "Para.",
    "perturbed_answer": ["B.", "C."],
    "paraphrased_question": "Q'?",
    "entity": "E",
    "split": "forget01",
}


def _jsonl(path, objs_or_lines):
    lines = [x if isinstance(x, str) else json.dumps(x) for x in objs_or_lines]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_valid_record_round_trips_and_drops_unknown_fields():
    assert validate_record({**GOOD, "extra": 1}, "f:1") == GOOD
    assert validate_record({"question": "Q?", "answer": "A.", "entity": None}, "f:1") == {
        "question": "Q?",
        "answer": "A.",
    }


@pytest.mark.parametrize("field", ["question", "answer"])
def test_missing_required_field(field):
    obj = dict(GOOD)
    del obj[field]
    with pytest.raises(UnlearnError, match=rf"^f\.jsonl:3: missing field '{field}'"):
        validate_record(obj, "f.jsonl:3")


@pytest.mark.parametrize("value", ["", "   ", 5, None, ["A."]])
def test_answer_must_be_non_empty_string(value):
    with pytest.raises(UnlearnError, match=r"^w: field 'answer' must be a non-empty string"):
        validate_record({**GOOD, "answer": value}, "w")


def test_optional_string_fields_type_checked():
    with pytest.raises(UnlearnError, match=r"^w: field 'paraphrased_answer' must be a non-empty string"):
        validate_record({**GOOD, "paraphrased_answer": ["x"]}, "w")


def test_perturbed_answer_as_string_rejected():
    with pytest.raises(UnlearnError, match=r"^w: field 'perturbed_answer' must be a list of strings, got a string"):
        validate_record({**GOOD, "perturbed_answer": "B."}, "w")


@pytest.mark.parametrize("value", [[], ["B.", ""], ["B.", 3], {"a": "b"}])
def test_perturbed_answer_must_be_non_empty_list_of_strings(value):
    with pytest.raises(UnlearnError, match=r"^w: field 'perturbed_answer' must be a non-empty list"):
        validate_record({**GOOD, "perturbed_answer": value}, "w")


@pytest.mark.parametrize("field", ["paraphrased_answer", "perturbed_answer"])
def test_require_perturbed(field):
    obj = dict(GOOD)
    del obj[field]
    assert validate_record(obj, "w") == obj
    with pytest.raises(UnlearnError, match=rf"^w: missing field '{field}' \(needed for the truth ratio\)"):
        validate_record(obj, "w", require_perturbed=True)


def test_non_object_rejected():
    with pytest.raises(UnlearnError, match=r"^w: expected a JSON object, got list"):
        validate_record(["Q?", "A."], "w")


def test_load_jsonl_skips_blank_lines(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, "", "   ", {"question": "Q2?", "answer": "A2."}])
    assert load_records(path) == [GOOD, {"question": "Q2?", "answer": "A2."}]


def test_malformed_json_line_reports_line_number(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, '{"question": "Q?", "answer": '])
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}:3: malformed JSON"):
        load_records(path)


def test_bad_record_reports_line_and_field(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, "", {**GOOD, "perturbed_answer": "B."}])
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}:3: field 'perturbed_answer'"):
        load_records(path)


def test_require_perturbed_on_load(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, {"question": "Q?", "answer": "A."}])
    assert len(load_records(path)) == 2
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}:2: missing field 'paraphrased_answer'"):
        load_records(path, require_perturbed=True)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file_rejected(tmp_path, content):
    path = tmp_path / "d.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}: no records"):
        load_records(path)


def test_missing_file(tmp_path):
    with pytest.raises(UnlearnError, match="data file not found"):
        load_records(tmp_path / "nope.jsonl")


def test_json_list_form(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, {"question": "Q2?", "answer": "A2."}], indent=2), encoding="utf-8")
    assert load_records(path) == [GOOD, {"question": "Q2?", "answer": "A2."}]


def test_json_list_bad_item_named(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, {"question": "Q2?"}]), encoding="utf-8")
    with pytest.raises(UnlearnError, match=r"item 1: missing field 'answer'"):
        load_records(path)


def test_json_list_malformed_reports_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"question": "Q?", "answer": "A."},\n{"question": }\n]\n', encoding="utf-8")
    with pytest.raises(UnlearnError, match=rf"^{re.escape(str(path))}:3: invalid JSON"):
        load_records(path)


def test_json_lines_in_a_dot_json_file(tmp_path):
    """TOFU's own *.json files are JSON lines."""
    path = _jsonl(tmp_path / "d.json", [GOOD, GOOD])
    assert load_records(path) == [GOOD, GOOD]
