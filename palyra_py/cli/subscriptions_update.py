"""``palyra subscriptions update``: change a subscription in place; its signing secret and
its place in the journal (the cursor) stay."""

# No `from __future__ import annotations`: Typer reads the annotations at run time.

from enum import StrEnum
from typing import Annotated, Any

import typer

from palyra_py.cli import output
from palyra_py.cli.list_edits import ListEdit
from palyra_py.cli.session import JsonOption, StateDirOption, admin_session, usage_error
from palyra_py.cli.subscription_inputs import (
    parse_env,
    parse_filters,
    parse_headers,
    parse_retry_schedule,
)
from palyra_py.cli.webhook_inputs import split_list
from palyra_py.clients.admin import JsonObject

EVENT_FLAGS = ("--events", "--add-event", "--remove-event", "--all-events")


class PayloadFormat(StrEnum):
    standard = "standard"
    slack = "slack"
    discord = "discord"


class SignatureFormat(StrEnum):
    standard = "standard"
    github = "github"


IdArgument = Annotated[
    str, typer.Argument(metavar="ID", help="Subscription id.", show_default=False)
]


def update(
    subscription_id: IdArgument,
    url: Annotated[
        str | None,
        typer.Option("--url", metavar="URL",
                     help="A new http(s) endpoint (or keyring:/env:/file: reference); from a"
                     " command or email destination, switches to it.", show_default=False),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option("--command", metavar="PROGRAM",
                     help="Run this program instead (never a shell); with --arg, the whole"
                     " command is replaced.", show_default=False),
    ] = None,
    args: Annotated[
        list[str] | None,
        typer.Option("--arg", metavar="ARG",
                     help="The arguments of the command (repeatable, in order): REPLACES"
                     " them all; alone, keeps the program.", show_default=False),
    ] = None,
    email: Annotated[
        list[str] | None,
        typer.Option("--email", metavar="ADDRESS",
                     help="Mail to these addresses instead: REPLACES the recipients"
                     " (repeatable).", show_default=False),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", metavar="NAME=VALUE",
                     help="The command's environment: REPLACES it (repeatable).",
                     show_default=False),
    ] = None,
    working_dir: Annotated[
        str | None,
        typer.Option("--working-dir", metavar="DIR", help="Where the command runs.",
                     show_default=False),
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option("--max-concurrent", min=1, metavar="N",
                     help="Runs of the command at once (1-32).", show_default=False),
    ] = None,
    success_exit_codes: Annotated[
        list[int] | None,
        typer.Option("--success-exit-code", metavar="CODE",
                     help="Exit codes that mean success: REPLACES them (repeatable).",
                     show_default=False),
    ] = None,
    run_as: Annotated[
        str | None,
        typer.Option("--run-as", metavar="USER", help="Run the command as this user.",
                     show_default=False),
    ] = None,
    url_in_keyring: Annotated[
        bool | None,
        typer.Option("--url-in-keyring/--url-in-registry",
                     help="Keep the URL in the keyring, or in webhooks.toml.",
                     show_default=False),
    ] = None,
    events: Annotated[
        list[str] | None,
        typer.Option("--events", "-e", metavar="GLOB",
                     help="Published types to send: REPLACES the list (repeatable or"
                     " comma-separated)."),
    ] = None,
    add_event: Annotated[
        list[str] | None,
        typer.Option("--add-event", metavar="GLOB", help="Add a type glob (repeatable)."),
    ] = None,
    remove_event: Annotated[
        list[str] | None,
        typer.Option("--remove-event", metavar="GLOB", help="Remove a type glob (repeatable)."),
    ] = None,
    all_events: Annotated[
        bool, typer.Option("--all-events",
                           help="Send every event again (all but the daemon's own).")
    ] = False,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", metavar="PATH=VALUE",
                     help="Only events whose PATH equals VALUE: REPLACES the filter"
                     " (repeatable, all must match)."),
    ] = None,
    no_filter: Annotated[
        bool, typer.Option("--no-filter", help="Remove the filter.")
    ] = False,
    payload_format: Annotated[
        PayloadFormat | None,
        typer.Option("--format", help="Body shape: Standard Webhooks JSON, or a chat message."),
    ] = None,
    signature_format: Annotated[
        SignatureFormat | None,
        typer.Option("--signature-format", help="github also sends X-Hub-Signature-256."),
    ] = None,
    ordered: Annotated[
        bool | None,
        typer.Option("--ordered/--no-ordered",
                     help="Strict order: each event waits until the previous one is done.",
                     show_default=False),
    ] = None,
    rate_limit: Annotated[
        float | None,
        typer.Option("--rate-limit", min=0, metavar="N",
                     help="At most N requests a second (0: no limit)."),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option("--max-in-flight", min=1, metavar="N",
                     help="Requests open at the receiver at once (1-100)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=1, metavar="S", help="Seconds per attempt."),
    ] = None,
    retry_schedule: Annotated[
        str | None,
        typer.Option("--retry-schedule", metavar="LIST",
                     help="Delay before each attempt: 0s,5s,5m,30m,2h."),
    ] = None,
    headers: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", metavar="'NAME: VALUE'",
                     help="Extra request headers: REPLACES them all (repeatable);"
                     " credential-looking values are kept in the keyring."),
    ] = None,
    no_headers: Annotated[
        bool, typer.Option("--no-headers", help="Remove every extra header.")
    ] = False,
    owner: Annotated[
        str | None, typer.Option("--owner", metavar="OWNER", help="Who it belongs to.")
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", metavar="TEXT", help="A note for people.")
    ] = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Change a subscription in place: its signing secret and cursor stay.

    Only the options given change, and the delivery picks up the change with
    the next event: nothing already journaled is skipped or sent twice. A
    repeatable option (--events, --filter, --header, --email, --env, --arg)
    REPLACES the whole list; --add-event/--remove-event change the event
    list as it is now, --all-events lifts it (removing the last glob is
    refused: an empty list means every event). A new destination (--url,
    --command or --email) switches to it and drops the old one's fields.

    Examples:

    $ palyra subscriptions update ci --add-event 'github.release'
    $ palyra subscriptions update ci --url https://ci2.example/hook --max-in-flight 4
    $ palyra subscriptions update kb --filter data.kb=docs --filter data.lang=en
    $ palyra subscriptions update ci --retry-schedule 0s,1m,1h --no-ordered
    $ palyra subscriptions update deploy --arg '{data.ref}' --arg --force
    """
    given_destinations = [flag for flag, value in (("--url", url), ("--command", command),
                                                    ("--email", email)) if value is not None]
    if len(given_destinations) > 1:
        usage_error(f"give one destination, not {' and '.join(given_destinations)}",
                    param=given_destinations[1])
    for flag, value, other in (("--no-filter", no_filter, filters),
                               ("--no-headers", no_headers, headers)):
        if value and other:
            usage_error(f"{flag} and {flag.replace('--no-', '--').rstrip('s')} exclude each"
                        " other", param=flag)
    event_edit = ListEdit.of(events, add_event, remove_event, all_events, EVENT_FLAGS)
    event_edit.check()
    fields: dict[str, Any] = {
        "url": url,
        "email": split_list(email),
        "env": parse_env(env),
        "working_dir": working_dir,
        "max_concurrent": max_concurrent,
        "success_exit_codes": success_exit_codes or None,
        "run_as": run_as,
        "url_in_keyring": url_in_keyring,
        "filter": parse_filters(filters),
        "format": payload_format.value if payload_format else None,
        "signature_format": signature_format.value if signature_format else None,
        "ordered": ordered,
        "rate_limit_per_s": rate_limit,
        "max_in_flight": max_in_flight,
        "timeout_s": timeout,
        "retry_schedule": parse_retry_schedule(retry_schedule),
        "headers": parse_headers(headers),
        "owner": owner,
        "description": description,
    }
    body: JsonObject = {key: value for key, value in fields.items() if value is not None}
    if no_filter:
        body["filter"] = None
    if no_headers:
        body["headers"] = None
    with admin_session(state_dir, json_output=json_output) as client:
        current: JsonObject = {}
        if event_edit.needs_current or (args is not None and command is None):
            current = client.get_subscription(subscription_id).get("subscription") or {}
        new_events = event_edit.apply(current.get("events") or ())
        if new_events is not None:
            body["events"] = new_events
        new_command = _command(command, args, current)
        if new_command is not None:
            body["command"] = new_command
        if not body:
            usage_error("nothing to change: give at least one option")
        answer = client.update_subscription(subscription_id, body)
    if json_output:
        output.print_json(answer)
        return
    changed = ", ".join(sorted(key for key in body if key != "url_in_keyring")) or "url"
    output.success(f"Updated {subscription_id} ({changed}); its signing secret and place in"
                   " the journal are unchanged.")


def _command(command: str | None, args: list[str] | None, current: JsonObject,
             ) -> list[str] | None:
    """The new ``command``: ``--command`` with its ``--arg``s, or ``--arg``s alone after the
    program the subscription runs now."""
    if command is not None:
        if not command.strip():
            usage_error("the program is empty", param="--command")
        return [command, *(args or ())]
    if args is None:
        return None
    program = (current.get("command") or [None])[0]
    if not isinstance(program, str):
        usage_error("--arg alone changes a command subscription's arguments; this one has"
                    " no command (give --command PROGRAM)", param="--arg")
    return [program, *args]

