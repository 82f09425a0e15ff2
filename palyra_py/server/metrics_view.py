"""One ``/metrics`` view over the daemon's processes.

Each process keeps its own Prometheus registry; with workers, whichever process answers a
scrape gathers every process's exposition (over the workers' channels to the control
process) and :func:`merge_expositions` adds them up: counters and histograms are sums by
label set (a request counted by worker 1 and one by worker 2 are two requests), gauges
are sums too (open connections, stream clients, pending deliveries: each process holds its
own share), except :data:`MAX_GAUGES`, which say where something is (the journal head),
whose view is the furthest any process has seen.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

MAX_GAUGES = frozenset({"palyra_journal_last_seq"})
"""Gauges merged by their maximum, not their sum."""

def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def merge_expositions(texts: Iterable[str]) -> bytes:
    """The Prometheus text exposition of the sum of ``texts`` (each a whole exposition of
    one process's registry, all of the same metric set), families in first-seen order,
    samples in first-seen order within each."""
    kinds: dict[str, tuple[str, str]] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            kinds.setdefault(family.name, (family.type, family.documentation))
            merged = samples.setdefault(family.name, {})
            keep_max = family.name in MAX_GAUGES
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in merged:
                    merged[key] = sample.value
                elif keep_max:
                    merged[key] = max(merged[key], sample.value)
                else:
                    merged[key] += sample.value
    lines: list[str] = []
    for name, (kind, documentation) in kinds.items():
        exposed = name + "_total" if kind == "counter" else name
        lines.append(f"# HELP {exposed} {_help(documentation)}")
        lines.append(f"# TYPE {exposed} {kind}")
        for (sample_name, labels), value in samples[name].items():
            label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in _ordered(labels))
            rendered = f"{sample_name}{{{label_text}}}" if label_text else sample_name
            lines.append(f"{rendered} {floatToGoString(value)}")  # type: ignore[no-untyped-call]
    return ("\n".join(lines) + "\n").encode()


def _ordered(labels: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    # ``le`` last, as prometheus_client writes it; the others in name order.
    return sorted(labels, key=lambda item: (item[0] == "le", item[0]))
