"""`unlearn list methods|metrics|models`: what exists."""

from __future__ import annotations

WHAT = ("methods", "metrics", "models")


def register(sub) -> None:
    p = sub.add_parser("list", help="list methods, metrics or model aliases")
    p.add_argument("what", help=f"one of: {', '.join(WHAT)}")
    p.set_defaults(func=run)


def run(args) -> int:
    from unlearn.errors import unknown_name

    if args.what == "methods":
        from unlearn.methods import list_methods

        for m in list_methods():
            print(f"{m.name:10} {m.target:10} {m.description}")
    elif args.what == "metrics":
        from unlearn.metrics import metrics_table

        print(metrics_table())
    elif args.what == "models":
        from unlearn.config import _TOFU_NAMES, MODEL_ALIASES

        for k, v in MODEL_ALIASES.items():
            tofu = f"  (--benchmark tofu: open-unlearning/tofu_{_TOFU_NAMES[k]}_full)" if k in _TOFU_NAMES else ""
            print(f"{k:10} {v}{tofu}")
    else:
        raise unknown_name("list", args.what, WHAT)
    return 0
