"""`unlearn.concepts`: locating a planted concept vector, drift values by hand, bit-exact ablation restore."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from unlearn import concepts as cv
from unlearn.errors import UnlearnError
from unlearn.targets.arch import arch
from unlearn.targets.llm import PromptFormat


def _random_llama(tok, hidden=1024, seed=0):
    """A random 2-layer Llama whose unembedding rows are unit vectors in 1024 dimensions: a sum of 20 of them has
    logit ~1 on those 20 tokens and |logit| < 0.5 on every other (cross terms ~ N(0, 20/1024))."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        E = torch.randn(len(tok), hidden)
        m.lm_head.weight.copy_(E / E.norm(dim=1, keepdim=True))
    return m


def _single_piece_words(tok, n):
    """n words each tokenised (with a leading space) as exactly one piece of >= 3 letters: (words, ids)."""
    words, ids = [], []
    for i in range(len(tok)):
        t = cv.piece_text(tok.convert_ids_to_tokens(i))
        if len(t) >= 3 and t.isalpha() and tok(" " + t, add_special_tokens=False)["input_ids"] == [i]:
            words.append(t)
            ids.append(i)
        if len(words) == n:
            break
    assert len(words) == n, "the tokenizer has too few whole-word pieces for the test"
    return words, ids


def test_default_layers_and_k():
    assert cv.default_layers(4) == [1, 2, 3]  # small models: every layer but the first
    assert cv.default_layers(32) == list(range(12, 31))  # [floor(0.4 n), n - 2]
    assert cv.default_top_k(32000) == 200 and cv.default_top_k(1024) == 51


def test_rank_tokens_breaks_ties_by_token_id():
    logits = torch.tensor([[0.5, 2.0, 2.0, 1.0, 2.0]])
    assert cv.rank_tokens(logits, 4).tolist() == [[1, 2, 4, 3]]


def test_locate_recovers_a_planted_concept(tiny):
    tok = tiny[0]
    m = _random_llama(tok)
    words, ids = _single_piece_words(tok, 25)
    words, ids, other = words[:20], ids[:20], words[20:]
    a = arch(m)
    E = a.unembedding().detach()
    with torch.no_grad():
        a.value_matrix(1)[17] = E[ids].sum(0)  # (d_model,) column 17 of layer 1 promotes exactly those 20 tokens
    found = cv.locate(m, tok, {"planted": words, "other": other}, layers=[0, 1])
    best = {c["concept"]: c for c in found}
    p = best["planted"]
    assert (p["layer"], p["column"]) == (1, 17)
    K = cv.default_top_k(len(tok))
    assert K >= 20
    assert p["overlap"] == 20 and p["score"] == pytest.approx(20 / K) and p["top_k"] == K
    assert set(p["related_token_ids"]) == set(ids)
    assert set(p["top_tokens"][:20]) == {tok.convert_ids_to_tokens(i) for i in ids}  # they are the top 20
    assert p["norm"] == pytest.approx(float(E[ids].sum(0).norm()), rel=1e-5)
    assert best.get("other", {}).get("overlap", 0) < 5  # random columns barely overlap another concept
    with pytest.raises(UnlearnError, match="out of range"):
        cv.locate(m, tok, {"planted": words}, layers=[5])


def test_drift_identical_and_known_edit(tiny):
    tok, model, _ = tiny
    vec = {"concept": "c", "layer": 1, "column": 3}
    same = cv.drift(model, copy.deepcopy(model), [vec])
    r = same["rows"][0]
    assert r["cosine"] == pytest.approx(1.0, abs=1e-6) and r["l2"] == 0.0
    assert r["jaccard_same_E"] == 1.0 and r["jaccard_own_E"] == 1.0
    edited = copy.deepcopy(model)
    W0 = arch(model).value_matrix(1)[3].detach().float()
    delta = torch.zeros_like(W0)
    delta[0], delta[1] = 3.0, -4.0  # ‖delta‖ = 5
    with torch.no_grad():
        arch(edited).value_matrix(1)[3] += delta
    v1 = W0 + delta
    cos = float(W0 @ v1 / (W0.norm() * v1.norm()))
    r = cv.drift(model, edited, [vec])["rows"][0]
    assert r["l2"] == pytest.approx(5.0, rel=1e-6)
    assert r["cosine"] == pytest.approx(cos, rel=1e-6) and r["cosine"] < 0.99
    assert r["l2_above_floor"] == pytest.approx(5.0 - r["l2_dtype_floor"], rel=1e-6)
    res = cv.drift(model, edited, [vec, {"concept": "d", "layer": 0, "column": 0}])
    assert res["means"]["l2"] == pytest.approx(2.5, rel=1e-6)  # (5 + 0) / 2


