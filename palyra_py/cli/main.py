"""The ``palyra`` entry point (also ``python -m palyra_py``).

It imports no more than it needs for the command at hand: a plain read-only command
(``palyra webhooks list``, ``... --json``, see ``quick``) runs without Typer, whose import
alone takes longer than such a command may; everything else goes to the Typer
application in ``palyra_py.cli.app``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); exits the process (or
    raises ``SystemExit``) with the command's exit code."""
    from palyra_py.cli import quick

    code = quick.run(list(argv) if argv is not None else sys.argv[1:])
    if code is not None:
        raise SystemExit(int(code))
    from palyra_py.cli.app import app

    app(args=list(argv) if argv is not None else None, prog_name="palyra")


def __getattr__(name: str) -> Any:
    # ``from palyra_py.cli.main import app`` keeps working, loading Typer only then.
    if name in ("app", "GROUPS"):
        from palyra_py.cli import app as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
