"""``palyra daemon run|status|reload``."""

# No `from __future__ import annotations`: Typer would evaluate each command's annotation
# strings four times on every run (see palyra_py.cli.main); real ones cost that once.

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from palyra_py.cli import output
from palyra_py.cli.session import JsonOption, StateDirOption, admin_session, run_read, usage_error
from palyra_py.paths import SocketPathTooLong, resolve_state_dir, socket_path

app = typer.Typer(help="Run the daemon, see its status, reload its registry.", no_args_is_help=True)


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    console = "console"
    json = "json"


def _check_listen(value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        usage_error(
            f"{value!r} is not HOST:PORT (for example 127.0.0.1:8080 or [::]:8443)",
            param="--listen",
        )


@app.command("run")
def run(
    ctx: typer.Context,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            help="Address of the public ingress (POST /hooks/ID). Default from settings.",
        ),
    ] = None,
    state_dir: StateDirOption = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            help="PEM certificate: serve the ingress over HTTPS (needs --tls-key).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            help="PEM private key for --tls-cert.",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel | None, typer.Option("--log-level", case_sensitive=False, help="Log verbosity.")
    ] = None,
    log_format: Annotated[
        LogFormat | None,
        typer.Option("--log-format", case_sensitive=False, help="console (people) or json."),
    ] = None,
    deliveries_from: Annotated[
        str | None,
        typer.Option(
            "--deliveries-from",
            metavar="head|seq:N|TIME",
            help="Only when deliveries.db is missing but the journal has events: start every "
            "subscription at the journal head (head), or re-deliver from seq N or from TIME "
            "(RFC 3339, e.g. 2026-12-07T10:00Z). Ignored on PostgreSQL, where each "
            "subscription's cursor is in the database.",
        ),
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option(
            "--workers",
            metavar="N|auto",
            help="Ingress worker processes sharing the listener: N, or auto (one per core "
            "this process may run on; 1 on a 1-core box). 1 runs everything in one process, "
            "the lightest on a 1-2 core box. Default: daemon.workers, auto unless set.",
        ),
    ] = None,
) -> None:
    """Run the daemon in the foreground until SIGINT or SIGTERM.

    It serves the public ingress (POST /hooks/ID) on --listen and the admin API
    on STATE_DIR/palyra.sock (mode 0600). SIGHUP reloads webhooks.toml. By
    default a control process runs one ingress worker per core (--workers).

    Example:

    $ palyra daemon run --state-dir ~/.palyra --listen 0.0.0.0:8080
    """
    if listen is not None:
        _check_listen(listen)
    if (tls_cert is None) != (tls_key is None):
        usage_error("--tls-cert and --tls-key go together", param="--tls-cert")
    if deliveries_from is not None:
        from palyra_py.delivery.start import parse_deliveries_from

        try:
            parse_deliveries_from(deliveries_from)
        except ValueError as exc:
            usage_error(str(exc), param="--deliveries-from")
    if workers is not None:
        from palyra_py.settings import SettingsError, parse_workers

        try:
            parse_workers(workers)
        except SettingsError as exc:
            usage_error(str(exc), param="--workers")
    try:
        socket_path(resolve_state_dir(state_dir))
    except SocketPathTooLong as exc:
        usage_error(str(exc), param="--state-dir")
    source = ctx.get_parameter_source("state_dir")
    if source is not None and source.name == "ENVIRONMENT":
        # The daemon reads PALYRA_STATE_DIR itself, so its settings table can say "env".
        state_dir = None

    from palyra_py.server.daemon import run_daemon  # the only place the CLI loads the daemon

    code = run_daemon(
        state_dir=state_dir,
        listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        log_level=log_level.value if log_level else None,
        log_format=log_format.value if log_format else None,
        deliveries_from=deliveries_from,
        workers=workers,
    )
    raise typer.Exit(code)


@app.command("status")
def status(state_dir: StateDirOption = None, json_output: JsonOption = False) -> None:
    """Show the running daemon's version, uptime, journal and effective settings.

    Also: the listeners, integrations by readiness, the keyring backend (and
    whether it is a fallback), and each setting's source (default, file, env,
    flag).

    Example:

    $ palyra daemon status --json | jq .journal.last_seq
    """
    run_read(("daemon", "status"), state_dir, json_output)


@app.command("reload")
def reload(state_dir: StateDirOption = None, json_output: JsonOption = False) -> None:
    """Re-read webhooks.toml after a hand edit (same as SIGHUP).

    If the file does not validate, the daemon keeps the registry it has and the
    error names the line and column (exit code 1). In cluster mode ([storage]
    backend = "postgres") the registry is the document in the database, which this
    re-reads instead: change it with palyra registry import (webhooks.toml is not read).

    Example:

    $ palyra daemon reload
    """
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.reload()
    if json_output:
        output.print_json(answer)
        return
    count = answer.get("integrations", "?")
    output.success(f"Registry reloaded: {count} integration{'' if count == 1 else 's'}.")

