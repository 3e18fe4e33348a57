"""The `unlearn` command line: parse arguments, call the library, print, set the exit code.

Each subcommand lives in ``unlearn/commands/<name>.py`` with ``register(subparsers)``; heavy imports happen
inside the command, so ``unlearn --help`` stays fast. User errors (`UnlearnError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from unlearn.errors import UnlearnError

COMMANDS = [
    "unlearn.commands.build",
    "unlearn.commands.run",
    "unlearn.commands.eval",
    "unlearn.commands.list",
    "unlearn.commands.erase",
    "unlearn.commands.leaderboard",
    "unlearn.commands.tofu_aggregate",
    "unlearn.commands.concept_vectors",
    "unlearn.commands.audit",
    "unlearn.commands.paths",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2 (its default code too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="unlearn", description="Machine-unlearning evaluation suite.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command module not written yet
                continue
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from unlearn.targets.llm import quiet_transformers

    quiet_transformers()
    try:
        rc = args.func(args)
    except UnlearnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
