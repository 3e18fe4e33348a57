"""`unlearn erase`: erase a concept from a text-to-image target and evaluate it (unlearn/erase.py)."""

from __future__ import annotations

from unlearn.config import load_yaml_overrides, parse_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "erase", help="erase a concept from a diffusion target (UCE, RECE, GA, NPO, ESD, ...) and evaluate"
    )
    p.add_argument(
        "--method",
        default="rece",
        help="uce | rece | ga | npo | esd | all_but_one | doco (`unlearn list methods`; default: rece)",
    )
    p.add_argument(
        "--model",
        default="tinyshapes",
        help="tinyshapes, a diffusers pipeline directory or a cached hub id (Stable Diffusion 1.x/2.x)",
    )
    p.add_argument(
        "--concept",
        default="circle",
        help="TinyShapes shape / colour / background, or a concept of the --prompts CSV (default: circle)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="runs root (default: runs)")
    p.add_argument("--images-per-prompt", type=int, default=2, help="evaluation images per prompt (default: 2)")
    p.add_argument("--erase-set", default="concept", choices=["concept", "phrases"],
                   help="UCE/RECE edit rows: the concept word alone (papers) or short phrases with it")  # fmt: skip
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps per image (default: 20)")
    add_sd_args(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="method, training or evaluation option, e.g. --set rounds=3 --set preserve=square,red "
                   "--set steps=30 (repeatable)")  # fmt: skip
    p.add_argument("--config", help="YAML file of key: value options (applied before --set)")
    p.add_argument("--force", action="store_true", help="re-run a finished run (its files are replaced)")
    p.add_argument("--reuse", action="store_true", help="show a finished run with the same settings, not fail")
    p.add_argument("--save-model", action="store_true", help="keep the edited pipeline (safetensors) in model/")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def add_sd_args(p) -> None:
    """The flags of a Stable Diffusion evaluation (shared with `unlearn eval`; docs/diffusion-sd-eval.md)."""
    p.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance scale (default: 1.5 on TinyShapes, 7.5 on Stable Diffusion)",
    )
    p.add_argument(
        "--prompts",
        metavar="CSV",
        help="SD: prompts file with columns prompt, concept, set "
        "(forget/retain/paraphrase) and optional domain (default: the object prompt set)",
    )
    p.add_argument("--judge", metavar="CLIP", help="SD: the CLIP model (directory or hub id) that reads the images")
    p.add_argument(
        "--fid-weights",
        metavar="PATH",
        help="SD: FID Inception-v3 weights (.safetensors, or a state "
        "dict read with torch.load(weights_only=True)); without it fid is left out",
    )


def run(args) -> int:
    from unlearn.erase import EraseConfig, run_erase  # heavy (torch, diffusers): inside the command
    from unlearn.store import read_json

    overrides = (load_yaml_overrides(args.config) if args.config else []) + parse_overrides(args.overrides)
    cfg = EraseConfig(
        model=args.model, method=args.method, concept=args.concept, seed=args.seed, out=args.out,
        images_per_prompt=args.images_per_prompt, sample_steps=args.sample_steps, erase_set=args.erase_set,
        overrides=overrides, force=args.force, reuse=args.reuse, save_model=args.save_model,
        progress=not args.no_progress, prompts=args.prompts, judge=args.judge, fid_weights=args.fid_weights,
    )  # fmt: skip
    if args.guidance is not None:  # one flag; the defaults differ by target (EraseConfig)
        cfg.guidance = cfg.sd_guidance = args.guidance
    rdir = run_erase(cfg)
    for k, v in read_json(rdir / "metrics.json").items():
        print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")
    print(f"run dir: {rdir}")
    return 0
