"""Run a metric suite on a model: per-example values and the flat ``metrics.json``.

Suites:
    ``basic``  ``{s}_acc``, ``{s}_prob``, ``{s}_rougeL_recall`` for s in forget, retain, world_facts, arithmetic.
    ``full``   basic + ROUGE-L F1, truth ratios, paraphrased-question variants, TOFU's normalised probability on
               world_facts / arithmetic / real_authors, exact memorization, extraction strength, MIA AUCs (forget
               vs holdout), and, given the oracle's per-example values, forget_quality, privleak and model_utility.

Speed: the work is planned first, then run in two passes over *all* sets at once — one greedy-generation pass over
every prompt (length-sorted batches of ``gen_batch_size``, capped at ``max_new_tokens``, each sequence stopping at
its EOS) and one teacher-forced scoring pass over every (question, answer) pair (length-sorted batches of
``batch_size``; the LM head runs on answer positions only). The holdout set is only scored (MIA needs no
generation).

Processes: with an accelerate ``accelerator`` of several processes, every set is sharded across them (example i
goes to process ``i % n``), per-example values are gathered back in order, and the aggregates are computed from
the full lists on every process — so the metrics equal one process's (up to float noise of different batch
compositions). Every process must call `evaluate` with the same sets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from unlearn.data.benchmarks import data_hash
from unlearn.metrics import logit, mia
from unlearn.store import atomic_write_json, read_json, source_hash, unlearn_home
from unlearn.targets.llm import (
    PromptFormat,
    _unwrap,
    answer_token_logits,
    collate,
    encode_prompt,
    encode_qa,
    greedy_generate,
    token_logps,
    tokenizer_hash,
)
from unlearn.workflow import weights_ident

SETS = ("forget", "retain", "world_facts", "arithmetic", "real_authors", "bio_only")  # the order they are reported
UTILITY_SETS = ("retain", "world_facts", "arithmetic", "real_authors")  # those present enter model_utility
OPTION_SETS = ("world_facts", "arithmetic", "real_authors")  # TOFU's utility sets: normalised prob, original answer
_TOKEN_KEYS = ("token_logp", "mu", "sigma", "hits", "eos")  # per-token values: used for metrics, not in examples


COMPAT = ("none", "open-unlearning")


@dataclass
class EvalConfig:
    """Evaluation settings. The defaults are the embedded target's (answers of ~2 tokens: a short generation cap);
    `eval_config` gives each benchmark its reference preset (TOFU: docs/tofu-parity.md)."""

    suite: str = "full"  # basic | full | internal (internal: no logit metric here; see metrics/internal.py)
    batch_size: int = 64  # sequences per scoring forward pass
    max_new_tokens: int = 32  # generation cap
    mia_k: float = 0.4  # Min-K% / Min-K%++ fraction
    gen_batch_size: int = 0  # prompts per generation batch (0: batch_size); larger = fewer decoding steps on a GPU
    # metric conventions: "none" = each metric's paper definition over the answer's own tokens (EOS excluded from
    # exact memorization, extraction strength, Min-K, Min-K++; extraction strength's k in 0..|y|);
    # "open-unlearning" = its per-example values (k capped at |y|-1, zlib of " " + answer; docs/tofu-parity.md)
    compat: str = "none"
    # the dtype fixed models (target, oracle) are loaded in for their cached evaluations: bf16 when the run trains
    # bf16 weights (precision=bf16), so that all three columns are measured alike, as open-unlearning evaluates
    weights: str = "fp32"

    @property
    def torch_dtype(self):
        return torch.bfloat16 if self.weights == "bf16" else torch.float32


# TOFU as open-unlearning evaluates it (configs/eval/tofu.yaml: batch_size 32; configs/generation/default.yaml:
# greedy, max_new_tokens 200). TOFU's own eval_everything.yaml caps generation at max_length 200 (prompt included).
# 32 new tokens would truncate most TOFU answers (68% of retain, 77% of forget answers in TOFU's Llama-2 log).
EVAL_PRESETS: dict[str, dict] = {"tofu": {"batch_size": 32, "max_new_tokens": 200}}


def eval_config(benchmark: str, suite: str = "full", compat: str = "none") -> EvalConfig:
    """The evaluation settings of ``benchmark`` (its preset over the defaults)."""
    from unlearn.errors import unknown_name

    if compat not in COMPAT:
        raise unknown_name("--compat", compat, COMPAT)
    return EvalConfig(suite=suite, compat=compat, **EVAL_PRESETS.get(benchmark, {}))


# ----------------------------------------------------------------------------------------------- sharding
class _Shard:
    """Which examples this process handles, and how to gather per-example results back in order.

    The process count comes from torch.distributed when it is initialized: on a CPU-only machine
    ``accelerate launch --multi_gpu`` starts a gloo group, but an ``Accelerator()`` made without ``cpu=True``
    reports one process (DistributedType.NO) — trusting it would make every process evaluate everything.
    """

    def __init__(self, accelerator=None):
        self.acc = accelerator
        self.n, self.rank = 1, 0
        if accelerator is not None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                self.n, self.rank = dist.get_world_size(), dist.get_rank()
            else:
                self.n, self.rank = accelerator.num_processes, accelerator.process_index

    @property
    def main(self) -> bool:
        return self.rank == 0

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
    """Indices sorted by length, cut into batches (similar lengths together: little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_answers(
    model,
    tokenizer,
    fmt: PromptFormat,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 64,
    token_stats: bool | Sequence[bool] = False,
    progress: bool = False,
    desc: str = "score",
) -> list[dict]:
    """Teacher-forced answer log-probs.

    Args:
        token_stats: for all examples (bool) or per example: also return per-token log-probs, Min-K%++ moments and
            greedy-prediction hits (for MIA, exact memorization, extraction strength).

    Returns:
        per example ``{"logp": summed answer log-prob, "n": answer tokens}`` (+ ``token_logp``, ``mu``, ``sigma``,
        ``hits`` lists where asked).
    """
    device = next(model.parameters()).device
    items = [encode_qa(tokenizer, fmt, q, a) for q, a in zip(questions, answers)]
    stats = [bool(token_stats)] * len(items) if isinstance(token_stats, bool) else [bool(s) for s in token_stats]
    res: list[dict | None] = [None] * len(items)
    for idx in tqdm(_buckets([len(i[0]) for i in items], batch_size), desc=desc, disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], tokenizer.pad_token_id).items()}
        logits, targets, row = answer_token_logits(model, batch)  # (N, V), (N,), (N,)
        lp_c = token_logps(logits, targets).float().cpu().numpy()  # (N,)
        row_c = row.cpu().numpy()
        want = [stats[i] for i in idx]
        if any(want):
            # the full-vocabulary moments only where asked: (N, V) float32 temporaries are the costly part
            sel_rows = torch.tensor([j for j, w in enumerate(want) if w], device=row.device)
            keep = torch.isin(row, sel_rows)
            tl, mu, sigma = mia.min_k_stats_from_logits(logits[keep], targets[keep])
            hits = (logits[keep].argmax(-1) == targets[keep]).cpu().numpy()
            mu, sigma, krow = mu.float().cpu().numpy(), sigma.float().cpu().numpy(), row_c[keep.cpu().numpy()]
        for j, i in enumerate(idx):
            sel = row_c == j
            r = {"logp": float(lp_c[sel].sum()), "n": int(sel.sum())}
            if want[j]:
                ks = krow == j
                labels = items[i][1]
                r.update(
                    token_logp=lp_c[sel].tolist(),
                    mu=mu[ks].tolist(),
                    sigma=sigma[ks].tolist(),
                    hits=hits[ks].astype(int).tolist(),
                    # whether the last scored token is the EOS encode_qa appends (not a token of the answer itself)
                    eos=bool(labels) and labels[-1] == tokenizer.eos_token_id,
                )
            res[i] = r
    return res  # type: ignore[return-value]


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    fmt: PromptFormat,
    questions: Sequence[str],
    batch_size: int = 64,
    max_new_tokens: int = 32,
    progress: bool = False,
) -> list[str]:
    """Greedy answers (decoded, stripped), in length-sorted batches; each sequence stops at its EOS."""
    lm = _unwrap(model)  # generate() lives on the transformers model, not on a DDP wrapper
    prompts = [encode_prompt(tokenizer, fmt, q) for q in questions]
    out: list[str | None] = [None] * len(prompts)
    for idx in tqdm(
        _buckets([len(p) for p in prompts], batch_size), desc="generate", disable=not progress, leave=False
    ):
        gen = greedy_generate(lm, tokenizer, [prompts[i] for i in idx], max_new_tokens=max_new_tokens)
        for i, g in zip(idx, gen):
            out[i] = tokenizer.decode(g, skip_special_tokens=True).strip()
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    """What is computed for one set; decided on the *full* set so that every process does the same."""

    name: str
    generate: bool  # greedy answers (not for holdout)
    stats: bool  # per-token stats of the answer (forget and holdout, full suite)
    truth_ratio: bool  # perturbed answers scored
    k: int  # perturbed answers per example used (the set's minimum)
    para_answer: bool  # paraphrased answer scored (truth-ratio denominator; not for TOFU's option sets)
    para_question: bool  # paraphrased questions generated and scored


