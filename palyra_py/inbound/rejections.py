"""Refused requests are journaled as aggregates, one ``webhook.rejected`` event per
(integration, reason) per window, so a flood of bad requests costs a bounded number of rows.
No body, header value or signature is kept: only counts, the reason and a few addresses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from palyra_py.journal.journal import Journal, JournalUnavailable, NewEvent
from palyra_py.reasons import Reason

log = structlog.get_logger("palyra.ingress")

MAX_KEYS = 256
MAX_SAMPLES = 5
UNKNOWN = "(unknown)"


@dataclass(slots=True)
class _Tally:
    count: int = 0
    first_ms: int = 0
    last_ms: int = 0
    remotes: list[str] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)


class RejectionLog:
    """Counts rejections in memory until :meth:`flush` journals them."""

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self.dropped_keys = 0

    def record(
        self, integration_id: str | None, reason: Reason, remote: str | None, now_ms: int,
        *, requested_id: str | None = None,
    ) -> bool:
        """Count one rejection; True when it is the first of its integration and reason
        since the last flush (the one worth a log line: a flood logs one line a window)."""
        key = (integration_id or UNKNOWN, reason.value)
        tally = self._tallies.get(key)
        first = tally is None
        if tally is None:
            if len(self._tallies) >= MAX_KEYS:
                # Past the bound, fold into one catch-all row rather than grow memory.
                key = (UNKNOWN, "other")
                self.dropped_keys += 1
                tally = self._tallies.setdefault(key, _Tally(first_ms=now_ms))
            else:
                tally = self._tallies[key] = _Tally(first_ms=now_ms)
        tally.count += 1
        tally.last_ms = now_ms
        if remote and remote not in tally.remotes and len(tally.remotes) < MAX_SAMPLES:
            tally.remotes.append(remote)
        if requested_id is not None and len(tally.sample_ids) < MAX_SAMPLES:
            # The id came from the URL of a stranger's request: keep a short printable form.
            safe = "".join(c if c.isprintable() else "?" for c in requested_id[:64])
            if safe not in tally.sample_ids:
                tally.sample_ids.append(safe)
        return first

    def pending(self) -> int:
        return sum(t.count for t in self._tallies.values())

    async def flush(self, journal: Journal) -> int:
        """Journal one event per tally and clear them; returns how many events were written.
        If the journal is unavailable the tallies are kept for the next flush."""
        tallies, self._tallies = self._tallies, {}
        written = 0
        for (integration_id, reason), tally in tallies.items():
            payload: dict[str, Any] = {
                "integration_id": None if integration_id == UNKNOWN else integration_id,
                "reason": reason,
                "count": tally.count,
                "first_at_unix_ms": tally.first_ms,
                "last_at_unix_ms": tally.last_ms,
                "remote_addresses": tally.remotes,
            }
            if tally.sample_ids:
                payload["requested_ids"] = tally.sample_ids
            try:
                await journal.append(
                    NewEvent(
                        kind="webhook.rejected",
                        source="ingress",
                        payload=payload,
                        integration_id=payload["integration_id"],
                        event_type=reason,
                        severity="warn",
                    )
                )
                written += 1
                if tally.count > 1:  # the first one was logged when it came
                    log.info("webhook_rejections", integration_id=payload["integration_id"],
                             reason=reason, count=tally.count)
            except JournalUnavailable:
                self._tallies.setdefault((integration_id, reason), tally)
        return written
