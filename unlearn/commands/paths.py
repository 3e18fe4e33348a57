"""`unlearn paths build|eval|toy`: path-dependence experiments (staged paths, one method along each)."""

from __future__ import annotations

from unlearn.commands.run import add_claim_args, add_override_args, overrides_of


def _ints(text: str, flag: str) -> list[int]:
    from unlearn.errors import UnlearnError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UnlearnError(f"{flag} {text}: expected comma-separated integers") from None


def register(sub) -> None:
    p = sub.add_parser("paths", help="path-dependence experiments: staged paths, one method along each")
    ps = p.add_subparsers(dest="paths_command", required=True, parser_class=type(p))

    b = ps.add_parser("build", help="train the embedded corpus in stages, in every requested order (cached)")
    b.add_argument("--stages", default="entities,world_facts,skill,forget",
                   help="stages in their base order (entities, world_facts, skill, forget)")  # fmt: skip
    b.add_argument("--orders", default="insert",
                   help="insert (forget at every position; the paper's protocol) | all | N | a-b-c,b-a-c")  # fmt: skip
    b.add_argument("--seeds", default="0,1", help="init/shuffle seeds, one set of paths each")
    b.add_argument("--preset", default="default", help="paths preset: default | micro")
    b.add_argument("--out", help="where to build (default: $UNLEARN_HOME/paths/<recipe digest>)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=build)

    e = ps.add_parser("eval", help="unlearn every path with one method, log trajectories, cross-path statistics")
    e.add_argument("--method", default="ga,npo,simnpo", help="comma-separated llm methods (fixed hyper-parameters)")
    e.add_argument("--paths", help="a build root (paths.json) or comma-separated model dirs (default: the "
                   "default preset's cache root)")  # fmt: skip
    e.add_argument("--seeds", default="0,1", help="build roots: the path seeds to use; model dirs: unlearning seeds")
    e.add_argument("--log-every", type=int, default=5, help="log the trajectory probe every K unlearning steps")
    e.add_argument("--positions", help="model dirs: the forget data's position in each order (e.g. 1,2,3,4)")
    e.add_argument("--benchmark", default="tinyfacts")
    e.add_argument("--split", help="forget split (default: the paths' own)")
    e.add_argument("--forget", help="model dirs: your forget set (JSONL, TOFU schema)")
    e.add_argument("--retain", help="model dirs: your retain set (JSONL)")
    e.add_argument("--suite", default="basic", help="each run's final evaluation: basic | full")
    e.add_argument("--parallel", type=int, default=2, help="runs side by side (one thread each)")
    e.add_argument("--out", required=True, help="the experiment's directory (CSV, summary JSON, figure, runs)")
    add_override_args(e)
    add_claim_args(e)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=evaluate)

    t = ps.add_parser("toy", help="the two-stage linear model: divergence of AB vs BA under gradient ascent")
    t.add_argument("--steps", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="directory for toy.csv and toy.png")
    t.set_defaults(func=toy)


def build(args) -> int:
    from unlearn.paths.build import build_paths, parse_stages

    root = build_paths(args.preset, stages=parse_stages(args.stages), orders=args.orders,
                       seeds=tuple(_ints(args.seeds, "--seeds")), out=args.out,
                       progress=not args.no_progress)  # fmt: skip
    print(f"paths ready in {root}")
    return 0


def evaluate(args) -> int:
    from unlearn.commands.table import format_table
    from unlearn.data.benchmarks import DataFiles
    from unlearn.paths.build import cache_root, get_preset
    from unlearn.paths.evaluate import PathsEvalArgs, paths_eval
    from unlearn.store import read_json

    a = PathsEvalArgs(
        methods=[m.strip() for m in args.method.split(",") if m.strip()],
        paths=args.paths or str(cache_root(get_preset("default"))), out=args.out,
        seeds=_ints(args.seeds, "--seeds"), log_every=args.log_every, overrides=overrides_of(args),
        benchmark=args.benchmark, split=args.split, files=DataFiles(args.forget, args.retain, None),
        positions=_ints(args.positions, "--positions") if args.positions else None, suite=args.suite,
        parallel=args.parallel, force=args.force, reuse=args.reuse, progress=not args.no_progress,
    )  # fmt: skip
    out = paths_eval(a)
    print(f"paths eval written to {out}")
    print(format_table({"paths": read_json(out / "metrics.json")}))
    return 0


def toy(args) -> int:
    from unlearn.paths.toy import ToyConfig, write_toy

    out = write_toy(ToyConfig(steps=args.steps, seed=args.seed), args.out)
    print(f"toy model written to {out}")
    return 0
