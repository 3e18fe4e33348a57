"""`make leaderboard`: every LLM method x forget01/05/10 x seeds 0,1,2 on TinyFacts (default preset), then the tables.

Each run is one ``unlearn run`` process (so a crash or an OOM costs one run, not the matrix); finished runs
(``metrics.json`` present) are skipped, so the script resumes where it stopped. A run that exits non-zero is marked
``failed`` in its status.json (with the tail of its output) and shows up in ``leaderboard_incomplete.csv``.
Finally ``unlearn leaderboard RUNS --out RESULTS`` writes the CSVs, markdown and plot.

    python benchmarks/leaderboard.py --out runs --results benchmarks/results     # tens of minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

SPLITS = ("forget01", "forget05", "forget10")
SEEDS = (0, 1, 2)


def llm_methods() -> list[str]:
    from unlearn.methods import list_methods

    # needle edits validated concept vectors, and the embedded target has none (concept_vectors/README.md): on it
    # every needle run would stop with its exit-2 line; `--methods needle` still runs it
    # dp2 trains a DP base per (epsilon, unit) and has its own table (benchmarks/dp2_table.py -> results/dp2.*)
    return [m.name for m in list_methods() if m.target == "llm" and m.name not in ("needle", "dp2")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs", help="root of the run tree")
    p.add_argument("--results", default="benchmarks/results", help="where the leaderboard files go")
    p.add_argument("--model", default="tiny")
    p.add_argument("--methods", help="comma-separated subset (default: every registered LLM method)")
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--no-leaderboard", action="store_true", help="only run the matrix")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each; 2 on a 2-core machine)")
    args = p.parse_args(argv)

    from unlearn.store import is_finished, read_status, run_dir, write_status

    unlearn = str(Path(sys.executable).with_name("unlearn"))
    methods = args.methods.split(",") if args.methods else llm_methods()
    splits, seeds = args.splits.split(","), [int(s) for s in args.seeds.split(",")]
    jobs = [(m, s, k) for m in methods for s in splits for k in seeds]
    print(f"{len(jobs)} runs: methods {', '.join(methods)} x {', '.join(splits)} x seeds {seeds}", flush=True)

    def one(i: int, method: str, split: str, seed: int) -> bool:
        rdir = run_dir(args.out, "tinyfacts", args.model, method, split, seed)
        if is_finished(rdir) and read_status(rdir).get("state") != "failed":
            print(f"[{i}/{len(jobs)}] {method} {split} seed{seed}: done, skipped", flush=True)
            return True
        cmd = [unlearn, "run", "--method", method, "--model", args.model, "--benchmark", "tinyfacts",
               "--split", split, "--seed", str(seed), "--out", args.out, "--no-progress"]  # fmt: skip
        if is_finished(rdir):
            cmd.append("--force")  # metrics.json of a run marked failed: run it again
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        dt = time.time() - t0
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            write_status(
                rdir, "failed", reason=" / ".join(tail)[-500:], command=shlex.join(cmd), returncode=proc.returncode
            )
            print(f"[{i}/{len(jobs)}] {method} {split} seed{seed}: FAILED ({proc.returncode}) in {dt:.0f}s: "
                  f"{tail[-1] if tail else ''}", flush=True)  # fmt: skip
            return False
        print(f"[{i}/{len(jobs)}] {method} {split} seed{seed}: {dt:.0f}s", flush=True)
        return True

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        ok = list(ex.map(lambda a: one(*a), [(i, *j) for i, j in enumerate(jobs, 1)]))
    failed = ok.count(False)
    if failed:
        print(f"{failed} run(s) failed; they are listed in leaderboard_incomplete.csv", flush=True)
    if args.no_leaderboard:
        return 0
    cmd = [unlearn, "leaderboard", args.out, "--out", args.results]
    print("$ " + shlex.join(["unlearn", *cmd[1:]]), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
