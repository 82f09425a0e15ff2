"""``palyra storage ...``: the stores' schemas (``migrate``) and moving an embedded
installation into PostgreSQL (``copy``). Both talk to the database, not to the daemon."""

# No `from __future__ import annotations`: Typer evaluates the annotations (see tokens_cmd).

from pathlib import Path
from typing import Annotated, Any

import typer

from palyra_py.cli import output
from palyra_py.cli.failures import ExitCode
from palyra_py.cli.session import StateDirOption

app = typer.Typer(
    help="The stores' schemas, and moving an embedded installation into PostgreSQL.",
    no_args_is_help=True,
)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the outcome as one JSON document.")
]


@app.command("migrate")
def migrate(
    state_dir: StateDirOption = None,
    status: Annotated[
        bool, typer.Option("--status", help="Show each store's versions; change nothing.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Apply the schema migrations of every store on the configured engine.

    On PostgreSQL ([storage] backend = "postgres") each store's missing migrations
    are applied in order, in one transaction per store, under the advisory lock the
    daemons take at start, so running it while nodes start is safe; a database whose
    schema is newer than this palyra is refused. The daemon does the same at start:
    run this to migrate ahead of an upgrade, or to see where a database stands
    (--status). On SQLite the daemon creates and upgrades its files at start: this
    shows their versions.

    Exits 0 when done (or, with --status, when nothing is pending), 2 for bad settings
    or a newer schema, 3 when PostgreSQL is unreachable, 4 when --status finds
    migrations pending.

    Example:

    $ palyra storage migrate --status --state-dir /var/lib/palyra
    """
    raise typer.Exit(int(_migrate(state_dir, status, json_output)))


@app.command("copy")
def copy(
    state_dir: StateDirOption = None,
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="URI",
                     help="The target: postgresql://USER:PASSWORD@HOST:PORT/DATABASE."),
    ] = None,
    to_ref: Annotated[
        str | None,
        typer.Option("--to-ref", metavar="REF",
                     help="A secret reference (file:PATH, env:VAR, keyring:NAME) holding the"
                          " target's URI: keeps the password off the command line."),
    ] = None,
    key_ref: Annotated[
        str | None,
        typer.Option("--key-ref", metavar="REF",
                     help="The [secrets] key_ref the keyring secrets are sealed under"
                          " (default: the one in palyra.toml)."),
    ] = None,
    batch_rows: Annotated[
        int, typer.Option("--batch-rows", min=1, max=100_000, hidden=True)
    ] = 2000,
    json_output: JsonOption = False,
) -> None:
    """Copy this embedded (SQLite) installation into an empty PostgreSQL database.

    What is copied: the journal (every event with its seq and hash, the retention
    checkpoint, the live replay keys: `palyra system events verify` passes on the
    copy and a provider's retry of an old delivery is still a duplicate), the
    deliveries with their attempts, the cursors and health, and the secrets: each
    keyring: secret the registry names is sealed as db:NAME under [secrets] key_ref
    (--key-ref), and the registry, with those references rewritten, becomes the
    registry in the database. Nothing in the state dir is changed: until you switch,
    the installation runs as before.

    The daemon must be stopped (the copy holds the state dir's lock; a daemon cannot
    start meanwhile). The target must be empty, or hold an interrupted copy of this
    installation, which is resumed where its last batch committed. A target holding
    anything else is refused with nothing written. At the end the copy's chain is
    checked and the settings to switch to it are printed. The URI's password is never
    printed.

    Exits 0 when copied and the chain verifies, 2 for bad options or settings, 3 when
    the target is unreachable (run it again: it resumes), 4 when refused (the daemon
    runs, the target holds other data) or the copy's chain does not verify, 1 when a
    store could not be read or written.

    Example:

    $ palyra storage copy --to-ref file:/etc/palyra/dsn --state-dir /var/lib/palyra
    """
    raise typer.Exit(int(_copy(state_dir, to, to_ref, key_ref, batch_rows, json_output)))


# -- migrate -----------------------------------------------------------------------------

def _migrate(state_dir_flag: Path | None, status_only: bool, json_output: bool) -> ExitCode:
    import asyncio

    from palyra_py.paths import resolve_state_dir
    from palyra_py.secrets.dsn import storage_dsn
    from palyra_py.secrets.store import SecretNotFound, SecretStore
    from palyra_py.settings import SettingsError, load_settings, storage_location

    state_dir = resolve_state_dir(state_dir_flag)
    try:
        settings = load_settings(state_dir)
        dsn = storage_dsn(settings, SecretStore(state_dir).resolve)
    except (SettingsError, SecretNotFound) as exc:
        output.error(str(exc))
        return ExitCode.USAGE
    if dsn is None:
        return _sqlite_status(state_dir, json_output)
    from palyra_py.server.store_catalog import migrate_all, schema_status
    from palyra_py.storage.postgres import DRIVER_ERRORS, describe_pg_error

    where = storage_location(settings)
    try:
        applied = {} if status_only else asyncio.run(migrate_all(dsn))
        stores = asyncio.run(schema_status(dsn))
    except RuntimeError as exc:  # a newer schema: the message names the store and versions
        output.error(str(exc))
        return ExitCode.USAGE
    except DRIVER_ERRORS as exc:
        output.error(describe_pg_error(exc, "the database", "migration"))
        return ExitCode.UNREACHABLE
    except ValueError as exc:  # an option of the URI the driver refuses: never quoted
        output.error(f"storage.dsn is not usable ({type(exc).__name__}; value not shown)")
        return ExitCode.USAGE
    doc = {"engine": where, "stores": [
        {"store": s.store, "known": s.known, "applied": list(s.applied),
         "pending": list(s.pending), "applied_now": applied.get(s.store, [])}
        for s in stores]}
    pending = any(s.pending for s in stores)
    if json_output:
        output.print_json(doc)
    else:
        table = output.table(["store", "version", "known", "pending", "applied now"], [
            [s.store, str(max(s.applied, default=0)), str(s.known),
             ", ".join(map(str, s.pending)) or "-",
             ", ".join(map(str, applied.get(s.store, []))) or "-"] for s in stores])
        output.console().print(table)
        output.note(f"engine: {where}")
    return ExitCode.CHECK_FAILED if status_only and pending else ExitCode.OK


def _sqlite_status(state_dir: Path, json_output: bool) -> ExitCode:
    import asyncio

    from palyra_py.server.store_catalog import sqlite_status

    stores = asyncio.run(sqlite_status(state_dir))
    if json_output:
        output.print_json({"engine": "sqlite", "stores": [s._asdict() for s in stores]})
    else:
        output.console().print(output.table(["store", "file", "version", "known"], [
            [s.store, s.file, "-" if s.version is None else str(s.version), str(s.known)]
            for s in stores]))
        output.note("engine: sqlite (the daemon creates and upgrades these files at start)")
    return ExitCode.OK


# -- copy --------------------------------------------------------------------------------

def _copy(state_dir_flag: Path | None, to: str | None, to_ref: str | None,
          key_ref: str | None, batch_rows: int, json_output: bool) -> ExitCode:
    import asyncio

    from palyra_py.paths import JOURNAL_FILE, resolve_state_dir
    from palyra_py.secrets.shared import load_keys
    from palyra_py.secrets.store import SecretNotFound, SecretStore
    from palyra_py.settings import SettingsError, load_settings
    from palyra_py.storage.state_lock import StateDirBusy, StateDirLock

    if (to is None) == (to_ref is None):
        output.error("give the target with --to URI or --to-ref REF (one of them)")
        return ExitCode.USAGE
    state_dir = resolve_state_dir(state_dir_flag)
    if not (state_dir / JOURNAL_FILE).is_file():
        output.error(f"{state_dir} holds no {JOURNAL_FILE}: is it a palyra state dir"
                     " (--state-dir)?")
        return ExitCode.USAGE
    try:
        settings = load_settings(state_dir, flags={("secrets", "key_ref"): key_ref})
        if settings.get("storage", "backend") == "postgres":
            raise SettingsError(
                'this state dir runs on PostgreSQL already ([storage] backend = "postgres"):'
                " there is no embedded installation to copy")
        store = SecretStore(state_dir)
        dsn = _target_dsn(to, to_ref, store.resolve)
        keys = load_keys(settings, store.resolve)
    except (SettingsError, SecretNotFound) as exc:
        output.error(str(exc))
        return ExitCode.USAGE
    lock = StateDirLock(state_dir, "palyra storage copy")
    try:
        lock.acquire()
    except StateDirBusy as exc:
        output.error(f"{exc}: stop the daemon first (the copy must see the journal at rest)")
        return ExitCode.CHECK_FAILED
    try:
        return asyncio.run(_run_copy(state_dir, dsn, to_ref, keys, store.resolve,
                                     settings.get("secrets", "key_ref"), batch_rows,
                                     json_output))
    finally:
        lock.release()


def _target_dsn(to: str | None, to_ref: str | None, resolve: Any) -> str:
    from palyra_py.secrets.refs import SecretRefError, parse_secret_ref
    from palyra_py.settings import SettingsError
    from palyra_py.storage.dsn import dsn_problem

    if to_ref is not None:
        try:
            parse_secret_ref(to_ref)
        except SecretRefError as exc:
            raise SettingsError(f"--to-ref: {exc}") from None
        dsn = str(resolve(to_ref)).strip()
        what = f"--to-ref: the URI {to_ref} holds"
    else:
        dsn = str(to).strip()
        what = "--to"
    problem = dsn_problem(dsn)
    if problem is not None:
        raise SettingsError(f"{what} {problem} (value not shown)")
    return dsn


async def _run_copy(state_dir: Path, dsn: str, to_ref: str | None, keys: Any, resolve: Any,
                    key_ref: str, batch_rows: int, json_output: bool) -> ExitCode:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from palyra_py.cli.storage_views import RateColumn, copy_document, print_copy_report
    from palyra_py.server.store_catalog import CopyReport, copy_installation
    from palyra_py.storage.copying import CopyFailed, CopyRefused, CopyUnreachable
    from palyra_py.storage.dsn import redact_dsn

    target = to_ref or redact_dsn(dsn)
    with Progress(TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(),
                  RateColumn(), console=Console(stderr=True),
                  disable=json_output) as progress:

        def start(store: str, unit: str, total: int) -> Any:
            task = progress.add_task(store, total=total, unit=unit)
            return lambda n: progress.update(task, advance=n)

        def accepted(resumed: bool) -> None:
            if not json_output:
                progress.console.print(
                    f"{'resuming the copy' if resumed else 'copying'} into {target}")

        try:
            report: CopyReport = await copy_installation(
                state_dir, dsn, keys=keys, resolve=resolve,
                now_ms=lambda: int(time.time() * 1000), progress=start,
                batch_rows=batch_rows, on_target=accepted)
        except CopyUnreachable as exc:
            output.error(f"{exc}; what was copied stays: run the copy again to resume")
            return ExitCode.UNREACHABLE
        except CopyRefused as exc:
            output.error(f"{exc} (nothing was written)")
            return ExitCode.CHECK_FAILED
        except CopyFailed as exc:
            output.error(str(exc))
            return ExitCode.API_ERROR
    verified = report.chain.first_broken_seq is None
    if json_output:
        output.print_json(copy_document(report, target, to_ref, key_ref, state_dir))
    else:
        print_copy_report(report, target, to_ref, key_ref, state_dir)
    return ExitCode.OK if verified else ExitCode.CHECK_FAILED
