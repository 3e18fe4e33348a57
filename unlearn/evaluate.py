"""Run a metric suite on a model: per-example values and the flat ``metrics.json``.

Suites:
    ``basic``  ``{s}_acc``, ``{s}_prob``, ``{s}_rougeL_recall`` for s in forget, retain, world_facts, arithmetic.
    ``full``   basic + ROUGE-L F1, truth ratios, paraphrased-question variants, TOFU's normalised probability on
               world_facts / arithmetic, exact memorization, extraction strength, MIA AUCs (forget vs holdout),
               and, given the oracle's per-example values, forget_quality, privleak and model_utility.

Evaluation is batched and length-bucketed (sequences sorted by length, so padding is minimal), generation is
greedy with a max-new-tokens cap and stops at EOS per sequence. With several processes (accelerate), every set
is sharded across them and per-example values are gathered, so the metrics equal one process's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from unlearn.metrics import logit, mia
from unlearn.targets.llm import PromptFormat, collate, encode_prompt, encode_qa, greedy_generate

SETS = ("forget", "retain", "world_facts", "arithmetic", "real_authors")
UTILITY_SETS = ("retain", "world_facts", "arithmetic", "real_authors")  # those present enter model_utility
OPTION_SETS = ("world_facts", "arithmetic", "real_authors")  # TOFU's utility sets: normalised prob, original answer


@dataclass
class EvalConfig:
    suite: str = "full"  # basic | full
    batch_size: int = 64  # sequences per forward pass
    max_new_tokens: int = 32  # generation cap
    mia_k: float = 0.4  # Min-K% / Min-K%++ fraction


# ----------------------------------------------------------------------------------------------- sharding
class _Shard:
    """Which examples this process handles, and how to gather per-example results back in order."""

    def __init__(self, accelerator=None):
        self.acc = accelerator
        self.n = accelerator.num_processes if accelerator is not None else 1
        self.rank = accelerator.process_index if accelerator is not None else 0

    def indices(self, n: int) -> list[int]:
        return list(range(self.rank, n, self.n))

    def gather(self, values: list, n: int) -> list:
        """Per-example python objects of this shard -> the full list in original order (on every process)."""
        if self.n == 1:
            return values
        import torch.distributed as dist

        parts = [None] * self.n
        dist.all_gather_object(parts, values)
        out = [None] * n
        for r, part in enumerate(parts):
            for j, v in zip(range(r, n, self.n), part):
                out[j] = v
        return out


# ----------------------------------------------------------------------------------------------- primitives
def _buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_answers(model, tokenizer, fmt: PromptFormat, questions: Sequence[str], answers: Sequence[str],
                  batch_size: int = 64, token_stats: bool = False) -> list[dict]:
    """Per example: summed answer log-prob ``logp`` and token count ``n``; with ``token_stats`` also per-token
    log-probs, Min-K%++ moments and greedy-prediction hits (for MIA, exact memorization, extraction strength)."""
    from unlearn.targets.llm import answer_token_logits, token_logps

    device = next(model.parameters()).device
    items = [encode_qa(tokenizer, fmt, q, a) for q, a in zip(questions, answers)]
    res: list[dict | None] = [None] * len(items)
    for idx in _buckets([len(i[0]) for i in items], batch_size):
        batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], tokenizer.pad_token_id).items()}
        logits, targets, row = answer_token_logits(model, batch)
        lp = token_logps(logits, targets)  # (N,)
        row_c = row.cpu().numpy()
        if token_stats:
            tl, mu, sigma = mia.min_k_stats_from_logits(logits, targets)
            hits = (logits.argmax(-1) == targets).cpu().numpy()
            tl, mu, sigma = (np.asarray(x.cpu() if hasattr(x, "cpu") else x) for x in (tl, mu, sigma))
        lp_c = lp.float().cpu().numpy()
        for j, i in enumerate(idx):
            sel = row_c == j
            r = {"logp": float(lp_c[sel].sum()), "n": int(sel.sum())}
            if token_stats:
                r.update(token_logp=lp_c[sel].tolist(), mu=mu[sel].tolist(), sigma=sigma[sel].tolist(),
                         hits=hits[sel].astype(int).tolist())
            res[i] = r
    return res  # type: ignore[return-value]


@torch.no_grad()
def generate_answers(model, tokenizer, fmt: PromptFormat, questions: Sequence[str], batch_size: int = 64,
                     max_new_tokens: int = 32) -> list[str]:
    prompts = [encode_prompt(tokenizer, fmt, q) for q in questions]
    out: list[str | None] = [None] * len(prompts)
    for idx in _buckets([len(p) for p in prompts], batch_size):
        gen = greedy_generate(model, tokenizer, [prompts[i] for i in idx], max_new_tokens=max_new_tokens)
        for i, g in zip(idx, gen):
            out[i] = tokenizer.decode(g, skip_special_tokens=True).strip()
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- one set
def _eval_set(model, tok, fmt, recs: list[dict], cfg: EvalConfig, name: str) -> list[dict]:
    """Per-example values of one set (for this process's records)."""
    full = cfg.suite == "full"
    qs = [r["question"] for r in recs]
    ans = [r["answer"] for r in recs]
    gens = generate_answers(model, tok, fmt, qs, cfg.batch_size, cfg.max_new_tokens)
    sc = score_answers(model, tok, fmt, qs, ans, cfg.batch_size, token_stats=full and name == "forget")
    rows = []
    for r, g, s in zip(recs, gens, sc):
        rec, f1 = logit.rouge_l(g, r["answer"])
        row = {"question": r["question"], "answer": r["answer"], "generation": g,
               "acc": float(logit.exact_match_acc(g, r["answer"])), "prob": float(np.exp(s["logp"] / s["n"])),
               "rougeL_recall": rec, "rougeL_f1": f1, "logp": s["logp"], "n": s["n"]}
        for k in ("token_logp", "mu", "sigma", "hits"):
            if k in s:
                row[k] = s[k]
        rows.append(row)
    if not full:
        return rows
    # truth ratio: paraphrased (or, without one, the original) answer against the perturbed answers
    has_pert = [bool(r.get("perturbed_answer")) for r in recs]
    if all(has_pert):
        para = [r.get("paraphrased_answer") or r["answer"] for r in recs]
        ps = score_answers(model, tok, fmt, qs, para, cfg.batch_size)
        K = min(len(r["perturbed_answer"]) for r in recs)
        flat_q = [q for q in qs for _ in range(K)]
        flat_a = [a for r in recs for a in r["perturbed_answer"][:K]]
        pert = score_answers(model, tok, fmt, flat_q, flat_a, cfg.batch_size)
        pl = np.array([p["logp"] for p in pert]).reshape(len(recs), K)
        pn = np.array([p["n"] for p in pert]).reshape(len(recs), K)
        tr = logit.truth_ratio([p["logp"] for p in ps], [p["n"] for p in ps], pl, pn)
        if name in OPTION_SETS:
            # TOFU on real_authors / world_facts: truth ratio and normalised prob use the original answer
            tr = logit.truth_ratio([s["logp"] for s in sc], [s["n"] for s in sc], pl, pn)
            npb = logit.normalised_prob([s["logp"] for s in sc], [s["n"] for s in sc], pl, pn)
            for row, v in zip(rows, npb):
                row["norm_prob"] = float(v)
        for row, v in zip(rows, tr):
            row["truth_ratio"] = float(v)
    # paraphrased questions
    if all(r.get("paraphrased_question") for r in recs):
        pq = [r["paraphrased_question"] for r in recs]
        pg = generate_answers(model, tok, fmt, pq, cfg.batch_size, cfg.max_new_tokens)
        psc = score_answers(model, tok, fmt, pq, ans, cfg.batch_size)
        for row, r, g, s in zip(rows, recs, pg, psc):
            row.update(para_generation=g, para_acc=float(logit.exact_match_acc(g, r["answer"])),
                       para_prob=float(np.exp(s["logp"] / s["n"])), para_rougeL_recall=logit.rouge_l(g, r["answer"])[0])
    return rows


def _mia_scores(rows: list[dict], k: float) -> dict[str, np.ndarray]:
    return {
        "loss": np.array([mia.loss_score(r["logp"], r["n"]) for r in rows]),
        "zlib": np.array([mia.zlib_score(r["logp"], r["answer"], n_tokens=r["n"]) for r in rows]),
        "min_k": np.array([mia.min_k_score(r["token_logp"], k) for r in rows]),
        "min_k_plus_plus": np.array([mia.min_k_plus_plus_score(r["token_logp"], r["mu"], r["sigma"], k)
                                     for r in rows]),
    }


# ----------------------------------------------------------------------------------------------- the suite
def evaluate(model, tokenizer, fmt: PromptFormat, sets: dict[str, list[dict]], cfg: EvalConfig | None = None,
             oracle: dict | None = None, accelerator=None, progress: bool = False) -> tuple[dict, list[dict]]:
    """Evaluate ``model`` on ``sets`` (keys among forget, retain, world_facts, arithmetic, holdout).

    Args:
        oracle: the retain-only oracle's ``{"metrics": ..., "examples": ...}`` from an earlier call, for
            forget_quality / privleak (None: those metrics are omitted).
    Returns:
        (metrics, examples): flat ``{name: value}`` and per-example rows (each with ``set`` and ``index``).
    """
    from tqdm.auto import tqdm

    cfg = cfg or EvalConfig()
    shard = _Shard(accelerator)
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    examples: list[dict] = []
    names = [s for s in (*SETS, "holdout") if s in sets and sets[s]]
    if cfg.suite != "full":
        names = [s for s in names if s != "holdout"]
    per_set: dict[str, list[dict]] = {}
    for name in tqdm(names, desc="evaluate", disable=not progress, leave=False):
        recs = sets[name]
        mine = shard.indices(len(recs))
        rows_here = _eval_set(model, tokenizer, fmt, [recs[i] for i in mine], cfg,
                              "forget" if name == "holdout" else name)
        rows = shard.gather(rows_here, len(recs))
        per_set[name] = rows
        for i, row in enumerate(rows):
            examples.append({"set": name, "index": i, **{k: v for k, v in row.items()
                                                          if k not in ("token_logp", "mu", "sigma", "hits")}})
        if name == "holdout":
            continue
        metrics[f"{name}_acc"] = _mean(rows, "acc")
        metrics[f"{name}_prob"] = _mean(rows, "norm_prob" if "norm_prob" in rows[0] else "prob")
        metrics[f"{name}_rougeL_recall"] = _mean(rows, "rougeL_recall")
        if cfg.suite == "full":
            metrics[f"{name}_rougeL_f1"] = _mean(rows, "rougeL_f1")
            if "truth_ratio" in rows[0]:
                tr = np.array([r["truth_ratio"] for r in rows])
                agg = logit.forget_truth_ratio_score if name == "forget" else logit.utility_truth_ratio_score
                metrics[f"{name}_truth_ratio"] = agg(tr)
            if "para_acc" in rows[0]:
                for k in ("para_acc", "para_prob", "para_rougeL_recall"):
                    metrics[f"{name}_{k}"] = _mean(rows, k)
    if cfg.suite == "full" and "forget" in per_set:
        f = per_set["forget"]
        metrics["forget_exact_memorization"] = float(np.mean([np.mean(r["hits"]) for r in f if r["hits"]]))
        metrics["forget_extraction_strength"] = float(np.mean([_es(r["hits"]) for r in f]))
        ukeys = [f"{s}_{m}" for s in UTILITY_SETS if s in per_set for m in ("prob", "rougeL_recall", "truth_ratio")]
        if ukeys and all(k in metrics for k in ukeys):
            metrics["model_utility"] = logit.model_utility({k: metrics[k] for k in ukeys})
        if "holdout" in per_set:
            sf, sh = _mia_scores(f, cfg.mia_k), _mia_scores(per_set["holdout"], cfg.mia_k)
            for a in sf:
                metrics[f"mia_{a}_auc"] = mia.mia_auc(sf[a], sh[a])
        if oracle is not None:
            o_tr = [e["truth_ratio"] for e in oracle["examples"] if e["set"] == "forget" and "truth_ratio" in e]
            c_tr = [r["truth_ratio"] for r in f if "truth_ratio" in r]
            if o_tr and c_tr:
                metrics["forget_quality"] = logit.forget_quality(c_tr, o_tr)
            if "mia_min_k_auc" in metrics and "mia_min_k_auc" in oracle["metrics"]:
                metrics["privleak"] = mia.privleak(metrics["mia_min_k_auc"], oracle["metrics"]["mia_min_k_auc"])
    if was_training:
        model.train()
    return metrics, examples


def _es(hits: list[int]) -> float:
    """Extraction strength from per-token greedy hits: share of the longest exactly-predicted answer suffix."""
    return float(logit.extraction_strength_per_example(np.array([hits]), np.ones((1, len(hits))))[0]) if hits else 0.0


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))
