"""MUSE's evaluation (family ``muse``): VerbMem, KnowMem and PrivLeak (Shi et al. 2024, arXiv 2407.06460).

Definitions follow the authors' code (https://github.com/swj0419/muse_bench, ``eval.py`` and ``metrics/``);
where open-unlearning's port (``configs/eval/muse_metrics/``) differs, docs/benchmarks/muse.md says how.

* **VerbMem** (``forget_verbmem_rouge``): each ``verbmem/forget`` prompt (a prefix of a forget document,
  tokenized with BOS) is continued greedily for up to 128 new tokens; the continuation is scored against the
  reference ``gt`` cut to its first 128 tokens (``tokenizer(gt)`` with BOS, then decoded without special tokens,
  as muse_bench does) by ROUGE-L F1. Mean over prompts.
* **KnowMem** (``forget_knowmem_rouge``, ``retain_knowmem_rouge``): few-shot QA. The prompt is every in-context
  pair of the ``*_qa_icl`` split as ``"Question: {q}\\nAnswer: {a}\\n\\n"`` followed by ``"Question: {q}\\nAnswer: "``;
  up to 32 greedy tokens, cut before the first ``"\\n\\n"``, ``"\\nQuestion"`` or ``"Question:"``; ROUGE-L F1
  against the answer; mean over questions.
* **PrivLeak** (``privleak``, with ``mia_min_k_auc``): the Min-K% Prob attack (k = 0.4, MUSE's default
  ``forget_holdout_Min-40%``) on the ``privleak`` forget vs holdout texts, each scored on all its tokens after BOS
  (at most ``max_length``), and ``PrivLeak = (AUC_M(unlearned) - AUC_M(retrain)) / AUC_M(retrain) * 100`` with
  the retrained model's AUC measured on the same texts (`unlearn.metrics.mia.privleak`, which takes the
  forget-positive AUC ``AUC_conv = 1 - AUC_M``). 0 = leaks as much as the retrained model; about -100 = the
  forget texts still look trained on; positive = over-unlearned.

ROUGE-L here is rouge_score's ``RougeScorer(["rougeL"], use_stemmer=False)`` F1 (MUSE's ``RougeEvalLogger``);
the QA suite's `unlearn.metrics.logit.rouge_l` stems, as TOFU and open-unlearning do. Values are in [0, 1]
(MUSE's tables print them x100); PrivLeak is in percent, as in MUSE.

Only numpy is imported at module import time; torch, rouge_score and the model helpers inside the functions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from unlearn.metrics import register_metric

KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")  # muse_bench metrics/knowmem.py; open-unlearning's stopwords


@dataclass
class MuseEvalConfig:
    suite: str = "full"  # basic: VerbMem + KnowMem | full: + the Min-K% MIA and PrivLeak
    verbmem_max_new_tokens: int = 128  # muse_bench eval.py verbmem_max_new_tokens
    knowmem_max_new_tokens: int = 32  # muse_bench eval.py knowmem_max_new_tokens
    mia_k: float = 0.4  # Min-40%: muse_bench's privleak_auc_key forget_holdout_Min-40%
    max_length: int = 2048  # tokens of a privleak text scored (open-unlearning's MUSE_MIA max_length)
    batch_size: int = 8  # prompts per generation batch, texts per scoring batch


for _name, _what in (
    ("forget_verbmem_rouge", "MUSE VerbMem: ROUGE-L F1 of the greedy 128-token continuation of each verbmem forget "
     "prompt against the true continuation (its first 128 tokens). Best when closest to the retrained model's"),
    ("forget_knowmem_rouge", "MUSE KnowMem on the forget set: ROUGE-L F1 of the greedy few-shot answer (32 tokens, "
     "cut at the next question) to each forget QA pair. Best when closest to the retrained model's"),
):  # fmt: skip
    register_metric(_name, "muse", "oracle", f"{_what} (MUSE's scale: x100).", "[0, 1]")
register_metric(
    "retain_knowmem_rouge",
    "muse",
    "higher",
    "MUSE KnowMem on the retain set (utility): ROUGE-L F1 of the greedy few-shot answer (32 tokens, cut at the next "
    "question) to each retain QA pair. Higher is better (MUSE's scale: x100).",
    "[0, 1]",
)


# ----------------------------------------------------------------------------------------------- text pieces
@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_f1(prediction: str, reference: str) -> float:
    """MUSE's ROUGE-L F1 (no stemming): lower-cased alphanumeric tokens, ``L = |LCS(pred, ref)|``,
    ``P = L / |pred|``, ``R = L / |ref|``, ``F1 = 2PR / (P + R)`` (0 when L = 0)."""
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def knowmem_prompt(icl: list[dict], question: str) -> str:
    """The few-shot KnowMem prompt: every in-context pair, then the question (muse_bench metrics/knowmem.py)."""
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl)
    return shots + f"Question: {question}\nAnswer: "


def cut_at_stops(text: str, stops=KNOWMEM_STOPS) -> str:
    """The answer before the first stop string (applied in order, as muse_bench does)."""
    for s in stops:
        text = text.split(s)[0]
    return text


def verbmem_reference(tokenizer, gt: str, max_tokens: int) -> str:
    """The reference continuation as muse_bench scores it: ``gt`` tokenized with special tokens (BOS), cut to
    ``max_tokens`` ids, decoded without special tokens."""
    ids = tokenizer(gt, add_special_tokens=True)["input_ids"][:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------------------------- model passes
def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations (decoded, special tokens dropped) of prompts tokenized with BOS, in length-sorted
    left-padded batches (the same continuations as muse_bench's one-at-a-time loop, up to float noise)."""
    from unlearn.targets.llm import greedy_generate

    enc = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    out: list[str] = [""] * len(enc)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        for i, g in zip(idx, greedy_generate(model, tokenizer, [enc[i] for i in idx], max_new_tokens)):
            out[i] = tokenizer.decode(g, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return out


def text_token_logps(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> list[np.ndarray]:
    """Per-token log-probs of each text's tokens after BOS (tokenized with special tokens, at most ``max_length``)."""
    import torch

    from unlearn.targets.llm import answer_token_logits, collate, encode_text, token_logps

    device = next(model.parameters()).device
    items = [encode_text(tokenizer, t, max_length) for t in texts]
    out: list[np.ndarray] = [np.zeros(0)] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], tokenizer.pad_token_id).items()}
            logits, targets, row = answer_token_logits(model, batch)
            lp = token_logps(logits, targets).double().cpu().numpy()
            row = row.cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = lp[row == j]
    return out


