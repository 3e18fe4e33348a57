"""Write fixtures.json: per-example metric values computed with open-unlearning's formulas on small fixed logits.

The formulas follow open-unlearning's src/evals/metrics (https://github.com/locuslab/open-unlearning, commit d3d7cf9):
``utils.tokenwise_logprobs`` / ``tokenwise_vocab_logprobs`` (labelled positions minus the last one, "-1 to ignore
eos prediction"), ``memorization.exact_memorization`` / ``extraction_strength`` (its k loop stops at |y|-1),
``mia.min_k`` / ``mia.min_k_plus_plus`` (variance clamped at 1e-6, k = 0.4 as in configs/eval/tofu_metrics),
``utils.evaluate_probability`` (avg_loss over every labelled token) and ``mia.zlib`` (avg_loss / zlib length of the
decoded target text, here " " + answer). Written from scratch in numpy: run ``python make_fixtures.py`` to
regenerate (deterministic).
"""

import json
import zlib
from pathlib import Path

import numpy as np

IGNORE, V, K = -100, 6, 0.4
EOS = 5


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def example(rng, prompt_len: int, answer: list[int], hit: list[bool], text: str) -> dict:
    """Logits whose greedy prediction at answer position t is the label iff ``hit[t]`` (EOS is the last label)."""
    ids = list(rng.integers(0, V - 1, prompt_len)) + answer + [EOS]
    labels = [IGNORE] * prompt_len + answer + [EOS]
    T = len(ids)
    logits = rng.normal(0, 1.0, (T, V))
    for t in range(prompt_len, T):  # logits[t-1] predicts ids[t]
        lab = ids[t]
        h = hit[t - prompt_len]
        wrong = (lab + 1) % V
        logits[t - 1, lab if h else wrong] += 4.0
    return {
        "input_ids": [int(i) for i in ids],
        "labels": [int(i) for i in labels],
        "logits": np.round(logits, 4).tolist(),
        "answer": text,
    }


def open_unlearning_values(ex: dict) -> dict:
    logits, ids, labels = np.array(ex["logits"]), np.array(ex["input_ids"]), np.array(ex["labels"])
    lp = log_softmax(logits)[:-1]  # (T-1, V): row t predicts token t+1
    target_lp = lp[np.arange(len(ids) - 1), ids[1:]]
    labelled = np.nonzero(labels != IGNORE)[0]
    actual = labelled[:-1]  # tokenwise_*: the last labelled position (EOS) is dropped
    start, end = actual[0], actual[-1]
    tok_lp, vocab_lp, lab = target_lp[start - 1 : end], lp[start - 1 : end], labels[actual]
    preds = vocab_lp.argmax(-1)
    n = len(lab)
    em = float((preds == lab).sum() / n)
    for k in range(n):
        if np.array_equal(preds[k:], lab[k:]):
            break
    es = 1 - k / n
    num_k = max(1, int(n * K))
    min_k = -float(np.mean(np.sort(tok_lp)[:num_k]))
    p = np.exp(vocab_lp)
    mu = (p * vocab_lp).sum(-1)
    sigma = np.clip((p * vocab_lp**2).sum(-1) - mu**2, 1e-6, None)
    min_kpp = -float(np.mean(np.sort((tok_lp - mu) / np.sqrt(sigma))[:num_k]))
    shifted = labels[1:]
    mask = shifted != IGNORE
    avg_loss = float(-target_lp[mask].sum() / (labels != IGNORE).sum())
    zl = avg_loss / len(zlib.compress((" " + ex["answer"]).encode("utf-8")))
    return {
        "exact_memorization": em,
        "extraction_strength": es,
        "mia_min_k": min_k,
        "mia_min_k_plus_plus": min_kpp,
        "mia_loss": avg_loss,
        "mia_zlib": zl,
    }


def main() -> None:
    rng = np.random.default_rng(12)
    specs = [  # prompt length, answer ids, greedy hit per answer token (+ EOS), text
        (3, [1, 2, 3, 4], [True, True, True, True, True], "Jane Doe wrote it."),
        (2, [2, 0, 1], [True, False, True, True], "Born in Paris."),
        (3, [4, 4, 2, 1, 3], [True, True, False, False, True, True], "A novel about the sea."),
        (2, [3], [False, True], "Yes."),
        (4, [0, 1, 2], [False, True, False, True], "In 1990."),
    ]
    out = []
    for spec in specs:
        ex = example(rng, *spec)
        ex["expected"] = open_unlearning_values(ex)
        out.append(ex)
    Path(__file__).with_name("fixtures.json").write_text(json.dumps({"eos": EOS, "k": K, "examples": out}, indent=1))


if __name__ == "__main__":
    main()