def _plan(name: str, recs: list[dict], suite: str) -> _Plan:
    full = suite == "full"
    holdout = name == "holdout"
    tr = full and not holdout and all(r.get("perturbed_answer") for r in recs)
    return _Plan(
        name=name,
        generate=not holdout,
        stats=full and name in ("forget", "holdout"),
        truth_ratio=tr,
        k=min(len(r["perturbed_answer"]) for r in recs) if tr else 0,
        para_answer=tr and name not in OPTION_SETS,
        para_question=full and not holdout and all(r.get("paraphrased_question") for r in recs),
    )


def _local_rows(recs: list[dict], p: _Plan, gen: dict, sc: dict) -> list[dict]:
    """Per-example values of one set's local records from the generations and scores of the two passes."""
    rows = []
    for j, r in enumerate(recs):
        s = sc[("answer", j)]
        row = {
            "question": r["question"],
            "answer": r["answer"],
            "logp": s["logp"],
            "n": s["n"],
            "prob": float(np.exp(s["logp"] / max(s["n"], 1))),
        }
        if p.generate:
            g = gen[("question", j)]
            rec, f1 = logit.rouge_l(g, r["answer"])
            row.update(generation=g, acc=float(logit.exact_match_acc(g, r["answer"])), rougeL_recall=rec, rougeL_f1=f1)
        for k in _TOKEN_KEYS:
            if k in s:
                row[k] = s[k]
        if p.truth_ratio:
            pert = [sc[("perturbed", j, i)] for i in range(p.k)]
            pl, pn = np.array([[x["logp"] for x in pert]]), np.array([[x["n"] for x in pert]])
            # the truth ratio's inputs, per example: each perturbed answer's length-normalised probability
            row["perturbed_prob"] = [float(np.exp(x["logp"] / max(x["n"], 1))) for x in pert]
            if p.name in OPTION_SETS:  # TOFU on real_authors / world_facts: the original answer, normalised prob
                row["truth_ratio"] = float(logit.truth_ratio([s["logp"]], [s["n"]], pl, pn)[0])
                row["norm_prob"] = float(logit.normalised_prob([s["logp"]], [s["n"]], pl, pn)[0])
            else:
                pa = sc[("para_answer", j)]
                row["paraphrased_prob"] = float(np.exp(pa["logp"] / max(pa["n"], 1)))
                row["truth_ratio"] = float(logit.truth_ratio([pa["logp"]], [pa["n"]], pl, pn)[0])
        if p.para_question:
            g, ps = gen[("para_question", j)], sc[("para_question", j)]
            row.update(
                para_generation=g,
                para_acc=float(logit.exact_match_acc(g, r["answer"])),
                para_prob=float(np.exp(ps["logp"] / max(ps["n"], 1))),
                para_rougeL_recall=logit.rouge_l(g, r["answer"])[0],
            )
        rows.append(row)
    return rows


