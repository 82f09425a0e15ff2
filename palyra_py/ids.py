"""ULIDs: the ids of events, deliveries and test requests.

A ULID is 128 bits: the unix time in milliseconds (48 bits) and 80 random bits, written as
26 characters of Crockford's base 32 (``01HF7YAT3VHNPC1W9WCRC0748Z``), so that text order
is time order. A leaf: standard library only; the time is the caller's, except in
``new_ulid`` when none is given.
"""

from __future__ import annotations

import itertools
import os
import time

__all__ = ["MAX_ULID_MS", "UlidSource", "new_ulid", "random_ulid", "ulid_text", "ulid_value"]

RANDOM_BITS = 80  # the 48 bits above them are the time in ms
MAX_ULID_MS = (1 << 48) - 1
ULID_CHARS = 26
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

# The 26 characters are 13 pairs of 10 bits (the first 2 bits always zero): one table
# lookup per pair rather than one per character.
_PAIRS = tuple(a + b for a in CROCKFORD for b in CROCKFORD)
_PAIR_SHIFTS = tuple(range(120, -1, -10))
_NEXT_DIGIT = dict(itertools.pairwise(CROCKFORD))
_DIGIT_VALUE = {char: index for index, char in enumerate(CROCKFORD)}
_DIGIT_VALUE.update({char.lower(): index for char, index in list(_DIGIT_VALUE.items())})


def ulid_text(value: int) -> str:
    """The canonical 26-character text of a 128-bit ULID ``value`` (upper case)."""
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 0x3FF] for shift in _PAIR_SHIFTS])


def ulid_value(text: str) -> int:
    """The 128-bit value of ULID ``text`` (either case). ``ValueError`` for text that is not
    26 Crockford characters or that overflows 128 bits (a first character above ``7``)."""
    if len(text) != ULID_CHARS:
        raise ValueError(f"a ULID has {ULID_CHARS} characters, got {len(text)}")
    value = 0
    for char in text:
        digit = _DIGIT_VALUE.get(char)
        if digit is None:
            raise ValueError(f"not a ULID character: {char!r}")
        value = (value << 5) | digit
    if value >> 128:
        raise ValueError("a ULID is at most 7ZZZZZZZZZZZZZZZZZZZZZZZZZ")
    return value


def new_ulid(now_ms: int | None = None) -> str:
    """A fresh ULID for ``now_ms`` (default: the system clock). For ids made one at a time;
    ids that must sort in the order they are made come from a ``UlidSource``."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else int(now_ms)
    if not 0 <= ms <= MAX_ULID_MS:
        raise ValueError("time out of the range of a ULID")
    return ulid_text((ms << RANDOM_BITS) | int.from_bytes(os.urandom(RANDOM_BITS // 8), "big"))


def random_ulid() -> str:
    """ULID-shaped text of randomness alone (no time): for samples that need an id of the
    right form and must not read a clock."""
    return ulid_text(int.from_bytes(os.urandom(16), "big"))


class UlidSource:
    """ULIDs stamped with the caller's time, strictly increasing in the order they are made
    (the ULID spec's monotonic mode): a new ms starts from fresh randomness; within one ms,
    or when the clock is behind the last id (it stepped back, or a restart resumes from a
    stored ``last``), the next id is the last plus one. Not thread-safe: one per writer."""

    __slots__ = ("_last", "_last_text")

    def __init__(self, last: str | None = None) -> None:
        """``last``: the greatest id already handed out (e.g. read back from a store), so
        that new ids sort after it. ``ValueError`` when it is not a ULID."""
        self._last = -1 if last is None else ulid_value(last)
        self._last_text = "" if last is None else ulid_text(self._last)

    def new(self, now_ms: int) -> str:
        """The next id, for ``now_ms`` milliseconds since the epoch. ``ValueError`` for a time
        a ULID cannot hold."""
        ms = int(now_ms)
        if not 0 <= ms <= MAX_ULID_MS:
            raise ValueError("time out of the range of a ULID")
        last = self._last
        if last >= 0 and ms <= last >> RANDOM_BITS:
            # The common case on a busy path (many ids in one ms) changes only the last
            # character; past a "Z" the increment carries, and the whole text is remade.
            value = last + 1
            digit = _NEXT_DIGIT.get(self._last_text[-1])
            text = self._last_text[:-1] + digit if digit is not None else ulid_text(value)
        else:
            value = (ms << RANDOM_BITS) | int.from_bytes(os.urandom(RANDOM_BITS // 8), "big")
            text = ulid_text(value)
        self._last, self._last_text = value, text
        return text
