"""The placeholders of a command destination's argv: ``{id}``, ``{type}``, ``{source}``,
``{timestamp}``, ``{actor}``, ``{seq}``, ``{data}``, ``{data.a.b}`` (array items by index:
``{data.commits.0.id}``), each with an optional default (``{data.ref:-main}``); ``{{`` and
``}}`` are literal braces. Pure: the registry checks templates with it, the command
destination fills them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from palyra_py.events import PublishedEvent

__all__ = ["TemplateError", "check_template", "render_arg", "render_argv"]

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|\{|\}")
_FIELD = re.compile(r"(id|type|source|timestamp|actor|seq|data(?:\.[^.:{}\s]+)*)(?::-(.*))?",
                    re.DOTALL)


class TemplateError(ValueError):
    """A placeholder that cannot be filled (or is not a placeholder): the run fails."""


def check_template(arg: str) -> None:
    """``TemplateError`` unless every ``{...}`` of ``arg`` is a known placeholder
    (``{id}``, ``{type}``, ``{source}``, ``{timestamp}``, ``{actor}``, ``{seq}``, ``{data}``,
    ``{data.a.b}``, each optionally ``{...:-default}``); ``{{`` and ``}}`` are literal."""
    for match in _PLACEHOLDER.finditer(arg):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if match.group(1) is None or _FIELD.fullmatch(match.group(1)) is None:
            raise TemplateError(
                f"{token if len(token) < 40 else token[:40] + '...'!r} is not a placeholder:"
                " use {id}, {type}, {source}, {timestamp}, {actor}, {seq}, {data.a.b} (with"
                " an optional default: {data.ref:-main}); write {{ and }} for literal braces")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _lookup(event: PublishedEvent, path: str) -> Any:
    top: dict[str, Any] = {"id": event.id, "type": event.type, "source": event.source,
                           "timestamp": event.timestamp, "actor": event.actor,
                           "seq": event.seq, "data": event.data}
    head, _, rest = path.partition(".")
    value: Any = top[head]
    for part in rest.split(".") if rest else ():
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def render_arg(arg: str, event: PublishedEvent) -> str:
    """``arg`` with its placeholders filled from ``event``: strings as they are, numbers and
    booleans as JSON, objects and arrays as compact JSON. A field that is absent or null
    takes the default (``{data.ref:-main}``), else ``TemplateError``; so does a value with a
    NUL (no argument can hold one)."""

    def fill(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        parsed = _FIELD.fullmatch(match.group(1) or "")
        if parsed is None:
            raise TemplateError(f"{token[:40]!r} is not a placeholder")
        path, default = parsed.group(1), parsed.group(2)
        value = _lookup(event, path)
        if value is None:
            if default is None:
                raise TemplateError(f"placeholder {{{path}}}: the event has no such field"
                                    " (give a default: {" + path + ":-value})")
            return default
        text = _text(value)
        if "\x00" in text:
            raise TemplateError(f"placeholder {{{path}}}: the value holds a NUL byte, which"
                                " no argument can carry")
        return text

    return _PLACEHOLDER.sub(fill, arg)


def render_argv(command: Sequence[str], event: PublishedEvent) -> list[str]:
    """The argv of a run: each element of ``command`` rendered on its own (a value never
    splits into several arguments nor joins two). ``TemplateError`` names the first
    placeholder that cannot be filled."""
    return [render_arg(arg, event) for arg in command]