def test_related_rate_and_own_vs_same_unembedding(tiny):
    tok = tiny[0]
    m = _random_llama(tok)
    words, ids = _single_piece_words(tok, 20)
    a = arch(m)
    with torch.no_grad():
        a.value_matrix(1)[2] = a.unembedding()[ids].sum(0)
    vec = cv.locate(m, tok, {"c": words}, layers=[1])[0]
    # the candidate changes only its unembedding: same-E Jaccard stays 1, own-E and related-token survival drop
    cand = copy.deepcopy(m)
    with torch.no_grad():
        cand.lm_head.weight[ids[:10]] *= -1
    r = cv.drift(m, cand, [vec])["rows"][0]
    assert r["jaccard_same_E"] == 1.0 and r["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert r["jaccard_own_E"] < 1.0
    assert r["related_rate"] == pytest.approx(0.5)  # 10 of the 20 related tokens left the top-K


def test_dtype_floor_by_hand(tiny):
    _, model, _ = tiny
    m = copy.deepcopy(model).float()
    W = arch(m).value_matrix(0)
    d = W.shape[1]
    with torch.no_grad():
        W[5] = 1 + 2**-10  # bf16 keeps 8 significant bits: 1 + 2^-10 rounds to 1, an error of 2^-10 per entry
    r = cv.drift(m, m, [{"layer": 0, "column": 5}])["rows"][0]
    assert r["l2_dtype_floor"] == pytest.approx(math.sqrt(d) * 2**-10, rel=1e-6)
    assert r["l2"] == 0.0 and r["l2_above_floor"] == 0.0


@pytest.mark.parametrize("mode", ["zero", "noise", "mean"])
def test_validate_restores_bit_exactly_and_scores_every_question(tiny, mode, monkeypatch):
    tok, model, splits = tiny
    m = copy.deepcopy(model)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    recs = splits["forget10"]
    target = [(r["question"], r["answer"]) for r in recs[:4]]
    unrelated = [(r["question"], r["answer"]) for r in splits["retain90"][:37]]
    sizes = []
    real = cv._answers

    def spy(model, tok, fmt, questions, max_new_tokens, batch_size=128):
        sizes.append(len(questions))
        return real(model, tok, fmt, questions, max_new_tokens, batch_size)

    monkeypatch.setattr(cv, "_answers", spy)
    res = cv.validate(m, tok, PromptFormat(), {"layer": 1, "column": 7}, target, unrelated, mode=mode, n_draws=2,
                      max_new_tokens=6)  # fmt: skip
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k  # every parameter bit-identical after the ablations
    assert res["n_target"] == 4 and res["n_unrelated"] == 37
    draws = 2 if mode == "noise" else 1
    assert sizes == [41] * (1 + draws)  # unablated + each draw, every question each time
    assert 0 <= res["target_change"] <= 1 and res["specificity"] == pytest.approx(
        res["target_change"] - res["unrelated_change"]
    )
    assert (res["noise_to_norm"] is not None) == (mode == "noise")


def test_validate_detects_a_vector_that_matters(tiny):
    """Zeroing a whole layer's values (every column) must change answers: validate sees ablations at all."""
    tok, model, splits = tiny
    m = copy.deepcopy(model)
    qs = [(r["question"], r["answer"]) for r in splits["forget10"][:8]]
    with torch.no_grad():
        arch(m).value_matrix(1)[:] = 0
    changed = cv.validate(m, tok, PromptFormat(), {"layer": 1, "column": 0}, qs, [], mode="zero", max_new_tokens=6)
    assert changed["target_change"] == 0.0  # the column is already 0: ablating it again changes nothing
    base = cv.validate(copy.deepcopy(model), tok, PromptFormat(), {"layer": 1, "column": 0}, qs, [], mode="zero",
                       max_new_tokens=6, before={q: "nonsense" for q, _ in qs})  # fmt: skip
    assert base["target_change"] == 1.0  # answers differ from the given "before" answers: change is measured


def test_tinyfacts_concepts_and_unrelated(tiny):
    recs = tiny[2]["full"]
    cs = cv.tinyfacts_concepts(recs)
    ent = [c for c in cs.values() if c["kind"] == "entity"]
    assert len(ent) == len({r["entity"] for r in recs})
    e = recs[0]["entity"]
    assert len(cs[e]["questions"]) == sum(r["entity"] == e for r in recs)
    un = cv.unrelated_for(e, cs[e], recs)
    assert un and all(q not in dict(cs[e]["questions"]) for q, _ in un)
    assert un == cv.unrelated_for(e, cs[e], recs)  # fixed per concept
    val = next(n for n, c in cs.items() if c["kind"] == "value")
    assert all(a not in {x for _, x in cs[val]["questions"]} for _, a in cv.unrelated_for(val, cs[val], recs))


def test_load_vectors_errors(tmp_path):
    with pytest.raises(UnlearnError, match="not found"):
        cv.load_vectors(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(UnlearnError, match="not valid JSON"):
        cv.load_vectors(tmp_path / "bad.json")
    (tmp_path / "shape.json").write_text('{"vectors": [{"concept": "x", "layer": "1", "column": 2}]}')
    with pytest.raises(UnlearnError, match="integers"):
        cv.load_vectors(tmp_path / "shape.json")
