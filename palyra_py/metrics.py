"""Prometheus metrics, one registry per daemon (tests run several daemons in one process).

Label values are bounded: an integration id that is not registered is counted as
``(unknown)``, never as the stranger's string, so a flood cannot grow the series set."""

from __future__ import annotations

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


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: noise here
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ingress_requests = Counter(
            "palyra_ingress_requests", "Inbound webhook requests by answer",
            ["integration", "status", "reason"], registry=r)
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
        # Resolved children, per label values: ``.labels()`` costs more than the increment.
        self._delivery_results: dict[tuple[str, str], Counter] = {}
        self._delivery_durations: dict[str, Histogram] = {}
        self.sse_clients = Gauge(
            "palyra_sse_clients", "Connected Server-Sent Events clients", registry=r)
        self._head = 0

    def committed(self, seq: int) -> None:
        """Called with the new head after every group commit."""
        if self._head:
            self.journal_batch_size.observe(max(1, seq - self._head))
        self._head = seq
        self.journal_last_seq.set(seq)

    def delivery_attempted(self, subscription: str, result: str, seconds: float) -> None:
        """Count one outbound attempt (``deliveries``) and observe its duration."""
        counter = self._delivery_results.get((subscription, result))
        if counter is None:
            counter = self._delivery_results[(subscription, result)] = self.deliveries.labels(
                subscription, result)
        counter.inc()
        histogram = self._delivery_durations.get(subscription)
        if histogram is None:
            histogram = self._delivery_durations[subscription] = (
                self.delivery_attempt_seconds.labels(subscription))
        histogram.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