def _run_passes(
    model, tok, fmt, local: dict[str, list[dict]], plans: dict[str, _Plan], cfg: EvalConfig, progress: bool
) -> dict[str, list[dict]]:
    """The generation pass and the scoring pass over every set's local records -> local rows per set."""
    gen_jobs, score_jobs = [], []  # (set, key, question) / (set, key, question, answer, stats)
    for name, recs in local.items():
        p = plans[name]
        for j, r in enumerate(recs):
            if p.generate:
                gen_jobs.append((name, ("question", j), r["question"]))
            score_jobs.append((name, ("answer", j), r["question"], r["answer"], p.stats))
            if p.para_answer:
                score_jobs.append(
                    (name, ("para_answer", j), r["question"], r.get("paraphrased_answer") or r["answer"], False)
                )
            for i in range(p.k):
                score_jobs.append((name, ("perturbed", j, i), r["question"], r["perturbed_answer"][i], False))
            if p.para_question:
                gen_jobs.append((name, ("para_question", j), r["paraphrased_question"]))
                score_jobs.append((name, ("para_question", j), r["paraphrased_question"], r["answer"], False))
    gens = generate_answers(
        model,
        tok,
        fmt,
        [q for _, _, q in gen_jobs],
        cfg.gen_batch_size or cfg.batch_size,
        cfg.max_new_tokens,
        progress=progress,
    )
    scores = score_answers(
        model,
        tok,
        fmt,
        [j[2] for j in score_jobs],
        [j[3] for j in score_jobs],
        cfg.batch_size,
        token_stats=[j[4] for j in score_jobs],
        progress=progress,
    )
    gen_by: dict[str, dict] = {n: {} for n in local}
    sc_by: dict[str, dict] = {n: {} for n in local}
    for (name, key, _), g in zip(gen_jobs, gens):
        gen_by[name][key] = g
    for job, s in zip(score_jobs, scores):
        sc_by[job[0]][job[1]] = s
    return {n: _local_rows(local[n], plans[n], gen_by[n], sc_by[n]) for n in local}


