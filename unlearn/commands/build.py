"""`unlearn build tinyfacts|tinyshapes|tinyfacts-dp`: build and cache an embedded target (and its oracles), or the
DP bases of DP2Unlearning (`unlearn.targets.dp_build`)."""

from __future__ import annotations

TARGETS = ("tinyfacts", "tinyshapes", "tinyfacts-dp")


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
    p.add_argument("--epsilon", default="1", help="tinyfacts-dp: comma-separated target epsilons (presets 0.5, 1, 5, "
                   "10, inf)")  # fmt: skip
    p.add_argument("--privacy-unit", default="entity", help="tinyfacts-dp: record | entity (comma-separated: both)")
    p.add_argument("--delta", type=float, default=1e-5, help="tinyfacts-dp: target delta (< 1/N units)")
    p.add_argument("--parallel", type=int, default=2, help="tinyfacts-dp: bases built side by side")
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
    if args.target == "tinyfacts-dp":
        return _build_dp(args)
    raise unknown_name("target", args.target, TARGETS)


def _build_dp(args) -> int:
    from unlearn.errors import UnlearnError
    from unlearn.targets.build import ensure_built, get_preset, model_dir
    from unlearn.targets.dp_build import build_dp_bases, dp_recipe, parse_epsilon

    bcfg = get_preset(args.preset)
    eps = [parse_epsilon(e.strip()) for e in args.epsilon.split(",") if e.strip()]
    units = [u.strip() for u in args.privacy_unit.split(",") if u.strip()]
    if not eps or not units:
        raise UnlearnError("--epsilon and --privacy-unit need at least one value each")
    if args.parallel < 1:
        raise UnlearnError(f"--parallel must be >= 1, got {args.parallel}")
    configs = {}
    for e in eps:
        for u in units:
            c = dp_recipe(bcfg, e, u, args.delta)
            c.check()
            configs[c.label()] = c  # epsilon inf: one base for both units
    ensure_built(bcfg, None)
    dirs = build_dp_bases(bcfg, list(configs.values()), str(model_dir(bcfg, "target")), parallel=args.parallel,
                          progress=not args.no_progress)  # fmt: skip
    from unlearn.store import read_json

    for d in dirs:
        c = read_json(d / "card.json")
        acc = c["accuracy"]
        print(
            f"{c['name']}: epsilon {c['epsilon']} (delta {c['delta']:g}, sigma {c['noise_multiplier']:.3f}, "
            f"q {c['sample_rate']:.4f}, {c['steps']} steps), retain exact match {acc[c['retain_of']]:.3f} -> {d}"
        )
    return 0
