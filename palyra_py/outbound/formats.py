"""Request bodies for a subscription's ``format``: ``standard`` (the published event as it
is), ``slack`` (an incoming-webhook message) and ``discord`` (an execute-webhook message).
Pure: no I/O.

The chat formats show a short summary: the event type, source and up to 10 top-level
scalar fields of ``data``. A field whose name looks like a secret (``palyra_py.redact``) is
never shown. Lengths stay inside the services' documented limits (Slack: 3,000 characters
of text per section, 10 fields per section; Discord: content 2,000, embed title 256,
description 4,096, 25 fields of name 256 / value 1,024, 6,000 characters per embed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from palyra_py.events import PublishedEvent
from palyra_py.providers._common import compact_json
from palyra_py.redact import is_secret_key, redact

Format = Literal["standard", "slack", "discord"]
FORMATS: tuple[Format, ...] = ("standard", "slack", "discord")

MAX_SUMMARY_FIELDS = 10
SLACK_MAX_TEXT = 3000
"""Characters of text in a whole Slack message (the fallback ``text`` included)."""
DISCORD_MAX_CONTENT = 2000
DISCORD_MAX_TITLE = 256
DISCORD_MAX_DESCRIPTION = 4096
DISCORD_MAX_EMBED_TOTAL = 6000
DISCORD_MAX_FIELD_NAME = 256
DISCORD_MAX_FIELD_VALUE = 1024

# Per-item clips, chosen so that ten fields plus the header always fit the totals above.
_NAME_CHARS = 64
_VALUE_CHARS = 160
_HEADLINE_CHARS = 128
_DISCORD_DESCRIPTION_CHARS = 1024
_ELLIPSIS = "…"


def render(format: Format, event: PublishedEvent) -> bytes:
    """The request body for ``format``: compact UTF-8 JSON. ``ValueError`` for an unknown
    format."""
    if format == "standard":
        return compact_json(event.body())
    if format == "slack":
        return compact_json(slack_message(event))
    if format == "discord":
        return compact_json(discord_message(event))
    raise ValueError(f"unknown format {format!r}: one of {', '.join(FORMATS)}")


class PreparedEvent:
    """A published event with its request bodies, each rendered on first use and then
    shared by every delivery of the event in that format (and by its retries)."""

    __slots__ = ("_bodies", "event")

    def __init__(self, event: PublishedEvent) -> None:
        self.event = event
        self._bodies: dict[str, bytes] = {}

    def body(self, format: Format) -> bytes:
        """``render(format, self.event)``, computed once."""
        body = self._bodies.get(format)
        if body is None:
            body = self._bodies[format] = render(format, self.event)
        return body


def summary_fields(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(name, value)`` for the top-level scalar fields of ``data`` in order, secret-looking
    names left out, values as JSON text except non-blank strings (given as they are)."""
    clean, _ = redact(data)
    count = 0
    for key, value in clean.items():
        if count == MAX_SUMMARY_FIELDS:
            return
        if is_secret_key(key) or isinstance(value, dict | list):
            continue
        # Blank text is shown quoted: Discord refuses empty field names and values.
        name = str(key)
        text = value if isinstance(value, str) and value.strip() else json.dumps(value)
        yield (name if name.strip() else json.dumps(name)), text
        count += 1


def slack_message(event: PublishedEvent) -> dict[str, Any]:
    """``{"text": "<type> from <source>", "blocks": [...]}`` with a headline section, a
    fields section (when there are fields) and a context line with time and id."""
    kind = _slack_clip(event.type, _HEADLINE_CHARS)
    source = _slack_clip(event.source, _HEADLINE_CHARS)
    text = f"{kind} from {source}"
    title = f"*{kind}* from `{source}`"
    context = _slack_clip(f"{event.timestamp} · id {event.id}", _HEADLINE_CHARS)
    budget = SLACK_MAX_TEXT - len(text) - len(title) - len(context)
    fields: list[dict[str, str]] = []
    for name, value in summary_fields(event.data):
        item = f"*{_slack_clip(name, _NAME_CHARS)}*\n{_slack_clip(value, _VALUE_CHARS)}"
        if len(item) > budget:
            break
        budget -= len(item)
        fields.append({"type": "mrkdwn", "text": item})
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": title}}]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": text, "blocks": blocks}


def discord_message(event: PublishedEvent) -> dict[str, Any]:
    """``{"content", "embeds": [one embed], "allowed_mentions": {"parse": []}}``: mentions
    are switched off so that event data can never ping ``@everyone``."""
    content = _clip(f"{event.type} from {event.source}", DISCORD_MAX_CONTENT)
    title = _clip(event.type, DISCORD_MAX_TITLE)
    lines = [f"Source: {event.source}", f"Event id: {event.id}"]
    if event.actor:
        lines.insert(1, f"Actor: {event.actor}")
    description = _clip("\n".join(lines), _DISCORD_DESCRIPTION_CHARS)
    budget = DISCORD_MAX_EMBED_TOTAL - len(title) - len(description)
    fields: list[dict[str, Any]] = []
    for name, value in summary_fields(event.data):
        field_name = _clip(name, _NAME_CHARS)
        field_value = _clip(value, _VALUE_CHARS)
        if len(field_name) + len(field_value) > budget:
            break
        budget -= len(field_name) + len(field_value)
        fields.append({"name": field_name, "value": field_value, "inline": True})
    embed: dict[str, Any] = {"title": title, "description": description,
                             "timestamp": event.timestamp}
    if fields:
        embed["fields"] = fields
    return {"content": content, "embeds": [embed], "allowed_mentions": {"parse": []}}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def _slack_escape(text: str) -> str:
    # Slack's three control characters: escaped, "<!channel>" and links cannot be injected.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_clip(text: str, limit: int) -> str:
    """Escaped text of at most ``limit`` characters, never ending inside an entity."""
    escaped = _slack_escape(text)
    if len(escaped) <= limit:
        return escaped
    cut = escaped[: limit - 1]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + _ELLIPSIS
