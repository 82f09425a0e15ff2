"""What every command shares: the ``--state-dir``/``--json`` options, usage errors, and
the one place where admin-client failures become messages and exit codes (the messages
and codes themselves are in ``failures``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from palyra_py.cli import output, quick
from palyra_py.cli.failures import (
    EXIT_CODES_HELP,
    ExitCode,
    report_api_error,
    report_unreachable,
    start_hint,
)
from palyra_py.cli.timeparse import TimeParseError, parse_time
from palyra_py.clients.admin import AdminClient
from palyra_py.clients.errors import ApiError, PalyraUnreachable
from palyra_py.paths import STATE_DIR_ENV, SocketPathTooLong, resolve_state_dir

__all__ = [
    "EXIT_CODES_HELP",
    "ExitCode",
    "JsonOption",
    "StateDirOption",
    "admin_session",
    "check_failed",
    "confirm_or_exit",
    "report_api_error",
    "run_read",
    "start_hint",
    "time_option",
    "usage_error",
]

StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar=STATE_DIR_ENV,
        show_default=False,
        metavar="DIR",
        help="State directory of the daemon (holds palyra.sock). "
        "Default: the platform's user data dir for palyra.",
    ),
]

JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print the API's JSON answer as one document on stdout."),
]


class _UsageProblem(typer.BadParameter):
    """A usage error that is not about one parameter: shown as its bare message."""

    def format_message(self) -> str:
        return self.message


def usage_error(message: str, *, param: str | None = None) -> NoReturn:
    """Stop with exit code 2 and Typer's usage-error display ("Invalid value for PARAM:
    message" when ``param`` is given)."""
    if param is not None:
        raise typer.BadParameter(message, param_hint=f"'{param}'")
    raise _UsageProblem(message)


def time_option(value: str | None, param: str, now: datetime) -> str | None:
    """A ``--since``/``--until`` value as RFC 3339 (None when not given); a value
    ``parse_time`` refuses is a usage error naming ``param``."""
    if value is None:
        return None
    try:
        return parse_time(value, now=now)
    except TimeParseError as exc:
        usage_error(str(exc), param=param)


def check_failed() -> NoReturn:
    raise typer.Exit(ExitCode.CHECK_FAILED)


@contextmanager
def admin_session(state_dir_flag: Path | None, *, json_output: bool) -> Iterator[AdminClient]:
    """An ``AdminClient`` for the resolved state directory. Inside the block, an
    unreachable daemon exits 3 with a hint, and an API error exits 1 after printing its
    message (or, with ``json_output``, its JSON body on stdout)."""
    state_dir = resolve_state_dir(state_dir_flag)
    try:
        client = AdminClient(state_dir)
    except SocketPathTooLong as exc:
        usage_error(str(exc), param="--state-dir")
    try:
        yield client
    except PalyraUnreachable as exc:
        report_unreachable(exc, state_dir)
        raise typer.Exit(ExitCode.UNREACHABLE) from None
    except ApiError as exc:
        report_api_error(exc, json_output=json_output)
        raise typer.Exit(ExitCode.API_ERROR) from None


def run_read(
    words: tuple[str, ...], state_dir: Path | None, json_output: bool, ident: str | None = None
) -> None:
    """Run the read-only command ``words`` (a key of ``quick.READS``) with the client call
    and the view ``quick`` runs for it, so both ways give the same output and exit code."""
    _, fetch, show = quick.READS[words]
    with admin_session(state_dir, json_output=json_output) as client:
        answer = fetch(client, ident)
    if json_output:
        output.print_json(answer)
        return
    code = quick.view(show)(answer)
    if code:
        raise typer.Exit(code)


def confirm_or_exit(yes: bool, *, question: str, refusal: str, declined: str) -> None:
    """Go on when ``yes`` or when the person at the terminal answers yes to ``question``.
    Without a terminal, print ``refusal``; on a no, ``declined``; both exit 2."""
    if yes:
        return
    if not sys.stdin.isatty():
        output.error(refusal)
        raise typer.Exit(ExitCode.USAGE)
    if not typer.confirm(question, default=False):
        output.note(declined)
        raise typer.Exit(ExitCode.USAGE)
