"""`unlearn leaderboard RUNS_DIR --out DIR`: leaderboard CSVs, markdown table and plot from a tree of runs."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("leaderboard", help="CSVs, markdown table and plot from a tree of runs")
    p.add_argument("runs", metavar="RUNS_DIR", help="root of the run tree (runs/<benchmark>/<model>/<method>/...)")
    p.add_argument("--out", default="benchmarks/results", help="output directory (default: benchmarks/results)")
    p.add_argument(
        "--no-references",
        action="store_true",
        help="skip the target / oracle reference points (they may need evaluating once, then are cached)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import shlex
    import sys

    from unlearn.leaderboard import write_leaderboard

    command = (
        "unlearn " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if sys.argv[1:2] == ["leaderboard"]
        else (f"unlearn leaderboard {shlex.quote(args.runs)} --out {shlex.quote(args.out)}")
    )
    paths = write_leaderboard(args.runs, args.out, with_references=not args.no_references, command=command)
    import pandas as pd

    n = len(pd.read_csv(paths["csv"]))
    inc = pd.read_csv(paths["incomplete"])
    for p in paths.values():
        print(f"wrote {p}")
    nd = len(pd.read_csv(paths["diffusion_csv"])) if "diffusion_csv" in paths else 0
    runs_txt = f"{n} finished run(s)" + (f" + {nd} diffusion run(s)" if nd else "")
    print(f"{runs_txt}; {len(inc)} incomplete or failed" + (":" if len(inc) else ""))
    for _, r in inc.iterrows():
        print(f"  {r['path']}: {r['state']} ({r['reason']})")
    return 0
