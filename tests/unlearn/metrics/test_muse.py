"""MUSE's metrics against hand-worked numbers: ROUGE-L F1 without stemming, the few-shot KnowMem prompt and its stop
strings, the VerbMem reference cut (BOS counted, as muse_bench does), Min-K% token log-probs against a direct
forward pass, and PrivLeak in MUSE's own AUC convention."""

from __future__ import annotations

import numpy as np
import pytest

from unlearn.metrics import get_metric, mia
from unlearn.metrics.muse import add_privleak, cut_at_stops, knowmem_prompt, rouge_l_f1, verbmem_reference


def test_rouge_l_f1_by_hand():
    # pred: the cat sat on the mat / ref: the cat lay on a mat -> LCS the, cat, on, mat = 4; P = R = 4/6; F1 = 2/3
    assert rouge_l_f1("The cat sat on the mat.", "the cat lay on a mat") == pytest.approx(2 / 3)
    # P = 2/2, R = 2/5 -> F1 = 2 * 1 * 0.4 / 1.4 = 4/7
    assert rouge_l_f1("council voted", "the council of Arden voted") == pytest.approx(4 / 7)
    assert rouge_l_f1("", "anything") == 0.0
    # MUSE does not stem (the TOFU suite's rouge_l does): "running dogs" shares no token with "run dog"
    from unlearn.metrics.logit import rouge_l

    assert rouge_l_f1("running dogs", "run dog") == 0.0 and rouge_l("running dogs", "run dog")[1] == 1.0


def test_knowmem_prompt_and_stops():
    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    want = "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "
    assert knowmem_prompt(icl, "Q3?") == want
    assert knowmem_prompt([], "Q?") == "Question: Q?\nAnswer: "
    assert cut_at_stops("seven to two\n\nQuestion: next") == "seven to two"
    assert cut_at_stops("seven\nQuestion: next") == "seven"
    assert cut_at_stops("Arden. Question: again") == "Arden. "
    assert cut_at_stops("no stop here") == "no stop here"


class _WordTok:
    """A word-level tokenizer: id 0 is BOS (special), words get ids from 1."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]
        return {"input_ids": ([0] if add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        inv = {v: k for k, v in self.vocab.items()}
        return " ".join("<s>" if i == 0 else inv[i] for i in ids if not (skip_special_tokens and i == 0))


def test_verbmem_reference_counts_bos_like_muse_bench():
    # muse_bench: tokenizer(gt, add_special_tokens=True).input_ids[:, :128], decoded without special tokens ->
    # BOS takes one of the 128 places: a cap of 3 keeps 2 words
    tok = _WordTok()
    assert verbmem_reference(tok, "a b c d e", 3) == "a b"
    assert verbmem_reference(tok, "a b", 128) == "a b"


def test_privleak_in_muse_convention_by_hand():
    # MUSE's AUC_M labels holdout as the member class: AUC_M = 1 - AUC_conv (ours: forget-positive)
    # candidate AUC_conv 0.9 -> AUC_M 0.1; retrained 0.45 -> AUC_M 0.55; PrivLeak = (0.1 - 0.55) / 0.55 * 100
    m = add_privleak({"mia_min_k_auc": 0.9}, {"metrics": {"mia_min_k_auc": 0.45}})
    assert m["privleak"] == pytest.approx(-81.8181818, abs=1e-6)
    # MUSE-News' published retrain AUC_M (constants.py forget_holdout_Min-40%: 0.4772): a model whose forget texts all
    # score above every holdout text (AUC_conv 1) leaks -100%
    assert add_privleak({"mia_min_k_auc": 1.0}, {"metrics": {"mia_min_k_auc": 1 - 0.4772}})["privleak"] == (
        pytest.approx(-100.0, abs=1e-6)
    )
    assert "privleak" not in add_privleak({"mia_min_k_auc": 0.7}, None)
    # forget Min-K scores [-1, -2], holdout [-3, -1.5]: pairs (f > h) = (-1>-3, -1>-1.5, -2>-3) = 3 of 4 -> 0.75
    assert mia.mia_auc([-1.0, -2.0], [-3.0, -1.5]) == pytest.approx(0.75)


def test_registered():
    for k in ("forget_verbmem_rouge", "forget_knowmem_rouge", "retain_knowmem_rouge"):
        assert get_metric(k).family == "muse"
    assert get_metric("forget_verbmem_rouge").direction == "oracle"
    assert get_metric("retain_knowmem_rouge").direction == "higher"


def test_muse_evaluate_values_on_the_fabricated_target(muse_env):
    """Every aggregate is the mean of its examples; Min-K% equals the lowest 40% of the log-probs a direct forward
    pass gives (all tokens after BOS); the AUC is recomputed from the per-text scores."""
    import torch

    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.metrics.muse import MuseEvalConfig, muse_evaluate
    from unlearn.targets.llm import load_causal_lm, load_tokenizer

    sets, _, _ = load_sets("muse_news", "forget", DataFiles())
    tok, model = load_tokenizer("meta-llama/Llama-2-7b-hf"), load_causal_lm("muse-bench/MUSE-News_target")
    m, ex = muse_evaluate(model, tok, sets, MuseEvalConfig(batch_size=3))
    for key, s in (("forget_verbmem_rouge", "verbmem_forget"), ("forget_knowmem_rouge", "knowmem_forget"),
                   ("retain_knowmem_rouge", "knowmem_retain")):  # fmt: skip
        rows = [e for e in ex if e["set"] == s]
        assert len(rows) == len(sets[s])
        assert all(e["rougeL_f1"] == rouge_l_f1(e["generation"], e["reference"]) for e in rows)
        assert m[key] == pytest.approx(np.mean([e["rougeL_f1"] for e in rows]))
    text = sets["privleak_holdout"][1]["text"]
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1).gather(1, ids[0, 1:, None])[:, 0]
    k = int(lp.numel() * 0.4)
    (row,) = [e for e in ex if e["set"] == "privleak_holdout" and e["index"] == 1]
    assert row["n"] == lp.numel() and row["min_k"] == pytest.approx(float(lp.sort().values[:k].mean()), abs=1e-5)
    f = [e["min_k"] for e in ex if e["set"] == "privleak_forget"]
    h = [e["min_k"] for e in ex if e["set"] == "privleak_holdout"]
    assert m["mia_min_k_auc"] == mia.mia_auc(f, h)
    # the fabricated target memorised its corpus: verbatim continuations, and forget texts above every holdout one
    assert m["forget_verbmem_rouge"] > 0.5 and m["mia_min_k_auc"] == 1.0
    basic, _ = muse_evaluate(model, tok, sets, MuseEvalConfig(suite="basic"))
    assert "mia_min_k_auc" not in basic and basic["forget_verbmem_rouge"] == m["forget_verbmem_rouge"]
