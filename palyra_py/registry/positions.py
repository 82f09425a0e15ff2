"""Registry errors and where in the registry text they are: line and column.

``RegistryError`` is what every registry check raises (``registry.fields.fail`` makes one
that names the field). tomlkit keeps no positions, so ``locate`` scans the text itself. It
knows the registry's layout (``[[webhooks]]``, ``[[subscriptions]]`` and ``[[tokens]]``
records, keys inside them, ``[webhooks.key]`` sub-tables) and TOML's multi-line strings, so
that a key-like line inside a string is never taken for a key.
"""

from __future__ import annotations

import re
from pathlib import Path


class RegistryError(Exception):
    """A registry that cannot be used. ``str()`` is ``file:line:col: message`` when the
    position is known, else ``file: message``; ``field`` names the faulty field."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        line: int | None = None,
        col: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.col = col
        self.field = field
        super().__init__(self.location_prefix() + message)

    @property
    def location(self) -> str | None:
        if self.path is None:
            return None
        if self.line is None:
            return str(self.path)
        return f"{self.path}:{self.line}:{self.col or 1}"

    def location_prefix(self) -> str:
        loc = self.location
        return f"{loc}: " if loc else ""


RECORD_TABLES = ("webhooks", "subscriptions", "tokens")
_FIELD_PATH = re.compile(rf"({'|'.join(RECORD_TABLES)})\[(\d+)\](?:\.([A-Za-z0-9_-]+))?")


def _key_pattern(key: str) -> str:
    quoted = re.escape(key)
    return f"(?:{quoted}|\"{quoted}\"|'{quoted}')"


_ANY_HEADER = re.compile(r"\s*\[")


def locate(text: str, field_name: str) -> tuple[int | None, int | None]:
    """Line and column (1-based) of the key a field error is about.

    ``field_name`` is how errors name fields: ``webhooks[2].key`` (likewise
    ``subscriptions[i]``, ``tokens[i]``) or a top-level key. The text is scanned for the N-th
    ``[[webhooks]]`` header, then ``key =`` (or ``key.x =``, or a ``[webhooks.key]`` header)
    inside that record. A missing key points at the record's header; anything else found
    nowhere gives no position rather than a wrong one.
    """
    lines = _code_lines(text)
    match = _FIELD_PATH.match(field_name)
    if match is None:
        top = re.match(r"[^.\[]+", field_name)
        return _find_top_level(lines, top.group(0)) if top else (None, None)
    table, index, key = match.group(1), int(match.group(2)), match.group(3)
    name = _key_pattern(table)
    record_header = re.compile(rf"(\s*)\[\[\s*{name}\s*\]\]")
    headers = [
        (n, len(found.group(1)) + 1) for n, line in lines if (found := record_header.match(line))
    ]
    if index >= len(headers):
        return _find_top_level(lines, table)
    header_pos: tuple[int | None, int | None] = headers[index]
    start = headers[index][0]
    if key is None:
        return header_pos
    assignment = re.compile(rf"(\s*){_key_pattern(key)}\s*[=.]")
    sub_table = re.compile(rf"(\s*)\[\s*{name}\s*\.\s*{_key_pattern(key)}\s*[\].]")
    any_sub_table = re.compile(rf"\s*\[\s*{name}\s*\.")
    for n, line in lines:
        if n <= start:
            continue
        if _ANY_HEADER.match(line) and not any_sub_table.match(line):
            break
        found = assignment.match(line) or sub_table.match(line)
        if found:
            return n, len(found.group(1)) + 1
    return header_pos


def _find_top_level(lines: list[tuple[int, str]], key: str) -> tuple[int | None, int | None]:
    assignment = re.compile(rf"(\s*){_key_pattern(key)}\s*[=.]")
    header = re.compile(rf"(\s*)\[\[?\s*{_key_pattern(key)}\s*[\].]")
    in_table = False
    for n, line in lines:
        found = header.match(line)
        if not found and not in_table:
            found = assignment.match(line)
        if found:
            return n, len(found.group(1)) + 1
        in_table = in_table or bool(_ANY_HEADER.match(line))
    return None, None


def _code_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` for every line that starts outside a multi-line string."""
    out: list[tuple[int, str]] = []
    open_delimiter: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if open_delimiter is not None:
            end = line.find(open_delimiter)
            if end < 0:
                continue
            open_delimiter = _opens_multiline(line[end + 3 :])
            continue
        out.append((number, line))
        open_delimiter = _opens_multiline(line)
    return out


def _opens_multiline(line: str) -> str | None:
    """The delimiter of a multi-line string left open at the end of ``line``, if any."""
    i = 0
    while i < len(line):
        if line.startswith(('"""', "'''"), i):
            delimiter = line[i : i + 3]
            end = line.find(delimiter, i + 3)
            if end < 0:
                return delimiter
            i = end + 3
        elif line[i] == "#":
            return None
        elif line[i] == '"':
            i += 1
            while i < len(line) and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
        elif line[i] == "'":
            end = line.find("'", i + 1)
            i = len(line) if end < 0 else end + 1
        else:
            i += 1
    return None
