"""The engines the contract suite runs against, each behind the Protocols only.

``engine`` is parametrised by engine name; a new engine adds its name to ``ENGINES`` and a
branch to ``Engine``'s factories (its storage set up and torn down here), and passes the
suite unchanged. The tests never see an engine's class, file or SQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from palyra_py.bus.base import Bus
from palyra_py.bus.local import SeqBus
from palyra_py.delivery.backend import DeliveryBackend
from palyra_py.delivery.sqlite_store import DeliveryStore
from palyra_py.journal.backend import JournalBackend
from palyra_py.journal.sqlite_journal import SqliteJournal

ENGINES = ["sqlite"]


class Engine:
    """Builds stores of one engine over one storage (for SQLite, a directory), closing
    every one it built at the end of the test."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self._root = root
        self._journals: list[JournalBackend] = []
        self._deliveries: list[DeliveryBackend] = []

    def journal(
        self, *, clock: Callable[[], float],
        on_commit: Callable[[int, int], None] | None = None,
    ) -> JournalBackend:
        """A journal backend, not started, over this test's storage."""
        if self.name != "sqlite":
            raise AssertionError(f"no journal for engine {self.name!r}")
        backend: JournalBackend = SqliteJournal(
            self._root / "journal.db", clock=clock, on_commit=on_commit, start_check_s=0
        )
        self._journals.append(backend)
        return backend

    def deliveries(self) -> DeliveryBackend:
        """A delivery backend, not started, over this test's storage."""
        if self.name != "sqlite":
            raise AssertionError(f"no delivery store for engine {self.name!r}")
        backend: DeliveryBackend = DeliveryStore(self._root / "deliveries.db")
        self._deliveries.append(backend)
        return backend

    def bus(self) -> Bus:
        """A bus as a reader in this process sees it."""
        bus: Bus = SeqBus()
        return bus

    async def close(self) -> None:
        for journal in self._journals:
            await journal.close()
        for deliveries in self._deliveries:
            await deliveries.close()


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    built = Engine(str(request.param), tmp_path)
    yield built
    await built.close()
