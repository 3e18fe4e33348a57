"""`unlearn build tinyfacts|tinyshapes`: build and cache an embedded target (and its oracles)."""

from __future__ import annotations

TARGETS = ("tinyfacts", "tinyshapes")


def register(sub) -> None:
    p = sub.add_parser("build", help="build and cache an embedded target (+ oracles)")
    p.add_argument("target", help=f"one of: {', '.join(TARGETS)}")
    p.add_argument("--preset", default="default", help="build preset (default | micro)")
    p.add_argument(
        "--splits",
        default="forget10",
        help="comma-separated forget splits whose retain-only oracle to build (tinyfacts)",
    )
    p.add_argument("--oracle-seed", type=int, help="also train an extra oracle per split with this seed (tinyfacts)")
    p.add_argument("--force", action="store_true", help="rebuild from scratch into $UNLEARN_HOME (default preset: "
                   "the target and every shipped oracle), even when shipped or cached weights match")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from unlearn.errors import unknown_name

    if args.target == "tinyfacts":
        from unlearn.targets.build import build_release, build_tinyfacts, get_preset, shipped_root

        oracles = tuple(s.strip() for s in args.splits.split(",") if s.strip())
        cfg = get_preset(args.preset)
        seeds = tuple((s, args.oracle_seed) for s in oracles) if args.oracle_seed is not None else ()
        if args.force and args.preset == "default" and not seeds and args.splits == "forget10":
            # a from-scratch rebuild of what is shipped: target + every shipped oracle, side by side
            root = build_release(cfg, progress=not args.no_progress)
        else:
            root = build_tinyfacts(cfg, oracles=oracles, force=args.force, progress=not args.no_progress,
                                   extra_seeds=seeds)  # fmt: skip
        where = "shipped weights" if shipped_root(cfg) == root else "built in the cache"
        print(f"tinyfacts ({args.preset}, recipe digest {cfg.digest()}) ready in {root} ({where})")
        return 0
    if args.target == "tinyshapes":
        from unlearn.targets.tinyshapes_build import build_tinyshapes

        root = build_tinyshapes(args.preset, force=args.force, progress=not args.no_progress)
        print(f"tinyshapes ({args.preset}) ready in {root}")
        return 0
    raise unknown_name("target", args.target, TARGETS)