# ----------------------------------------------------------------------------------------------- the evaluation
def muse_evaluate(model, tokenizer, sets: dict[str, list[dict]], cfg: MuseEvalConfig | None = None,
                  oracle: dict | None = None) -> tuple[dict, list[dict]]:  # fmt: skip
    """MUSE's metrics of ``model`` on the sets of `unlearn.data.muse.load_muse`.

    Args:
        oracle: the retrained model's ``{"metrics": ...}`` (from `cached_muse_evaluate`) for PrivLeak; None: the
            AUC is reported without PrivLeak.

    Returns:
        (metrics, examples): the flat metrics and one row per scored item (``set``, ``index``, the generation and
        its ``rougeL_f1``, or the text's ``min_k`` score and token count ``n``).
    """
    from unlearn.metrics import mia

    cfg = cfg or MuseEvalConfig()
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    examples: list[dict] = []
    try:
        vm = sets["verbmem_forget"]
        gens = _generate(model, tokenizer, [r["prompt"] for r in vm], cfg.verbmem_max_new_tokens, cfg.batch_size)
        scores = []
        for i, (r, g) in enumerate(zip(vm, gens)):
            ref = verbmem_reference(tokenizer, r["gt"], cfg.verbmem_max_new_tokens)
            scores.append(rouge_l_f1(g, ref))
            examples.append({"set": "verbmem_forget", "index": i, "reference": ref, "generation": g,
                             "rougeL_f1": scores[-1]})  # fmt: skip
        metrics["forget_verbmem_rouge"] = float(np.mean(scores))
        for part in ("forget", "retain"):
            qa, icl = sets[f"knowmem_{part}"], sets[f"knowmem_{part}_icl"]
            prompts = [knowmem_prompt(icl, r["question"]) for r in qa]
            gens = _generate(model, tokenizer, prompts, cfg.knowmem_max_new_tokens, cfg.batch_size)
            scores = []
            for i, (r, g) in enumerate(zip(qa, gens)):
                ans = cut_at_stops(g)
                scores.append(rouge_l_f1(ans, r["answer"]))
                examples.append({"set": f"knowmem_{part}", "index": i, "question": r["question"],
                                 "reference": r["answer"], "generation": ans, "rougeL_f1": scores[-1]})  # fmt: skip
            metrics[f"{part}_knowmem_rouge"] = float(np.mean(scores))
        if cfg.suite == "full":
            mk = {}
            for part in ("forget", "holdout"):
                texts = [r["text"] for r in sets[f"privleak_{part}"]]
                lps = text_token_logps(model, tokenizer, texts, cfg.max_length, cfg.batch_size)
                mk[part] = [mia.min_k_score(lp, cfg.mia_k) for lp in lps]
                for i, (lp, s) in enumerate(zip(lps, mk[part])):
                    examples.append({"set": f"privleak_{part}", "index": i, "n": int(lp.size), "min_k": s})
            metrics["mia_min_k_auc"] = mia.mia_auc(mk["forget"], mk["holdout"])
    finally:
        if was_training:
            model.train()
    return add_privleak(metrics, oracle), examples


