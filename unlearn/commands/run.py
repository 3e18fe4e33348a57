"""`unlearn run`: unlearn an LLM target with one method, evaluate, write the run directory."""

from __future__ import annotations

from unlearn.commands.table import format_table
from unlearn.config import load_yaml_overrides, parse_overrides
from unlearn.data.benchmarks import DataFiles
from unlearn.store import read_json


def add_data_args(p) -> None:
    """--benchmark / --split default to the model alias's (`data_defaults`)."""
    p.add_argument("--benchmark", default=None, help="tinyfacts | tofu | wmdp | muse_news | muse_books (default: the "
                   "model alias's own: tofu for llama-1b/3b/8b, llama2-7b, phi-1.5; muse_news for muse-news ...; "
                   "tinyfacts otherwise)")  # fmt: skip
    add_compat_arg(p)
    p.add_argument(
        "--split", default=None,
        help="forget01 | forget05 | forget10 (wmdp: bio | cyber | bio,cyber; muse: forget)",
    )  # fmt: skip
    p.add_argument("--forget", help='your own forget set (JSONL in the TOFU schema; wmdp: one {"text": ...} per line)')
    p.add_argument("--retain", help="your own retain set (JSONL; wmdp: text records)")
    p.add_argument("--holdout", help="your own holdout set (JSONL, never trained on; for MIA)")
    p.add_argument("--prompt", help="prompt format: plain | chat | a template with {question}")
    p.add_argument(
        "--suite",
        default="full",
        help="metric suite: basic | full (logit + internal) | internal (representation, probes, "
        "lens, concept vectors only)",
    )


def data_defaults(args) -> None:
    """Fill an unset --split with the benchmark's default split (forget10 where it has one); the benchmark is the
    given one or the model alias's (`unlearn.config.default_benchmark`; an unset --benchmark stays None so the
    runner can tell an explicit mismatch, which it warns about)."""
    from unlearn.config import default_benchmark
    from unlearn.data.benchmarks import BENCHMARKS

    if args.split is None:
        b = BENCHMARKS.get(args.benchmark or default_benchmark(args.model))
        args.split = b.default_split if b is not None and b.splits else "forget10"


def add_compat_arg(p) -> None:
    p.add_argument("--compat", default="none", choices=("none", "open-unlearning"),
                   help="metric conventions: none = each metric's paper definition over the answer's own tokens; "
                   "open-unlearning = its per-example values (docs/tofu-parity.md)")  # fmt: skip


def add_claim_args(p) -> None:
    p.add_argument("--force", action="store_true", help="re-run a finished run (its files are replaced)")
    p.add_argument(
        "--reuse", action="store_true", help="show a finished run with the same settings instead of failing"
    )


def add_override_args(p) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (repeatable), e.g. --set lr=1e-4 --set beta=0.2")  # fmt: skip
    p.add_argument("--config", help="YAML file of key: value overrides (applied before --set)")


def overrides_of(args) -> list[tuple[str, str]]:
    return (load_yaml_overrides(args.config) if args.config else []) + parse_overrides(args.overrides)


def make_accelerator():
    """An Accelerator under `accelerate launch` (several processes), else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import Accelerator

    # a bare Accelerator() reports DistributedType.NO under a gloo (CPU) launch: ask for the CPU backend
    return Accelerator(cpu=not torch.cuda.is_available())


def close_accelerator(accelerator) -> None:
    if accelerator is None:
        return
    import torch.distributed as dist

    accelerator.wait_for_everyone()
    if dist.is_initialized():
        dist.destroy_process_group()


def register(sub) -> None:
    p = sub.add_parser("run", help="unlearn an LLM target, then evaluate -> run dir")
    p.add_argument("--method", default="npo", help="an llm method (see `unlearn list methods`)")
    p.add_argument("--model", default="tiny", help="alias (see `unlearn list models`), HF id or local dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="root of the run tree")
    add_data_args(p)
    add_override_args(p)
    add_claim_args(p)
    p.add_argument("--name", metavar="TAG", help="file the run under <method>+TAG (default: <method>, or <method>+"
                   "<hash of the changed settings> when --set / --config change any)")  # fmt: skip
    p.add_argument("--save-model", action="store_true", help="keep the unlearned model (safetensors) in model/")
    p.add_argument("--compare", action="store_true", help="print target / unlearned / oracle side by side")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from unlearn.runner import RunArgs, compare_table  # heavy (torch, transformers): inside the command
    from unlearn.runner import run as run_workflow

    data_defaults(args)
    ra = RunArgs(
        method=args.method, model=args.model, benchmark=args.benchmark, split=args.split, seed=args.seed,
        out=args.out, overrides=overrides_of(args), force=args.force, reuse=args.reuse, save_model=args.save_model,
        files=DataFiles(args.forget, args.retain, args.holdout), prompt=args.prompt, suite=args.suite,
        progress=not args.no_progress, name=args.name, compat=args.compat,
    )  # fmt: skip
    if args.compare:  # fail before training, not after
        from unlearn.config import default_benchmark
        from unlearn.data.benchmarks import get_benchmark
        from unlearn.errors import UnlearnError

        if get_benchmark(args.benchmark or default_benchmark(args.model), "llm").evaluation not in ("suite", "muse"):
            raise UnlearnError(f"--compare is not available for --benchmark {args.benchmark} (no QA suite, no oracle)")
    accelerator = make_accelerator()
    try:
        rdir = run_workflow(ra, accelerator=accelerator)
    finally:
        close_accelerator(accelerator)
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    print(f"run written to {rdir}")
    if args.compare:
        print(format_table(compare_table(rdir)))
    else:
        print(format_table({rdir.parts[-3]: read_json(rdir / "metrics.json")}))
    return 0
