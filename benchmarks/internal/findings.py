"""Internal evaluators on the shipped TinyFacts target: do they tell knowledge removed from answers suppressed?

Runs, on forget10 seed 0 with the embedded presets, GA restricted to the last layer (untied LM head + final norm),
GA, NPO, SimNPO and Needle, each evaluated with ``--suite full`` (logit + internal keys), and puts them next to the
target and the retain-only oracle (their cached internal evaluations). Writes ``findings.csv``, ``findings.md`` and
``findings.png`` (per-block forget CKA to the original and probe accuracy) into ``--results``.

    PYTHONPATH=. python benchmarks/internal/findings.py --out /tmp/internal_runs --results benchmarks/results/internal

The paper findings it checks: (a) Kim et al. 2025 (arXiv 2503.06991): a last-layer-only unlearning lowers forget
accuracy while the forget-set CKA to the original stays near 1 and a probe still recovers the answers, unlike the
oracle; (b) Hong et al. 2024 (arXiv 2406.11614): fine-tuning methods (GA, NPO, SimNPO) move the validated concept
vectors far less than Needle does at comparable forget accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

RUNS = (  # (label, method, overrides)
    # lr 1e-3 for the head alone (measured: 6e-4 leaves forget_acc 0.96, 1.5e-3 takes retain_acc to 0.18)
    ("ga_head", "ga", [("params", "head"), ("lr", "1e-3")]),
    ("ga", "ga", []),
    ("npo", "npo", []),
    ("simnpo", "simnpo", []),
    # no concept vector of the shipped target validates (concept_vectors/README.md): Needle runs on the located,
    # unvalidated vectors; lr 5e-2 is the smallest of its sweep that lowers forget accuracy (1e-2: 0.97)
    ("needle_located", "needle", [("require_validated", "false"), ("lr", "5e-2")]),
)
LOCATED = ("cosine", "l2_above_floor", "jaccard_same_E", "jaccard_own_E", "related_rate")
KEYS = ("forget_acc", "forget_para_acc", "retain_acc", "forget_cka_original", "forget_cka_oracle",
        "retain_cka_original", "forget_probe_acc", "forget_probe_ci_low", "forget_probe_ci_high",
        "forget_probe_chance", "forget_knn_acc", "forget_lens_rank", "forget_lens_depth", "cv_cosine", "cv_l2",
        "cv_jaccard_original", "cv_related_rate", "cv_n_validated",
        *[f"located_{k}" for k in LOCATED])  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/internal_runs", help="runs root")
    ap.add_argument("--results", default="benchmarks/results/internal", help="where the table and figure go")
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma list of run labels (default: all)")
    a = ap.parse_args(argv)
    from unlearn.runner import RunArgs, compare_table, run
    from unlearn.store import read_json

    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    cols: dict[str, dict] = {}
    layers: dict[str, list] = {}
    only = {s for s in a.only.split(",") if s}
    for label, method, ov in RUNS:
        if only and label not in only:
            continue
        t0 = time.time()
        rdir = run(
            RunArgs(
                method=method,
                split=a.split,
                seed=a.seed,
                out=str(Path(a.out) / label),
                overrides=[(k, v) for k, v in ov],
                reuse=True,
                save_model=True,
                progress=False,
            ),
            log=lambda *x: None,
        )
        table = compare_table(rdir, log=lambda *x: None)
        cols.setdefault("target", table["target"])
        if "oracle" in table:
            cols.setdefault("oracle", table["oracle"])
        cols[label] = read_json(rdir / "metrics.json")
        cols[label].update(_located_drift(rdir / "model", a.split))
        with open(rdir / "layers.csv") as f:
            layers[label] = list(csv.DictReader(f))
        print(f"{label}: {time.time() - t0:.0f} s", flush=True)
    order = ["target", *[r[0] for r in RUNS if r[0] in cols], "oracle"]
    with open(out / "findings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", *KEYS])
        for c in order:
            if c in cols:
                w.writerow([c, *[cols[c].get(k) for k in KEYS]])
    md = ["| key | " + " | ".join(c for c in order if c in cols) + " |", "|---" * (1 + len(cols)) + "|"]
    for k in KEYS:
        md.append(f"| `{k}` | " + " | ".join(_fmt(cols[c].get(k)) for c in order if c in cols) + " |")
    (out / "findings.md").write_text("\n".join(md) + "\n")
    (out / "findings.json").write_text(json.dumps({c: cols[c] for c in order if c in cols}, indent=1))
    _plot(layers, out / "findings.png")
    print("\n".join(md))
    return 0


def _located_drift(model_dir: Path, split: str) -> dict:
    """Drift of the forget entities' *located* (not validated) concept vectors, candidate vs the original: what
    the cv_* keys would hold if validation had passed (none does on the shipped target)."""
    from unlearn.concepts import drift, load_vectors, package_vectors_path
    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.targets.llm import load_causal_lm
    from unlearn.targets.resolve import resolve_paths

    _, tdir, _, _, bcfg = resolve_paths("tiny", "tinyfacts", split, log=lambda *x: None)
    sets, _, _ = load_sets("tinyfacts", split, DataFiles(), bcfg.data)
    ents = {r["entity"] for r in sets["forget"]}
    vecs = [v for v in load_vectors(package_vectors_path())["vectors"] if v["concept"] in ents]
    res = drift(load_causal_lm(tdir), load_causal_lm(str(model_dir)), vecs)["means"]
    return {f"located_{k}": res[k] for k in LOCATED}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
    return str(v)


def _plot(layers: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    done_ref = set()
    for label, rows in layers.items():
        for model in ("candidate", "original", "oracle"):
            f = [r for r in rows if r["set"] == "forget" and r["model"] == model]
            if not f or (model != "candidate" and model in done_ref):
                continue
            name = label if model == "candidate" else model
            x = [int(r["layer"]) for r in f]
            ls = "-o" if model == "candidate" else "--"
            for ax, key in ((axes[0], "cka_original"), (axes[1], "probe_acc")):
                y = [float(r[key]) if r[key] else float("nan") for r in f]
                ax.plot(x, y, ls, label=name)
            if model != "candidate":
                done_ref.add(model)
    axes[0].set_title("forget-set CKA to the original, per block", fontsize=10)
    axes[1].set_title("probe accuracy on forget answers, per block", fontsize=10)
    for ax in axes:
        ax.set_xlabel("block")
        ax.set_xticks(sorted({int(r["layer"]) for rows in layers.values() for r in rows}))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
