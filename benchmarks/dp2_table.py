"""DP2Unlearning over the epsilon presets and both privacy units, next to GA / NPO / SimNPO and the oracle.

    python benchmarks/dp2_table.py --out benchmarks/results [--runs /tmp/dp2_runs] [--epsilons 0.5,1,5,10,inf]
        [--units record,entity] [--parallel 2] [--seed 0]

1. builds (or reuses) the DP bases (`unlearn build tinyfacts-dp`), side by side;
2. runs `unlearn run --method dp2 --set epsilon=E --set privacy_unit=U` on forget10 for each (reused when finished);
3. writes ``dp2.csv`` (one row per base: the base's accountant figures and accuracy, the unlearned model's forget
   quality / model utility / accuracies, the costs), ``dp2.md`` (the table, with GA / NPO / SimNPO from the committed
   ``leaderboard_summary.csv`` and the oracle from ``leaderboard_references.csv``) and ``dp2.png`` (epsilon against
   base retain accuracy, forget quality and model utility, one line per unit).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("forget_quality", "model_utility", "forget_acc", "retain_acc", "world_facts_acc", "arithmetic_acc",
        "privleak", "cost_steps", "cost_tokens", "cost_train_seconds")  # fmt: skip


def _fmt(v) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        return "inf"
    if isinstance(v, float) and v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def run_one(eps: str, unit: str, runs: Path, seed: int) -> Path:
    label = "epsinf" if math.isinf(float(eps)) else f"{unit}-eps{float(eps):g}"
    cmd = [sys.executable, "-m", "unlearn", "run", "--method", "dp2", "--set", f"epsilon={eps}", "--set",
           f"privacy_unit={unit}", "--out", str(runs), "--no-progress", "--reuse", "--seed", str(seed)]  # fmt: skip
    rdir = runs / "tinyfacts" / "tiny" / f"dp2+{label}" / "forget10" / f"seed{seed}"
    if (rdir / "metrics.json").exists():  # finished (delete the folder to redo it)
        return rdir
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    print(f"dp2+{label}: {time.time() - t0:.0f}s", flush=True)
    return rdir


def _reference_rows(results: Path) -> list[dict]:
    rows = []
    with open(results / "leaderboard_summary.csv") as f:
        for r in csv.DictReader(f):
            if r["model"] == "tiny" and r["split"] == "forget10" and r["method"] in ("ga", "npo", "simnpo"):
                rows.append({"method": r["method"], **{k: float(r[f"{k}_mean"]) for k in KEYS if f"{k}_mean" in r}})
    with open(results / "leaderboard_references.csv") as f:
        for r in csv.DictReader(f):
            if r["model"] == "tiny" and r["split"] == "forget10" and r["which"] == "oracle":
                rows.append({"method": "oracle (retrain)", **{k: float(r[k]) for k in KEYS if r.get(k)}})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    finite = sorted({r["epsilon_requested"] for r in rows if math.isfinite(r["epsilon_requested"])})
    x_inf = max(finite) * 4 if finite else 1.0
    for unit, style in (("record", "o-"), ("entity", "s--")):
        pts = sorted((r for r in rows if r["privacy_unit"] in (unit, "none")), key=lambda r: r["epsilon_requested"])
        xs = [r["epsilon_requested"] if math.isfinite(r["epsilon_requested"]) else x_inf for r in pts]
        for ax, key, title in zip(axes, ("base_retain_acc", "forget_quality", "model_utility"),
                                  ("DP base: retain exact match", "after unlearning: forget quality",
                                   "after unlearning: model utility")):  # fmt: skip
            ax.plot(xs, [r[key] for r in pts], style, label=f"{unit} unit")
            ax.set_title(title, fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.minorticks_off()
        ticks = [*finite, x_inf]
        ax.set_xticks(ticks, [f"{t:g}" for t in finite] + ["inf"])
        ax.set_xlabel("epsilon")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("DP2Unlearning on TinyFacts forget10 (shipped target 4c63404c0c51)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--runs", default="/tmp/dp2_runs")
    ap.add_argument("--epsilons", default="0.5,1,5,10,inf")
    ap.add_argument("--units", default="record,entity")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from unlearn.store import read_json
    from unlearn.targets.build import ensure_built, get_preset, model_dir
    from unlearn.targets.dp_build import build_dp_bases, dp_recipe

    bcfg = get_preset("default")
    ensure_built(bcfg, "forget10")
    configs = {}
    for e in args.epsilons.split(","):
        for u in args.units.split(","):
            c = dp_recipe(bcfg, float(e), u)
            configs.setdefault(c.label(), (e, u, c))
    t0 = time.time()
    build_dp_bases(bcfg, [c for _, _, c in configs.values()], str(model_dir(bcfg, "target")), parallel=args.parallel)
    print(f"bases ready in {time.time() - t0:.0f}s", flush=True)
    runs = Path(args.runs)
    with ThreadPoolExecutor(max_workers=args.parallel) as ex:
        dirs = list(ex.map(lambda v: run_one(v[0], v[1], runs, args.seed), configs.values()))
    oracle = read_json(model_dir(bcfg, "oracle_forget10") / "card.json")
    rows = []
    for (e, _u, c), d in zip(configs.values(), dirs):
        m = read_json(d / "metrics.json")
        card = read_json(Path(read_json(d / "config.json")["provenance"]["start_path"]) / "card.json")
        rows.append(
            {
                "method": f"dp2+{c.label()}",
                "epsilon_requested": float(e),
                "privacy_unit": card["privacy_unit"],
                "dp_epsilon": m["dp_epsilon"] if m["dp_epsilon"] is not None else math.inf,
                "dp_delta": m["dp_delta"],
                "noise_multiplier": card["noise_multiplier"],
                "sample_rate": card["sample_rate"],
                "group_epsilon_forget10": (card["epsilon"] or math.inf)
                * (20 if card["privacy_unit"] == "entity" else 480),  # fmt: skip
                "base_retain_acc": card["accuracy"]["retain90"],
                "base_forget_acc": card["accuracy"]["forget10"],
                "base_arithmetic_acc": card["accuracy"]["arithmetic"],
                "base_world_facts_acc": card["accuracy"]["world_facts"],
                "base_cost_steps": m["dp_base_cost_steps"],
                "base_cost_seconds": m["dp_base_cost_seconds"],
                **{k: m.get(k) for k in KEYS},
                "retrain_cost_steps": oracle["steps"],
                "retrain_cost_seconds": oracle["seconds"],
                "steps_vs_retrain": m["cost_steps"] / oracle["steps"],
            }
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "dp2.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "dp2.png")
    cols = ["method", "dp_epsilon", "noise_multiplier", "base_retain_acc", "forget_quality", "model_utility",
            "forget_acc", "retain_acc", "arithmetic_acc", "cost_steps", "steps_vs_retrain"]  # fmt: skip
    lines = ["# DP2Unlearning on TinyFacts forget10", "",
             f"Produced by `python benchmarks/dp2_table.py --out {args.out}` (seed {args.seed}); per-base details in "
             "`dp2.csv`, the privacy-utility plot in `dp2.png`. GA / NPO / SimNPO: mean of 3 seeds from "
             "`benchmarks/results/leaderboard_summary.csv`; the oracle (retrain on retain) from `leaderboard_references.csv`.", "",
             "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]  # fmt: skip
    for r in rows + _reference_rows(ROOT / "benchmarks" / "results"):
        r = {**r, "cost_steps": r.get("cost_steps", oracle["steps"] if r["method"].startswith("oracle") else None)}
        if "steps_vs_retrain" not in r and r.get("cost_steps") is not None:
            r["steps_vs_retrain"] = r["cost_steps"] / oracle["steps"]
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    (out / "dp2.md").write_text("\n".join(lines) + "\n")
    print(json.dumps({"rows": len(rows), "out": str(out)}))


if __name__ == "__main__":
    main()
