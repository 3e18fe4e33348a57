"""`unlearn run`: unlearn an LLM target with one method, evaluate, write the run directory."""

from __future__ import annotations


def add_data_args(p) -> None:
    p.add_argument("--benchmark", default="tinyfacts", help="tinyfacts | tofu")
    p.add_argument("--split", default="forget10", help="forget01 | forget05 | forget10")
    p.add_argument("--forget", help="your own forget set (JSONL in the TOFU schema)")
    p.add_argument("--retain", help="your own retain set (JSONL)")
    p.add_argument("--holdout", help="your own holdout set (JSONL, never trained on; for MIA)")
    p.add_argument("--prompt", help="prompt format: plain | chat | a template with {question}")
    p.add_argument("--suite", default="full", help="metric suite: basic | full")


def register(sub) -> None:
    p = sub.add_parser("run", help="unlearn an LLM target, then evaluate -> run dir")
    p.add_argument("--method", default="npo", help="ga | graddiff | npo | simnpo (see `unlearn list methods`)")
    p.add_argument("--model", default="tiny", help="alias (see `unlearn list models`), HF id or local dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="root of the run tree")
    add_data_args(p)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training or method setting (repeatable), e.g. --set lr=1e-4 --set beta=0.2",
    )
    p.add_argument("--config", help="YAML file of key: value overrides (applied before --set)")
    p.add_argument("--force", action="store_true", help="re-run a finished run")
    p.add_argument(
        "--reuse", action="store_true", help="show a finished run with the same settings instead of failing"
    )
    p.add_argument("--save-model", action="store_true", help="keep the unlearned model (safetensors) in model/")
    p.add_argument("--compare", action="store_true", help="print target / unlearned / oracle side by side")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from unlearn.config import load_yaml_overrides, parse_overrides
    from unlearn.errors import UnlearnError
    from unlearn.runner import DataFiles, RunArgs, compare_table, format_table, run

    if args.suite not in ("basic", "full"):
        raise UnlearnError(f"unknown suite {args.suite!r}; valid: basic, full")
    overrides = (load_yaml_overrides(args.config) if args.config else []) + parse_overrides(args.overrides)
    ra = RunArgs(
        method=args.method,
        model=args.model,
        benchmark=args.benchmark,
        split=args.split,
        seed=args.seed,
        out=args.out,
        overrides=overrides,
        force=args.force,
        reuse=args.reuse,
        save_model=args.save_model,
        files=DataFiles(args.forget, args.retain, args.holdout),
        prompt=args.prompt,
        suite=args.suite,
        progress=not args.no_progress,
    )
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import Accelerator

        # a bare Accelerator() reports DistributedType.NO under a gloo (CPU) launch: ask for the CPU backend
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    try:
        rdir = run(ra, accelerator=accelerator)
    finally:
        if accelerator is not None:
            import torch.distributed as dist

            accelerator.wait_for_everyone()
            if dist.is_initialized():
                dist.destroy_process_group()
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    print(f"run written to {rdir}")
    if args.compare:
        print(format_table(compare_table(rdir)))
    else:
        from unlearn.store import read_json

        m = read_json(rdir / "metrics.json")
        print(format_table({args.method: m}))
    return 0
