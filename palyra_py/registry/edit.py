"""Editing the records of a registry document in place, keeping what a person wrote.

``add_record``, ``update_record`` and ``remove_record`` change one ``[[table]]`` record of a
tomlkit document, described by its ``RecordKind``, so that comments, blank lines and key
order survive. Each record kind (``integrations``, ``subscriptions``, ``tokens``) declares
its ``RecordKind`` and its ``add_*``/``update_*``/``remove_*`` with these; run them through
``RegistryFile.edit`` (``registry.file``), which validates and writes the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import tomlkit
from tomlkit.items import AoT, Array, Comment, InlineTable, Null, Table, Trivia, Whitespace

from palyra_py.registry.fields import fail, normalize_id, plain
from palyra_py.registry.positions import RegistryError


def toml_value(value: Any) -> Any:
    """A normalised field value as tomlkit should write it: lists as arrays (multi-line when
    long), mappings as inline tables (keys quoted where TOML needs it); others unchanged."""
    if isinstance(value, (list, tuple)):
        array = tomlkit.array()
        array.extend(value)
        if sum(len(str(v)) + 4 for v in value) > 72:
            array.multiline(True)
        return array
    if isinstance(value, Mapping):
        table = tomlkit.inline_table()
        table.update(value)
        return table
    return value


def _write_as_is(key: str, value: Any) -> Any:
    return toml_value(value)


@dataclass(frozen=True, slots=True)
class RecordKind:
    """One kind of ``[[table]]`` record, for the generic edits below. ``fields`` is the order
    a new record is written in; a field is written when it is in ``always_written`` or
    differs from ``defaults``. ``validate`` is the kind's ``validate_*_fields``; ``to_toml``
    turns a normalised value into what the file holds (``(key, value) -> value``)."""

    table: str
    id_key: str
    noun: str
    limit: int
    fields: tuple[str, ...]
    defaults: Mapping[str, Any]
    always_written: frozenset[str]
    validate: Callable[[Mapping[str, Any]], dict[str, Any]]
    to_toml: Callable[[str, Any], Any] = _write_as_is


def _records(doc: tomlkit.TOMLDocument, kind: RecordKind) -> AoT | Array | None:
    if kind.table not in doc:
        return None
    item = doc.item(kind.table)
    if isinstance(item, (AoT, Array)):
        return item
    raise fail(kind.table, f"must be an array of tables, written [[{kind.table}]]")


def _find(doc: tomlkit.TOMLDocument, kind: RecordKind, record_id: str) -> tuple[AoT | Array, int]:
    try:
        target = normalize_id(record_id, field=kind.id_key)
    except RegistryError:
        raise KeyError(record_id) from None
    records = _records(doc, kind)
    for index, record in enumerate(records or ()):
        value = record.get(kind.id_key) if isinstance(record, Mapping) else None
        if isinstance(value, str) and value.strip().lower() == target:
            assert records is not None
            return records, index
    raise KeyError(record_id)


def add_record(doc: tomlkit.TOMLDocument, kind: RecordKind, norm: Mapping[str, Any]) -> None:
    """Append a record of already-validated fields; raise ``RegistryError`` if its id exists
    (field ``kind.id_key``) or the kind's limit is reached."""
    records = _records(doc, kind)
    record_id = norm[kind.id_key]
    if records is not None:
        if len(records) >= kind.limit:
            raise fail(kind.table, f"at most {kind.limit} {kind.noun}s are allowed")
        try:
            _find(doc, kind, record_id)
        except KeyError:
            pass
        else:
            raise fail(kind.id_key, f"{record_id!r} already exists")
    table = tomlkit.table()
    for key in kind.fields:
        value = norm.get(key, kind.defaults.get(key))
        if value is not None and (key in kind.always_written or value != kind.defaults.get(key)):
            table.append(key, kind.to_toml(key, value))
    if records is None:
        aot = tomlkit.aot()
        aot.append(table)
        doc.append(kind.table, aot)
    elif isinstance(records, AoT):
        _append_table(doc, records, table)
    else:
        inline = tomlkit.inline_table()
        inline.update({k: v for k, v in table.items()})
        records.append(inline)


def _append_table(doc: tomlkit.TOMLDocument, records: AoT, table: Table) -> None:
    """Append after the last record. When more of the file follows, the comment block that
    ends the last record (after its last blank line) introduces what follows, so it moves
    below the new record and stays right above the next header."""
    moved: list[Any] = []
    if records.body and _is_followed(doc, records):
        body = records.body[-1].value.body
        cut = len(body)
        while cut and body[cut - 1][0] is None:
            cut -= 1
        blank = max((i for i in range(cut, len(body)) if isinstance(body[i][1], Whitespace)),
                    default=None)
        if blank is not None or cut < len(body):
            start = cut if blank is None else blank
            moved = [item for _, item in body[start:] if not isinstance(item, Null)]
            del body[start:]
    if records.body and not records.body[-1].as_string().endswith("\n\n"):
        table.trivia.indent = "\n"
    records.append(table)
    for item in moved:
        table.append(None, item)


def _is_followed(doc: tomlkit.TOMLDocument, records: AoT) -> bool:
    slot = next((i for i, (_, item) in enumerate(doc.body) if item is records), None)
    return slot is not None and any(key is not None for key, _ in doc.body[slot + 1 :])


