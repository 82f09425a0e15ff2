"""What the PostgreSQL delivery store asks of each of its sessions: custom plans (a plan
for each statement's own values), unless the URI says otherwise. (The store's behaviour is
the contract suite's, tests/contract; the daemon on it is tests/test_daemon_postgres.py.)"""

from __future__ import annotations

from palyra_py.delivery.postgres_store import session_settings_for


def test_every_session_plans_for_its_own_values() -> None:
    dsn = "postgresql://palyra:pw@db/palyra?sslmode=require"
    assert session_settings_for(dsn) == {"plan_cache_mode": "force_custom_plan"}


def test_the_uri_s_own_plan_cache_mode_wins() -> None:
    assert session_settings_for("postgresql://palyra@/palyra?host=/run/pg&plan_cache_mode=auto"
                                ) == {}
