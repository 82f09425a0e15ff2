"""``palyra daemon run --deliveries-from``: where deliveries resume when ``deliveries.db``
is missing but the journal has events and there are subscriptions (the file was removed or
lost). The daemon refuses to guess; the operator chooses:

- ``head``: every subscription's cursor starts at the journal head (what happened in the
  gap is not delivered);
- ``seq:N``: re-deliver from seq N (included);
- a time (RFC 3339 with a zone, e.g. ``2026-12-07T10:00Z``): re-deliver from the first
  event stamped at or after it.

Standard library only: the CLI checks the value without loading the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from palyra_py.times import InvalidTime, parse_rfc3339_ms

FLAG = "--deliveries-from"
EXAMPLES = "head, seq:N or a time such as 2026-12-07T10:00Z"


@dataclass(frozen=True, slots=True)
class DeliveriesFrom:
    kind: Literal["head", "seq", "time"]
    value: int = 0
    """The first seq to deliver (``seq``) or unix ms (``time``)."""

    def describe(self) -> str:
        if self.kind == "head":
            return "head"
        if self.kind == "seq":
            return f"seq:{self.value}"
        return f"time:{self.value}ms"


def parse_deliveries_from(text: str) -> DeliveriesFrom:
    """``head``, ``seq:N`` (N ≥ 1) or an RFC 3339 time with a zone; ``ValueError`` with a
    message naming the accepted forms otherwise."""
    value = text.strip()
    if value.lower() == "head":
        return DeliveriesFrom("head")
    if value.lower().startswith("seq:"):
        number = value[4:].strip()
        if not number.isdigit() or int(number) < 1:
            raise ValueError(f"{FLAG} seq:N needs a whole number N of at least 1, got "
                             f"{value[:40]!r}")
        return DeliveriesFrom("seq", int(number))
    try:
        return DeliveriesFrom("time", parse_rfc3339_ms(value))
    except InvalidTime as exc:
        if exc.missing_offset:
            raise ValueError(f"{FLAG}: give the time a zone (e.g. {value[:30]}Z)") from None
        raise ValueError(f"{FLAG}: expected {EXAMPLES}, got {value[:40]!r}") from None
