"""The records of the delivery store: deliveries, attempts, new deliveries to create, the
typed rows every engine stores and returns and their conversions, and the
text bounds of the attempt log. Pure.
``delivery.store`` re-exports every public name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

from palyra_py.times import format_unix_ms

DeliveryStatus = Literal["pending", "succeeded", "failed"]
STATUSES: tuple[DeliveryStatus, ...] = get_args(DeliveryStatus)

MAX_ERROR_DETAIL_CHARS = 512
MAX_RESPONSE_EXCERPT_BYTES = 4096
MAX_LIMIT = 1000
"""Largest ``limit`` that ``due`` and ``list`` accept."""
SUBSCRIPTION_REMOVED = "subscription_removed"
"""``last_error_class`` of the deliveries ``forget_subscription`` ended."""


def check_limit(limit: int) -> None:
    """``ValueError`` unless ``1 <= limit <= MAX_LIMIT``."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")


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
    """One attempt: an HTTP request, or a command's run (then ``status_code`` is its exit
    code and ``response_excerpt`` the tails of its output). ``error_class`` is ``None``
    exactly for a successful (2xx, or a success exit code) attempt: ``stats`` counts
    successes that way. The store keeps ``error_detail`` to 512 characters and
    ``response_excerpt`` to 4096 bytes of UTF-8 (longer ones are cut)."""

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


# -- rows ------------------------------------------------------------------------------


class DeliveryRow(NamedTuple):
    """A stored delivery, as every engine returns it (``Delivery``'s fields, in order)."""

    delivery_id: str
    subscription_id: str
    event_seq: int
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_ms: int | None
    created_ms: int
    updated_ms: int
    last_status_code: int | None
    last_error_class: str | None


class NewDeliveryRow(NamedTuple):
    """A delivery to insert as pending (``attempts`` 0, ``updated_ms`` = ``created_ms``)."""

    delivery_id: str
    subscription_id: str
    event_seq: int
    event_id: str
    event_type: str
    next_attempt_ms: int
    created_ms: int


class DeliveryUpdate(NamedTuple):
    """What a delivery's attempts made of it, written once per delivery and batch."""

    delivery_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_ms: int | None
    last_status_code: int | None
    last_error_class: str | None
    updated_ms: int


class AttemptRow(NamedTuple):
    """A stored attempt, as every engine takes and returns it (``AttemptRecord``'s fields,
    in order)."""

    delivery_id: str
    attempt_no: int
    started_ms: int
    duration_ms: int
    status_code: int | None
    error_class: str | None
    error_detail: str | None
    response_excerpt: str | None


class Health(NamedTuple):
    """A subscription's health; both ``None`` before any attempt."""

    last_success_ms: int | None
    failing_since_ms: int | None


def delivery_from_row(row: DeliveryRow) -> Delivery:
    """The ``Delivery`` of a stored row."""
    return Delivery(
        str(row.delivery_id), str(row.subscription_id), int(row.event_seq), str(row.event_id),
        str(row.event_type), row.status, int(row.attempts), row.next_attempt_ms,
        int(row.created_ms), int(row.updated_ms), row.last_status_code, row.last_error_class,
    )


def attempt_from_row(row: AttemptRow) -> AttemptRecord:
    """The ``AttemptRecord`` of a stored row."""
    return AttemptRecord(
        str(row.delivery_id), int(row.attempt_no), int(row.started_ms), int(row.duration_ms),
        row.status_code, row.error_class, row.error_detail, row.response_excerpt,
    )


def attempt_row(attempt: AttemptRecord) -> AttemptRow:
    """The stored row of ``attempt`` (``ATTEMPT_COLUMNS`` order), its texts cut to their
    bounds."""
    detail = attempt.error_detail
    if detail is not None:
        # "replace" maps a lone surrogate to one "?": the length in characters holds.
        detail = detail[:MAX_ERROR_DETAIL_CHARS].encode("utf-8", "replace").decode("utf-8")
    excerpt = attempt.response_excerpt
    if excerpt is not None:
        excerpt = clip_utf8(excerpt, MAX_RESPONSE_EXCERPT_BYTES)
    return AttemptRow(
        attempt.delivery_id, attempt.attempt_no, attempt.started_ms, attempt.duration_ms,
        attempt.status_code, attempt.error_class, detail, excerpt,
    )

