"""The evaluator's per-example arithmetic pinned on hand-made records whose paraphrased and perturbed answers differ
from the answer (TinyFacts' paraphrase equals the answer, so there a truth ratio on the wrong answer cannot show).

A tiny random Llama and a word-level tokenizer are built here under a fixed seed. The LM head rows of every token
that is not an answer word are zero, so the greedy prediction is always an answer word (the largest of 30 random
logits is positive). Answers are *designed* token by token: a 1 in a pattern takes the model's greedy next word
(a hit under teacher forcing), a 0 the least likely word (a miss), so exact memorization and extraction strength
have hand-worked values:

    forget pattern   EM     ES (longest correct suffix / n)
    1 1 1 1          1      1
    0 1 1            2/3    2/3
    1 0 1 1          3/4    1/2
    1 1 0            2/3    0
    mean             37/48  13/24

The tokenizer has no EOS, so the scored answer tokens are exactly the designed words. All prompts have the same
length (no padding in generation), and with ``max_new_tokens=4`` the all-hit answer is generated verbatim.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearn.evaluate import EvalConfig, evaluate, score_answers
from unlearn.metrics import logit
from unlearn.targets.llm import PromptFormat, encode_prompt

FMT = PromptFormat()
Q_WORDS = [f"q{i}" for i in range(12)]
A_WORDS = [f"a{i}" for i in range(30)]
FORGET_PATTERNS = ([1, 1, 1, 1], [0, 1, 1], [1, 0, 1, 1], [1, 1, 0])


def word_tokenizer():
    """Whitespace word-level tokenizer without EOS: <pad> 0, <unk> 1, the prompt words, q-words, a-words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "Question", "Answer", ":", *Q_WORDS, *A_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


