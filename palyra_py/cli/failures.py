"""Exit codes, and the messages for a daemon that cannot be reached or answers an error.

Typer-free, so that ``quick`` can use them without loading Typer; ``session`` builds the
Typer side (options, ``admin_session``) on top.
"""

from __future__ import annotations

import shlex
from enum import IntEnum
from pathlib import Path

from palyra_py.cli import output
from palyra_py.clients.errors import ApiError, PalyraUnreachable


class ExitCode(IntEnum):
    """The documented exit codes (``docs/cli.md``)."""

    OK = 0
    API_ERROR = 1  # the daemon answered an error
    USAGE = 2  # bad flags or arguments (Typer's own code), or a removal not confirmed
    UNREACHABLE = 3  # nothing answers on the admin socket
    CHECK_FAILED = 4  # verify found a broken chain, a test was not accepted, not ready


EXIT_CODES_HELP = (
    "0 ok · 1 the daemon answered an error · 2 usage error · "
    "3 daemon not reachable · 4 a check failed (verify, test, readiness)"
)


def start_hint(state_dir: Path) -> str:
    return f"Start it with: palyra daemon run --state-dir {shlex.quote(str(state_dir))}"


def report_unreachable(exc: PalyraUnreachable, state_dir: Path) -> None:
    """The message for exit code 3, on stderr; with a start hint when nothing runs."""
    message = exc.message
    if exc.not_running:
        message = f"{message}. {start_hint(state_dir)}"
    output.error(message)


def report_api_error(exc: ApiError, *, json_output: bool) -> None:
    """The message for exit code 1: the daemon's JSON body on stdout with ``--json``,
    else one line on stderr."""
    if json_output:
        output.print_json(exc.body)
        return
    message = exc.message
    if exc.location:
        message = f"{exc.location}: {message}"
    if exc.field and exc.field not in message:
        message = f"{message} (field: {exc.field})"
    output.error(f"{message} [{exc.code}]")
