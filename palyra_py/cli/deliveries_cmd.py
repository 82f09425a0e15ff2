"""``palyra deliveries ...``: the outbound delivery log: list, inspect, retry, recover,
and statistics."""

# No `from __future__ import annotations`: Typer would evaluate each command's annotation
# strings four times on every run (see palyra_py.cli.main); real ones cost that once.

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from palyra_py.cli import outbound_views, output
from palyra_py.cli.session import (
    JsonOption,
    StateDirOption,
    admin_session,
    run_read,
    time_option,
    usage_error,
)
from palyra_py.clients.admin import AdminClient, JsonObject, QueryValue

app = typer.Typer(
    help="Outbound deliveries: one per event and subscription, with every attempt.",
    no_args_is_help=True,
)

MAX_PAGE = 1000
TIME_HELP = "RFC 3339, unix seconds, or an age: 15m, 2h, 7d."

IdArgument = Annotated[
    str, typer.Argument(metavar="ID", help="Delivery id.", show_default=False)
]
SubscriptionOption = Annotated[
    str | None,
    typer.Option("--subscription", "-s", metavar="ID", help="Only this subscription."),
]


class DeliveryStatus(StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


def iter_deliveries(
    client: AdminClient, query: Mapping[str, QueryValue]
) -> Iterator[JsonObject]:
    """Every delivery matching ``query``, following ``next_after`` to the end."""
    page_query = dict(query)
    while True:
        answer = client.list_deliveries(page_query)
        yield from answer.get("deliveries") or []
        next_after = answer.get("next_after")
        if next_after is None or next_after == page_query.get("after"):
            return  # the end, or a cursor that does not advance (it would loop forever)
        page_query["after"] = next_after if isinstance(next_after, int) else str(next_after)


@app.command("list")
def list_(
    subscription: SubscriptionOption = None,
    status: Annotated[
        DeliveryStatus | None, typer.Option("--status", help="Only deliveries in this state.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="TIME", help=f"Created at or after: {TIME_HELP}"),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", metavar="TIME", help="Created before; as --since.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, max=MAX_PAGE, metavar="N",
            help="Deliveries per page. With --all, the page size.",
        ),
    ] = None,
    all_pages: Annotated[
        bool, typer.Option("--all", help="Follow the pages to the last delivery.")
    ] = False,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """List deliveries, oldest first, one page at a time (all with --all).

    Each row: id, subscription, event type and seq, status, attempts, the
    last result (HTTP status or error class) and, while pending, the next
    attempt. For recent ones, narrow with --since (15m, 2h, 1d).

    Examples:

    $ palyra deliveries list --subscription ci --status failed --since 1d
    $ palyra deliveries list --all --json > deliveries.json
    """
    now = datetime.now(UTC)
    query: dict[str, QueryValue] = {
        "subscription": subscription,
        "status": status.value if status else None,
        "since": time_option(since, "--since", now),
        "until": time_option(until, "--until", now),
        "limit": limit,
    }
    with admin_session(state_dir, json_output=json_output) as client:
        if not all_pages:
            answer = client.list_deliveries(query)
        elif json_output:
            output.print_json_pages("deliveries", iter_deliveries(client, query), "next_after")
            return
        else:
            answer = {"deliveries": list(iter_deliveries(client, query)), "next_after": None}
    if json_output:
        output.print_json(answer)
        return
    deliveries = answer.get("deliveries") or []
    if deliveries:
        output.console().print(outbound_views.deliveries_table(deliveries))
    else:
        output.note("No deliveries match.")
    if answer.get("next_after") is not None:
        output.note("More deliveries: add --all (or a narrower --since/--until).")


@app.command("show")
def show(delivery_id: IdArgument, state_dir: StateDirOption = None,
         json_output: JsonOption = False) -> None:
    """Show one delivery and a table of its attempts.

    Each attempt: number, start, duration, HTTP status or error class, the
    error detail and the start of the receiver's response (full in --json).

    Example:

    $ palyra deliveries show 01J9ZQ4V7D0S8M1W6Y3K2B5N4C
    """
    run_read(("deliveries", "show"), state_dir, json_output, delivery_id)


class RetryStatus(StrEnum):
    pending = "pending"
    failed = "failed"


@app.command("retry")
def retry(
    delivery_id: Annotated[
        str | None,
        typer.Argument(metavar="[ID]", help="Delivery id (or --subscription and --status).",
                       show_default=False),
    ] = None,
    subscription: Annotated[
        str | None,
        typer.Option("--subscription", "-s", metavar="ID",
                     help="Retry every delivery of this subscription in --status."),
    ] = None,
    status: Annotated[
        RetryStatus | None,
        typer.Option("--status", help="With --subscription: which deliveries to retry."),
    ] = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Send a delivery again at once, whatever its state, or many of them.

    A failed or pending delivery goes back to pending, due now. A succeeded
    one is delivered again (a redelivery, as GitHub's Redeliver): the same
    webhook-id and delivery id, one more attempt in its log.

    With --subscription and --status, every pending (due now instead of at
    its next retry) or failed delivery of that subscription, with a progress
    bar; --json prints {"retried": N}.

    Examples:

    $ palyra deliveries retry 01J9ZQ4V7D0S8M1W6Y3K2B5N4C
    $ palyra deliveries retry --subscription ci --status failed
    """
    if delivery_id is not None:
        if subscription is not None or status is not None:
            usage_error("give a delivery id, or --subscription with --status, not both")
        _retry_one(delivery_id, state_dir, json_output)
        return
    if subscription is None or status is None:
        usage_error("give a delivery id, or --subscription with --status")
    with admin_session(state_dir, json_output=json_output) as client:
        counts = client.delivery_stats({"subscription": subscription}).get("deliveries") or {}
        total = counts.get(status.value)
        retried, after = 0, None
        with output.progress_bar(f"Retrying {status.value} deliveries of {subscription}",
                                 total if isinstance(total, int) else None,
                                 quiet=json_output) as advance:
            while True:
                page = client.retry_deliveries(subscription, status.value, after=after,
                                               limit=MAX_PAGE)
                count = int(page.get("retried") or 0)
                retried += count
                advance(count)
                next_after = page.get("next_after")
                if next_after is None or next_after == after:
                    break
                after = str(next_after)
    if json_output:
        output.print_json({"retried": retried})
        return
    output.success(f"Re-sending {retried} {status.value} deliver"
                   f"{'y' if retried == 1 else 'ies'} of {subscription} at once.")


def _retry_one(delivery_id: str, state_dir: Path | None, json_output: bool) -> None:
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.retry_delivery(delivery_id)
    if json_output:
        output.print_json(answer)
        return
    delivery = answer.get("delivery") or {}
    output.success(
        f"Delivery {delivery.get('delivery_id', delivery_id)} is "
        f"{delivery.get('status', 'pending')} again and is attempted at once."
    )


@app.command("recover")
def recover(
    subscription_id: Annotated[
        str, typer.Argument(metavar="SUBSCRIPTION", help="Subscription id.", show_default=False)
    ],
    since: Annotated[
        str,
        typer.Option("--since", metavar="TIME", help=f"From: {TIME_HELP}", show_default=False),
    ],
    until: Annotated[
        str | None, typer.Option("--until", metavar="TIME", help="Up to (default: now).")
    ] = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Re-send the failed and waiting deliveries of a subscription created in a time range.

    For after an outage of the receiver: each failed delivery goes back to
    pending, and each pending one that failed and waits for its next retry
    (5 min, 2 h...) is due now.

    Example:

    $ palyra deliveries recover ci --since 2024-05-01T08:00Z --until 2024-05-01T12:00Z
    """
    now = datetime.now(UTC)
    since_at = time_option(since, "--since", now)
    assert since_at is not None
    until_at = time_option(until, "--until", now)
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.recover_deliveries(subscription_id, since=since_at, until=until_at)
    if json_output:
        output.print_json(answer)
        return
    count = answer.get("recovered", 0)
    output.success(
        f"Re-sending {count} failed or waiting deliver{'y' if count == 1 else 'ies'} of "
        f"{subscription_id} "
        f"created since {since_at}{f' until {until_at}' if until_at else ''}."
    )


@app.command("stats")
def stats(
    subscription: SubscriptionOption = None,
    since: Annotated[
        str | None, typer.Option("--since", metavar="TIME", help=f"Window start: {TIME_HELP}")
    ] = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Delivery health: counts, success rate, latency, failures and backlog.

    Shows succeeded/failed/pending counts, attempts, success rate, p50/p95
    latency, failed attempts by error class, the busiest subscriptions and
    the age of the oldest pending delivery.

    Examples:

    $ palyra deliveries stats --since 1d
    $ palyra deliveries stats --subscription ci --json | jq .success_rate
    """
    query: dict[str, QueryValue] = {
        "subscription": subscription,
        "since": time_option(since, "--since", datetime.now(UTC)),
    }
    with admin_session(state_dir, json_output=json_output) as client:
        answer = client.delivery_stats(query)
    if json_output:
        output.print_json(answer)
        return
    output.console().print(outbound_views.stats_view(answer))
