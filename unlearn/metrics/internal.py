"""The LLM internal suite: representation similarity, recoverability (probe, k-NN, logit lens), concept-vector drift.

Logit metrics read the output; these read the inside (docs/evaluators/). A model that only learned to *suppress* an
answer keeps the forget entities' representations (CKA to the original near 1), still encodes the answer linearly
(a probe trained on retain entities recovers it on forget entities) and keeps the value vectors that carry it; the
retain-only oracle, which never learned the facts, shows none of that. Every key is computed for any candidate --
the original and the oracle themselves included -- so their columns are the two ends of the scale.

Protocol (one hidden-state position, default the last prompt token; residual stream after every block):

* ``{set}_cka_{ref}``: linear CKA (biased HSIC, Kornblith et al. 2019) between the candidate's and the reference
  model's hidden states on the same ``set`` inputs at the last block; ``..._min`` is the minimum over blocks. The
  unbiased-HSIC value per layer is in ``layers.csv``.
* ``{set}_probe_acc``: a multinomial logistic-regression probe predicting the answer string from frozen hidden
  states, trained on retain-train entities that are not in the retain evaluation set and tested on ``set`` (forget:
  entities the model should have forgotten; retain: held-out retain entities). Best layer; its 95% Wilson interval
  and chance level (the training majority label) are ``{set}_probe_ci_low/high`` and ``{set}_probe_chance``.
  ``{set}_knn_acc``: the same split with a cosine 5-nearest-neighbour classifier, best layer.
* ``forget_lens_rank``: logit lens (each block's residual through the model's own final norm and unembedding):
  per forget question the best rank over blocks of the true answer's first (non-space) token, median over
  questions (1: some depth still puts the answer on top). ``forget_lens_depth``: the block where the true token's
  mean lens probability peaks, as a fraction of depth (1.0: at the output; less: it peaks inside and is suppressed
  above).
* ``cv_*``: drift of the validated concept vectors of the forget entities (docs/evaluators/concept-vectors.md),
  candidate against the original; ``None`` when no validated vector exists for this model.

Hidden states of fixed models (the original and the oracle) are cached under ``$UNLEARN_HOME/hidden`` keyed by
weights, prompt format, records, position and code version, like their logit evaluations.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from unlearn.metrics import register_metric
from unlearn.store import source_hash

_REFS = ("original", "oracle")
register_metric("forget_cka_{ref}", "representation", "oracle",
                "linear CKA (biased HSIC) of the last block's hidden states, candidate vs {ref} model, on forget "
                "inputs (1 = unchanged); the oracle's own value is the target", "[0, 1]", {"ref": _REFS})  # fmt: skip
register_metric("forget_cka_{ref}_min", "representation", "oracle",
                "minimum over blocks of the per-block forget-set linear CKA, candidate vs {ref}", "[0, 1]",
                {"ref": _REFS})  # fmt: skip
register_metric("retain_cka_{ref}", "representation", "higher",
                "linear CKA of the last block's hidden states, candidate vs {ref}, on retain inputs", "[0, 1]",
                {"ref": _REFS})  # fmt: skip
register_metric("retain_cka_{ref}_min", "representation", "higher",
                "minimum over blocks of the per-block retain-set linear CKA, candidate vs {ref}", "[0, 1]",
                {"ref": _REFS})  # fmt: skip
register_metric("forget_probe_acc", "recoverability", "oracle",
                "best-layer accuracy of a linear probe (trained on retain entities) recovering the forget answers "
                "from hidden states", "[0, 1]")  # fmt: skip
register_metric(
    "retain_probe_acc",
    "recoverability",
    "higher",
    "best-layer linear-probe accuracy on held-out retain entities",
    "[0, 1]",
)
register_metric("{set}_probe_ci_low", "recoverability", "none", "95% Wilson lower bound of {set}_probe_acc",
                "[0, 1]", {"set": ("forget", "retain")})  # fmt: skip
register_metric("{set}_probe_ci_high", "recoverability", "none", "95% Wilson upper bound of {set}_probe_acc",
                "[0, 1]", {"set": ("forget", "retain")})  # fmt: skip
register_metric("{set}_probe_chance", "recoverability", "none",
                "chance level of the probe on {set}: accuracy of the training set's majority answer", "[0, 1]",
                {"set": ("forget", "retain")})  # fmt: skip
register_metric(
    "forget_knn_acc",
    "recoverability",
    "oracle",
    "best-layer cosine 5-NN accuracy (neighbours among retain entities) on the forget answers",
    "[0, 1]",
)
register_metric(
    "retain_knn_acc",
    "recoverability",
    "higher",
    "best-layer cosine 5-NN accuracy on held-out retain entities",
    "[0, 1]",
)
register_metric("forget_lens_rank", "recoverability", "oracle",
                "logit lens: median over forget questions of the best rank over blocks of the true answer's first "
                "token (1 = top at some depth)", ">= 1")  # fmt: skip
register_metric("forget_lens_depth", "recoverability", "none",
                "logit lens: block of peak mean true-token probability on forget questions, as a fraction of depth "
                "(1 = at the output)", "(0, 1]")  # fmt: skip


@dataclass
class InternalConfig:
    position: str = "prompt"  # hidden-state position: prompt (last prompt token) | entity | answer
    batch_size: int = 64  # sequences per hidden-state forward pass
    probe_max_train: int = 4000  # probe / k-NN training rows at most (sampled with `seed`): bounds the cost
    max_examples: int = 4000  # rows per evaluated set at most (first ones): bounds memory of in-memory states
    knn_k: int = 5  # neighbours, cosine metric (as UUEF's k-NN evaluation)
    seed: int = 0  # probe-training subsample


@dataclass
class FixedModel:
    """A model whose hidden states are cached: the original or the oracle. ``load()`` runs on a cache miss only."""

    path: str
    load: object


def probe_split(retain_train: list[dict], retain_eval: list[dict], cfg: InternalConfig) -> list[dict]:
    """Probe-training records: retain-train records of entities absent from the retain evaluation set (records
    without an ``entity`` field: retain-train records whose question is not in the retain evaluation set)."""
    if any(r.get("entity") for r in retain_eval):
        held = {r.get("entity") for r in retain_eval}
        rows = [r for r in retain_train if r.get("entity") not in held]
    else:
        held_q = {r["question"] for r in retain_eval}
        rows = [r for r in retain_train if r["question"] not in held_q]
    if len(rows) > cfg.probe_max_train:
        rows = random.Random(cfg.seed).sample(rows, cfg.probe_max_train)
    return rows


# ----------------------------------------------------------------------------------------------- hidden states
def _code_version() -> str:
    return source_hash(("targets/hidden.py", "targets/arch.py", "targets/llm.py"))


def _key(ident: str, tok, fmt, recs: list[dict], position: str) -> str:
    """Key of a fixed model's hidden states: weights (`unlearn.workflow.weights_ident`), tokenizer, prompt format,
    records, position and code version."""
    from unlearn.targets.llm import tokenizer_hash

    data = hashlib.sha256(json.dumps([(r["question"], r["answer"]) for r in recs]).encode()).hexdigest()
    parts = [ident, tokenizer_hash(tok), asdict(fmt), data, position, _code_version()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _states(model, tok, fmt, recs, cfg: InternalConfig, accelerator=None):
    """(n, L, d) float32 states and (n,) validity at ``cfg.position``, gathered in record order."""
    from unlearn.targets.hidden import collect_hidden

    return collect_hidden(model, tok, fmt, recs, position=cfg.position, batch_size=cfg.batch_size,
                          accelerator=accelerator)  # fmt: skip


_MEMO: dict[str, object] = {}  # fixed models loaded once per process


def fixed_states(fm: FixedModel, tok, fmt, recs, cfg: InternalConfig):
    """A fixed model's states, from ``$UNLEARN_HOME/hidden/<key>.npz`` or computed once and saved atomically."""
    import numpy as np
    import torch

    from unlearn.store import unlearn_home
    from unlearn.workflow import weights_ident

    def model():
        if fm.path not in _MEMO:
            _MEMO.clear()  # one fixed model in memory at a time
            _MEMO[fm.path] = fm.load()
        return _MEMO[fm.path]

    ident = weights_ident(fm.path)
    if ident is None:  # a hub id not on disk yet: once loaded (downloaded), its snapshot identifies it
        model()
        ident = weights_ident(fm.path)
    if ident is None:  # unidentifiable files: computed, never cached
        return _states(model(), tok, fmt, recs, cfg)
    p = unlearn_home() / "hidden" / f"{_key(ident, tok, fmt, recs, cfg.position)}.npz"
    if p.exists():
        z = np.load(p)
        return torch.from_numpy(z["states"]), torch.from_numpy(z["valid"])
    S, v = _states(model(), tok, fmt, recs, cfg)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp{random.getrandbits(32)}.npz")
    np.savez(tmp, states=S.numpy(), valid=v.numpy())
    tmp.replace(p)
    return S, v


