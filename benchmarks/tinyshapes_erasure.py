"""Reproduce benchmarks/results/tinyshapes_erasure.md: erase one TinyShapes concept with every method, tabulate.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/tinyshapes_erasure.py [--concept circle] [--model tinyshapes]

The original row is `eval_diffusion` of the unedited target (``unlearn eval``); the others are `unlearn erase` runs
of uce / rece (3 rounds, every round evaluated) / ga / npo with ``--save-model`` into runs/. Prints the markdown
table and writes one image grid (same prompts and noise for every model, read from the saved models) to
benchmarks/results/. Finished runs with the same settings are shown again, not recomputed (``--reuse``).
"""

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from unlearn.erase import EraseConfig, eval_diffusion, grid_prompts, run_erase
from unlearn.store import run_dir
from unlearn.targets.diffusion import encode_prompts, load_target, sample, save_grid
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
# (method, overrides, erase set): the papers' setting (the concept word alone), then the same edits from short
# phrases containing the word (data.tinyshapes.erase_phrases), then the gradient methods
RUNS = [
    ("uce", [], "concept"),
    ("rece", [("rounds", "3")], "concept"),
    ("uce", [], "phrases"),
    ("rece", [("rounds", "3")], "phrases"),
    ("ga", [], "concept"),
    ("npo", [], "concept"),
]


def row(name, m):
    cells = [f"{m.get(k, 0.0):.3f}" if k != "edit_seconds" else f"{m.get(k, 0.0):.4f}" for k, _ in COLS]
    return f"| {name} | " + " | ".join(cells) + " |"


def label(method, ov, es):
    name = {"rece": f"RECE r{dict(ov).get('rounds')}"}.get(method, method.upper())
    return name + ("" if es == "concept" else f" ({es})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tinyshapes")
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--grid", default="benchmarks/results/tinyshapes_erasure_grid.png")
    a = ap.parse_args()
    lines = ["| model | " + " | ".join(c for _, c in COLS) + " |", "|---" * (len(COLS) + 1) + "|"]
    base = EraseConfig(model=a.model, concept=a.concept, out=a.out, save_model=True, reuse=True)
    # the unedited target judged against itself: the "none" row, through the evaluation workflow
    orig_dir = run_dir(a.out, "tinyshapes", a.model, "original", a.concept, base.seed)
    _, m = eval_diffusion(a.model, a.concept, a.model, orig_dir, seed=base.seed, reuse=True)
    lines.append(row("original", m))
    models = []
    for method, ov, es in RUNS:
        rdir = run_erase(dataclasses.replace(base, method=method, overrides=ov, erase_set=es))
        m = json.loads((rdir / "metrics.json").read_text())
        tag = "" if es == "concept" else f" ({es})"
        if method == "rece":
            rounds = [json.loads(x) for x in (rdir / "rounds.jsonl").read_text().splitlines()]
            lines += [row(f"RECE round {r['round']}{tag}", r) for r in rounds if r["round"] > 0]
        else:
            lines.append(row(method.upper() + tag, m))
        models.append((label(method, ov, es), rdir / "model"))
    print("\n".join(lines))
    # one grid: the same prompts and noise through every model
    prompts = grid_prompts(a.concept)
    imgs, labels = [], []
    for name, path in [("original", resolve(a.model)), *models]:
        t = load_target(path)
        imgs.append(sample(t, encode_prompts(t, prompts), seed=base.seed, steps=base.sample_steps,
                           guidance=base.guidance))  # fmt: skip
        labels.append(name)
    Path(a.grid).parent.mkdir(parents=True, exist_ok=True)
    save_grid(torch.cat(imgs), a.grid, nrow=len(prompts), scale=6, labels=labels)
    print("columns:", " | ".join(prompts))


if __name__ == "__main__":
    main()
