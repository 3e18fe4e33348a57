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
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from unlearn.errors import unknown_name

    if args.target == "tinyfacts":
        from unlearn.targets.build import build_tinyfacts

        oracles = tuple(s.strip() for s in args.splits.split(",") if s.strip())
        root = build_tinyfacts(args.preset, oracles=oracles, force=args.force, progress=not args.no_progress)
        if args.oracle_seed is not None:
            from unlearn.targets.build import build_oracle_seed

            for s in oracles:
                print(f"extra oracle: {build_oracle_seed(args.preset, s, args.oracle_seed, not args.no_progress)}")
        print(f"tinyfacts ({args.preset}) ready in {root}")
        return 0
    if args.target == "tinyshapes":
        from unlearn.targets.tinyshapes_build import build_tinyshapes

        root = build_tinyshapes(args.preset, force=args.force, progress=not args.no_progress)
        print(f"tinyshapes ({args.preset}) ready in {root}")
        return 0
    raise unknown_name("target", args.target, TARGETS)
