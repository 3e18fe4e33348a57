"""`unlearn eval`: evaluate any checkpoint without changing it.

LLM (an alias, HF id or directory): the benchmark split's suite (basic | full | internal), optional lm-eval tasks,
against the known oracle (or ``--oracle``). Diffusion (``tinyshapes`` or a diffusers directory / cached hub id,
detected by ``model_index.json``, or any model given ``--prompts`` / ``--judge``): the erasure metrics of
``--concept`` against ``--original`` (Stable Diffusion: CLIP-judged, docs/diffusion-sd-eval.md). ``--out`` is the
run directory itself (config.json, metrics.json, examples.jsonl directly in it).
"""

from __future__ import annotations

from pathlib import Path

from unlearn.commands.erase import add_sd_args
from unlearn.commands.run import add_claim_args, add_data_args, close_accelerator, data_defaults, make_accelerator
from unlearn.commands.table import format_table
from unlearn.data.benchmarks import DataFiles


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate any checkpoint (LLM or diffusion)")
    p.add_argument(
        "--model", default="tiny", help="alias, HF id or local dir (a diffusers dir or tinyshapes: diffusion)"
    )
    add_data_args(p)
    p.add_argument("--out", help="the run directory to write (config.json, metrics.json, examples.jsonl)")
    p.add_argument("--lm-eval-tasks", help="comma-separated lm-eval tasks (built-in tinyfacts_* or any lm-eval task)")
    p.add_argument("--oracle", help="retain-only oracle to compare with (default: the target's known oracle)")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle (no forget_quality / privleak)")
    p.add_argument("--original", help="the pre-unlearning model evaluators compare with (default: the known one; "
                   "tinyshapes for diffusion)")  # fmt: skip
    p.add_argument("--concept", help="diffusion: the erased concept to judge (e.g. circle)")
    p.add_argument("--seed", type=int, default=0, help="diffusion: sampling seed")
    p.add_argument("--images-per-prompt", type=int, default=2, help="diffusion: images per prompt (default: 2)")
    p.add_argument("--sample-steps", type=int, default=20, help="diffusion: DDIM steps per image (default: 20)")
    add_sd_args(p)
    add_claim_args(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def is_diffusion(model: str) -> bool:
    """An embedded TinyShapes name, a directory with ``model_index.json``, or a hub id whose cached snapshot has one
    (a diffusers pipeline: Stable Diffusion)."""
    from unlearn.targets.diffusion import EMBEDDED  # heavy (torch): only when a command needs it

    if model in EMBEDDED or (Path(model).expanduser() / "model_index.json").exists():
        return True
    if Path(model).expanduser().exists() or model.count("/") != 1:
        return False
    from huggingface_hub import try_to_load_from_cache  # a hub id: look in the cache only, never the network

    return isinstance(try_to_load_from_cache(model, "model_index.json"), str)


def run(args) -> int:
    if args.prompts or args.judge or args.fid_weights or is_diffusion(args.model):
        return _run_diffusion(args)
    from unlearn.runner import EvalArgs, evaluate_checkpoint  # heavy (torch, transformers): inside the command

    data_defaults(args)
    ea = EvalArgs(
        model=args.model, benchmark=args.benchmark, split=args.split, out=args.out,
        files=DataFiles(args.forget, args.retain, args.holdout), prompt=args.prompt, suite=args.suite,
        oracle=args.oracle, no_oracle=args.no_oracle, original=args.original,
        lm_eval_tasks=[t.strip() for t in (args.lm_eval_tasks or "").split(",") if t.strip()],
        force=args.force, reuse=args.reuse, progress=not args.no_progress, compat=args.compat,
    )  # fmt: skip
    accelerator = make_accelerator()
    try:
        metrics, oracle, out = evaluate_checkpoint(ea, accelerator=accelerator)
    finally:
        close_accelerator(accelerator)
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    cols = {args.model: metrics}
    if oracle:
        cols["oracle"] = oracle["metrics"]
    print(format_table(cols, [k for k in metrics if k != "schema_version"]))
    if out is not None:
        print(f"written to {out}")
    return 0


def _run_diffusion(args) -> int:
    from unlearn.errors import UnlearnError

    try:
        from unlearn.erase import eval_diffusion
    except ImportError:  # the diffusion evaluation workflow lands with the erase refactor
        raise UnlearnError("diffusion evaluation is not available in this build") from None
    if not args.concept:
        raise UnlearnError("a diffusion checkpoint needs --concept (the erased concept to judge)")
    rdir, metrics = eval_diffusion(
        model=args.model, concept=args.concept, original=args.original, out=args.out,
        seed=args.seed, images_per_prompt=args.images_per_prompt, sample_steps=args.sample_steps,
        force=args.force, reuse=args.reuse, progress=not args.no_progress, guidance=args.guidance,
        prompts=args.prompts, judge=args.judge, fid_weights=args.fid_weights,
    )  # fmt: skip
    print(format_table({args.model: metrics}))
    if rdir is not None:
        print(f"written to {rdir}")
    return 0
