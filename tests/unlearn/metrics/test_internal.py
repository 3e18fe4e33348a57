"""The internal suite's orchestration: keys, references, caching, layers files, and what each key can tell apart.

Values that must hold by construction are asserted exactly: a model whose LM head alone changed has the same
hidden states (CKA 1, same probe), a model compared with itself has CKA 1; on the shipped target the probe
recovers forget answers far above chance while the retain-only oracle's states do not.
"""

import copy
import csv

import pytest
import torch

from unlearn.metrics import check_keys, lookup
from unlearn.metrics.internal import FixedModel, InternalConfig, _first_answer_token, fixed_states

KEYS = {f"{s}_cka_{r}{m}" for s in ("forget", "retain") for r in ("original", "oracle") for m in ("", "_min")} | {
    f"{s}_{k}" for s in ("forget", "retain") for k in ("probe_acc", "probe_ci_low", "probe_ci_high",
                                                      "probe_chance", "knn_acc")} | {
    "forget_lens_rank", "forget_lens_depth", "cv_cosine", "cv_l2", "cv_jaccard_original", "cv_jaccard_self",
    "cv_related_rate", "cv_n_validated"}  # fmt: skip


def _suite(alias: str, split: str = "forget10"):
    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.runner import _internal_suite
    from unlearn.targets.llm import load_causal_lm, load_tokenizer
    from unlearn.targets.resolve import prompt_format, resolve_paths

    spec, tdir, odir, orig, bcfg = resolve_paths(alias, "tinyfacts", split, log=lambda *a: None)
    tok = load_tokenizer(tdir)
    fmt = prompt_format(None, tok, True, alias)
    sets, _, retain_train = load_sets("tinyfacts", split, DataFiles(), bcfg.data)
    return _internal_suite(spec, tok, fmt, sets, retain_train, orig, odir), load_causal_lm(tdir), tdir, odir


@pytest.fixture(scope="module")
def micro(micro_target):
    suite, model, tdir, odir = _suite("tiny-micro")
    m, rows = suite.evaluate(model)
    return suite, model, m, rows


def test_every_key_registered_and_written_for_the_original_itself(micro):
    suite, _, m, rows = micro
    assert set(m) == KEYS and check_keys(m) == []
    assert all(lookup(k).family in ("representation", "recoverability", "concept_vectors") for k in m)
    # the candidate is the original: CKA to itself is exactly 1 (computed, not assumed), at every block
    assert m["forget_cka_original"] == pytest.approx(1.0, abs=1e-9)
    assert m["retain_cka_original_min"] == pytest.approx(1.0, abs=1e-9)
    assert 0 < m["forget_cka_oracle"] < 1  # the oracle is another network
    assert 0 <= m["forget_probe_chance"] <= m["forget_probe_ci_high"] and m["forget_probe_ci_low"] <= 1
    assert m["forget_lens_rank"] >= 1 and 0 < m["forget_lens_depth"] <= 1
    assert m["cv_n_validated"] == 0 and m["cv_cosine"] is None  # no vectors for the micro target's weights
    n_layers = suite_layers = len({r["layer"] for r in rows})
    assert len(rows) == 2 * n_layers and suite_layers >= 2


def test_head_only_change_leaves_states_and_probe_but_moves_the_lens(micro):
    """Last-layer-only edits cannot change residual states: CKA 1 and the same probe; the lens reads the new head."""
    suite, model, m0, _ = micro
    cand = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        W = cand.get_output_embeddings().weight
        W.copy_(W[torch.randperm(W.shape[0], generator=g)])  # scramble which row reads out which token
    m1, _ = suite.evaluate(cand)
    assert m1["forget_cka_original_min"] == pytest.approx(1.0, abs=1e-9)
    assert m1["forget_probe_acc"] == m0["forget_probe_acc"] and m1["retain_knn_acc"] == m0["retain_knn_acc"]
    assert m1["forget_lens_rank"] > m0["forget_lens_rank"]  # the true token no longer reads out on top


def test_changed_blocks_lower_cka(micro):
    suite, model, _, _ = micro
    cand = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in cand.model.layers[0].parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.std())
    m, _ = suite.evaluate(cand)
    assert m["forget_cka_original"] < 0.99 and m["forget_cka_original_min"] <= m["forget_cka_original"]