# ----------------------------------------------------------------------------------------------- the suite
def _cka_layers(X, Y, valid):
    """Per-layer (biased, unbiased) linear CKA of (n, L, d) states on the rows valid on both sides."""
    from unlearn.metrics.representation import LayerwiseCKA

    X, Y = X[valid], Y[valid]
    out = []
    for unbiased in (False, True):
        acc = LayerwiseCKA(X.shape[1], unbiased=unbiased)
        for i in range(0, X.shape[0], 512):  # the streaming accumulator: exact for any batch split
            acc.update(X[i : i + 512], Y[i : i + 512])
        out.append(acc.values())
    return out


def _labels(recs):
    return [r["answer"] for r in recs]


def _first_answer_token(tok, fmt, rec) -> int:
    """The first answer token that is not bare whitespace (byte-level BPE splits " 1968" into " ", "1", ...: a
    lens on the space would measure nothing about the fact)."""
    from unlearn.targets.llm import encode_qa

    _, labels = encode_qa(tok, fmt, rec["question"], rec["answer"])
    ans = [t for t in labels if t != -100]
    return next((t for t in ans if tok.decode([t]).strip()), ans[0])


def internal_metrics(model, tok, fmt, sets: dict, probe_train: list[dict], original: FixedModel | None = None,
                     oracle: FixedModel | None = None, vectors=None, cfg: InternalConfig | None = None,
                     accelerator=None, self_ref: str | None = None) -> tuple[dict, list[dict]]:  # fmt: skip
    """The internal keys of ``model`` and its per-layer rows (``layers.csv``).

    Args:
        sets: evaluation sets; ``forget`` and ``retain`` are used.
        probe_train: retain-train records for the probe / k-NN (see `probe_split`).
        original, oracle: the references for CKA (``None``: those keys are ``None``).
        vectors: the concept-vector drift adaptor's input (see `unlearn.metrics.concept_drift`), or None.
        self_ref: ``"original"`` / ``"oracle"`` when ``model`` *is* that reference (its CKA to itself is 1 by
            definition; computing it would only re-derive that).
    """
    import numpy as np
    import torch

    from unlearn.metrics.lens import lens_stats
    from unlearn.metrics.probe import fit_probe, knn_accuracy, majority_chance, wilson_interval
    from unlearn.targets.arch import arch

    cfg = cfg or InternalConfig()
    A = arch(model)
    L = A.n_layers
    m: dict = {}
    rows: dict[tuple[str, int], dict] = {(s, i): {"set": s, "layer": i + 1} for s in ("forget", "retain")
                                         for i in range(L)}  # fmt: skip
    names = [s for s in ("forget", "retain") if sets.get(s)]
    ev = {s: sets[s][: cfg.max_examples] for s in names}
    cand = {s: _states(model, tok, fmt, ev[s], cfg, accelerator) for s in names}

    # representation similarity against each reference
    for ref, fm in (("original", original), ("oracle", oracle)):
        for s in names:
            if fm is None and self_ref != ref:
                m[f"{s}_cka_{ref}"] = m[f"{s}_cka_{ref}_min"] = None
                continue
            if self_ref == ref:
                biased = unbiased = [1.0] * L
            else:
                Y, vy = fixed_states(fm, tok, fmt, ev[s], cfg)
                biased, unbiased = _cka_layers(cand[s][0], Y, cand[s][1] & vy)
            m[f"{s}_cka_{ref}"], m[f"{s}_cka_{ref}_min"] = biased[-1], float(min(biased))
            for i in range(L):
                rows[(s, i)][f"cka_{ref}"], rows[(s, i)][f"cka_{ref}_unbiased"] = biased[i], unbiased[i]

    # recoverability: probe and k-NN trained on retain entities outside the retain evaluation set
    if not probe_train:  # nothing to train a probe on (e.g. a retain set that is all evaluation): say so, no number
        for s in names:
            for k in ("probe_acc", "probe_ci_low", "probe_ci_high", "probe_chance", "knn_acc"):
                m[f"{s}_{k}"] = None
        names_probe: list[str] = []
    else:
        names_probe = list(names)
    if names_probe:
        Xtr, vtr = _states(model, tok, fmt, probe_train, cfg, accelerator)
        ytr = np.array(_labels(probe_train), dtype=object)[vtr.numpy()]
        Xtr = Xtr[vtr]
    tests = {}
    for s in names_probe:
        X, v = cand[s]
        tests[s] = (X[v], np.array(_labels(ev[s]), dtype=object)[v.numpy()])
    best: dict[str, dict] = {}
    for i in range(L if names_probe else 0):
        predict = fit_probe(Xtr[:, i], ytr, seed=cfg.seed)  # one fit per block serves every test set
        for s, (X, y) in tests.items():
            pred = predict(X[:, i])
            k = int((pred == y.astype(str)).sum())
            lo, hi = wilson_interval(k, len(y))
            pr = {"acc": k / len(y), "lo": lo, "hi": hi, "chance": majority_chance(ytr, y)}
            kn = knn_accuracy(Xtr[:, i].numpy(), ytr, X[:, i].numpy(), y, k=cfg.knn_k)
            rows[(s, i)].update(probe_acc=pr["acc"], probe_ci_low=pr["lo"], probe_ci_high=pr["hi"],
                                probe_chance=pr["chance"], knn_acc=kn["acc"])  # fmt: skip
            if s not in best or pr["acc"] > best[s]["acc"]:
                best[s] = pr
    for s in names_probe:
        b = best[s]
        m[f"{s}_probe_acc"], m[f"{s}_probe_ci_low"], m[f"{s}_probe_ci_high"] = b["acc"], b["lo"], b["hi"]
        m[f"{s}_probe_chance"] = b["chance"]
        m[f"{s}_knn_acc"] = max(rows[(s, i)]["knn_acc"] for i in range(L))

    # logit lens on the forget questions (prompt position only: the state that predicts the answer's first token)
    if "forget" in names and cfg.position == "prompt":
        X, v = cand["forget"]
        tgt = torch.tensor([_first_answer_token(tok, fmt, r) for r in ev["forget"]])
        ranks, probs = [], []
        with torch.no_grad():
            for i in range(0, X.shape[0], cfg.batch_size):
                r, p = lens_stats(A, X[i : i + cfg.batch_size].to(A.unembedding().device), tgt[i : i + cfg.batch_size])
                ranks.append(torch.as_tensor(r).cpu())
                probs.append(torch.as_tensor(p).cpu().float())
        ranks, probs = torch.cat(ranks), torch.cat(probs)  # (n, L)
        m["forget_lens_rank"] = float(ranks.min(1).values.double().median())
        mean_p = probs.mean(0)
        m["forget_lens_depth"] = float((int(mean_p.argmax()) + 1) / L)
        for i in range(L):
            rows[("forget", i)].update(lens_rank_median=float(ranks[:, i].double().median()),
                                       lens_prob_mean=float(mean_p[i]))  # fmt: skip
    else:
        m["forget_lens_rank"] = m["forget_lens_depth"] = None

    from unlearn.metrics.concept_drift import cv_metrics

    m.update(cv_metrics(model, vectors))
    return m, [r for r in rows.values()]