# ----------------------------------------------------------------------------------------------- token metrics
def _own_tokens(r: dict, compat: str) -> int:
    """How many of an example's scored tokens exact memorization, extraction strength and Min-K(++) read.

    Default: the answer's own tokens (the EOS that encode_qa appends is not part of the answer; the papers score
    the text). open-unlearning: its ``tokenwise_logprobs`` / ``tokenwise_vocab_logprobs`` drop the last labelled
    position ("-1 to ignore eos prediction"), whatever it is; in our labels that is the same EOS.
    """
    n = len(r["hits"])
    drop = 1 if compat == "open-unlearning" else int(bool(r.get("eos")))
    return max(n - drop, 0)


def token_metrics(r: dict, k: float, compat: str = "none") -> dict:
    """Per-example exact memorization, extraction strength and MIA scores of one scored answer (with token stats).

    Exact memorization is None without a scored token (left out of the mean, as open-unlearning does); extraction
    strength is 0 then, Min-K / Min-K++ 0 (open-unlearning's score for an empty answer). LOSS and zlib read the
    summed log-prob over every scored token, EOS included, in both conventions (as open-unlearning's avg_loss).
    """
    m = _own_tokens(r, compat)
    hits = np.array(r["hits"][:m])
    ou = compat == "open-unlearning"
    es = logit.extraction_strength_per_example(hits[None], np.ones((1, m)), match_open_unlearning=ou)[0] if m else 0
    text = " " + r["answer"] if ou else r["answer"]  # open-unlearning decodes the labels: " " + answer (issue 12)
    lp = r["token_logp"][:m]
    return {
        "exact_memorization": float(hits.mean()) if m else None,
        "extraction_strength": float(es),
        "mia_loss": float(mia.loss_score(r["logp"], r["n"])),
        "mia_zlib": float(mia.zlib_score(r["logp"], text, n_tokens=r["n"])),
        "mia_min_k": mia.min_k_score(lp, k) if m else 0.0,
        "mia_min_k_plus_plus": mia.min_k_plus_plus_score(lp, r["mu"][:m], r["sigma"][:m], k) if m else 0.0,
    }


