"""How ``palyra subscriptions|deliveries|tokens ...`` answers look to people (``--json``
bypasses all of this).

Response excerpts and error details come from receivers we do not trust: they are shown
with control characters replaced and cut short, so a hostile endpoint cannot drive the
operator's terminal.

rich is imported inside the functions that build its objects, so that importing this
module (every outbound command does) costs nothing when the output is ``--json``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from palyra_py.cli import output
from palyra_py.redact import is_secret_key

if TYPE_CHECKING:
    from rich.console import Group, RenderableType
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

DELIVERY_STATUS_STYLE = {"succeeded": "green", "pending": "yellow", "failed": "bold red"}
EXCERPT_CHARS = 300
MASK = "***"

SUBSCRIPTION_FIELDS = (
    "subscription_id",
    "url",
    "command",
    "env",
    "working_dir",
    "max_concurrent",
    "success_exit_codes",
    "run_as",
    "enabled",
    "disabled_reason",
    "health",
    "pending",
    "owner",
    "description",
    "events",
    "filter",
    "format",
    "signature_format",
    "ordered",
    "rate_limit_per_s",
    "max_in_flight",
    "timeout_s",
    "retry_schedule",
    "headers",
    "secret_ref",
    "previous_secret_ref",
    "previous_valid_until",
    "created_at",
    "updated_at",
)
DELIVERY_FIELDS = (
    "delivery_id",
    "subscription_id",
    "status",
    "event_type",
    "event_id",
    "event_seq",
    "attempts",
    "last_status_code",
    "last_error_class",
    "next_attempt_at",
    "created_at",
    "updated_at",
)


# --- small formatters ----------------------------------------------------------------


def untrusted(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """Text from a receiver, safe for a table cell: control characters (except newline)
    shown as escapes (``output.printable``), cut to ``limit`` characters, rich-escaped."""
    if value is None or value == "":
        return "-"
    raw = str(value)
    clean = output.printable(raw[:limit], newlines=True)
    if len(raw) > limit:
        clean += f"… ({len(raw) - limit} more characters; see --json)"
    return output.escape(clean)


def delivery_status(value: Any) -> str:
    name = output.text(value)
    style = DELIVERY_STATUS_STYLE.get(name, "")
    return f"[{style}]{name}[/]" if style else name


def milliseconds(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value:.0f} ms" if value < 10_000 else output.duration(value / 1000)


def percent(value: Any) -> str:
    """``success_rate`` is a fraction from 0 to 1 (null when nothing was attempted)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value * 100:.1f} %"


def health(sub: Mapping[str, Any]) -> str:
    """One word or phrase: disabled (why), failing since, ok, or no delivery yet."""
    info = sub.get("health") or {}
    if not isinstance(info, Mapping):
        info = {}
    if sub.get("enabled") is False:
        reason = sub.get("disabled_reason")
        return f"[dim]disabled{f' ({output.text(reason)})' if reason else ''}[/]"
    if info.get("failing_since"):
        return f"[bold red]failing since {output.moment(info['failing_since'])}[/]"
    if info.get("last_success_at"):
        return "[green]ok[/]"
    return "[dim]no delivery yet[/]"


def headers_text(headers: Any) -> str:
    """``Name: value`` lines; values of secret-looking names (Authorization, X-Api-Key...)
    are masked here (they are in ``--json``)."""
    if not isinstance(headers, Mapping) or not headers:
        return "-"
    return "\n".join(
        output.text(f"{name}: {MASK if is_secret_key(name) else value}")
        for name, value in headers.items()
    )


def attempt_result(attempt: Mapping[str, Any]) -> str:
    """``HTTP 200`` / ``HTTP 503`` / ``timeout`` / ``HTTP 200 (ssrf_blocked)``: the error
    class is named unless the status code already says it (``http_status``)."""
    code, error = attempt.get("status_code"), attempt.get("error_class")
    if code is None:
        return output.text(error)
    kind = ("exit" if is_command_attempt(attempt) else "SMTP" if is_email_attempt(attempt)
            else "HTTP")
    text = f"{kind} {output.text(code)}"
    if error and error not in ("http_status", "smtp_status"):
        text += f" ({output.text(error)})"
    ok = not error and (kind != "HTTP" or (isinstance(code, int) and 200 <= code < 300))
    return f"[green]{text}[/]" if ok else f"[red]{text}[/]"


