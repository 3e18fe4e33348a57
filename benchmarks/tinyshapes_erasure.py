"""Reproduce benchmarks/results/tinyshapes_erasure.md: erase one TinyShapes concept with every method x 3 seeds.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/tinyshapes_erasure.py [--concept circle] [--seeds 0 1 2]

The original row is `eval_diffusion` of the unedited target (``unlearn eval``); the others are `unlearn erase` runs
(uce, rece with 3 rounds — every round evaluated, the best on the validation split kept —, the same two from
phrases, ga, npo, esd-x, esd-u, all_but_one, doco) with ``--save-model`` into ``--out``. Finished runs with the same
settings are read back, not recomputed (``--reuse``), and a killed gradient run resumes from its checkpoint, so the
script resumes where it stopped. Writes, in ``benchmarks/results/``:

* the mean ± sample-std table over seeds into ``tinyshapes_erasure.md`` (between its ``<!-- table -->`` markers;
  printed as well);
* ``tinyshapes_erasure.csv`` (one row per run and seed, every metric) and ``tinyshapes_erasure_summary.csv``
  (mean / std per row of the table);
* ``tinyshapes_erasure_grid.png``: the same prompts and noise through every method's seed-0 model, one row per
  method, each column labelled with its prompt.
"""

import argparse
import csv
import dataclasses
import json
import math
import re
from pathlib import Path

import torch

from unlearn.erase import EraseConfig, eval_diffusion, grid_prompts, run_erase
from unlearn.store import run_dir
from unlearn.targets.diffusion import encode_prompts, load_target, sample
from unlearn.targets.tinyshapes_build import resolve

COLS = [
    ("erasure_rate", "erasure ↑"),
    ("in_domain_retention", "IRA ↑"),
    ("cross_domain_retention", "CRA ↑"),
    ("forget_cross_retention", "CRA on erased prompts ↑"),
    ("paraphrase_attack_success", "paraphrase ASR ↓"),
    ("adversarial_attack_success", "adversarial-embedding ASR ↓"),
    ("cka_forget", "CKA forget"),
    ("cka_retain", "CKA retain ↑"),
    ("edit_seconds", "edit s"),
]
# (row label, method, overrides, erase set): the closed-form edits from the concept word alone (the papers'
# setting), then from short phrases containing it (data.tinyshapes.erase_phrases), then the gradient methods
RUNS = [
    ("UCE", "uce", [], "concept"),
    ("RECE", "rece", [("rounds", "3")], "concept"),
    ("UCE (phrases)", "uce", [], "phrases"),
    ("RECE (phrases)", "rece", [("rounds", "3")], "phrases"),
    ("GA", "ga", [], "concept"),
    ("NPO", "npo", [], "concept"),
    ("ESD-x", "esd", [("variant", "x")], "concept"),
    ("ESD-u", "esd", [("variant", "u")], "concept"),
    ("All-but-One", "all_but_one", [], "concept"),
    ("DoCo", "doco", [], "concept"),
]
MARK = "<!-- table -->"


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
    return m, s


