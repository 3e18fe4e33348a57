"""The Stable Diffusion prompts CSV: the default file, the role of each row for one concept, one-line errors."""

from __future__ import annotations

import pytest

from unlearn.data.sd_prompts import DEFAULT_PROMPTS, load_prompts, select
from unlearn.errors import UnlearnError


def _csv(tmp_path, text: str, name: str = "p.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_default_set_covers_every_object_with_each_role():
    rows = load_prompts()
    objects = {r.concept for r in rows if r.domain == "object"}
    assert len(objects) == 10 and {"church", "golf ball", "parachute"} <= objects
    for c in objects:  # every object can be the erased one: forget and paraphrase rows of its own
        sets = select(rows, c)
        assert len(sets["forget"]) == 3 and len(sets["paraphrase"]) == 2
        assert all(c not in r.prompt for r in sets["paraphrase"])  # a paraphrase avoids the concept's name
        assert {r.domain for r in sets["retain"]} == {"object", "scene"} and c not in {
            r.concept for r in sets["retain"]
        }
    assert DEFAULT_PROMPTS.name == "objects.csv"


def test_select_roles(tmp_path):
    p = _csv(tmp_path, "prompt,set,concept\na dog,forget,dog\na puppy,paraphrase,dog\na cat,forget,cat\n"
             "a kitten,paraphrase,cat\na car,retain,car\n\n")  # fmt: skip
    sets = select(load_prompts(p), "dog")
    assert [r.prompt for r in sets["forget"]] == ["a dog"] and [r.prompt for r in sets["paraphrase"]] == ["a puppy"]
    assert [r.prompt for r in sets["retain"]] == ["a cat", "a car"]  # cat's paraphrase is not a retain prompt
    assert all(r.domain == "object" for r in sets["retain"])  # the optional column's default
    with pytest.raises(
        UnlearnError, match="no forget prompts for concept 'car'; concepts with forget prompts: cat, dog"
    ):
        select(load_prompts(p), "car")


@pytest.mark.parametrize(
    "text, msg",
    [
        ("prompt,concept\na dog,dog\n", "missing column(s) set"),
        ("prompt,concept,set\na dog,dog,forgett\n", ":2: set 'forgett' is not one of forget, retain, paraphrase"),
        ("prompt,concept,set\na dog,dog,forget\n,cat,retain\n", ":3: empty 'prompt'"),
        ("prompt,concept,set\na dog,dog,forget,extra\n", ":2: more cells than columns"),
        ("prompt,concept,set\n", "no prompt rows"),
        ("prompt,concept,set,domain\na dog,dog,forget,object\nDog art,dog,retain,style\n", "in two domains"),
        ('prompt,concept,set\n"a dog,dog,forget\na cat,cat,forget\n', "a cell spans several lines"),
    ],
)
def test_malformed_csv_is_one_line(tmp_path, text, msg):
    p = _csv(tmp_path, text)
    with pytest.raises(UnlearnError) as e:
        load_prompts(p)
    assert msg in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(UnlearnError, match="no such file"):
        load_prompts(tmp_path / "absent.csv")
    (tmp_path / "bin.csv").write_bytes(b"prompt,concept,set\n\xff\xfe\x00,dog,forget\n")
    with pytest.raises(UnlearnError, match="not a UTF-8 text file"):
        load_prompts(tmp_path / "bin.csv")
