"""Stream type globs on the event loop: what one hub pass costs to pick each group's events,
with every group's globs compiled once (``GroupMatcher.select``, what the hub does) and
with each glob judged on its own per event (``EventFilter.matches``, what it did before).

    .venv/bin/python bench/stream_globs.py [--groups 1000] [--globs 64] [--events 500]
                                           [--types 4] [--rounds 5] [--json]

In-process and pure: no daemon, no sockets; the figures are the matching alone, which runs
on the event loop the ingress shares. What to read: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from palyra_py.journal.journal import EventFilter, JournalEvent
from palyra_py.stream.hub import MAX_WILDCARD_CHARS, GroupMatcher, TypeKey, wildcard_chars


def event(seq: int, kind: str, event_type: str) -> JournalEvent:
    return JournalEvent(
        seq=seq, event_id=f"e{seq}", ts_unix_ms=1_700_000_000_000, kind=kind, source="bench",
        actor="bench", integration_id=None, event_type=event_type, severity="info",
        payload={}, redacted=False, prev_hash="0" * 64, hash="1" * 64,
    )


def filters(groups: int, globs: int) -> list[EventFilter]:
    # Distinct globs per group that never match (every other one needing a regular
    # expression, as many as a stream's budget of wildcard characters lets in), then one
    # that does: the worst case for judging globs one by one.
    out = []
    for g in range(groups):
        types: list[str] = []
        for p in range(globs - 1):
            costly = f"g{g}.c{p}.[!x]?"
            if p % 2 and wildcard_chars([*types, costly]) <= MAX_WILDCARD_CHARS:
                types.append(costly)
            else:
                types.append(f"g{g}.never{p}.*")
        out.append(EventFilter(types=(*types, "app.*")))
    return out


def one_pass_compiled(matchers: list[GroupMatcher], events: list[JournalEvent]) -> int:
    keys: list[TypeKey] = [(e.kind, e.event_type) for e in events]
    distinct = dict.fromkeys(keys)
    return sum(len(m.select(events, keys, distinct)) for m in matchers)


def one_pass_per_glob(flts: list[EventFilter], events: list[JournalEvent]) -> int:
    return sum(len([e for e in events if flt.matches(e)]) for flt in flts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--globs", type=int, default=64)
    parser.add_argument("--events", type=int, default=500, help="events in the pass")
    parser.add_argument("--types", type=int, default=4, help="distinct types among them")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    flts = filters(args.groups, args.globs)
    events = [event(i + 1, "app.published", f"app.t{i % args.types}")
              for i in range(args.events)]
    started = time.perf_counter()
    matchers = [GroupMatcher(flt) for flt in flts]
    compile_s = time.perf_counter() - started
    compiled, per_glob = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        picked = one_pass_compiled(matchers, events)
        compiled.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert one_pass_per_glob(flts, events) == picked
        per_glob.append(time.perf_counter() - started)
    result = {
        "groups": args.groups, "globs": args.globs, "events": args.events,
        "types": args.types, "compile_per_group_ms": round(compile_s * 1000 / args.groups, 3),
        # The first compiled pass fills the verdict memos; the best later one is steady.
        "compiled_first_pass_ms": round(compiled[0] * 1000, 2),
        "compiled_pass_ms": round(min(compiled[1:] or compiled) * 1000, 2),
        "per_glob_pass_ms": round(min(per_glob) * 1000, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