def test_reference_states_cached_and_reused(micro, unlearn_home):
    suite, _, _, _ = micro
    recs = suite.sets["forget"][:7]
    cfg = InternalConfig()
    S, v = fixed_states(suite.original, suite.tok, suite.fmt, recs, cfg)

    def fail():
        raise AssertionError("a cached reference was loaded again")

    S2, v2 = fixed_states(FixedModel(suite.original.path, fail), suite.tok, suite.fmt, recs, cfg)
    assert torch.equal(S, S2) and torch.equal(v, v2) and S.shape[0] == 7


def test_layers_files_written(micro, tmp_path):
    from unlearn.metrics.internal import LAYER_COLUMNS, write_layers

    suite, _, _, rows = micro
    oracle_rows = suite.cached(suite.oracle.path, suite.oracle.load, "oracle")["layers"]
    write_layers(tmp_path, {"candidate": rows, "oracle": oracle_rows})
    with open(tmp_path / "layers.csv") as f:
        got = list(csv.DictReader(f))
    assert tuple(got[0]) == LAYER_COLUMNS and len(got) == len(rows) + len(oracle_rows)
    o = [r for r in got if r["model"] == "oracle" and r["set"] == "forget"]
    assert all(float(r["cka_oracle"]) == 1.0 for r in o)  # the oracle against itself, by definition
    assert (tmp_path / "layers.png").stat().st_size > 10_000


def test_lens_target_skips_a_bare_space_token(micro):
    suite, _, _, _ = micro
    rec = {"question": "In what year was X born?", "answer": "1968"}
    t = _first_answer_token(suite.tok, suite.fmt, rec)
    assert suite.tok.decode([t]).strip() != ""


@pytest.mark.slow
def test_shipped_target_probe_recovers_forget_answers_the_oracle_does_not():
    """On the shipped TinyFacts target the forget answers are linearly recoverable from its states (well above
    chance); from the retain-only oracle's states they are not (the oracle never learned them)."""
    suite, model, _, odir = _suite("tiny")
    from unlearn.targets.llm import load_causal_lm

    mt, _ = suite.evaluate(model)
    mo, _ = suite.evaluate(load_causal_lm(odir))
    assert mt["forget_probe_ci_low"] > 10 * mt["forget_probe_chance"]
    assert mo["forget_probe_acc"] < mt["forget_probe_ci_low"] - 0.2
    assert mo["forget_cka_oracle"] == pytest.approx(1.0, abs=1e-9) and mo["forget_cka_original"] < 0.95


def test_eval_suite_internal_writes_only_internal_keys_and_layers(micro, tmp_path, capsys):
    """`unlearn eval --suite internal`: no logit key, every internal key, layers.csv with the three models."""
    from unlearn.cli import main

    rc = main(["eval", "--model", "tiny-micro", "--suite", "internal", "--out", str(tmp_path / "e"), "--no-progress"])
    out = capsys.readouterr().out
    import json

    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert rc == 0 and set(m) - {"schema_version"} == KEYS and "forget_probe_acc" in out
    with open(tmp_path / "e" / "layers.csv") as f:
        assert {r["model"] for r in csv.DictReader(f)} == {"candidate", "original", "oracle"}
    assert (tmp_path / "e" / "layers.png").exists()


def test_records_without_entities_probe_on_other_questions_and_an_empty_probe_set_gives_none(micro):
    from unlearn.metrics.internal import internal_metrics, probe_split

    suite, model, _, _ = micro
    strip = [{"question": r["question"], "answer": r["answer"]} for r in suite.probe_train[:30]]
    rows = probe_split(strip, strip[:10], InternalConfig())
    assert len(rows) == 20 and not {r["question"] for r in rows} & {r["question"] for r in strip[:10]}
    m, _ = internal_metrics(model, suite.tok, suite.fmt, suite.sets, [], suite.original, suite.oracle)
    assert all(m[f"{s}_{k}"] is None for s in ("forget", "retain") for k in ("probe_acc", "knn_acc", "probe_chance"))
    assert m["forget_cka_original"] == pytest.approx(1.0, abs=1e-9)  # the rest of the suite still runs
