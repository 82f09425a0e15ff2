"""What the PostgreSQL delivery store asks of each of its sessions (custom plans: a plan
for each statement's own values, unless the URI says otherwise), and which driver errors
mean a lost connection. (The store's behaviour is the contract suite's, tests/contract;
the daemon on it, failures included, is tests/test_daemon_postgres.py.)"""

from __future__ import annotations

import asyncpg

from palyra_py.delivery.postgres_store import SESSION_SETTINGS
from palyra_py.storage.postgres import (
    DRIVER_ERRORS,
    describe_pg_error,
    is_connection_lost,
    settings_unless_in_uri,
)


def session_settings_for(dsn: str) -> dict[str, str]:
    return settings_unless_in_uri(dsn, SESSION_SETTINGS)


def test_every_session_plans_for_its_own_values() -> None:
    dsn = "postgresql://palyra:pw@db/palyra?sslmode=require"
    assert session_settings_for(dsn) == {"plan_cache_mode": "force_custom_plan"}


def test_the_uri_s_own_plan_cache_mode_wins() -> None:
    assert session_settings_for("postgresql://palyra@/palyra?host=/run/pg&plan_cache_mode=auto"
                                ) == {}


def test_the_driver_s_own_protocol_errors_count_as_a_lost_connection() -> None:
    """asyncpg raises ``InternalClientError`` (``ProtocolError``...) when a connection dies
    in the middle of an answer: the stores retry on a new connection, as for a cut one."""
    for error in (asyncpg.InternalClientError("x"), asyncpg.ProtocolError("x")):
        assert isinstance(error, DRIVER_ERRORS)
        assert is_connection_lost(error)
        assert "unreachable or the connection was lost" in describe_pg_error(
            error, "delivery store", "write")
