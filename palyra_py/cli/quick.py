"""The read-only commands run without Typer, when their command line is a plain one.

``import typer`` alone takes longer (60-100 ms) than a listing is allowed to start in, so
``palyra webhooks list`` and the other reads in ``READS`` are matched here first: the
command's words, then only ``--json``, ``--state-dir DIR`` / ``--state-dir=DIR`` and the
command's ID, in any order. They then run the same code as their Typer commands (the
client call, then ``output.print_json`` or the view's ``show_*``), with the same messages
and exit codes. Anything else, including ``-h``, an unknown option, a missing ID or a state
directory Typer would refuse, is left to Typer (``run`` returns None), before anything is
sent. ``tests/test_cli_quick.py`` runs every read both ways and compares.
"""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from palyra_py.cli import output
from palyra_py.cli.failures import ExitCode, report_api_error, report_unreachable
from palyra_py.clients.admin import AdminClient, JsonObject
from palyra_py.clients.errors import ApiError, PalyraUnreachable
from palyra_py.paths import STATE_DIR_ENV, SocketPathTooLong, resolve_state_dir

NO_ID, REQUIRED_ID = 0, 1
Fetch = Callable[[AdminClient, "str | None"], JsonObject]

# (command words) -> (ID argument, the client call, "module:function" that shows the answer
# to people and returns the exit code). Each must match its Typer command exactly; the
# tests compare the parameters and the results.
READS: dict[tuple[str, ...], tuple[int, Fetch, str]] = {
    ("daemon", "status"): (NO_ID, lambda c, _: c.status(), "daemon_views:show_status"),
    ("webhooks", "list"): (
        NO_ID, lambda c, _: c.list_webhooks(), "webhook_views:show_webhooks",
    ),
    ("webhooks", "show"): (
        REQUIRED_ID, lambda c, i: c.get_webhook(str(i)), "webhook_views:show_webhook",
    ),
    ("subscriptions", "list"): (
        NO_ID, lambda c, _: c.list_subscriptions(), "outbound_views:show_subscriptions",
    ),
    ("subscriptions", "show"): (
        REQUIRED_ID, lambda c, i: c.get_subscription(str(i)), "outbound_views:show_subscription",
    ),
    ("deliveries", "show"): (
        REQUIRED_ID, lambda c, i: c.get_delivery(str(i)), "outbound_views:show_delivery",
    ),
    ("tokens", "list"): (NO_ID, lambda c, _: c.list_tokens(), "outbound_views:show_tokens"),
}

# Typer answers shell-completion requests whenever this is set, whatever the arguments.
COMPLETION_ENV = "_PALYRA_COMPLETE"


def run(args: Sequence[str], env: Mapping[str, str] | None = None) -> int | None:
    """Run ``args`` (the command line without the program name) if it is a plain read and
    return its exit code; None when Typer must run it."""
    environ = os.environ if env is None else env
    read = READS.get(tuple(args[:2]))
    if read is None or environ.get(COMPLETION_ENV):
        return None
    id_kind, fetch, show = read
    parsed = _parse(args[2:], id_kind)
    if parsed is None:
        return None
    flag, json_output, ident = parsed
    state_dir = _state_dir(flag, environ)
    if state_dir is None:
        return None
    try:
        client = AdminClient(state_dir)
    except SocketPathTooLong:
        return None  # Typer reports it as a usage error
    try:
        try:
            answer = fetch(client, ident)
        except PalyraUnreachable as exc:
            report_unreachable(exc, state_dir)
            return ExitCode.UNREACHABLE
        except ApiError as exc:
            report_api_error(exc, json_output=json_output)
            return ExitCode.API_ERROR
        if json_output:
            output.print_json(answer)
            return ExitCode.OK
        return view(show)(answer)
    except KeyboardInterrupt:
        return 130  # as Typer: quietly
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        # As Typer: a reader that went away (``| head``) ends the command with 1 and no
        # traceback, also when Python flushes the streams at exit.
        _silence_stdio()
        return 1


def _parse(rest: Sequence[str], id_kind: int) -> tuple[str | None, bool, str | None] | None:
    """(``--state-dir`` value, ``--json``, ID) from the words after the command, or None
    for anything but the plain forms."""
    flag: str | None = None
    json_output = False
    ident: str | None = None
    words = iter(rest)
    for word in words:
        if word == "--json":
            json_output = True
        elif word == "--state-dir":
            flag = next(words, None)
            if flag is None or flag.startswith("-"):
                return None
        elif word.startswith("--state-dir="):
            flag = word.partition("=")[2]
            if not flag:
                return None
        elif word.startswith("-") or id_kind == NO_ID or ident is not None:
            return None
        else:
            ident = word
    if id_kind == REQUIRED_ID and ident is None:
        return None
    return flag, json_output, ident


def _state_dir(flag: str | None, environ: Mapping[str, str]) -> Path | None:
    """The state directory as the Typer command gets it, or None where Typer's own check
    of the value (an existing path it cannot read) would refuse it."""
    raw = flag if flag is not None else environ.get(STATE_DIR_ENV) or None
    if raw is None:
        return resolve_state_dir(None, environ)
    path = Path(raw)
    try:
        os.stat(path)
    except OSError:
        pass
    except ValueError:  # a NUL in the path
        return None
    else:
        if not os.access(path, os.R_OK):
            return None
    return resolve_state_dir(path, environ)


def view(target: str) -> Callable[[JsonObject], int]:
    """The view function named by a ``READS`` entry (\"module:function\" in ``cli``)."""
    module, _, name = target.partition(":")
    function: Callable[[JsonObject], int] = getattr(
        importlib.import_module(f"palyra_py.cli.{module}"), name
    )
    return function


def _silence_stdio() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream_fd in (1, 2):
            try:
                os.dup2(devnull, stream_fd)
            except OSError:
                pass
    finally:
        os.close(devnull)

