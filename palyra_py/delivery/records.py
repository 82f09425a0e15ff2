"""The records of the delivery store: deliveries, attempts, new deliveries to create, their
row conversions, delivery ids, and the text bounds of the attempt log. Pure apart from the
OS random source of the ids. ``delivery_store`` re-exports every public name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from palyra_py.delivery.sqlite import MAX_ERROR_DETAIL_CHARS, MAX_RESPONSE_EXCERPT_BYTES, Row
from palyra_py.times import format_unix_ms

DeliveryStatus = Literal["pending", "succeeded", "failed"]
STATUSES: tuple[DeliveryStatus, ...] = get_args(DeliveryStatus)


class DeliveryNotFound(LookupError):
    """No delivery with that id."""


def _time_or_none(ts_unix_ms: int | None) -> str | None:
    return None if ts_unix_ms is None else format_unix_ms(ts_unix_ms)


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8 on a character boundary; lone
    surrogates (which have no UTF-8 form) become ``?``."""
    data = text.encode("utf-8", "replace")[:max_bytes]
    return data.decode("utf-8", "ignore")


def response_excerpt(body: bytes) -> str:
    """The stored excerpt of a response body: its first 4 KiB as text (invalid UTF-8
    replaced), never more than 4096 bytes."""
    text = body[:MAX_RESPONSE_EXCERPT_BYTES].decode("utf-8", "replace")
    return clip_utf8(text, MAX_RESPONSE_EXCERPT_BYTES)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery to create: one published event for one subscription."""

    subscription_id: str
    event_seq: int
    event_id: str
    event_type: str
    next_attempt_ms: int


@dataclass(frozen=True, slots=True)
class Delivery:
    delivery_id: str
    """A ULID stamped with the creation time; ids sort in creation order."""
    subscription_id: str
    event_seq: int
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_ms: int | None
    """Set while pending, ``None`` once succeeded or failed."""
    created_ms: int
    updated_ms: int
    last_status_code: int | None
    last_error_class: str | None

    def to_dict(self) -> dict[str, Any]:
        """Every field, plus ``created_at``, ``updated_at`` and ``next_attempt_at`` as
        RFC 3339 (ms, UTC; ``None`` where the ms field is)."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        return {
            **fields,
            "created_at": format_unix_ms(self.created_ms),
            "updated_at": format_unix_ms(self.updated_ms),
            "next_attempt_at": _time_or_none(self.next_attempt_ms),
        }


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One HTTP attempt. ``error_class`` is ``None`` exactly for a successful (2xx)
    attempt: ``stats`` counts successes that way. The store keeps ``error_detail`` to 512
    characters and ``response_excerpt`` to 4096 bytes of UTF-8 (longer ones are cut)."""

    delivery_id: str
    attempt_no: int
    started_ms: int
    duration_ms: int
    status_code: int | None
    error_class: str | None
    error_detail: str | None
    response_excerpt: str | None

    def to_dict(self) -> dict[str, Any]:
        """Every field, plus ``started_at`` as RFC 3339."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        return {**fields, "started_at": format_unix_ms(self.started_ms)}


def delivery_from_row(row: Row) -> Delivery:
    """A ``Delivery`` from a row in ``DELIVERY_COLUMNS`` order."""
    return Delivery(
        str(row[0]), str(row[1]), int(row[2]), str(row[3]), str(row[4]), row[5], int(row[6]),
        row[7], int(row[8]), int(row[9]), row[10], row[11],
    )


def attempt_from_row(row: Row) -> AttemptRecord:
    """An ``AttemptRecord`` from a row in ``ATTEMPT_COLUMNS`` order."""
    return AttemptRecord(
        str(row[0]), int(row[1]), int(row[2]), int(row[3]), row[4], row[5], row[6], row[7]
    )


def attempt_row(attempt: AttemptRecord) -> Row:
    """The stored row of ``attempt`` (``ATTEMPT_COLUMNS`` order), its texts cut to their
    bounds."""
    detail = attempt.error_detail
    if detail is not None:
        # "replace" maps a lone surrogate to one "?": the length in characters holds.
        detail = detail[:MAX_ERROR_DETAIL_CHARS].encode("utf-8", "replace").decode("utf-8")
    excerpt = attempt.response_excerpt
    if excerpt is not None:
        excerpt = clip_utf8(excerpt, MAX_RESPONSE_EXCERPT_BYTES)
    return (
        attempt.delivery_id, attempt.attempt_no, attempt.started_ms, attempt.duration_ms,
        attempt.status_code, attempt.error_class, detail, excerpt,
    )
