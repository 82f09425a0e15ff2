"""``palyra subscriptions replay``: past journal events delivered to a subscription (a
backfill for a new one, a replay for an existing one), with a progress bar."""

# No `from __future__ import annotations`: Typer would evaluate each command's annotation
# strings four times on every run (see palyra_py.cli.main); real ones cost that once.

from datetime import UTC, datetime
from typing import Annotated

import typer

from palyra_py.cli import output
from palyra_py.cli.session import (
    JsonOption,
    StateDirOption,
    admin_session,
    time_option,
    usage_error,
)
from palyra_py.clients.admin import JsonObject

TIME_HELP = "RFC 3339, unix seconds, or an age: 15m, 2h, 7d."


def replay(
    subscription_id: Annotated[
        str, typer.Argument(metavar="ID", help="Subscription id.", show_default=False)
    ],
    from_seq: Annotated[
        int | None,
        typer.Option("--from-seq", min=1, metavar="N",
                     help="From this journal seq on (see system events list)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="TIME", help=f"Events from this time: {TIME_HELP}"),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="TIME", help="Events before this time; as --since."),
    ] = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Deliver past journal events to a subscription: replay or backfill.

    Every event from --from-seq N (or --since TIME) up to the newest one,
    or --until TIME, that the subscription's --events and --filter match,
    is delivered to it: a new delivery, or the event's earlier delivery
    sent again (same webhook-id). New events keep arriving as usual
    meanwhile; none is delivered twice by the replay and the live flow.

    Works for a subscription just added (a backfill) and for an existing
    one (after a receiver lost data). A disabled subscription gets its
    deliveries once enabled. --json prints {"replayed", "scanned"}.

    Examples:

    $ palyra subscriptions replay ci --since 2d
    $ palyra subscriptions replay ci --from-seq 1200 --until 2024-05-01T12:00Z
    """
    if (from_seq is None) == (since is None):
        usage_error("give --from-seq N or --since TIME (one of them)")
    now = datetime.now(UTC)
    body: JsonObject = {"from_seq": from_seq, "since": time_option(since, "--since", now),
                        "until": time_option(until, "--until", now)}
    replayed = scanned = 0
    with admin_session(state_dir, json_output=json_output) as client:
        page = client.replay_subscription(subscription_id, body)
        total = int(page["to_seq"]) - from_seq + 1 if from_seq is not None else None
        with output.progress_bar(f"Replaying to {subscription_id}",
                                 None if total is None else max(total, 0),
                                 quiet=json_output) as advance:
            while True:
                replayed += int(page.get("replayed") or 0)
                scanned += int(page.get("scanned") or 0)
                advance(int(page.get("scanned") or 0))
                next_from = page.get("next_from_seq")
                if not isinstance(next_from, int) or next_from <= (body["from_seq"] or 0):
                    break
                # The same end on every page: events published meanwhile come as usual.
                body = {**body, "from_seq": next_from, "to_seq": page["to_seq"]}
                page = client.replay_subscription(subscription_id, body)
    if json_output:
        output.print_json({"replayed": replayed, "scanned": scanned})
        return
    output.success(f"Replaying {replayed} of {scanned} journal events to {subscription_id}"
                   " (those its events and filter match).")