def update_record(
    doc: tomlkit.TOMLDocument,
    kind: RecordKind,
    record_id: str,
    changes: Mapping[str, Any],
    now: datetime,
) -> None:
    """Change fields of one record in place (``None`` removes a key, so the field is back to
    its default), set ``updated_at``, keep comments and order. Raise ``KeyError`` if the id
    is unknown, ``RegistryError`` naming the field for a bad value or a changed id."""
    records, index = _find(doc, kind, record_id)
    record = records[index]
    current = plain(record)
    new_id = changes.get(kind.id_key)
    if new_id is not None and normalize_id(new_id, field=kind.id_key) != normalize_id(
        current[kind.id_key], field=kind.id_key
    ):
        raise fail(
            kind.id_key, f"cannot be changed; remove the {kind.noun} and add it again"
        )
    merged = {**current, **changes, "updated_at": now}
    norm = kind.validate({k: v for k, v in merged.items() if v is not None})
    for key in [*changes, "updated_at"]:
        if key not in norm:
            if key in record:
                del record[key]
        elif key in record:
            record[key] = kind.to_toml(key, norm[key])
        else:
            _append_key(record, key, kind.to_toml(key, norm[key]))


def _append_key(record: Table | InlineTable, key: str, value: Any) -> None:
    """Add a key after the record's last key, before the comments that trail it (in
    tomlkit those belong to the record but are written above the next header)."""
    if not isinstance(record, Table):
        record[key] = value
        return
    body = record.value.body
    cut = len(body)
    while cut and body[cut - 1][0] is None:
        cut -= 1
    # Only key-less trivia (comments, blank lines) is cut off, so key indices stay valid.
    trailing = [item for _, item in body[cut:] if not isinstance(item, Null)]
    del body[cut:]
    record.append(key, value)
    for item in trailing:
        record.append(None, item)


def remove_record(doc: tomlkit.TOMLDocument, kind: RecordKind, record_id: str) -> None:
    """Remove one record; raise ``KeyError`` if unknown.

    The comment block right above the record's header goes with it; comments after its last
    key are kept (they may introduce the next record)."""
    records, index = _find(doc, kind, record_id)
    if isinstance(records, Array):
        del records[index]
        return
    tables = records.body
    victim = tables[index]
    keep = _trailing_text(victim)
    blank_before = False
    slot = next((i for i, (_, item) in enumerate(doc.body) if item is records), None)
    if index > 0:
        previous = tables[index - 1].value.body
        _drop_leading_comments(previous, len(previous))
        blank_before = _ends_with_blank_line(previous, len(previous))
    elif slot is not None:
        above, end = _body_above(doc, slot)
        _drop_leading_comments(above, end)
        blank_before = _ends_with_blank_line(above, end)
    if blank_before:
        keep = keep.lstrip("\n")
    del records[index]
    if index < len(records):
        following = records[index]
        following.trivia.indent = keep + following.trivia.indent
    elif index > 0:
        if keep:
            records[index - 1].append(None, _verbatim(keep))
        else:
            _drop_trailing_blank_lines(records[index - 1].value.body)
    elif slot is not None:
        # The last record is gone: drop the key rather than leave `webhooks = []`, which
        # tomlkit would write at the top of the file.
        doc.remove(kind.table)
        if keep:
            doc.body[slot] = (None, _verbatim(keep))


def _body_above(doc: tomlkit.TOMLDocument, slot: int) -> tuple[list[tuple[Any, Any]], int]:
    """The item list holding the lines right above ``doc.body[slot]``, and where they end:
    when another array of tables comes first, tomlkit keeps those lines at the end of its
    last table."""
    if slot > 0:
        item = doc.body[slot - 1][1]
        if isinstance(item, AoT) and item.body:
            last = item.body[-1].value.body
            return last, len(last)
        if isinstance(item, Table):
            return item.value.body, len(item.value.body)
    return doc.body, slot


def _trailing_text(table: Table) -> str:
    body = table.value.body
    cut = len(body)
    while cut and body[cut - 1][0] is None:
        cut -= 1
    return "".join(item.as_string() for _, item in body[cut:])


def _drop_leading_comments(body: list[tuple[Any, Any]], end: int) -> None:
    """Blank out the comment lines directly above position ``end`` (no blank line between).
    Items become ``Null`` rather than being deleted, as tomlkit does, so indices hold."""
    i = end - 1
    while i >= 0 and body[i][0] is None and isinstance(body[i][1], (Comment, Null)):
        body[i] = (None, Null())
        i -= 1


def _ends_with_blank_line(body: list[tuple[Any, Any]], end: int) -> bool:
    for _, item in reversed(body[:end]):
        if not isinstance(item, Null):
            return isinstance(item, Whitespace) or item.as_string().endswith("\n\n")
    return False


def _drop_trailing_blank_lines(body: list[tuple[Any, Any]]) -> None:
    i = len(body) - 1
    while i >= 0 and body[i][0] is None and isinstance(body[i][1], (Whitespace, Null)):
        body[i] = (None, Null())
        i -= 1


def _verbatim(text: str) -> Comment:
    """An item that renders ``text`` as it is (already-rendered comments and blank lines)."""
    return Comment(Trivia(indent="", comment_ws="", comment=text, trail=""))
