"""What every command shares: exit codes, the ``--state-dir``/``--json`` options, and the
one place where admin-client failures become messages and exit codes."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from palyra_py.admin_client import AdminClient, ApiError, DaemonUnreachable
from palyra_py.cli import output
from palyra_py.paths import STATE_DIR_ENV, SocketPathTooLong, resolve_state_dir


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


def check_failed() -> NoReturn:
    raise typer.Exit(ExitCode.CHECK_FAILED)


def start_hint(state_dir: Path) -> str:
    return f"Start it with: palyra daemon run --state-dir {shlex.quote(str(state_dir))}"


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
    except DaemonUnreachable as exc:
        message = str(exc)
        if exc.not_running:
            message = f"{message}. {start_hint(state_dir)}"
        output.error(message)
        raise typer.Exit(ExitCode.UNREACHABLE) from None
    except ApiError as exc:
        report_api_error(exc, json_output=json_output)
        raise typer.Exit(ExitCode.API_ERROR) from None


def report_api_error(exc: ApiError, *, json_output: bool) -> None:
    if json_output:
        output.print_json(exc.body)
        return
    message = exc.message
    if exc.location:
        message = f"{exc.location}: {message}"
    if exc.field and exc.field not in message:
        message = f"{message} (field: {exc.field})"
    output.error(f"{message} [{exc.code}]")