# ----------------------------------------------------------------------------------------------- the suite
def evaluate(
    model,
    tokenizer,
    fmt: PromptFormat,
    sets: dict[str, list[dict]],
    cfg: EvalConfig | None = None,
    oracle: dict | None = None,
    accelerator=None,
    progress: bool = False,
) -> tuple[dict, list[dict]]:
    """Evaluate ``model`` on ``sets`` (keys among forget, retain, world_facts, arithmetic, real_authors, holdout).

    Args:
        model: a causal LM (or a DDP / accelerate wrapper of one), evaluated on its own device.
        tokenizer: its tokenizer (with a pad token).
        fmt: how questions become prompts.
        sets: records in the TOFU schema per set.
        cfg: suite, batch sizes, generation cap.
        oracle: the retain-only oracle's ``{"metrics": ..., "examples": ...}`` from an earlier call, for
            forget_quality / privleak (None: those metrics are omitted).
        accelerator: an accelerate ``Accelerator``; with several processes the sets are sharded (every process must
            call this with the same arguments) and all processes return the same result.
        progress: show progress bars (main process only).

    Returns:
        (metrics, examples): flat ``{name: value}`` and per-example rows (each with ``set`` and ``index``).
    """
    cfg = cfg or EvalConfig()
    if cfg.suite == "internal":  # only the internal evaluators (unlearn.metrics.internal): no logit metric
        return {}, []
    shard = _Shard(accelerator)
    was_training = model.training
    model.eval()
    names = [s for s in (*SETS, "holdout") if sets.get(s)]
    if cfg.suite != "full":
        names = [s for s in names if s != "holdout"]
    plans = {n: _plan(n, sets[n], cfg.suite) for n in names}
    local = {n: [sets[n][i] for i in shard.indices(len(sets[n]))] for n in names}
    local_rows = _run_passes(model, tokenizer, fmt, local, plans, cfg, progress=progress and shard.main)
    per_set = {n: shard.gather(local_rows[n], len(sets[n])) for n in names}

    metrics: dict[str, float] = {}
    examples: list[dict] = []
    for name in names:
        rows = per_set[name]
        if plans[name].stats:  # forget / holdout, full suite: every per-example value behind an aggregate
            for row in rows:
                row.update(token_metrics(row, cfg.mia_k, cfg.compat))
        for i, row in enumerate(rows):
            examples.append({"set": name, "index": i, **{k: v for k, v in row.items() if k not in _TOKEN_KEYS}})
        if name == "holdout":
            continue
        p = plans[name]
        metrics[f"{name}_acc"] = _mean(rows, "acc")
        metrics[f"{name}_prob"] = _mean(rows, "norm_prob" if "norm_prob" in rows[0] else "prob")
        metrics[f"{name}_rougeL_recall"] = _mean(rows, "rougeL_recall")
        if cfg.suite == "full":
            metrics[f"{name}_rougeL_f1"] = _mean(rows, "rougeL_f1")
            if p.truth_ratio:
                tr = np.array([r["truth_ratio"] for r in rows])
                agg = logit.forget_truth_ratio_score if name == "forget" else logit.utility_truth_ratio_score
                metrics[f"{name}_truth_ratio"] = agg(tr)
            if p.para_question:
                for k in ("para_acc", "para_prob", "para_rougeL_recall"):
                    metrics[f"{name}_{k}"] = _mean(rows, k)
    if cfg.suite == "full" and "forget" in per_set:
        f = per_set["forget"]
        em = [r["exact_memorization"] for r in f if r["exact_memorization"] is not None]
        metrics["forget_exact_memorization"] = float(np.mean(em)) if em else float("nan")
        metrics["forget_extraction_strength"] = _mean(f, "extraction_strength")
        ukeys = [f"{s}_{m}" for s in UTILITY_SETS if s in per_set for m in ("prob", "rougeL_recall", "truth_ratio")]
        if ukeys and all(k in metrics for k in ukeys):
            metrics["model_utility"] = logit.model_utility({k: metrics[k] for k in ukeys})
        if "holdout" in per_set:
            for a in ("loss", "zlib", "min_k", "min_k_plus_plus"):
                sf, sh = [r[f"mia_{a}"] for r in f], [r[f"mia_{a}"] for r in per_set["holdout"]]
                metrics[f"mia_{a}_auc"] = mia.mia_auc(sf, sh)
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


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


# ----------------------------------------------------------------------------------------------- cached evaluations
def _code_version() -> str:
    """A hash of what decides an evaluation's numbers besides its inputs: the source files of the evaluation, its
    metrics and the tokenization / generation helpers, the package version, and the transformers and torch versions
    (a library upgrade can move generations), so a code change never reuses a stale result."""
    import transformers

    from unlearn import __version__

    return source_hash(
        ("evaluate.py", "metrics/logit.py", "metrics/mia.py", "targets/llm.py"),
        salt=f"{__version__} {transformers.__version__} {torch.__version__}",
    )


def cache_key(ident: str, tok, fmt: PromptFormat, sets: dict, cfg: EvalConfig, oracle: dict | None) -> str:
    """Key of a fixed model's evaluation: its weights and files (``ident``: `unlearn.workflow.weights_ident`), the
    tokenizer it is evaluated with (an oracle is scored with the target's), prompt format, data, evaluation config,
    code version and the oracle evaluation it is compared with."""
    parts = [ident, tokenizer_hash(tok), asdict(fmt), data_hash(sets), asdict(cfg), _code_version(),
             None if oracle is None else oracle.get("key")]  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_evaluate(model_path: str, load, tok, fmt: PromptFormat, sets: dict, cfg: EvalConfig, oracle=None) -> dict:
    """Evaluate a fixed model (target / oracle) once per `cache_key`; cached under ``$UNLEARN_HOME/evals``.

    ``load()`` is called only on a cache miss, or first for a hub id not yet on disk (its snapshot, once
    downloaded, identifies the weights); a model whose files cannot be identified is evaluated and not cached.
    Returns ``{"key", "model", "metrics", "examples"}`` (``key`` None when not cached).
    """
    model, ident = None, weights_ident(model_path)
    if ident is None:
        model = load()
        ident = weights_ident(model_path)
    unknown = ident is None or (oracle is not None and oracle.get("key") is None)  # compared with an uncached oracle
    key = None if unknown else cache_key(ident, tok, fmt, sets, cfg, oracle)
    p = unlearn_home() / "evals" / f"{key}.json"
    if key is not None and p.exists():
        return read_json(p)
    m, ex = evaluate(model if model is not None else load(), tok, fmt, sets, cfg, oracle=oracle)
    res = {"key": key, "model": model_path, "metrics": m, "examples": ex}
    if key is not None:
        atomic_write_json(p, res)
    return res
