"""``palyra webhooks update``: change an integration in place; its secret stays."""

# No `from __future__ import annotations`: Typer reads the annotations at run time.

from typing import Annotated, Any

import typer

from palyra_py.cli import output
from palyra_py.cli.list_edits import ListEdit
from palyra_py.cli.session import JsonOption, StateDirOption, admin_session, usage_error
from palyra_py.cli.webhook_inputs import duration_option, response_fields
from palyra_py.cli.webhook_options import (
    DisplayNameOption,
    IdArgument,
    MaxPayloadOption,
    ReplayWindowOption,
    ResponseArgOption,
    ResponseBodyOption,
    ResponseCommandOption,
    ResponseContentTypeOption,
    ResponseStatusOption,
    ResponseTimeoutOption,
    TimestampToleranceOption,
)
from palyra_py.clients.admin import JsonObject

EVENT_FLAGS = ("--events", "--add-event", "--remove-event", "--all-events")
SOURCE_FLAGS = ("--sources", "--add-source", "--remove-source", "--any-source")


def update(
    integration_id: IdArgument,
    display_name: DisplayNameOption = None,
    events: Annotated[
        list[str] | None,
        typer.Option("--events", "-e", metavar="GLOB",
                     help="Accept only these event types: REPLACES the list (repeatable or"
                     " comma-separated)."),
    ] = None,
    add_event: Annotated[
        list[str] | None,
        typer.Option("--add-event", metavar="GLOB",
                     help="Add to the accepted event types (repeatable)."),
    ] = None,
    remove_event: Annotated[
        list[str] | None,
        typer.Option("--remove-event", metavar="GLOB",
                     help="Remove from the accepted event types (repeatable)."),
    ] = None,
    all_events: Annotated[
        bool, typer.Option("--all-events", help="Accept every event type again.")
    ] = False,
    sources: Annotated[
        list[str] | None,
        typer.Option("--sources", metavar="CIDR",
                     help="Accept only from these addresses: REPLACES the list (repeatable)."),
    ] = None,
    add_source: Annotated[
        list[str] | None,
        typer.Option("--add-source", metavar="CIDR", help="Add an address range (repeatable)."),
    ] = None,
    remove_source: Annotated[
        list[str] | None,
        typer.Option("--remove-source", metavar="CIDR",
                     help="Remove an address range (repeatable)."),
    ] = None,
    any_source: Annotated[
        bool, typer.Option("--any-source", help="Accept from anywhere again.")
    ] = False,
    max_payload_bytes: MaxPayloadOption = None,
    timestamp_tolerance: TimestampToleranceOption = None,
    replay_window: ReplayWindowOption = None,
    response_status: ResponseStatusOption = None,
    response_body: ResponseBodyOption = None,
    response_content_type: ResponseContentTypeOption = None,
    response_command: ResponseCommandOption = None,
    response_arg: ResponseArgOption = None,
    response_timeout: ResponseTimeoutOption = None,
    no_response: Annotated[
        bool, typer.Option("--no-response", help="Remove the static answer.")
    ] = False,
    no_response_command: Annotated[
        bool, typer.Option("--no-response-command", help="Remove the response command.")
    ] = False,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Change an integration in place: its secret, id and ingress URL stay.

    Only the options given change. A list option (--events, --sources)
    REPLACES the whole list; --add-event/--remove-event (--add-source/
    --remove-source) change the list as it is now; --all-events
    (--any-source) lifts the restriction. Removing the last entry is
    refused: an empty list means every event, so say --all-events.
    --response-status/--response-body/--response-content-type change only
    the parts given; --response-command (with its --response-arg list)
    replaces the whole command.

    Examples:

    $ palyra webhooks update gh --add-event release
    $ palyra webhooks update gh --events push,pull_request --max-payload-bytes 1048576
    $ palyra webhooks update deploy --response-body 'Deploying...'
    $ palyra webhooks update deploy --no-response-command
    """
    static_given = any(v is not None for v in (response_status, response_body,
                                                 response_content_type))
    if no_response and static_given:
        usage_error("--no-response and a --response-status/-body/-content-type exclude"
                    " each other", param="--no-response")
    if no_response_command and (response_command is not None or response_arg):
        usage_error("--no-response-command and --response-command exclude each other",
                    param="--no-response-command")
    event_edit = ListEdit.of(events, add_event, remove_event, all_events, EVENT_FLAGS)
    source_edit = ListEdit.of(sources, add_source, remove_source, any_source, SOURCE_FLAGS)
    # Usage errors before anything is asked of the daemon.
    event_edit.check()
    source_edit.check()
    with admin_session(state_dir, json_output=json_output) as client:
        hook: JsonObject = {}
        if static_given or event_edit.needs_current or source_edit.needs_current:
            hook = client.get_webhook(integration_id).get("webhook") or {}
        fields = response_fields(response_status, response_body, response_content_type,
                                 response_command, response_arg, response_timeout,
                                 hook.get("response") if static_given else None)
        optional: dict[str, Any] = {
            "display_name": display_name,
            "allowed_events": event_edit.apply(hook.get("allowed_events") or ()),
            "allowed_sources": source_edit.apply(hook.get("allowed_sources") or ()),
            "max_payload_bytes": max_payload_bytes,
            "timestamp_tolerance_s": duration_option(timestamp_tolerance,
                                                     "--timestamp-tolerance"),
            "replay_window_s": duration_option(replay_window, "--replay-window"),
        }
        fields.update({key: value for key, value in optional.items() if value is not None})
        if no_response:
            fields["response"] = None
        if no_response_command:
            fields["response_command"] = None
        if not fields:
            usage_error("nothing to change: give at least one option")
        answer = client.update_webhook(integration_id, fields)
    if json_output:
        output.print_json(answer)
        return
    changed = ", ".join(sorted(fields))
    output.success(f"Updated {integration_id} ({changed}); its secret is unchanged.")