COMMAND_OUTPUT_MARK = "--- stdout ---\n"
"""How the attempt log's excerpt of a command run begins (outbound.command)."""


def is_command_attempt(attempt: Mapping[str, Any]) -> bool:
    """An attempt of a command destination: its excerpt holds the run's output."""
    excerpt = attempt.get("response_excerpt")
    error = attempt.get("error_class")
    return (isinstance(excerpt, str) and excerpt.startswith(COMMAND_OUTPUT_MARK)) or (
        isinstance(error, str) and error.startswith("command_"))


def is_email_attempt(attempt: Mapping[str, Any]) -> bool:
    """An attempt of an email destination: its excerpt is the SMTP server's reply."""
    excerpt = attempt.get("response_excerpt")
    error = attempt.get("error_class")
    return (isinstance(excerpt, str) and excerpt.startswith("SMTP ")) or (
        isinstance(error, str) and error in ("smtp_status", "email_unavailable"))


# --- subscriptions --------------------------------------------------------------------


def show_subscriptions(answer: Mapping[str, Any]) -> int:
    """``palyra subscriptions list`` for people; the exit code."""
    return output.print_listing(
        answer.get("subscriptions"), subscriptions_table,
        "No subscriptions yet. Add one: palyra subscriptions add ID --url URL")


def show_subscription(answer: Mapping[str, Any]) -> int:
    """``palyra subscriptions show ID`` for people; the exit code."""
    output.console().print(subscription_details(answer.get("subscription") or {}))
    return 0


def show_delivery(answer: Mapping[str, Any]) -> int:
    """``palyra deliveries show ID`` for people; the exit code."""
    output.console().print(
        delivery_details(answer.get("delivery") or {}, answer.get("attempts") or [])
    )
    return 0


def show_tokens(answer: Mapping[str, Any]) -> int:
    """``palyra tokens list`` for people; the exit code."""
    return output.print_listing(answer.get("tokens"), tokens_table,
                                "No tokens yet. Create one: palyra tokens create NAME")


def subscriptions_table(subs: Sequence[Mapping[str, Any]]) -> Table:
    rows = (
        (
            output.text(sub.get("subscription_id")),
            output.text(sub.get("url") or command_text(sub.get("command"))
                        or ", ".join(sub.get("email") or ())),
            output.text(sub.get("enabled")),
            output.text(sub.get("events")) if sub.get("events") else "all",
            output.text(sub.get("format")),
            output.text(sub.get("pending")),
            health(sub),
        )
        for sub in subs
    )
    return output.table(
        ("id", "url / command / email", "enabled", "events", "format", "pending", "health"),
        rows,
        no_wrap=("id",),
    )


def command_text(argv: Any) -> str:
    """A command's argv as a person reads it (shell-quoted, though no shell runs it)."""
    if not isinstance(argv, list) or not argv:
        return ""
    return " ".join(shlex.quote(str(arg)) for arg in argv)


def _other_destination(sub: Mapping[str, Any], name: str) -> bool:
    """A field of the destination the subscription does not have (``url: ""`` of a
    command, ``command: []`` of a url ...): not shown."""
    command_fields = ("command", "env", "working_dir", "max_concurrent",
                      "success_exit_codes", "run_as")
    # Only a URL delivery is signed: the others show "secret_ref: none" and no rotation.
    rotation = ("previous_secret_ref", "previous_valid_until")
    if sub.get("command"):
        return name in ("url", "headers", "max_in_flight", "format", "signature_format",
                        "email", *rotation)
    if sub.get("email"):
        return name in ("url", "headers", "format", "signature_format", *command_fields,
                        *rotation)
    return name in (*command_fields, "email")


