"""``palyra registry ...``: the whole registry as one TOML document, for git-ops
(``export`` to a file kept in git, ``import`` it back, validated and in one step)."""

# No `from __future__ import annotations`: Typer evaluates the annotations (see tokens_cmd).

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from palyra_py.cli import output
from palyra_py.cli.session import JsonOption, StateDirOption, admin_session, usage_error

app = typer.Typer(
    help="The registry as one TOML document: export it to git, import it back.",
    no_args_is_help=True,
)

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
KIND_NOUNS = {"integrations": "integration", "subscriptions": "subscription",
              "tokens": "token"}
MARKS = {"added": "+", "removed": "-", "changed": "~"}


@app.command("export")
def export(state_dir: StateDirOption = None, json_output: JsonOption = False) -> None:
    """Print the registry's TOML document, as stored, on stdout.

    On an embedded daemon that is webhooks.toml; in cluster mode ([storage] backend =
    "postgres") the document in the database, which every node shares (webhooks.toml on
    disk is not read there). Comments and layout are kept, and no secret is in it: only
    secret_refs. With --json: {document, source, version, updated_at, updated_by,
    counts}.

    Example:

    $ palyra registry export > webhooks.toml
    """
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.registry_document()
    if json_output:
        output.print_json(answer)
        return
    sys.stdout.write(str(answer.get("document", "")))
    sys.stdout.flush()


@app.command("import")
def import_(
    file: Annotated[
        str, typer.Argument(metavar="FILE", show_default=False,
                            help="The TOML document to import, or - for stdin.")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check it and show what changes; store nothing.")
    ] = False,
    expected_version: Annotated[
        int | None,
        typer.Option("--expected-version", metavar="N", min=1, show_default=False,
                     help="Cluster mode: import only if the stored version is still N"
                          " (409 registry_conflict otherwise)."),
    ] = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Replace the whole registry with FILE: validated, in one step, in force everywhere.

    The document is checked as webhooks.toml is (a refusal names the line and column,
    and nothing changes); the integrations, subscriptions and tokens it adds (+),
    removes (-) and changes (~) are listed. Without --dry-run it replaces the registry
    at once (in cluster mode: a new version, in force on every node within 1 s) and
    journals daemon.registry_imported. Secrets are not in the document: a secret_ref it names
    must exist where it points. The daemon takes documents up to admin.max_body_bytes
    (default 1 MiB). Exits 0 when imported (or unchanged), 1 when refused.

    Example:

    $ palyra registry import webhooks.toml --dry-run
    """
    text = _read(file)
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.import_registry(text, dry_run=dry_run,
                                        expected_version=expected_version)
    if json_output:
        output.print_json(answer)
        return
    _show_import(answer)


def _read(file: str) -> str:
    try:
        if file == "-":
            raw = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        else:
            with open(Path(file), "rb") as handle:
                raw = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        usage_error(f"cannot read {file}: {exc.strerror}", param="FILE")
    if len(raw) > MAX_DOCUMENT_BYTES:
        usage_error(f"{file} is larger than {MAX_DOCUMENT_BYTES} bytes", param="FILE")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        usage_error(f"{file} is not UTF-8 text", param="FILE")


def change_lines(changes: Any) -> list[str]:
    """``+ integration gh``, ``- subscription old``, ``~ token abc``: one line per record."""
    lines: list[str] = []
    if not isinstance(changes, dict):
        return lines
    for kind, noun in KIND_NOUNS.items():
        lists = changes.get(kind) or {}
        for what, mark in MARKS.items():
            lines.extend(f"{mark} {noun} {record_id}" for record_id in lists.get(what) or [])
    return lines


def _show_import(answer: dict[str, Any]) -> None:
    lines = change_lines(answer.get("changes"))
    for line in lines:
        typer.echo(output.printable(line))
    previous = answer.get("previous_version")
    against = f" against version {previous}" if previous is not None else ""
    summary = f"{len(lines)} record(s) added, removed or changed" if lines else "no record changes"
    status = answer.get("status")
    if status == "dry_run":
        output.note(f"dry run{against}: {summary}; nothing was stored")
    elif status == "unchanged":
        output.success(f"unchanged{against}: the registry already is this document")
    else:
        version = answer.get("version")
        now = f" as version {version}" if version is not None else ""
        output.success(f"imported{now}{against}: {summary}; in force")
