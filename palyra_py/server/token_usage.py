"""When each API token was last used, without writing the registry on every request.

Each authorized request updates an in-memory map (a dict assignment); the daemon writes the
map to ``<state-dir>/token-usage.json`` (0600, atomically) at most every
``FLUSH_INTERVAL_S`` when something changed, and when it stops. A crash loses at most that
interval of "last used" times, nothing else: the file is a hint for people
(``palyra tokens list``), never a security decision.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import structlog

from palyra_py.storage.files import write_atomic

log = structlog.get_logger("palyra.tokens")

USAGE_FILE = "token-usage.json"
FLUSH_INTERVAL_S = 60.0
MAX_FILE_BYTES = 64 * 1024  # 256 tokens x ~40 bytes, with room to spare


class TokenUsage:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: dict[str, int] = {}
        self._dirty = False

    def load(self) -> None:
        """Read the file if there is one; an unreadable or odd one is ignored (and said)."""
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("token_usage_unreadable", path=str(self.path), error=exc.strerror)
            return
        try:
            data = json.loads(raw) if len(raw) <= MAX_FILE_BYTES else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            log.warning("token_usage_ignored", path=str(self.path),
                        reason="not a JSON object of at most 64 KiB")
            return
        self._last = {key: value for key, value in data.items()
                      if isinstance(key, str) and len(key) <= 32
                      and isinstance(value, int) and not isinstance(value, bool)}

    def touch(self, token_id: str, now_s: int) -> None:
        """Note a use at ``now_s`` (unix seconds); nothing is written here."""
        if self._last.get(token_id) != now_s:
            self._last[token_id] = now_s
            self._dirty = True

    def last_used(self, token_id: str) -> int | None:
        """Unix seconds of the last use, or ``None`` if never used (or not since the file
        was lost)."""
        return self._last.get(token_id)

    def flush(self, known: Collection[str]) -> None:
        """Write the file if anything changed, keeping only the ids in ``known`` (the
        registry's tokens), so the file stays bounded. ``OSError`` is logged, not raised."""
        kept = {key: value for key, value in self._last.items() if key in known}
        if not self._dirty and kept == self._last:
            return
        self._last = kept
        try:
            write_atomic(self.path, json.dumps(kept, sort_keys=True).encode())
        except OSError as exc:
            log.warning("token_usage_not_saved", path=str(self.path), error=exc.strerror)
            return
        self._dirty = False