def subscription_details(sub: Mapping[str, Any]) -> Panel:
    from rich.panel import Panel

    rows: list[tuple[str, str]] = []
    for name in (*SUBSCRIPTION_FIELDS, *sorted(set(sub) - set(SUBSCRIPTION_FIELDS))):
        if name not in sub or _other_destination(sub, name):
            continue
        value = sub[name]
        if name == "command":
            rows.append((name, output.text(command_text(value))))
            continue
        if name == "health":
            rendered = health(sub)
            info = value if isinstance(value, Mapping) else {}
            if info.get("last_success_at"):
                rendered += f" (last success {output.moment(info['last_success_at'])})"
        elif name == "events" and not value:
            rendered = "all but the daemon's own (name those to get them)"
        elif name == "headers":
            rendered = headers_text(value)
        elif name == "secret_ref" and not value:
            rendered = ("none (runs are not signed)" if sub.get("command")
                        else "none (messages are not signed)" if sub.get("email")
                        else "none")
        elif name in ("created_at", "updated_at", "previous_valid_until"):
            rendered = output.moment(value)
        else:
            rendered = output.text(value)
        rows.append((name, rendered))
    title = output.text(sub.get("subscription_id"))
    return Panel(output.key_value_table(rows), title=title, expand=False)


def receiver_instructions(signature_format: str | None) -> Text:
    """How a receiver checks a delivery signed with the secret (Standard Webhooks v1)."""
    from rich.text import Text

    lines = Text()
    lines.append("How the receiver verifies each delivery (Standard Webhooks):\n", style="bold")
    lines.append("  headers  webhook-id, webhook-timestamp (unix s), webhook-signature\n")
    lines.append("  key      base64-decode the part of the secret after whsec_\n")
    lines.append("  signed   {webhook-id}.{webhook-timestamp}.{raw body}, HMAC-SHA256, base64\n")
    lines.append("  accept   if one space-separated v1,<base64> entry matches (several during\n")
    lines.append("           a rotation), compared in constant time, and the timestamp is\n")
    lines.append("           within 5 minutes; dedupe on webhook-id (kept across retries)\n")
    lines.append("  libraries: the standardwebhooks package (Python, JavaScript, Go, ...)")
    if signature_format == "github":
        lines.append("\n\nAlso sent: X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw\n")
        lines.append("body>, keyed with the whole secret text as shown (whsec_ included),\n")
        lines.append("as a GitHub-style receiver expects.")
    return lines


def secret_panel(secret: str, subscription_id: str, signature_format: str | None) -> Panel:
    """The one and only display of a subscription's generated signing secret."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    body = Group(
        Text(secret, style="bold"),
        Text(""),
        Text(
            "This secret is shown only this once and will not be shown again.\n"
            "Give it to the receiver now.",
            style="yellow",
        ),
        Text(""),
        receiver_instructions(signature_format),
    )
    return Panel(
        body,
        title=output.text(f"Signing secret for {subscription_id}"),
        title_align="left",
        border_style="bold yellow",
        expand=False,
    )


def subscription_next_steps(sub: Mapping[str, Any]) -> Text:
    from rich.text import Text

    quoted = output.printable(shlex.quote(str(sub.get("subscription_id", "ID"))))
    lines = Text()
    lines.append("Next steps:\n")
    lines.append("  1. Send a test event:   ")
    lines.append(f"palyra subscriptions test {quoted}\n", style="bold")
    lines.append("  2. Watch deliveries:    ")
    lines.append(f"palyra deliveries list --subscription {quoted}", style="bold")
    return lines


def rotation_note(sub: Mapping[str, Any], *, until: str, secret_shown: bool) -> Text:
    from rich.text import Text

    quoted = output.printable(shlex.quote(str(sub.get("subscription_id", "ID"))))
    new = "the one above" if secret_shown else f"the value behind {sub.get('secret_ref')}"
    new = output.printable(new)
    lines = Text()
    if until == "-":
        lines.append("Deliveries are signed with the new secret only, from now on.\n")
    else:
        lines.append(f"Deliveries carry both signatures until {until}.\n")
    lines.append(f"Next: give the receiver the new secret ({new}), then check with\n  ")
    lines.append(f"palyra subscriptions test {quoted}", style="bold")
    return lines


def test_result(answer: Mapping[str, Any], subscription_id: str) -> Panel:
    """The test event's delivery and its first attempt (or that none happened yet)."""
    from rich.panel import Panel

    delivery = answer.get("delivery") or {}
    attempt = answer.get("attempt")
    rows = [
        ("delivery", delivery_status(delivery.get("status"))),
        ("event", f"{output.text(answer.get('event_id'))} (seq {output.text(answer.get('seq'))})"),
        ("delivery id", output.text(delivery.get("delivery_id"))),
    ]
    if isinstance(attempt, Mapping):
        rows += [
            ("result", attempt_result(attempt)),
            ("exit code" if is_command_attempt(attempt) else "status code",
             output.text(attempt.get("status_code"))),
            ("duration", milliseconds(attempt.get("duration_ms"))),
            ("error class", output.text(attempt.get("error_class"))),
            ("error", untrusted(attempt.get("error_detail"))),
            ("output" if is_command_attempt(attempt) else "response",
             untrusted(attempt.get("response_excerpt"))),
        ]
    else:
        rows.append(("attempt", "[yellow]none yet (the daemon stopped waiting)[/]"))
    title = output.text(f"test delivery to {subscription_id}")
    return Panel(output.key_value_table(rows), title=title, expand=False)