# ----------------------------------------------------------------------------------------------- workflow glue
def _suite_code_version() -> str:
    return source_hash(("metrics/internal.py", "metrics/representation.py", "metrics/probe.py", "metrics/lens.py",
                        "metrics/concept_drift.py", "concepts.py", "assets/concept_vectors/tinyfacts.json"),
                       salt=_code_version())  # fmt: skip


@dataclass
class InternalSuite:
    """The internal suite bound to one evaluation: sets, probe data, references and concept vectors.

    ``vectors`` is a callable returning the `DriftInput` (or None); it is called lazily because it loads the
    original model a second time (the candidate may be the original, unlearned in place).
    """

    tok: object
    fmt: object
    sets: dict
    probe_train: list
    original: FixedModel | None
    oracle: FixedModel | None
    vectors: object = None  # () -> DriftInput | None
    cfg: InternalConfig | None = None

    def evaluate(self, model, accelerator=None, self_ref: str | None = None) -> tuple[dict, list[dict]]:
        vec = self.vectors() if callable(self.vectors) else None
        return internal_metrics(model, self.tok, self.fmt, self.sets, self.probe_train, self.original, self.oracle,
                                vec, self.cfg, accelerator, self_ref)  # fmt: skip

    def cached(self, path: str, load, self_ref: str | None) -> dict:
        """A fixed model's internal evaluation, once per key under ``$UNLEARN_HOME/internal``: metrics and layers
        (keyed by weights, tokenizer, prompt format, data, probe data, config, references and code version)."""
        from unlearn.data.benchmarks import data_hash
        from unlearn.store import atomic_write_json, read_json, unlearn_home
        from unlearn.targets.llm import tokenizer_hash
        from unlearn.workflow import weights_ident

        def ident(fm):
            return None if fm is None else (weights_ident(fm.path) or f"unidentified:{fm.path}")

        model, own = None, weights_ident(path)
        if own is None:  # a hub id not on disk yet: load (download) first, then its snapshot identifies it
            model = load()
            own = weights_ident(path)
        parts = [own or f"unidentified:{path}", tokenizer_hash(self.tok), asdict(self.fmt), data_hash(self.sets),
                 data_hash({"probe": self.probe_train}), asdict(self.cfg or InternalConfig()), self_ref,
                 ident(self.original), ident(self.oracle), _suite_code_version()]  # fmt: skip
        key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
        p = unlearn_home() / "internal" / f"{key}.json"
        cacheable = not parts[0].startswith("unidentified:")  # files that cannot be identified: never cached
        if cacheable and p.exists():
            return read_json(p)
        m, rows = self.evaluate(model if model is not None else load(), self_ref=self_ref)
        res = {"key": key, "model": path, "metrics": m, "layers": rows}
        if cacheable:
            atomic_write_json(p, res)
        return res


