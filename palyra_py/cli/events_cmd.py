"""``palyra system events list|tail|emit|verify``: read and write the journal."""

# No `from __future__ import annotations`: Typer would evaluate each command's annotation
# strings four times on every run (see palyra_py.cli.main); real ones cost that once.

import json
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from palyra_py.cli import output
from palyra_py.cli.session import (
    JsonOption,
    StateDirOption,
    admin_session,
    check_failed,
    time_option,
    usage_error,
)
from palyra_py.clients.admin import AdminClient, JsonObject, QueryValue
from palyra_py.clients.errors import PalyraUnreachable

app = typer.Typer(help="The event journal: list, follow, emit, verify.", no_args_is_help=True)

MAX_PAGE = 10000
TAIL_PAGE = 1000

TypeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--type", "-t", metavar="GLOB", help="Event type glob (repeatable): 'push', 'ops.*'."
    ),
]
IntegrationOption = Annotated[
    str | None, typer.Option("--integration", "-i", metavar="ID", help="Only this integration.")
]
SourceOption = Annotated[
    str | None, typer.Option("--source", metavar="SOURCE", help="Only events from this source.")
]


class Severity(StrEnum):
    info = "info"
    warn = "warn"
    error = "error"


def iter_pages(client: AdminClient, query: Mapping[str, QueryValue]) -> Iterator[JsonObject]:
    """Every event matching ``query``, following ``next_after_seq`` to the end."""
    page_query = dict(query)
    while True:
        answer = client.list_events(page_query)
        yield from answer.get("events") or []
        next_after = answer.get("next_after_seq")
        if next_after is None:
            return
        previous = page_query.get("after_seq")
        if isinstance(previous, int) and next_after <= previous:
            return  # a cursor that does not advance would loop forever
        page_query["after_seq"] = int(next_after)


@app.command("list")
def list_(
    types: TypeOption = None,
    integration: IntegrationOption = None,
    source: SourceOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="TIME", help="RFC 3339, unix seconds, or an age: 15m, 2h, 7d."
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", metavar="TIME", help="Same forms as --since.")
    ] = None,
    after_seq: Annotated[
        int | None,
        typer.Option("--after-seq", min=0, metavar="N", help="Only events with seq > N."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            max=MAX_PAGE,
            metavar="N",
            help="Events per page (daemon default 100). With --all, the page size.",
        ),
    ] = None,
    all_pages: Annotated[
        bool, typer.Option("--all", help="Follow the pages to the end of the journal.")
    ] = False,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """List journaled events, oldest first, one page at a time (all with --all).

    TIME is RFC 3339 (2024-05-01T12:00:00Z), unix seconds, or an age such as
    15m, 2h, 7d meaning that long ago.

    Examples:

    $ palyra system events list --since 2h --type 'pull_request*' --integration gh
    $ palyra system events list --all --json > journal.json
    """
    now = datetime.now(UTC)
    query: dict[str, QueryValue] = {
        "type": types or None,
        "integration": integration,
        "source": source,
        "since": time_option(since, "--since", now),
        "until": time_option(until, "--until", now),
        "after_seq": after_seq,
        "limit": limit,
    }
    with admin_session(state_dir, json_output=json_output) as client:
        if not all_pages:
            answer = client.list_events(query)
        elif json_output:
            output.print_json_pages("events", iter_pages(client, query), "next_after_seq")
            return
        else:
            answer = {"events": list(iter_pages(client, query)), "next_after_seq": None}
    if json_output:
        output.print_json(answer)
        return
    events = answer.get("events") or []
    if events:
        output.console().print(output.events_table(events))
    else:
        output.note("No events match.")
    next_after = answer.get("next_after_seq")
    if next_after is not None:
        output.note(f"More events: add --after-seq {next_after}, or --all.")


def last_events(
    client: AdminClient, query: Mapping[str, QueryValue], count: int, last_seq: int
) -> list[JsonObject]:
    """The last ``count`` events matching ``query`` with seq <= ``last_seq``.

    The API reads forward only, so windows are read backwards from ``last_seq``, each
    four times wider than the one before, until enough events are found.
    """
    found: list[JsonObject] = []
    high, width = last_seq, max(count, 100)
    while high > 0 and len(found) < count:
        low = max(0, high - width)
        window: list[JsonObject] = []
        for event in iter_pages(client, {**query, "after_seq": low, "limit": TAIL_PAGE}):
            if int(event.get("seq", 0)) > high:
                break
            window.append(event)
        found = window + found
        high, width = low, width * 4
    return found[-count:] if count else []


def _show(event: Mapping[str, Any], json_output: bool) -> None:
    if json_output:
        output.print_json_line(event)
    else:
        output.console().print(output.event_line(event), soft_wrap=True)