# --- deliveries -----------------------------------------------------------------------


def delivery_event(delivery: Mapping[str, Any]) -> str:
    seq = output.text(delivery.get("event_seq"))
    return f"{output.text(delivery.get('event_type'))} (seq {seq})"


def last_result(delivery: Mapping[str, Any]) -> str:
    code, error = delivery.get("last_status_code"), delivery.get("last_error_class")
    if code is None and not error:
        return "-"
    return attempt_result({"status_code": code, "error_class": error})


def deliveries_table(deliveries: Sequence[Mapping[str, Any]]) -> Table:
    """One row per delivery; the next-attempt column only when some delivery has one."""
    with_next = any(item.get("next_attempt_at") for item in deliveries)
    columns = ["id", "subscription", "event", "status", "attempts", "last"]
    columns += ["next attempt"] if with_next else []
    rows = []
    for item in deliveries:
        row = [
            output.text(item.get("delivery_id")),
            output.text(item.get("subscription_id")),
            delivery_event(item),
            delivery_status(item.get("status")),
            output.text(item.get("attempts")),
            last_result(item),
        ]
        if with_next:
            row.append(output.moment(item.get("next_attempt_at")))
        rows.append(row)
    return output.table(columns, rows, no_wrap=("id", "status", "next attempt"))


def attempts_table(attempts: Sequence[Mapping[str, Any]]) -> Table:
    rows = (
        (
            output.text(item.get("attempt_no")),
            output.moment(item.get("started_at")),
            milliseconds(item.get("duration_ms")),
            attempt_result(item),
            untrusted(item.get("error_detail"), 120),
            "(output below)" if is_command_attempt(item) and item.get("response_excerpt")
            else untrusted(item.get("response_excerpt"), 120),
        )
        for item in attempts
    )
    return output.table(
        ("#", "started", "duration", "result", "error", "response"),
        rows,
        title="Attempts",
        no_wrap=("#", "started"),
    )


def _shown_as_time(name: str, record: Mapping[str, Any]) -> bool:
    """``created_ms`` and the like, when ``created_at`` says the same for people."""
    return name.endswith("_ms") and f"{name[:-3]}_at" in record


def delivery_details(delivery: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]]) -> Group:
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    rows: list[tuple[str, str]] = []
    for name in (*DELIVERY_FIELDS, *sorted(set(delivery) - set(DELIVERY_FIELDS))):
        if name not in delivery or _shown_as_time(name, delivery):
            continue
        value = delivery[name]
        if name == "status":
            rendered = delivery_status(value)
        elif name.endswith("_at"):
            rendered = output.moment(value)
        else:
            rendered = output.text(value)
        rows.append((name, rendered))
    panel = Panel(
        output.key_value_table(rows), title=output.text(delivery.get("delivery_id")), expand=False
    )
    parts: list[RenderableType] = [panel]
    parts.append(attempts_table(attempts) if attempts else Text("No attempt yet.", style="dim"))
    for item in attempts:
        excerpt = item.get("response_excerpt")
        if is_command_attempt(item) and excerpt:
            # What the command printed: untrusted text, escaped like a receiver's answer.
            parts.append(Panel(untrusted(excerpt, 4096), expand=False,
                               title=output.text(f"attempt {item.get('attempt_no')}: output"
                                                 " (the tails of stdout and stderr)")))
    return Group(*parts)