def add_privleak(metrics: dict, oracle: dict | None) -> dict:
    """``metrics`` with ``privleak`` against the retrained model's evaluation ``oracle`` (when both have the AUC)."""
    from unlearn.metrics import mia

    out = dict(metrics)
    if oracle is not None and "mia_min_k_auc" in out and "mia_min_k_auc" in oracle.get("metrics", {}):
        out["privleak"] = mia.privleak(out["mia_min_k_auc"], oracle["metrics"]["mia_min_k_auc"])
    return out


# ----------------------------------------------------------------------------------------------- cached evaluations
def _code_version() -> str:
    """A hash of the files that decide a MUSE evaluation's numbers (a code change never reuses a stale result)."""
    from unlearn.store import source_hash

    return source_hash(("metrics/muse.py", "metrics/mia.py", "targets/llm.py"))


def cached_muse_evaluate(model_path: str, load, tokenizer, sets: dict, cfg: MuseEvalConfig) -> dict:
    """`muse_evaluate` of a fixed model (the target, the retrained model) once per key, cached under
    ``$UNLEARN_HOME/evals``. The key covers the weights (a directory's file hashes, else the hub id), the
    tokenizer, the data, the config and the code version. ``load()`` runs only on a miss.

    Returns ``{"key", "model", "metrics", "examples"}``.
    """
    from unlearn.data.benchmarks import data_hash
    from unlearn.store import atomic_write_json, read_json, unlearn_home
    from unlearn.workflow import files_hash

    ident = files_hash(model_path) if Path(model_path).is_dir() else model_path
    tok_ident = getattr(tokenizer, "name_or_path", "")
    tok_ident = files_hash(tok_ident) if tok_ident and Path(tok_ident).is_dir() else tok_ident
    parts = ["muse", ident, tok_ident, len(tokenizer), data_hash(sets), asdict(cfg), _code_version()]
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    p = unlearn_home() / "evals" / f"muse-{key}.json"
    if p.exists():
        return read_json(p)
    m, ex = muse_evaluate(load(), tokenizer, sets, cfg)
    res = {"key": key, "model": model_path, "metrics": m, "examples": ex}
    atomic_write_json(p, res)
    return res
