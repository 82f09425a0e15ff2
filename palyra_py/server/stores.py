"""The delivery store's engine, picked once from ``[storage] backend`` by the composition
root: the SQLite ``DeliveryStore`` (``<state-dir>/deliveries.db``) or ``PostgresDeliveries``
(the tables every node shares). What differs between them for the daemon is asked here,
in one place: whether there is a file (its loss, ``--deliveries-from``), and where the
store is, fit to show (``daemon status``: a path, or the URI without its password).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from palyra_py.delivery.backend import DeliveryBackend
from palyra_py.delivery.store import DELIVERIES_FILE, DeliveryStore
from palyra_py.settings import Settings, storage_location

__all__ = ["delivery_backend", "delivery_file", "delivery_location"]


def delivery_backend(settings: Settings, state_dir: Path, *, dsn: Callable[[], str],
                     on_file_lost: Callable[[str], None]) -> DeliveryBackend:
    """The delivery store ``settings`` ask for, not started. ``dsn`` gives the PostgreSQL
    URI when the store starts (a ``dsn_ref`` secret is read then); ``on_file_lost`` is
    called, SQLite only, once the file is found removed or replaced."""
    if settings.get("storage", "backend") == "postgres":
        # Loaded only here: an embedded daemon never imports the driver.
        from palyra_py.delivery.postgres_store import PostgresDeliveries

        return PostgresDeliveries(dsn)
    store = DeliveryStore(state_dir / DELIVERIES_FILE)
    store.on_unavailable = on_file_lost
    return store


def delivery_file(store: DeliveryBackend) -> Path | None:
    """The file ``store`` keeps everything in (SQLite), or ``None`` (PostgreSQL: cursors
    and pending deliveries live in the database, and there is no file to lose)."""
    return store.path if isinstance(store, DeliveryStore) else None


def delivery_location(settings: Settings, store: DeliveryBackend) -> str:
    """Where ``store`` is, fit to show: the path of ``deliveries.db``, or on PostgreSQL
    the same text as the journal's (``postgres`` and the URI without its password, or the
    reference that holds it)."""
    file = delivery_file(store)
    return str(file) if file is not None else storage_location(settings)
