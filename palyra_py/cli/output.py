"""Rendering: JSON on stdout for scripts, rich tables and panels for people, and plain
one-line messages on stderr (never wrapped, so they stay greppable).

Text for people never drives the terminal: what the daemon stored or received (event types
from providers' unsigned headers and bodies, receivers' answers, names) goes through
:func:`printable`, which shows control characters (C0, DEL, C1) as ``\\xNN`` and bidi
controls as ``\\uNNNN``; table cells also through rich's markup escape (:func:`text`).
Everything the console prints passes :func:`printable` once more (newlines kept), so a
value a printer forgot is still shown, not obeyed. ``--json`` output stays exact JSON.

rich is imported only by the functions that render for people (about 40 ms of start-up),
so ``--json`` output and error messages never load it; nor does anything here import
Typer, so that ``quick`` can print without it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from palyra_py.times import format_rfc3339

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

READINESS_STYLE = {
    "ready": "green",
    "disabled": "dim",
    "invalid_secret_ref": "bold red",
    "secret_not_found": "bold red",
}
SEVERITY_STYLE = {"info": "", "warn": "yellow", "error": "bold red"}
_PIECE = 16 * 1024  # characters per write of print_json

BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
"""Unicode's Bidi_Control characters: they reorder what follows on the line (``exe.txt``
shown for ``txt.exe``)."""
_ESCAPES: dict[int, str] = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
    0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r",
    **{ord(char): f"\\u{ord(char):04x}" for char in BIDI_CONTROLS},
}
_ESCAPES_BUT_NEWLINE = {code: shown for code, shown in _ESCAPES.items() if code != 0x0A}


def printable(value: str, *, newlines: bool = False) -> str:
    """``value`` safe to show on a terminal: every C0 control character (tab and newline
    too, unless ``newlines``), DEL and every C1 control shown as ``\\xNN`` (``\\t``,
    ``\\n``, ``\\r``), and the bidi controls as ``\\uNNNN``; nothing else changes. The
    one escaping function of every human printer (:func:`text` adds rich's markup
    escape for cells)."""
    return value.translate(_ESCAPES_BUT_NEWLINE if newlines else _ESCAPES)


@cache
def console() -> Console:
    """The stdout console. It looks up ``sys.stdout`` at each print, so redirection and
    test runners that swap the stream keep working. Whatever it prints passes
    :func:`printable` (newlines kept): the backstop for a value no printer escaped."""
    from rich.console import (
        Console,
        ConsoleOptions,
        ConsoleRenderable,
        RenderableType,
        RenderHook,
        RenderResult,
    )
    from rich.segment import Segment

    class Printable:
        def __init__(self, inner: RenderableType) -> None:
            self.inner = inner

        def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
            for segment in console.render(self.inner, options):
                if segment.control or not segment.text:
                    yield segment  # rich's own control codes (cursor moves), not text
                else:
                    yield Segment(printable(segment.text, newlines=True), segment.style)

    class Hook(RenderHook):
        def process_renderables(self, renderables: list[ConsoleRenderable]
                                ) -> list[ConsoleRenderable]:
            return [Printable(item) for item in renderables]

    result = Console(highlight=False)
    result.push_render_hook(Hook())
    return result


def escape(markup: str) -> str:
    """``markup`` with rich's markup brackets escaped (``rich.markup.escape``)."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)


# --- machine output ------------------------------------------------------------------


def print_json(doc: Any) -> None:
    """One JSON document on stdout, indented, UTF-8 kept as is.

    Written in pieces: when the reader goes away (``| head``) in the middle of one large
    write, CPython can report it as written in full; the next piece then raises
    ``BrokenPipeError`` and the command ends with 1, as Typer's commands do."""
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    for start in range(0, len(text), _PIECE):
        sys.stdout.write(text[start:start + _PIECE])
        sys.stdout.flush()


def print_json_pages(key: str, items: Iterable[Any], cursor_key: str) -> None:
    """``{key: [...], cursor_key: null}`` written item by item as ``items`` yields them,
    so ``--all`` over a long listing never holds the whole list."""
    write = sys.stdout.write
    write(f'{{"{key}": [')
    for index, item in enumerate(items):
        write(("\n  " if index == 0 else ",\n  ") + json.dumps(item, ensure_ascii=False))
    write(f'\n], "{cursor_key}": null}}\n')
    sys.stdout.flush()


def print_json_line(doc: Any) -> None:
    """One compact JSON object per line, flushed at once (for followers and pipes)."""
    sys.stdout.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# --- messages on stderr --------------------------------------------------------------


def error(message: str) -> None:
    note(f"palyra: {message}")


def note(message: str) -> None:
    sys.stderr.write(printable(message) + "\n")
    sys.stderr.flush()


def print_listing(items: Any, render: Callable[[Sequence[Any]], Table], empty: str) -> int:
    """A ``list`` command's human output: ``render(items)``, or the hint ``empty`` when
    there is nothing; the exit code (0 either way)."""
    if not items:
        note(empty)
    else:
        console().print(render(items))
    return 0


