"""User-facing errors.

Anything the user can fix (bad input, unknown name, missing model) raises `UnlearnError`. The CLI turns it
into one line on stderr and exit code 2; library code never prints or calls `sys.exit`.
"""


class UnlearnError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


def unknown_name(kind: str, name: str, valid) -> UnlearnError:
    """Build the standard 'unknown X' error that lists the valid names."""
    return UnlearnError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
