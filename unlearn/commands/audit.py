"""`unlearn audit`: judge an "unlearned" checkpoint with evidence and attacks against a control (unlearn/audit/).

LLM: ``unlearn audit --original tiny --candidate DIR --out report/`` (the embedded target brings its forget, retain
and oracle), or ``--original A --candidate B --forget F.jsonl --retain R.jsonl [--oracle C] --out DIR``.
Diffusion: ``unlearn audit --original tinyshapes --candidate DIR --concept circle --out DIR``.
``--out`` is the audit's run directory: report.json, report.md, report.html and the figures are written in it.
"""

from __future__ import annotations

from unlearn.commands.run import add_compat_arg
from unlearn.config import load_yaml_overrides, parse_overrides


def register(sub) -> None:
    p = sub.add_parser("audit", help="audit an unlearned checkpoint (evidence + attacks vs a control -> report)")
    p.add_argument("--original", default="tiny", help="the model before unlearning: alias, HF id or directory "
                   "(tiny: the embedded TinyFacts target; tinyshapes: the embedded diffusion target)")  # fmt: skip
    p.add_argument("--candidate", required=True, help="the checkpoint to audit: directory, HF id or alias "
                   "(safetensors only; a peft LoRA adapter directory is merged onto --original)")  # fmt: skip
    p.add_argument("--oracle", help="a retain-only model to use as the control (default: the known oracle)")
    p.add_argument("--forget", help="JSONL of the forgotten facts (question, answer[, entity]); default: the "
                   "embedded target's split")  # fmt: skip
    p.add_argument("--retain", help="JSONL of facts that should be kept")
    p.add_argument("--holdout", help="JSONL of facts never trained on (membership inference)")
    p.add_argument("--split", default="forget10", help="embedded target split (default: forget10)")
    p.add_argument("--benchmark", default=None, help="tinyfacts | tofu (default: the --original alias's own: tofu "
                   "for the TOFU aliases, tinyfacts otherwise)")  # fmt: skip
    add_compat_arg(p)
    p.add_argument("--prompt", help="plain | chat | a template with {question} (default: chat when the tokenizer "
                   "has a chat template, else plain)")  # fmt: skip
    p.add_argument("--concept", help="diffusion: the erased concept to judge")
    p.add_argument("--seed", type=int, default=0, help="diffusion: sampling seed")
    p.add_argument("--images-per-prompt", type=int, default=2, help="diffusion: images per prompt (default: 2)")
    p.add_argument("--sample-steps", type=int, default=20, help="diffusion: DDIM steps per image (default: 20)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="attack budget, e.g. --set relearn_steps=10 --set attacks=relearn,quantization")  # fmt: skip
    p.add_argument("--config", help="YAML file of key: value audit settings (applied before --set)")
    p.add_argument("--out", required=True, help="the audit's run directory (report.json, report.md, report.html)")
    p.add_argument("--force", action="store_true", help="replace a finished audit in --out")
    p.add_argument("--reuse", action="store_true", help="show a finished audit with the same settings")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _print(report: dict, rdir) -> None:
    print(f"verdict: {report['verdict']}  (control: {report['control']['kind']})")
    for c in report["claims"]:
        print(f"  {c['name']:14s} {c['verdict']:14s} {c['reason']}")
    for w in report.get("warnings", []):
        print(f"warning: {w}")
    print(f"report: {rdir}/report.html")


def run(args) -> int:
    from unlearn.commands.eval import is_diffusion
    from unlearn.data.benchmarks import DataFiles

    overrides = (load_yaml_overrides(args.config) if args.config else []) + parse_overrides(args.overrides)
    if is_diffusion(args.original):
        from unlearn.audit.diffusion_workflow import DiffusionAuditArgs, run_diffusion_audit

        rdir, report = run_diffusion_audit(DiffusionAuditArgs(
            original=args.original, candidate=args.candidate, concept=args.concept, out=args.out, seed=args.seed,
            images_per_prompt=args.images_per_prompt, sample_steps=args.sample_steps, overrides=overrides,
            force=args.force, reuse=args.reuse, progress=not args.no_progress))  # fmt: skip
    else:
        from unlearn.audit.llm import AuditArgs, run_audit

        rdir, report = run_audit(AuditArgs(
            original=args.original, candidate=args.candidate, out=args.out, oracle=args.oracle, split=args.split,
            benchmark=args.benchmark, files=DataFiles(args.forget, args.retain, args.holdout), prompt=args.prompt,
            overrides=overrides, force=args.force, reuse=args.reuse, progress=not args.no_progress,
            compat=args.compat))  # fmt: skip
    _print(report, rdir)
    return 0