LAYER_COLUMNS = ("model", "set", "layer", "cka_original", "cka_original_unbiased", "cka_oracle",
                 "cka_oracle_unbiased", "probe_acc", "probe_ci_low", "probe_ci_high", "probe_chance", "knn_acc",
                 "lens_rank_median", "lens_prob_mean")  # fmt: skip


def write_layers(rdir, series: dict[str, list[dict]]) -> None:
    """``layers.csv`` (one row per model x set x block) and ``layers.png`` (CKA and probe accuracy per block).

    ``series``: model label (candidate, original, oracle) -> its per-layer rows.
    """
    import csv
    import io

    from unlearn.store import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LAYER_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for label, rows in series.items():
        for r in rows:
            w.writerow({"model": label, **{k: ("" if r.get(k) is None else r.get(k)) for k in LAYER_COLUMNS[1:]}})
    atomic_write_text(Path(rdir) / "layers.csv", buf.getvalue())
    plot_layers(series, Path(rdir) / "layers.png")


def plot_layers(series: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"candidate": ("C3", "-o"), "original": ("C0", "--s"), "oracle": ("C2", ":^")}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, rows in series.items():
        c, st = styles.get(label, ("C7", "-"))
        f = [r for r in rows if r["set"] == "forget"]
        x = [r["layer"] for r in f]
        for ax, key, ttl in ((axes[0], "cka_original", "forget CKA to the original"),
                             (axes[1], "cka_oracle", "forget CKA to the oracle")):  # fmt: skip
            y = [r.get(key) for r in f]
            if any(v is not None for v in y):
                ax.plot(x, [float("nan") if v is None else v for v in y], st, color=c, label=label)
            ax.set_title(ttl, fontsize=10)
            ax.set_ylim(-0.02, 1.02)
        if any(r.get("probe_acc") is not None for r in f):
            axes[2].plot(x, [r["probe_acc"] for r in f], st, color=c, label=label)
            lo = [r["probe_ci_low"] for r in f]
            hi = [r["probe_ci_high"] for r in f]
            axes[2].fill_between(x, lo, hi, color=c, alpha=0.12)
            chance = f[0].get("probe_chance")
    if any(r.get("probe_acc") is not None for rows in series.values() for r in rows):
        axes[2].axhline(chance, color="k", lw=0.8, ls="--", label="chance")
    axes[2].set_title("probe recovers forget answers (95% CI)", fontsize=10)
    axes[2].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xlabel("block")
        ax.set_xticks(sorted({r["layer"] for rows in series.values() for r in rows}))
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
