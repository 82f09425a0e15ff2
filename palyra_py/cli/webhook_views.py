"""How ``palyra webhooks ...`` answers look to people (``--json`` bypasses all of this).

rich is imported inside the functions that build its objects, so that importing this
module costs nothing when the output is ``--json``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from palyra_py.cli import output

if TYPE_CHECKING:
    from rich.panel import Panel
    from rich.text import Text

OUTCOME_STYLE = {"accepted": "bold green", "rejected": "bold red"}

SHOW_FIELDS = (
    "integration_id",
    "provider",
    "display_name",
    "enabled",
    "readiness",
    "ingress_url",
    "secret_ref",
    "previous_secret_ref",
    "previous_valid_until",
    "allowed_events",
    "allowed_sources",
    "signature_required",
    "max_payload_bytes",
    "timestamp_tolerance_s",
    "replay_window_s",
    "provider_options",
    "response",
    "response_command",
    "response_timeout_s",
    "created_at",
    "updated_at",
    "last_test_status",
    "last_test_at",
    "last_test_message",
)


def last_test(hook: Mapping[str, Any]) -> str:
    status = hook.get("last_test_status")
    if not status:
        return "never"
    when = hook.get("last_test_at")
    return output.text(f"{status} ({when})" if when else status)


def webhooks_table(hooks: Sequence[Mapping[str, Any]]) -> Any:
    rows = (
        (
            output.text(hook.get("integration_id")),
            output.text(hook.get("provider")),
            output.text(hook.get("enabled")),
            output.readiness(hook.get("readiness"))
            + (" [yellow](per node)[/]" if hook.get("readiness_warning") else ""),
            output.text(hook.get("allowed_events")) if hook.get("allowed_events") else "all",
            last_test(hook),
        )
        for hook in hooks
    )
    return output.table(
        ("id", "provider", "enabled", "readiness", "events", "last test"),
        rows,
        no_wrap=("id", "readiness"),
    )


def show_webhooks(answer: Mapping[str, Any]) -> int:
    """``palyra webhooks list`` for people; the exit code."""
    return output.print_listing(
        answer.get("webhooks"), webhooks_table,
        "No integrations yet. Add one: palyra webhooks add ID --provider P ...")


def show_webhook(answer: Mapping[str, Any]) -> int:
    """``palyra webhooks show ID`` for people; the exit code."""
    output.console().print(webhook_details(answer.get("webhook") or {}))
    return 0


def webhook_details(hook: Mapping[str, Any]) -> Panel:
    from rich.panel import Panel

    rows: list[tuple[str, str]] = []
    for name in (*SHOW_FIELDS, *sorted(set(hook) - set(SHOW_FIELDS))):
        if name not in hook:
            continue
        value = hook[name]
        if name == "readiness":
            rendered = output.readiness(value)
        elif name in ("allowed_events", "allowed_sources") and not value:
            rendered = "all"
        else:
            rendered = output.text(value)
        rows.append((name, rendered))
    title = output.text(hook.get("integration_id"))
    return Panel(output.key_value_table(rows), title=title, expand=False)


def secret_panel(secret: str, integration_id: str) -> Panel:
    """The one and only display of a generated secret."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    body = Group(
        Text(secret, style="bold"),
        Text(""),
        Text(
            "This secret is shown only this once and will not be shown again.\n"
            "Copy it into the provider's webhook settings now.",
            style="yellow",
        ),
    )
    return Panel(
        body,
        title=output.text(f"Secret for {integration_id}"),
        title_align="left",
        border_style="bold yellow",
        expand=False,
    )


def next_steps(hook: Mapping[str, Any], *, secret_shown: bool) -> Panel:
    from rich.panel import Panel
    from rich.text import Text

    integration_id = str(hook.get("integration_id", "ID"))
    quoted = output.printable(shlex.quote(integration_id))
    provider = str(hook.get("provider") or "the provider")
    where = "the one above" if secret_shown else f"the value behind {hook.get('secret_ref')}"
    where = output.printable(where)
    lines = Text()
    lines.append("Ingress URL: ", style="dim")
    lines.append(output.printable(str(hook.get("ingress_url") or "-")), style="bold cyan")
    lines.append("\n\nNext steps:\n")
    lines.append(f"  1. In {output.printable(provider)}, set the webhook URL to the ingress URL\n")
    lines.append(f"     and its secret to {where}.\n")
    lines.append("  2. Check the set-up:     ")
    lines.append(f"palyra webhooks test {quoted}\n", style="bold")
    lines.append("  3. Watch events arrive:  ")
    lines.append(f"palyra system events tail -f --integration {quoted}", style="bold")
    title = output.text(f"{integration_id} ({provider})")
    return Panel(lines, title=title, title_align="left", expand=False)


def rotation_steps(hook: Mapping[str, Any], *, until: str, secret_shown: bool) -> Text:
    """What to do after a rotation, before the previous secret stops working."""
    from rich.text import Text

    quoted = output.printable(shlex.quote(str(hook.get("integration_id", "ID"))))
    provider = output.printable(str(hook.get("provider") or "the provider"))
    new = "the one above" if secret_shown else f"the value behind {hook.get('secret_ref')}"
    new = output.printable(new)
    lines = Text()
    if until == "-":
        lines.append("The previous secret no longer works.\n")
    else:
        lines.append(f"The previous secret keeps working until {until}.\n")
    lines.append(f"Next: set the secret in {provider} to {new}, then check with\n  ")
    lines.append(f"palyra webhooks test {quoted}", style="bold")
    return lines


def readiness_table(items: Sequence[Mapping[str, Any]]) -> Any:
    rows = (
        (
            output.text(item.get("integration_id")),
            output.readiness(item.get("readiness")),
            output.text(item.get("detail"))
            + (f"\n[yellow]{output.text(item['warning'])}[/]" if item.get("warning") else ""),
        )
        for item in items
    )
    return output.table(("id", "readiness", "detail"), rows, no_wrap=("id", "readiness"))


def test_result(answer: Mapping[str, Any], *, tamper: bool) -> Panel:
    from rich.panel import Panel

    outcome = str(answer.get("outcome", "-"))
    style = OUTCOME_STYLE.get(outcome, "yellow")
    rows = [
        ("outcome", f"[{style}]{output.text(outcome)}[/]"),
        ("HTTP status", output.text(answer.get("status_code"))),
        ("reason", output.text(answer.get("reason"))),
        ("seq", output.text(answer.get("seq"))),
        ("event id", output.text(answer.get("event_id"))),
    ]
    kind = "tampered test delivery" if tamper else "test delivery"
    title = f"{kind} to {answer.get('integration_id', '?')}"
    return Panel(output.key_value_table(rows), title=output.text(title), expand=False)
