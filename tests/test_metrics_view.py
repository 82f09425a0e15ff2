"""Merging several processes' metrics into one exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from palyra_py.metrics import Metrics
from palyra_py.server.metrics_view import merge_expositions


def _values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def test_one_exposition_comes_back_as_it_was() -> None:
    metrics = Metrics()
    metrics.ingress_requests_by.get("gh", "202", "accepted").inc(3)
    metrics.journal_append_seconds.observe(0.003)
    metrics.committed(7, 3)
    own = metrics.render()
    assert _values(merge_expositions([own.decode()])) == _values(own)


def test_counters_histograms_and_gauges_add_up_but_the_head_is_the_furthest() -> None:
    one, two = Metrics(), Metrics()
    one.ingress_requests_by.get("gh", "202", "accepted").inc(3)
    two.ingress_requests_by.get("gh", "202", "accepted").inc(4)
    two.ingress_requests_by.get("gh", "401", "signature_invalid").inc()
    one.journal_append_seconds.observe(0.003)
    two.journal_append_seconds.observe(0.2)
    one.sse_clients.inc(2)
    two.sse_clients.inc(1)
    one.committed(10, 4)  # two processes' commits, interleaved: seqs 7-10 and 11-12
    two.committed(12, 2)
    merged = _values(merge_expositions([one.render().decode(), two.render().decode()]))
    accepted = ("palyra_ingress_requests_total",
                (("integration", "gh"), ("reason", "accepted"), ("status", "202")))
    assert merged[accepted] == 7
    refused = ("palyra_ingress_requests_total",
               (("integration", "gh"), ("reason", "signature_invalid"), ("status", "401")))
    assert merged[refused] == 1
    assert merged[("palyra_journal_append_seconds_count", ())] == 2
    assert merged[("palyra_journal_append_seconds_bucket", (("le", "0.005"),))] == 1
    assert merged[("palyra_journal_append_seconds_bucket", (("le", "+Inf"),))] == 2
    assert merged[("palyra_sse_clients", ())] == 3
    assert merged[("palyra_journal_last_seq", ())] == 12
    # Each process counted the events of its own commits: 6 events in 2 commits.
    assert merged[("palyra_journal_batch_events_sum", ())] == 6
    assert merged[("palyra_journal_batch_events_count", ())] == 2
