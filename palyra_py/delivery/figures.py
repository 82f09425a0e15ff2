"""The figures ``deliveries stats`` shows, from the counts an engine gathers in one
snapshot. Pure: every engine calls ``delivery_figures``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from palyra_py.delivery.records import STATUSES

LATENCY_SAMPLE = 10_000
"""``stats`` computes latency percentiles from at most this many recent attempts."""
BUSIEST = 5
"""Subscriptions ``busiest`` lists."""


def nearest_rank(ordered: Sequence[int], q: float) -> int | None:
    """The nearest-rank percentile ``q`` (0 < q ≤ 1) of an ascending sequence."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def delivery_figures(
    *,
    status_counts: Mapping[str, int],
    attempts: int,
    succeeded: int,
    durations: Sequence[int],
    failures_by_class: Mapping[str, int],
    busiest: Sequence[tuple[str, int]],
) -> dict[str, Any]:
    """``deliveries`` (count per status, every status present), ``attempts``,
    ``success_rate`` (``succeeded`` / ``attempts``; ``None`` without attempts),
    ``latency_ms`` ``{p50, p95}`` (nearest rank over ``durations``, at most
    ``LATENCY_SAMPLE`` of the most recent; ``None`` without attempts),
    ``failures_by_class`` (as given: most frequent first) and ``busiest``
    (``[{subscription_id, deliveries}]``, as given)."""
    ordered = sorted(durations)
    return {
        "deliveries": {status: status_counts.get(status, 0) for status in STATUSES},
        "attempts": attempts,
        "success_rate": succeeded / attempts if attempts else None,
        "latency_ms": {"p50": nearest_rank(ordered, 0.50), "p95": nearest_rank(ordered, 0.95)},
        "failures_by_class": dict(failures_by_class),
        "busiest": [{"subscription_id": s, "deliveries": n} for s, n in busiest],
    }
