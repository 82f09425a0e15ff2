"""Prometheus metrics, one registry per daemon (tests run several daemons in one process).

Label values are bounded: an integration id that is not registered is counted as
``(unknown)``, never as the stranger's string, so a flood cannot grow the series set."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

UNKNOWN = "(unknown)"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                   10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MAX_CHILDREN = 4096  # resolved children kept per metric (then the memo starts again)

_M = TypeVar("_M", Counter, Histogram)


class Children(Generic[_M]):
    """A labelled metric's children, resolved once per label values: ``.labels()`` costs
    more than the increment it is called for, on the hot paths. The memo is bounded (the
    label values are bounded too; see the module docstring)."""

    __slots__ = ("_memo", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._memo: dict[tuple[str, ...], _M] = {}

    def get(self, *labels: str) -> _M:
        child = self._memo.get(labels)
        if child is None:
            if len(self._memo) >= MAX_CHILDREN:
                self._memo.clear()
            child = self._memo[labels] = self._metric.labels(*labels)
        return child


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: noise here
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ingress_requests = Counter(
            "palyra_ingress_requests", "Inbound webhook requests by answer",
            ["integration", "status", "reason"], registry=r)
        self.ingress_connections = Gauge(
            "palyra_ingress_connections", "Open connections on the ingress listener",
            registry=r)
        self.journal_append_seconds = Histogram(
            "palyra_journal_append_seconds", "Time from append request to durable commit",
            buckets=LATENCY_BUCKETS, registry=r)
        self.journal_batch_size = Histogram(
            "palyra_journal_batch_events", "Events made durable per group commit",
            buckets=BATCH_BUCKETS, registry=r)
        self.journal_last_seq = Gauge(
            "palyra_journal_last_seq", "Sequence number of the newest journal event",
            registry=r)
        self.deliveries = Counter(
            "palyra_deliveries", "Outbound delivery attempts by result",
            ["subscription", "result"], registry=r)
        self.delivery_attempt_seconds = Histogram(
            "palyra_delivery_attempt_seconds", "Duration of outbound delivery attempts",
            ["subscription"], buckets=LATENCY_BUCKETS, registry=r)
        self.deliveries_pending = Gauge(
            "palyra_deliveries_pending", "Deliveries waiting for an attempt", registry=r)
        self.delivery_oldest_pending_seconds = Gauge(
            "palyra_delivery_oldest_pending_seconds", "Age of the oldest pending delivery",
            registry=r)
        self.ingress_requests_by = Children(self.ingress_requests)
        self._delivery_results = Children(self.deliveries)
        self._delivery_durations = Children(self.delivery_attempt_seconds)
        self.sse_clients = Gauge(
            "palyra_sse_clients", "Connected Server-Sent Events clients", registry=r)
        self.ws_clients = Gauge(
            "palyra_ws_clients", "Connected WebSocket stream clients", registry=r)
        self.leases_held = Gauge(
            "palyra_leases_held", "Delivery leases this node holds (cluster mode)",
            registry=r)
        self.lease_takeovers = Counter(
            "palyra_lease_takeovers", "Delivery leases this node took over from a node"
            " whose lease ran out (cluster mode)", registry=r)
        self.token_refusals = Counter(
            "palyra_token_refusals", "Token routes' refusals (unauthorized, token_expired,"
            " scope_denied) by reason", ["reason"], registry=r)

    def committed(self, seq: int, events: int) -> None:
        """Called after every group commit of this process: the new head and how many
        events the commit wrote. Each process counts its own commits only, so the merged
        histogram's sum is every event the daemon's processes journaled."""
        self.journal_batch_size.observe(events)
        self.journal_last_seq.set(seq)

    def delivery_attempted(self, subscription: str, result: str, seconds: float) -> None:
        """Count one outbound attempt (``deliveries``) and observe its duration."""
        self._delivery_results.get(subscription, result).inc()
        self._delivery_durations.get(subscription).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