def cell(key: str, xs: list[float]) -> str:
    m, s = mean_std(xs)
    digits = 4 if key == "edit_seconds" and m < 1 else (2 if key == "edit_seconds" else 3)
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def table(rows: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """Markdown rows (label -> per-seed metrics) and the summary records written to the summary CSV."""
    lines = ["| model | seeds | " + " | ".join(c for _, c in COLS) + " |", "|---" * (len(COLS) + 2) + "|"]
    summary = []
    for label, ms in rows.items():
        lines.append(f"| {label} | {len(ms)} | " + " | ".join(cell(k, [m.get(k, 0.0) for m in ms]) for k, _ in COLS)
                     + " |")  # fmt: skip
        rec = {"model": label, "n_seeds": len(ms)}
        for k, _ in COLS:
            rec[f"{k}_mean"], rec[f"{k}_std"] = mean_std([m.get(k, 0.0) for m in ms])
        summary.append(rec)
    return "\n".join(lines), summary


def save_labelled_grid(images: torch.Tensor, path: Path, rows: list[str], cols: list[str], scale: float = 0.9):
    """(n_rows * n_cols, 3, H, W) images in [0, 1] as one PNG: row labels on the left, column prompts on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nr, nc = len(rows), len(cols)
    fig, axes = plt.subplots(nr, nc, figsize=(1.5 + nc * scale, 1.6 + nr * scale), squeeze=False)
    for i in range(nr):
        for j in range(nc):
            ax = axes[i][j]
            ax.imshow(images[i * nc + j].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j].replace(" on a ", "\non a "), fontsize=5)
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.subplots_adjust(left=0.2, right=0.99, top=0.92, bottom=0.01, wspace=0.05, hspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tinyshapes")
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs")
    ap.add_argument("--results", default="benchmarks/results")
    a = ap.parse_args()
    res = Path(a.results)
    base = EraseConfig(model=a.model, concept=a.concept, out=a.out, save_model=True, reuse=True, progress=False)
    rows: dict[str, list[dict]] = {"original": []}
    per_run, kept, models = [], {}, {}
    for seed in a.seeds:
        # the unedited target judged against itself: the "original" row, through the evaluation workflow
        orig_dir = run_dir(a.out, "tinyshapes", a.model, "original", a.concept, seed)
        _, m = eval_diffusion(a.model, a.concept, a.model, orig_dir, seed=seed, reuse=True, progress=False)
        rows["original"].append(m)
        per_run.append({"model": "original", "seed": seed, **m})
        for label, method, ov, es in RUNS:
            rdir = run_erase(dataclasses.replace(base, method=method, overrides=ov, erase_set=es, seed=seed))
            m = json.loads((rdir / "metrics.json").read_text())
            m.pop("schema_version", None)
            if method == "rece":  # every round, then the kept one
                rounds = [json.loads(x) for x in (rdir / "rounds.jsonl").read_text().splitlines()]
                for r in rounds[1:]:
                    rows.setdefault(f"{label} round {r['round']}", []).append(r)
                info = json.loads((rdir / "status.json").read_text()).get("info", {})
                kept.setdefault(label, []).append(info.get("selected_round"))
                label = f"{label} (kept round)"
            rows.setdefault(label, []).append(m)
            per_run.append({"model": label, "seed": seed, **m})
            if seed == a.seeds[0]:
                models[label] = rdir / "model"
    text, summary = table(rows)
    text += "\n\nRounds RECE kept (validation split), per seed: " + "; ".join(
        f"{k}: {', '.join(str(x) for x in v)}" for k, v in kept.items()
    )
    print(text)
    keys = list(dict.fromkeys(k for r in per_run for k in r))
    for name, recs, fields in (("tinyshapes_erasure.csv", per_run, keys),
                               ("tinyshapes_erasure_summary.csv", summary, list(summary[0]))):  # fmt: skip
        with open(res / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(recs)
    md = res / "tinyshapes_erasure.md"
    if md.exists() and md.read_text().count(MARK) == 2:
        md.write_text(re.sub(f"{MARK}.*?{MARK}", lambda _: f"{MARK}\n{text}\n{MARK}", md.read_text(), flags=re.S))
    # one grid: the same prompts and noise through every method's first-seed model
    prompts = grid_prompts(a.concept)
    imgs, labels = [], []
    for name, path in [("original", resolve(a.model)), *models.items()]:
        t = load_target(path)
        imgs.append(sample(t, encode_prompts(t, prompts), seed=a.seeds[0], steps=base.sample_steps,
                           guidance=base.guidance))  # fmt: skip
        labels.append(name)
    save_labelled_grid(torch.cat(imgs), res / "tinyshapes_erasure_grid.png", labels, prompts)


if __name__ == "__main__":
    main()
