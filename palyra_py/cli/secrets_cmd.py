"""``palyra secrets ...``: the ``db:`` secrets several nodes share (``[storage] backend =
"postgres"`` with ``[secrets] key_ref``)."""

# No `from __future__ import annotations`: Typer evaluates the annotations (see tokens_cmd).

from pathlib import Path
from typing import Annotated, Any

import typer

from palyra_py.cli import output
from palyra_py.cli.failures import ExitCode
from palyra_py.cli.session import StateDirOption

app = typer.Typer(
    help="db: secrets: sealed with AES-GCM in PostgreSQL, read by every node.",
    no_args_is_help=True,
)


@app.command("reencrypt")
def reencrypt(
    state_dir: StateDirOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the counts and failures as one JSON document.")
    ] = False,
) -> None:
    """Seal every db: secret again under the current key (secrets.key_ref).

    Key rotation, from any one node, with the daemons running: (1) on every node add
    the new key to secrets.previous_key_refs and restart (every node can then read
    rows sealed under it); (2) on every node make the new key secrets.key_ref, move
    the old one to previous_key_refs, restart; (3) run this command once; (4) remove
    the old key from previous_key_refs everywhere and destroy it.

    Each row under an older key is opened with it and sealed under the current key,
    one row at a time, and replaced only if it did not change meanwhile. Running it
    again changes nothing. Every node reads the new rows within 1 s.

    It reads the settings `palyra daemon run` reads (palyra.toml in the state dir,
    PALYRA_* variables), so run it where those and the key refs resolve; it talks to
    PostgreSQL, not to the daemon. Exits 0 when every row is under the current key, 2
    for bad settings, 3 when PostgreSQL is unreachable, 4 when some rows cannot be
    opened (each is named with the key id it needs).

    Example:

    $ palyra secrets reencrypt --state-dir /var/lib/palyra
    """
    code = _reencrypt(state_dir, json_output)
    raise typer.Exit(int(code))


def _reencrypt(state_dir_flag: Path | None, json_output: bool) -> ExitCode:
    import asyncio

    from palyra_py.paths import resolve_state_dir
    from palyra_py.secrets.dsn import storage_dsn
    from palyra_py.secrets.shared import DbSecretsUnavailable, load_keys
    from palyra_py.secrets.store import SecretNotFound, SecretStore
    from palyra_py.settings import SettingsError, load_settings

    state_dir = resolve_state_dir(state_dir_flag)
    try:
        settings = load_settings(state_dir)
        if settings.get("storage", "backend") != "postgres":
            raise SettingsError(
                'db: secrets need [storage] backend = "postgres" (this state dir uses sqlite)')
        store = SecretStore(state_dir)
        dsn = storage_dsn(settings, store.resolve)
        keys = load_keys(settings, store.resolve)
        if keys is None or dsn is None:
            raise SettingsError("secrets.key_ref is not set: there is no key to seal with")
    except (SettingsError, SecretNotFound) as exc:
        output.error(str(exc))
        return ExitCode.USAGE
    from palyra_py.secrets.postgres import PostgresSecrets
    from palyra_py.secrets.reencrypt import Reencrypted, reencrypt_all

    async def run() -> Reencrypted:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        backend = PostgresSecrets(lambda: dsn)
        try:
            _, rows = await backend.load()
            with Progress(TextColumn("re-encrypting"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.description}"), transient=True,
                          console=Console(stderr=True),
                          disable=json_output) as progress:
                task = progress.add_task("", total=len(rows))

                def advance(name: str) -> None:
                    progress.update(task, advance=1, description=name)

                return await reencrypt_all(backend, keys, advance)
        finally:
            await backend.close()

    try:
        result = asyncio.run(run())
    except DbSecretsUnavailable as exc:
        output.error(str(exc))
        return ExitCode.UNREACHABLE
    doc: dict[str, Any] = {**result._asdict(), "failed": list(result.failed)}
    if json_output:
        output.print_json(doc)
    else:
        for reason in result.failed:
            output.error(reason)
        output.success(
            f"{result.reencrypted} re-encrypted, {result.already_current} already under key"
            f" {result.key_id}, {len(result.failed)} left as they were"
            f" ({result.total} db: secrets).")
    return ExitCode.CHECK_FAILED if result.failed else ExitCode.OK