@app.command("tail")
def tail(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=0, metavar="N", help="How many past events.")
    ] = 20,
    types: TypeOption = None,
    integration: IntegrationOption = None,
    source: SourceOption = None,
    state_dir: StateDirOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (JSON Lines), flushed.")
    ] = False,
) -> None:
    """Print the last events, one line each; with -f, keep printing new ones.

    Each line: time, seq, kind, source/integration, event type. With -f the
    command streams until Ctrl-C (exit code 0).

    Examples:

    $ palyra system events tail -n 50
    $ palyra system events tail -f --integration gh --json | jq .event_type
    """
    query: dict[str, QueryValue] = {
        "type": types or None,
        "integration": integration,
        "source": source,
    }
    with admin_session(state_dir, json_output=json_output) as client:
        status = client.status()
        last_seq = int((status.get("journal") or {}).get("last_seq") or 0)
        for event in last_events(client, query, lines, last_seq):
            _show(event, json_output)
        if not follow:
            return
        try:
            _follow(client, query, last_seq, json_output)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


def _follow(
    client: AdminClient, query: Mapping[str, QueryValue], after_seq: int, json_output: bool
) -> None:
    shown = after_seq
    for message in client.stream_events({**query, "after_seq": after_seq}):
        try:
            event = message.json()
        except ValueError:
            output.note(f"(skipped a stream message that is not JSON: {message.event})")
            continue
        if not isinstance(event, dict):
            continue
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq <= shown:
                continue
            shown = seq
        _show(event, json_output)
    # The daemon ends the stream only when it shuts down.
    raise PalyraUnreachable(
        "the daemon closed the event stream (stopped?)", where=str(client.socket_path)
    )


def load_data(value: str | None, param: str = "--data") -> JsonObject | None:
    """The JSON object given inline, as ``@file`` or as ``@-`` (stdin); None when the
    option is absent. Anything else is a usage error naming ``param``."""
    if value is None:
        return None
    source = param
    try:
        if value.startswith("@"):
            source = value[1:]
            raw = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        else:
            raw = value
        data = json.loads(raw)
    except OSError as exc:
        usage_error(f"cannot read {source}: {exc.strerror}", param=param)
    except ValueError as exc:
        usage_error(f"{source} is not valid JSON: {exc}", param=param)
    if not isinstance(data, dict):
        usage_error("the data must be a JSON object", param=param)
    return data


@app.command("emit")
def emit(
    name: Annotated[
        str,
        typer.Argument(metavar="NAME", help="Event type: lowercase a-z 0-9 . _ : - (64 max)."),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", metavar="JSON|@FILE", help="Details: a JSON object, @file or @-."
        ),
    ] = None,
    severity: Annotated[
        Severity | None, typer.Option("--severity", help="Default: info.")
    ] = None,
    summary: Annotated[
        str | None, typer.Option("--summary", "-s", help="One line for people (240 bytes max).")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            help="Publish at most once per KEY within 24 h (1-128 printable characters).",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            metavar="SOURCE",
            help="Who publishes it (default: operator); subscriptions can filter on it.",
        ),
    ] = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Append an operator event (a deploy, an incident, a note) to the journal.

    It is journaled next to the webhooks it explains and reaches every
    stream and subscription like any other event. With --idempotency-key,
    a second emit with the same key within 24 hours publishes nothing and
    answers with the first event (duplicate: true in --json; exit code 0).

    Examples:

    $ palyra system events emit deploy.done --summary "v2.3 live" -d '{"version": "2.3"}'
    $ palyra system events emit deploy.done --source ci --idempotency-key "$JOB"
    """
    body: JsonObject = {"type": name}
    details = load_data(data)
    if details is not None:
        body["data"] = details
    if severity is not None:
        body["severity"] = severity.value
    if summary is not None:
        body["summary"] = summary
    if source is not None:
        body["source"] = source
    if idempotency_key is not None:
        if not idempotency_key:
            usage_error("the key is empty", param="--idempotency-key")
        body["idempotency_key"] = idempotency_key
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.emit_event(body)
    if json_output:
        output.print_json(answer)
        return
    seq, event_id = answer.get("seq", "?"), answer.get("event_id", "?")
    if answer.get("duplicate") is True:
        output.success(
            f"Duplicate: this idempotency key already published seq {seq} "
            f"(event id {event_id}); nothing new was journaled."
        )
        return
    output.success(f"Journaled {name} as seq {seq} (event id {event_id}).")


@app.command("verify")
def verify(state_dir: StateDirOption = None, json_output: JsonOption = False) -> None:
    """Recompute the journal's SHA-256 hash chain.

    Exits 4 if an event was changed, removed or inserted behind the daemon's
    back, naming the first broken seq.

    Example:

    $ palyra system events verify
    """
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.verify_journal()
    ok = answer.get("ok") is True
    if json_output:
        output.print_json(answer)
    elif ok:
        output.success(
            f"Journal chain intact: {answer.get('checked', 0)} events checked "
            f"(seq {answer.get('first_seq', '-')}..{answer.get('last_seq', '-')})."
        )
    else:
        output.error(
            f"journal chain broken at seq {answer.get('first_broken_seq', '?')}: "
            f"{answer.get('reason') or 'no reason given'} "
            f"({answer.get('checked', 0)} events checked)"
        )
    if not ok:
        check_failed()
