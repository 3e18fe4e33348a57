"""`unlearn eval`: evaluate any checkpoint on a benchmark split (suites basic | full, optional lm-eval tasks)."""

from __future__ import annotations


def register(sub) -> None:
    from unlearn.commands.run import add_data_args

    p = sub.add_parser("eval", help="evaluate any checkpoint")
    p.add_argument("--model", default="tiny", help="alias, HF id or local dir")
    add_data_args(p)
    p.add_argument("--out", help="write metrics.json and examples.jsonl to this directory")
    p.add_argument("--lm-eval-tasks", help="comma-separated lm-eval tasks (built-in tinyfacts_* or any lm-eval task)")
    p.add_argument("--oracle", help="retain-only oracle to compare with (default: the target's known oracle)")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle (no forget_quality / privleak)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from unlearn.errors import UnlearnError
    from unlearn.evaluate import EvalConfig, evaluate
    from unlearn.runner import DataFiles, cached_eval, check_names, format_table, load_sets, load_target
    from unlearn.store import SCHEMA_VERSION, atomic_write_json, atomic_write_jsonl

    if args.suite not in ("basic", "full"):
        raise UnlearnError(f"unknown suite {args.suite!r}; valid: basic, full")
    check_names(args.benchmark, args.split)
    out = Path(args.out) if args.out else None
    if out is not None and (out / "metrics.json").exists():
        raise UnlearnError(f"{out / 'metrics.json'} exists; choose another --out (nothing is overwritten)")
    import os

    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch`: shard the evaluation
        import torch
        from accelerate import Accelerator

        # cpu=True without CUDA: otherwise a gloo launch reports one process and every rank would print and write
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator is None or accelerator.is_main_process
    try:
        tgt = load_target(args.model, args.benchmark, args.split, args.prompt)
        if accelerator is not None:
            tgt.model.to(accelerator.device)
        if args.oracle:
            from unlearn.targets.llm import resolve_model_dir

            resolve_model_dir(args.oracle)  # fail early, with the usual one-line errors
            tgt.oracle_dir = args.oracle
        sets, _, _ = load_sets(args.benchmark, args.split, tgt, DataFiles(args.forget, args.retain, args.holdout))
        ecfg = EvalConfig(suite=args.suite)
        oracle = None
        if tgt.oracle_dir and not args.no_oracle:
            from unlearn.targets.llm import load_causal_lm

            # not sharded: every process reads (or computes and atomically writes) the same cached evaluation
            oracle = cached_eval(
                tgt.oracle_dir, lambda: load_causal_lm(tgt.oracle_dir), tgt.tokenizer, tgt.fmt, sets, ecfg
            )
        metrics, examples = evaluate(
            tgt.model, tgt.tokenizer, tgt.fmt, sets, ecfg, oracle=oracle, progress=main, accelerator=accelerator
        )
        if args.lm_eval_tasks:
            from unlearn.metrics.lm_eval import run_lm_eval

            # runs on the main process, the result is broadcast: every process calls it
            tasks = [t.strip() for t in args.lm_eval_tasks.split(",")]
            metrics.update(run_lm_eval(tgt.model, tgt.tokenizer, tasks, sets=sets))
    finally:
        if accelerator is not None:
            import torch.distributed as dist

            accelerator.wait_for_everyone()
            if dist.is_initialized():
                dist.destroy_process_group()
    if not main:
        return 0
    cols = {args.model: metrics}
    if oracle:
        cols["oracle"] = oracle["metrics"]
    print(format_table(cols, [k for k in metrics if not k.startswith("lm_eval")]))
    for k, v in metrics.items():
        if k.startswith("lm_eval"):
            print(f"{k}: {v:.4f}")
    if out is not None:
        atomic_write_jsonl(out / "examples.jsonl", examples)
        atomic_write_json(out / "metrics.json", {"schema_version": SCHEMA_VERSION, "model": args.model, **metrics})
        print(f"written to {out}")
    return 0
