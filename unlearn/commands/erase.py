"""`unlearn erase`: erase a concept from a text-to-image target and evaluate it (unlearn/erase.py)."""

from __future__ import annotations

from unlearn.errors import UnlearnError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "erase", help="erase a concept from a diffusion target (UCE, RECE, GA, NPO) and evaluate"
    )
    p.add_argument("--method", default="rece", help="none | uce | rece | ga | npo (default: rece)")
    p.add_argument("--model", default="tinyshapes", help="tinyshapes or a diffusers pipeline directory")
    p.add_argument("--concept", default="circle", help="TinyShapes shape / colour / background (default: circle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="runs root (default: runs)")
    p.add_argument("--images-per-prompt", type=int, default=2, help="evaluation images per prompt (default: 2)")
    p.add_argument("--erase-set", default="concept", choices=["concept", "phrases"],
                   help="UCE/RECE edit rows: the concept word alone (papers) or short phrases with it")  # fmt: skip
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps per image (default: 20)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. --set rounds=3 --set reg=0.1 (repeatable)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="re-run a finished run")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from unlearn.erase import EraseConfig, run_erase

    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise UnlearnError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    cfg = EraseConfig(
        model=args.model, method=args.method, concept=args.concept, seed=args.seed, out=args.out,
        images_per_prompt=args.images_per_prompt, sample_steps=args.sample_steps, erase_set=args.erase_set,
        overrides=overrides, force=args.force, progress=not args.no_progress,
    )  # fmt: skip
    rdir = run_erase(cfg)
    metrics = json.loads((rdir / "metrics.json").read_text())
    for k, v in metrics.items():
        print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")
    print(f"run dir: {rdir}")
    return 0
