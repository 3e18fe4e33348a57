"""``unlearn tofu-aggregate``: TOFU's forget quality and model utility from two per-example eval logs."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tofu-aggregate",
        help="TOFU's forget quality / model utility from eval_log_aggregated.json files",
        description="Compute TOFU's aggregate figures (forget quality of the candidate against the retain-only "
        "model, model utility and the 12 components) from TOFU-format eval_log_aggregated.json files.",
    )
    p.add_argument("--candidate", required=True, metavar="FILE.json", help="the evaluated model's TOFU eval log")
    p.add_argument("--retain", required=True, metavar="FILE.json", help="the retain-only model's TOFU eval log")
    p.add_argument("--out", metavar="FILE.json", help="also write the figures to this JSON file (atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unlearn.errors import UnlearnError
    from unlearn.store import atomic_write_json
    from unlearn.tofu_aggregate import aggregate, format_table, load_log

    result = aggregate(load_log(args.candidate, "candidate"), load_log(args.retain, "retain"))
    print(format_table(result))
    if args.out:
        try:
            atomic_write_json(args.out, result)
        except OSError as e:
            raise UnlearnError(f"cannot write {args.out}: {e.strerror or e}") from None
        print(f"wrote {args.out}")
    return 0