def stats_view(stats: Mapping[str, Any]) -> Group:
    from rich.console import Group
    from rich.panel import Panel

    counts = stats.get("deliveries") or {}
    latency = stats.get("latency_ms") or {}
    oldest = stats.get("oldest_pending_age_ms")
    rows = [
        ("deliveries", ", ".join(
            f"{delivery_status(name)} {output.text(counts.get(name, 0))}"
            for name in ("succeeded", "failed", "pending")
        )),
        ("attempts", output.text(stats.get("attempts"))),
        ("success rate", percent(stats.get("success_rate"))),
        ("latency p50", milliseconds(latency.get("p50"))),
        ("latency p95", milliseconds(latency.get("p95"))),
        ("oldest pending", "-" if not isinstance(oldest, int | float)
         else output.duration(oldest / 1000)),
    ]
    parts: list[RenderableType] = [
        Panel(output.key_value_table(rows), title="Deliveries", title_align="left", expand=False)
    ]
    failures = stats.get("failures_by_class") or {}
    if failures:
        ranked = sorted(failures.items(), key=lambda item: (-int(item[1] or 0), item[0]))
        parts.append(output.table(
            ("error class", "failed attempts"),
            ((output.text(name), output.text(count)) for name, count in ranked),
            title="Failures by class",
        ))
    busiest = stats.get("busiest") or []
    if busiest:
        parts.append(output.table(
            ("subscription", "deliveries"),
            ((output.text(item.get("subscription_id")), output.text(item.get("deliveries")))
             for item in busiest),
            title="Busiest subscriptions",
        ))
    return Group(*parts)


# --- tokens ---------------------------------------------------------------------------


LEGACY_RIGHTS = "legacy: publish any type, read every event (no scopes set)"


def token_rights(item: Mapping[str, Any]) -> str:
    """A token's scopes as ``tokens list`` shows them; a legacy token's rights in words."""
    scopes = item.get("scopes")
    if item.get("legacy") or scopes is None:
        return LEGACY_RIGHTS
    return " ".join(str(scope) for scope in scopes) if isinstance(scopes, list) else "?"


def tokens_table(tokens: Sequence[Mapping[str, Any]]) -> Table:
    rows = (
        (
            output.text(item.get("token_id")),
            output.text(item.get("name")),
            output.text(token_rights(item)),
            output.moment(item.get("expires_at")) if item.get("expires_at") else "never",
            output.moment(item.get("last_used_at")) if item.get("last_used_at") else "never",
            output.text(item.get("description")),
            output.moment(item.get("created_at")),
        )
        for item in tokens
    )
    return output.table(("id", "name", "scopes", "expires", "last used", "description",
                         "created"), rows, no_wrap=("id", "created"))


def curl_example(base_url: str) -> str:
    """Publishing an event with the token kept in ``$PALYRA_TOKEN`` (so it is printed
    once, in the panel, and not again in a command line)."""
    return (
        f"curl -sS -X POST {shlex.quote(base_url.rstrip('/') + '/v1/events')} \\\n"
        '  -H "Authorization: Bearer $PALYRA_TOKEN" \\\n'
        "  -H 'Content-Type: application/json' \\\n"
        """  -d '{"type": "deploy.done", "data": {"version": "2.3"},\n"""
        """       "idempotency_key": "deploy-2.3"}'"""
    )


def token_panel(secret: str, token: Mapping[str, Any], base_url: str) -> Panel:
    """The one and only display of a publishing token, with how to use it."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    name = str(token.get("name") or token.get("token_id") or "?")
    token_id = output.printable(shlex.quote(str(token.get("token_id", "ID"))))
    body = Group(
        Text(secret, style="bold"),
        Text(""),
        Text(
            "This token is shown only this once and will not be shown again.\n"
            "Store it where the publishing application reads its secrets.",
            style="yellow",
        ),
        Text(""),
        Text("Publish an event over HTTP (the ingress listener):", style="bold"),
        Text("export PALYRA_TOKEN='<the token above>'"),
        Text(curl_example(base_url)),
        Text(""),
        Text(f"Revoke it with: palyra tokens revoke {token_id}", style="dim"),
    )
    return Panel(
        body, title=output.text(f"Token {name}"), title_align="left",
        border_style="bold yellow", expand=False,
    )
