"""Audit verdicts on candidates built from the embedded target (forget10): the calibration and the done-when table.

Candidates:

* ``oracle_seed1``: the shipped second-seed retain-only oracle (must read ``forgotten``; its differences against the
  seed-0 oracle are what `unlearn.audit.llm.MARGINS` were chosen from);
* ``target``: the untouched target (must read ``not_forgotten``);
* ``idk``: the target fine-tuned to answer "I don't know." to every forget question, with retain QA mixed in
  (AdamW, lr 1e-3, 150 steps of 32 records, half forget half retain) — a suppression by construction;
* ``ga_head``: gradient ascent on the untied LM head + final norm only (lr 1e-3, the embedded GA preset otherwise);
* ``ga``, ``npo``, ``simnpo``, ``rmu``, ``idknll``, ``idkdpo``, ``undial``: the embedded presets, seed 0.

Writes ``verdicts.csv`` / ``verdicts.md`` (claims and key statistics per candidate) and the report of each
candidate under ``--out``; the reports' stage timings give the per-stage split. Run:
``.venv/bin/python benchmarks/audit/verdicts.py --out /tmp/audit_runs``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path

RUNS = (  # (label, method, overrides)
    ("ga_head", "ga", [("params", "head"), ("lr", "1e-3")]),
    ("ga", "ga", []),
    ("npo", "npo", []),
    ("simnpo", "simnpo", []),
    ("rmu", "rmu", []),
    ("idknll", "idknll", []),
    ("idkdpo", "idkdpo", []),
    ("undial", "undial", []),
)
KEYS = ("forget_acc", "retain_acc", "relearn_acc", "in_context_acc", "int4_forget_acc", "paraphrase_success",
        "forget_probe_acc", "forget_cka_original")  # fmt: skip


def build_idk(out: Path) -> Path:
    """The "I don't know." candidate (see the module docstring)."""
    import torch

    from unlearn.attacks.relearn import RelearnConfig, finetune
    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.targets.llm import PromptFormat, load_causal_lm, load_tokenizer, save_model
    from unlearn.targets.resolve import resolve_paths

    d = out / "idk_model"
    if (d / "config.json").exists():
        return d
    _, tdir, _, _, bcfg = resolve_paths("tiny", "tinyfacts", "forget10", log=lambda *a: None)
    torch.set_num_threads(bcfg.threads or 1)
    tok, model = load_tokenizer(tdir), load_causal_lm(tdir)
    _, forget, retain = load_sets("tinyfacts", "forget10", DataFiles(), bcfg.data)
    rng = random.Random(0)
    recs = []
    for _ in range(150 * 16 // len(forget) + 1):  # half the rows forget -> "I don't know.", half retain QA
        recs += [{"question": r["question"], "answer": "I don't know."} for r in forget]
        recs += rng.sample(retain, len(forget))
    tuned, losses = finetune(model, tok, PromptFormat(), recs, RelearnConfig(steps=150, lr=1e-3, batch_size=32))
    save_model(tuned, tok, d)
    print(f"idk: loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    return d


def _plot(rows: list[dict], path: Path) -> None:
    """Candidates x claims, coloured by verdict, with the headline statistic of each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    claims = [k[len("claim_") :] for k in rows[0] if k.startswith("claim_")]
    order = {"not_forgotten": 0, "suppressed": 1, "forgotten": 2}
    grid = [[order[r[f"claim_{c}"]] for c in claims] + [order[r["verdict"]]] for r in rows]
    fig, ax = plt.subplots(figsize=(1.1 * len(claims) + 2.5, 0.55 * len(rows) + 1.5))
    ax.imshow(grid, cmap=ListedColormap(["#c0392b", "#e67e22", "#27ae60"]), vmin=0, vmax=2, aspect="auto")
    ax.set_xticks(range(len(claims) + 1), [*claims, "VERDICT"], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["candidate"] for r in rows], fontsize=8)
    for i, r in enumerate(rows):
        for j, c in enumerate([*claims, "verdict"]):
            v = r[f"claim_{c}"] if c != "verdict" else r["verdict"]
            ax.text(j, i, v.replace("_", " "), ha="center", va="center", fontsize=6, color="white")
    ax.set_title("unlearn audit on the embedded target, forget10 (control: seed-0 oracle)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/audit_runs")
    ap.add_argument("--results", default="benchmarks/results/audit")
    ap.add_argument("--only", default="")
    a = ap.parse_args(argv)
    from unlearn.audit.llm import AuditArgs, run_audit
    from unlearn.runner import RunArgs, run

    out, res = Path(a.out), Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    res.mkdir(parents=True, exist_ok=True)
    only = {s for s in a.only.split(",") if s}
    cands = {"oracle_seed1": "unlearn/assets/tinyfacts/oracle_forget10_seed1", "target": "tiny"}
    if not only or "idk" in only:
        cands["idk"] = str(build_idk(out))
    for label, method, ov in RUNS:
        if only and label not in only:
            continue
        rdir = run(RunArgs(method=method, split="forget10", out=str(out / "runs" / label), overrides=ov, reuse=True,
                           save_model=True, suite="basic", progress=False), log=lambda *x: None)  # fmt: skip
        cands[label] = str(rdir / "model")
    rows = []
    for label, path in cands.items():
        if only and label not in only:
            continue
        t0 = time.time()
        _, rep = run_audit(AuditArgs(original="tiny", candidate=path, out=str(out / f"audit_{label}"), reuse=True,
                                     progress=False), log=lambda *x: None)  # fmt: skip
        stat = {
            e["metric"]: e["candidate"]
            for c in rep["claims"]
            for e in c["evidence"]
            if e.get("role") != "control_free"
        }
        ctrl = {
            e["metric"]: e["control"] for c in rep["claims"] for e in c["evidence"] if e.get("role") != "control_free"
        }
        row = {
            "candidate": label,
            "verdict": rep["verdict"],
            **{f"claim_{c['name']}": c["verdict"] for c in rep["claims"]},
            "retain_acc": rep["metrics"]["candidate"].get("retain_acc"),
            "seconds": round(rep["stages"]["total"], 1),
        }
        row.update({k: stat.get(k) for k in KEYS if k != "retain_acc"})
        row.update({f"control_{k}": ctrl.get(k) for k in KEYS if k in ctrl})
        rows.append(row)
        st = json.dumps({k: round(v, 1) for k, v in rep["stages"].items()})
        print(f"{label}: {rep['verdict']} ({time.time() - t0:.0f} s) stages {st}", flush=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(res / "verdicts.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    md += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    (res / "verdicts.md").write_text("\n".join(md) + "\n")
    _plot(rows, res / "verdicts.png")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