@contextmanager
def progress_bar(description: str, total: int | None, *, quiet: bool = False
                 ) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (stdout stays for results) for a long operation in steps:
    yields ``advance(n)``. ``total`` ``None``: no known end. ``quiet`` (``--json``): no
    bar at all; ``advance`` does nothing."""
    if quiet:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(TextColumn(printable(description)), BarColumn(), MofNCompleteColumn(),
                   console=Console(stderr=True), transient=False)
    with bar:
        task = bar.add_task(printable(description), total=total)
        yield lambda n: bar.advance(task, n)


def success(message: str) -> None:
    """A short confirmation for people, on stdout."""
    from rich.text import Text

    console().print(Text(printable(message), style="green"))


# --- small formatters ----------------------------------------------------------------


def text(value: Any) -> str:
    """A table cell: ``-`` for null/empty, lists joined, control characters shown as
    escapes (:func:`printable`), rich's markup escaped."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return escape(printable(", ".join(str(item) for item in value)))
    if isinstance(value, dict):
        if not value:
            return "-"
        return escape(printable(", ".join(f"{key}={item}" for key, item in value.items())))
    return escape(printable(str(value)))


def moment(value: Any) -> str:
    """A time the API gives as RFC 3339 text or as unix seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_rfc3339(datetime.fromtimestamp(value, tz=UTC))
    return text(value)


def readiness(value: Any) -> str:
    name = str(value) if value is not None else "-"
    style = READINESS_STYLE.get(name, "yellow")
    shown = escape(printable(name))
    return f"[{style}]{shown}[/]" if style else shown


def severity(value: Any) -> str:
    name = text(value)
    style = SEVERITY_STYLE.get(name, "")
    return f"[{style}]{name}[/]" if style else name


def size(num_bytes: Any) -> str:
    if not isinstance(num_bytes, int | float):
        return "-"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def duration(seconds: Any) -> str:
    """``93784`` -> ``1d 2h 3m 4s`` (largest units first, zeros left out)."""
    if not isinstance(seconds, int | float):
        return "-"
    rest = int(seconds)
    parts: list[str] = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= length:
            parts.append(f"{rest // length}{unit}")
            rest %= length
    if rest or not parts:
        parts.append(f"{rest}s")
    return " ".join(parts)


def key_value_table(rows: Iterable[tuple[str, str]], *, title: str | None = None) -> Table:
    """Two columns, field names dim; values must already be rich-escaped."""
    from rich.table import Table

    table = Table(show_header=False, box=None, title=title, title_justify="left", pad_edge=False)
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    no_wrap: Collection[str] = (),
) -> Table:
    """A table with a header; cells must already be rich-escaped. Columns named in
    ``no_wrap`` keep their width (ids, timestamps), the others fold."""
    from rich.table import Table

    result = Table(title=title, title_justify="left", header_style="bold")
    for name in columns:
        result.add_column(name, overflow="fold", no_wrap=name in no_wrap)
    for row in rows:
        result.add_row(*row)
    return result


# --- events ---------------------------------------------------------------------------


def event_origin(event: Mapping[str, Any]) -> str:
    integration = event.get("integration_id")
    source = event.get("source")
    if integration and source and integration != source:
        return f"{source}/{integration}"
    return str(integration or source or "-")


def event_line(event: Mapping[str, Any]) -> Text:
    """``time  seq  kind  source/integration  event_type`` on one line."""
    from rich.text import Text

    severity = str(event.get("severity") or "info")
    line = Text()
    line.append(printable(str(event.get("time", "-"))), style="dim")
    line.append(f"  {printable(str(event.get('seq', '-'))):>8}  ", style="cyan")
    line.append(f"{printable(str(event.get('kind', '-'))):<18}", style="bold")
    line.append(f"  {printable(event_origin(event))}  ")
    line.append(printable(str(event.get("event_type") or "-")),
                style=SEVERITY_STYLE.get(severity, ""))
    return line


def event_name(event: Mapping[str, Any]) -> str:
    """``kind (event_type)``, or just ``kind`` when the type adds nothing; styled by
    severity."""
    kind, event_type = event.get("kind"), event.get("event_type")
    name = text(kind)
    if event_type and event_type != kind:
        name += f" ({text(event_type)})"
    style = SEVERITY_STYLE.get(str(event.get("severity") or "info"), "")
    return f"[{style}]{name}[/]" if style else name


def events_table(events: Sequence[Mapping[str, Any]]) -> Table:
    """seq, time, event (kind and type), from; severity only when some event is not info
    (every field is in ``--json``)."""
    with_severity = any((event.get("severity") or "info") != "info" for event in events)
    columns = ["seq", "time", "event", "from"] + (["severity"] if with_severity else [])
    rows = []
    for event in events:
        row = [text(event.get("seq")), text(event.get("time")), event_name(event)]
        row.append(text(event_origin(event)))
        if with_severity:
            row.append(severity(event.get("severity")))
        rows.append(row)
    return table(columns, rows, no_wrap=("seq", "time"))
