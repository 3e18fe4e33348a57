"""`unlearn list methods|metrics|models|benchmarks`: what exists."""

from __future__ import annotations

from unlearn.errors import unknown_name

WHAT = ("methods", "metrics", "models", "benchmarks")


def register(sub) -> None:
    p = sub.add_parser("list", help="list methods, metrics, model aliases or benchmarks")
    p.add_argument("what", help=f"one of: {', '.join(WHAT)}")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.what == "methods":
        from unlearn.methods import list_methods  # imports every method module (torch)

        for m in list_methods():
            shape = "closed form" if m.closed_form else "gradient"
            print(f"{m.name:10} {m.kind:10} {shape:12} {m.description}")
    elif args.what == "metrics":
        from unlearn.metrics import metrics_table

        print(metrics_table())
    elif args.what == "benchmarks":
        from unlearn.data.benchmarks import BENCHMARKS

        for b in BENCHMARKS.values():
            sep = " | " if any("," in s for s in b.splits) else ","  # wmdp's "bio,cyber" is one split
            print(f"{b.name:12} {b.kind:10} {sep.join(b.splits) or '(concepts)':28} {b.description}")
    elif args.what == "models":
        from unlearn.config import _TOFU_NAMES, MODEL_ALIASES, MUSE_MODELS

        for k, v in MODEL_ALIASES.items():
            if k in _TOFU_NAMES:  # the alias carries TOFU: its fine-tune is what runs by default
                base = f"open-unlearning/tofu_{_TOFU_NAMES[k]}"
                print(f"{k:10} {base}_full  (benchmark tofu, oracle {base}_retainYY; --benchmark tinyfacts: {v})")
            else:
                print(f"{k:10} {v}{_embedded_note(v)}")
        for k, (bench, target, retrain, tok) in MUSE_MODELS.items():
            print(f"{k:10} {target}  (benchmark {bench}; retrained oracle {retrain}; tokenizer {tok})")
    else:
        raise unknown_name("list", args.what, WHAT)
    return 0


def _embedded_note(target: str) -> str:
    """For an embedded alias: the recipe digest and whether the shipped weights serve it (or a cache build)."""
    if not target.startswith("embedded:tinyfacts"):
        return ""
    from unlearn.targets.build import get_preset, shipped_root
    from unlearn.targets.resolve import EMBEDDED_PRESETS

    cfg = get_preset(EMBEDDED_PRESETS[target.split(":", 1)[1]])
    where = "shipped weights" if shipped_root(cfg) is not None else "built into $UNLEARN_HOME on first use"
    return f"  (recipe digest {cfg.digest()}: {where})"