def tiny_lm(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(conf).eval()
    a_ids = tok.convert_tokens_to_ids(A_WORDS)
    with torch.no_grad():
        keep = torch.zeros(len(tok), dtype=torch.bool)
        keep[a_ids] = True
        model.lm_head.weight[~keep] = 0.0
        model.lm_head.weight[keep] *= 4.0  # sharper next-word distributions: hits and misses far apart
    return model


class Designer:
    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.a_ids = torch.tensor(tok.convert_tokens_to_ids(A_WORDS))

    @torch.no_grad()
    def answer(self, question: str, pattern) -> str:
        """Words following ``pattern`` under teacher forcing: 1 = the greedy next word, 0 = the least likely one."""
        ids = encode_prompt(self.tok, FMT, question)
        words: list[str] = []
        for hit in pattern:
            seq = ids + self.tok.convert_tokens_to_ids(words)
            logits = self.model(torch.tensor([seq])).logits[0, -1]
            sub = logits[self.a_ids]
            if hit:
                assert int(logits.argmax()) == int(self.a_ids[sub.argmax()])  # the greedy token is an answer word
            words.append(A_WORDS[int(sub.argmax() if hit else sub.argmin())])
        return " ".join(words)


def _q(g) -> str:
    return " ".join(g.choice(Q_WORDS, 3))


@pytest.fixture(scope="module")
def world():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = word_tokenizer()
    model = tiny_lm(tok)
    d = Designer(model, tok)
    g = np.random.default_rng(0)
    forget = []
    for i, pat in enumerate(FORGET_PATTERNS):
        q = _q(g)
        forget.append(
            {
                "question": q,
                "answer": d.answer(q, pat),
                "paraphrased_answer": d.answer(q, [1, 0, 0, 1, 0][: 5 - i % 2]),  # differs from the answer
                # the first record has 3 perturbed answers, the others 2: the set's minimum (2) is used
                "perturbed_answer": [d.answer(q, [0] * (1 + k + i % 2)) for k in range(3 if i == 0 else 2)],
                "paraphrased_question": _q(g),
            }
        )
    retain = []
    for _ in range(3):
        q = _q(g)
        retain.append(
            {
                "question": q,
                "answer": d.answer(q, [1, 1, 0]),
                "paraphrased_answer": d.answer(q, [1, 1]),
                "perturbed_answer": [d.answer(q, [0, 0, 0]), d.answer(q, [0])],
                "paraphrased_question": _q(g),
            }
        )
    world_facts = []
    for _ in range(3):
        q = _q(g)
        world_facts.append(
            {
                "question": q,
                "answer": d.answer(q, [1, 0]),
                "perturbed_answer": [d.answer(q, [0] * (k + 1)) for k in range(3)],
            }
        )
    sets = {"forget": forget, "retain": retain, "world_facts": world_facts}
    metrics, examples = evaluate(model, tok, FMT, sets, EvalConfig(suite="full", max_new_tokens=4, batch_size=5))
    yield model, tok, sets, metrics, examples
    torch.set_num_threads(threads)


def score(world, q: str, a: str, stats: bool = False) -> dict:
    """One (question, answer) scored alone: the independent reference."""
    model, tok = world[0], world[1]
    return score_answers(model, tok, FMT, [q], [a], batch_size=1, token_stats=stats)[0]


def rows(world, name: str) -> list[dict]:
    return [e for e in world[4] if e["set"] == name]


def tr_direct(world, q: str, correct: str, perturbed: list[str]) -> float:
    """R = exp(mean_k logp_k/n_k - logp_c/n_c), from answers scored one at a time."""
    c = score(world, q, correct)
    pert = [score(world, q, p) for p in perturbed]
    return math.exp(sum(p["logp"] / p["n"] for p in pert) / len(pert) - c["logp"] / c["n"])


def test_records_differ_and_hits_follow_the_design(world):
    _, _, sets, _, _ = world
    for r in sets["forget"] + sets["retain"]:
        assert r["paraphrased_answer"] != r["answer"]
        assert all(p != r["answer"] for p in r["perturbed_answer"])
    for r, pat in zip(sets["forget"], FORGET_PATTERNS):
        s = score(world, r["question"], r["answer"], stats=True)
        assert s["n"] == len(pat) and s["hits"] == list(pat)


@pytest.mark.parametrize("name", ["forget", "retain", "world_facts"])
def test_logp_and_prob_are_exp_of_the_per_token_mean(world, name):
    """prob = exp(logp / n) (length-normalised, TOFU's Prob.), not exp(logp); logp, n as scored alone."""
    _, _, sets, m, _ = world
    probs = []
    for row, r in zip(rows(world, name), sets[name]):
        s = score(world, r["question"], r["answer"])
        assert row["n"] == s["n"] == len(r["answer"].split())
        assert row["logp"] == pytest.approx(s["logp"], rel=1e-5)
        assert row["prob"] == pytest.approx(math.exp(s["logp"] / s["n"]), rel=1e-5)
        probs.append(math.exp(s["logp"] / s["n"]))
    if name != "world_facts":  # world_facts_prob is the normalised probability (below)
        assert m[f"{name}_prob"] == pytest.approx(np.mean(probs), rel=1e-5)


@pytest.mark.parametrize("name", ["forget", "retain"])
def test_truth_ratio_uses_the_paraphrased_answer_and_the_sets_perturbed_count(world, name):
    """R = exp(mean_k pert_k - para) with per-token log-likelihoods of the PARAPHRASED answer and the first
    k = 2 perturbed answers (the forget set's first record has 3; the set's minimum is used). Aggregates:
    forget mean min(R, 1/R), retain mean max(0, 1 - R)."""
    _, _, sets, m, _ = world
    rs = []
    for row, r in zip(rows(world, name), sets[name]):
        want = tr_direct(world, r["question"], r["paraphrased_answer"], r["perturbed_answer"][:2])
        wrong = tr_direct(world, r["question"], r["answer"], r["perturbed_answer"][:2])
        assert abs(math.log(want) - math.log(wrong)) > 0.02  # the original answer would give another number
        assert row["truth_ratio"] == pytest.approx(want, rel=1e-4)
        rs.append(want)
    if name == "forget":
        all3 = tr_direct(world, sets["forget"][0]["question"], sets["forget"][0]["paraphrased_answer"],
                         sets["forget"][0]["perturbed_answer"])  # fmt: skip
        assert abs(math.log(all3) - math.log(rs[0])) > 0.02  # using all 3 perturbed answers would show
        assert m["forget_truth_ratio"] == pytest.approx(np.mean([min(x, 1 / x) for x in rs]), rel=1e-4)
    else:
        assert m["retain_truth_ratio"] == pytest.approx(np.mean([max(0.0, 1 - x) for x in rs]), rel=1e-4)
        assert m["retain_truth_ratio"] > 0.1


def test_option_set_truth_ratio_and_normalised_prob_use_the_original_answer(world):
    """world_facts (TOFU's option sets have no paraphrase): R on the original answer and all 3 perturbed ones;
    norm_prob = p(a) / (p(a) + sum_k p(a'_k)) with p = exp(logp / n); world_facts_prob is its mean."""
    _, _, sets, m, _ = world
    rs, nps = [], []
    for row, r in zip(rows(world, "world_facts"), sets["world_facts"]):
        rs.append(tr_direct(world, r["question"], r["answer"], r["perturbed_answer"]))
        c = score(world, r["question"], r["answer"])
        opts = [score(world, r["question"], p) for p in r["perturbed_answer"]]
        pc = math.exp(c["logp"] / c["n"])
        nps.append(pc / (pc + sum(math.exp(o["logp"] / o["n"]) for o in opts)))
        assert row["truth_ratio"] == pytest.approx(rs[-1], rel=1e-4)
        assert row["norm_prob"] == pytest.approx(nps[-1], rel=1e-4)
    assert m["world_facts_prob"] == pytest.approx(np.mean(nps), rel=1e-4)
    assert m["world_facts_truth_ratio"] == pytest.approx(np.mean([max(0.0, 1 - x) for x in rs]), rel=1e-4)


def test_paraphrased_question_prob_scores_the_answer_under_the_paraphrased_question(world):
    _, _, sets, m, _ = world
    for name in ("forget", "retain"):
        pp = []
        for row, r in zip(rows(world, name), sets[name]):
            s = score(world, r["paraphrased_question"], r["answer"])
            assert row["para_prob"] == pytest.approx(math.exp(s["logp"] / s["n"]), rel=1e-5)
            pp.append(row["para_prob"])
            assert row["para_acc"] == float(row["para_generation"].strip() == r["answer"].strip())
        assert m[f"{name}_para_prob"] == pytest.approx(np.mean(pp), rel=1e-6)


def test_generation_accuracy_and_rouge(world):
    """The all-hit forget answer (4 words, max_new_tokens 4) is generated verbatim; the others start or continue
    with a different greedy word, so forget_acc = 1/4. ROUGE-L recall is against the answer."""
    _, _, sets, m, _ = world
    fr = rows(world, "forget")
    assert fr[0]["generation"] == sets["forget"][0]["answer"]
    assert [r["acc"] for r in fr] == [1.0, 0.0, 0.0, 0.0]
    assert m["forget_acc"] == pytest.approx(0.25)
    for name in ("forget", "retain", "world_facts"):
        for row, r in zip(rows(world, name), sets[name]):
            assert row["rougeL_recall"] == pytest.approx(logit.rouge_l(row["generation"], r["answer"])[0])
    # retain answers are greedy for 2 of their 3 words: at least 2/3 of the reference is recalled
    assert all(row["rougeL_recall"] >= 2 / 3 - 1e-9 for row in rows(world, "retain"))


def test_exact_memorization_and_extraction_strength_from_hits(world):
    """Means over examples of the designed hit patterns (module docstring): EM 37/48 (the token-pooled share would
    be 10/13), ES 13/24."""
    m = world[3]
    assert m["forget_exact_memorization"] == pytest.approx(37 / 48, rel=1e-9)
    assert m["forget_extraction_strength"] == pytest.approx(13 / 24, rel=1e-9)


def test_model_utility_is_the_harmonic_mean_of_the_utility_sets(world):
    """Harmonic mean of {prob, ROUGE-L recall, truth-ratio score} x {retain, world_facts} (the sets present)."""
    m = world[3]
    keys = [f"{s}_{k}" for s in ("retain", "world_facts") for k in ("prob", "rougeL_recall", "truth_ratio")]
    v = [m[k] for k in keys]
    assert all(x > 0 for x in v), dict(zip(keys, v))
    assert m["model_utility"] == pytest.approx(len(v) / sum(1 / x for x in v), rel=1e-9)
    assert m["model_utility"] < np.mean(v) - 1e-3  # not the arithmetic mean


def test_per_example_values_behind_the_aggregates_are_in_examples(world):
    """examples.jsonl carries every per-example value an aggregate is a mean (or a KS test / AUC) of."""
    _, _, sets, m, ex = world
    fr = rows(world, "forget")
    assert [r["exact_memorization"] for r in fr] == pytest.approx([1, 2 / 3, 3 / 4, 2 / 3])
    assert [r["extraction_strength"] for r in fr] == pytest.approx([1, 2 / 3, 1 / 2, 0])
    assert m["forget_exact_memorization"] == pytest.approx(np.mean([r["exact_memorization"] for r in fr]))
    for row, r in zip(rows(world, "retain"), sets["retain"]):
        assert len(row["perturbed_prob"]) == len(r["perturbed_answer"])
        # the truth ratio is the geometric mean of the perturbed probabilities over the paraphrased one
        assert row["truth_ratio"] == pytest.approx(np.exp(np.mean(np.log(row["perturbed_prob"]))) /
                                                   row["paraphrased_prob"], rel=1e-9)  # fmt: skip
    assert not any(k in e for e in ex for k in ("hits", "token_logp", "mu", "sigma", "eos"))


def test_open_unlearning_compat_drops_the_last_labelled_token(world):
    """open-unlearning's tokenwise log-probs skip the last labelled position (its EOS); this tokenizer has none, so
    the designed answers lose their last word: patterns 111, 01, 101, 11 -> EM 19/24, ES (1 + 1/2 + 1/3 + 1)/4."""
    model, tok, sets = world[:3]
    m, _ = evaluate(model, tok, FMT, {"forget": sets["forget"]},
                    EvalConfig(suite="full", max_new_tokens=4, batch_size=5, compat="open-unlearning"))  # fmt: skip
    assert m["forget_exact_memorization"] == pytest.approx(19 / 24, rel=1e-9)
    assert m["forget_extraction_strength"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1) / 4, rel=1e-9)
