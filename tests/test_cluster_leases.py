"""Delivery leases: the pure rules, the store ``cluster`` on a real PostgreSQL
(tests/pg.py), and nodes (real daemons in this process, each with its own state dir, on
one database). Expiry is the database's: a test that needs a lease to run out moves its
``expires_at`` back, rather than waiting for it; a node's own deadline runs on the
injected clock, moved by the test."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import yaml

from palyra_py.cluster.identity import NODE_ID_FILE, node_id_for
from palyra_py.cluster.leases import (
    DROP_FRACTION,
    Acquired,
    IdInUse,
    LeaseRow,
    LocalLeases,
    fair_share,
    plan_leases,
)
from palyra_py.cluster.postgres import STORE, PostgresCluster
from palyra_py.server.daemon import Daemon, load_for_tests
from palyra_py.settings import SettingsError
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests import leakcheck
from tests.fault_helpers import admin_session
from tests.pg import PgServer
from tests.test_openapi import SPEC_FILE, errors_of, schema_validator

LEASE_S, HEARTBEAT_S = 3.0, 1.0


# -- the pure rules ---------------------------------------------------------------------

def test_the_fair_share_is_the_ceiling_of_subscriptions_over_live_nodes() -> None:
    assert [fair_share(n, 3) for n in (0, 1, 3, 4, 7)] == [0, 1, 1, 2, 3]
    assert fair_share(5, 0) == 5  # no live node read yet: this one


def test_a_plan_releases_what_is_over_the_share_or_unwanted_and_fills_up_to_it() -> None:
    others = [LeaseRow("s3", "b", 1, 2.0)]
    plan = plan_leases("a", {"s1", "s2", "gone"}, ["s1", "s2", "s3", "s4"], others, 2)
    assert plan.release == ["gone"] and plan.acquire == 0
    plan = plan_leases("a", {"s1", "s2", "s4"}, ["s1", "s2", "s3", "s4"], others, 3)
    assert plan.release == ["s4"] and plan.acquire == 0  # share 2: the last one goes
    plan = plan_leases("a", set(), ["s1", "s2", "s3", "s4"], others, 2)
    assert plan.acquire == 2 and sorted(plan.candidates) == ["s1", "s2", "s4"]


def test_local_leases_are_trusted_for_a_fraction_of_the_lease_after_the_renewal_was_sent(
) -> None:
    leases = LocalLeases(10.0)
    assert leases.deadline() is None
    leases.add(Acquired("s1", 1, None), sent_at=100.0)
    assert leases.deadline() == 100.0 + DROP_FRACTION * 10.0
    assert not leases.expired(107.9) and leases.expired(108.0)
    # A renewal answers with what the database renewed: s2 (held there, not here) starts,
    # nothing stops; the deadline moves with the renewal's sending.
    start, stop = leases.renewed(104.0, {"s1": 1, "s2": 3})
    assert (start, stop) == (["s2"], []) and leases.deadline() == 112.0
    start, stop = leases.renewed(106.0, {"s2": 3})
    assert (start, stop) == ([], ["s1"])
    assert leases.drop() == ["s2"] and leases.deadline() is None


def test_the_node_id_is_kept_in_the_state_dir_and_settings_are_validated(
        tmp_path: Path) -> None:
    made = node_id_for(tmp_path, "")
    assert (tmp_path / NODE_ID_FILE).read_text().strip() == made
    assert node_id_for(tmp_path, "") == made  # a restart is the same node
    assert node_id_for(tmp_path, "eu-1") == "eu-1"
    with pytest.raises(SettingsError, match=r"cluster\.node_id"):
        load_for_tests(tmp_path, cluster__node_id="no spaces")
    with pytest.raises(SettingsError, match="at most a third"):
        load_for_tests(tmp_path, cluster__lease_s="3", cluster__heartbeat_s="1.5")
    with pytest.raises(SettingsError, match=r"at least 1\.0"):
        load_for_tests(tmp_path, cluster__lease_s="0.5")


# -- the store on PostgreSQL ------------------------------------------------------------

def _store(pg: PgServer, database: str, node_id: str,
           heard: Callable[[str], None] | None = None) -> PostgresCluster:
    return PostgresCluster(lambda: pg.dsn(database), node_id=node_id,
                           instance=secrets.token_hex(8), lease_s=LEASE_S, timeout_s=5.0,
                           on_notice=heard)


@contextlib.asynccontextmanager
async def stores(pg: PgServer, *names: str) -> AsyncIterator[tuple[str, list[PostgresCluster],
                                                                   list[list[str]]]]:
    pg.new_database("cluster")
    database = pg.databases[-1]
    heard: list[list[str]] = [[] for _ in names]
    made = [_store(pg, database, name, heard[i].append) for i, name in enumerate(names)]
    try:
        yield database, made, heard
    finally:
        for store in made:
            await store.close()


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0,
                 state: Callable[[], object] = lambda: None) -> None:
    """Poll ``condition`` (every 20 ms) until it holds; fail after ``timeout``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)  # polling a condition under a deadline
    assert condition(), f"{what}: not within {timeout} s ({state()})"


async def test_one_node_per_lease_takeover_after_expiry_and_release_with_a_notice(
    pg_server: PgServer,
) -> None:
    async with stores(pg_server, "a", "b") as (db, (a, b), (_heard_a, heard_b)):
        assert await a.join("host-a", 1) is None and await b.join("host-b", 2) is None
        assert pg_server.psql(db, f"SELECT max(version) FROM palyra_schema WHERE store = '{STORE}'"
                              ) == "1"
        got = await a.acquire(["s1", "s2", "s3"], 2)
        assert [(x.subscription_id, x.epoch, x.previous_node) for x in got] == [
            ("s1", 1, None), ("s2", 1, None)]
        # B reaches for all three: it gets the free one only.
        got = await b.acquire(["s1", "s2", "s3"], 3)
        assert [x.subscription_id for x in got] == ["s3"]
        # Both race for what is free: one wins each.
        pg_server.psql(db, "UPDATE cluster_leases SET node_id = NULL WHERE subscription_id"
                           " = 's3'")
        won = await asyncio.gather(a.acquire(["s3"], 1), b.acquire(["s3"], 1))
        assert sum(len(w) for w in won) == 1

        assert sorted(await a.heartbeat()) in (["s1", "s2"], ["s1", "s2", "s3"])
        # s1 runs out (the database's clock says so): A's renewal no longer has it, B
        # takes it over with the next epoch, naming A.
        pg_server.psql(db, "UPDATE cluster_leases SET expires_at = now() - interval '1 s'"
                           " WHERE subscription_id = 's1'")
        assert "s1" not in await a.heartbeat()
        (taken,) = await b.acquire(["s1"], 1)
        assert (taken.epoch, taken.previous_node) == (2, "a")
        nodes, leases = await a.snapshot()
        assert [n.node_id for n in nodes if n.live] == ["a", "b"]
        assert {lease.subscription_id: lease.node_id for lease in leases}["s1"] == "b"

        # A gives s2 up: B hears it at once and may take it (a free lease, no takeover).
        await a.release(["s2"])
        await _until(lambda: "released:a" in heard_b, "B heard the release")
        (free,) = await b.acquire(["s2"], 1)
        assert (free.epoch, free.previous_node) == (2, None)
        # A stops: every lease it held is free, the others are told.
        await a.stop()
        await _until(lambda: "stopped:a" in heard_b, "B heard the stop")
        nodes, leases = await b.snapshot()
        assert {n.node_id: n.stopped for n in nodes} == {"a": True, "b": False}
        assert {lease.node_id for lease in leases} == {"b"}


async def test_a_node_id_held_by_a_live_process_is_not_taken_until_it_lapses_or_stops(
    pg_server: PgServer,
) -> None:
    async with stores(pg_server, "same", "same") as (db, (first, second), _heard):
        assert await first.join("h", 1) is None
        assert await first.acquire(["s1"], 1)
        age = await second.join("h", 2)
        assert age is not None and age < LEASE_S
        # The first instance's heartbeat lapses (it crashed): the second takes the id and
        # what the first held is free again.
        pg_server.psql(db, "UPDATE cluster_nodes SET heartbeat_at = now() - interval '1 h'")
        assert await second.join("h", 2) is None
        assert pg_server.psql(db, "SELECT count(*) FROM cluster_leases WHERE node_id IS NOT"
                                  " NULL") == "0"
        with pytest.raises(IdInUse):
            await first.heartbeat()  # the old instance learns it lost its id


# -- nodes: real daemons on one database ------------------------------------------------

@contextlib.asynccontextmanager
async def node(pg: PgServer, database: str, clock: ManualClock, name: str,
               **settings: Any) -> AsyncIterator[Daemon]:
    with leakcheck.checked_state_dir(f"pt-{name}-") as state:
        async with running_daemon(state, clock=clock, keyring=MemoryKeyring(),
                                  storage__backend="postgres", storage__dsn=pg.dsn(database),
                                  cluster__node_id=name, cluster__lease_s=str(LEASE_S),
                                  cluster__heartbeat_s=str(HEARTBEAT_S),
                                  **settings) as daemon:
            yield daemon


async def add_subscriptions(daemon: Daemon, ids: list[str], url: str) -> None:
    async with admin_session(daemon.socket_path) as admin:
        for sid in ids:
            async with admin.post("/v1/subscriptions", json={
                    "subscription_id": sid, "url": f"{url}/{sid}"}) as resp:
                assert resp.status == 201, await resp.text()


def holders(pg: PgServer, database: str) -> dict[str, str]:
    out = pg.psql(database, "SELECT subscription_id || ' ' || node_id FROM cluster_leases"
                            " WHERE node_id IS NOT NULL AND expires_at > now()")
    return dict(line.split(" ") for line in out.splitlines() if line)


def delivering(*daemons: Daemon) -> list[list[str]]:
    return [d.dispatcher.delivering() for d in daemons]


async def status_of(daemon: Daemon) -> dict[str, Any]:
    async with admin_session(daemon.socket_path) as admin, admin.get("/v1/status") as resp:
        answer: dict[str, Any] = await resp.json()
        return answer


SUBS = ["s1", "s2", "s3", "s4"]


async def test_nodes_share_the_subscriptions_fairly_one_holder_each_and_hand_over_on_stop(
    pg_server: PgServer, clock: ManualClock,
) -> None:
    pg_server.new_database("nodes")
    db = pg_server.databases[-1]
    url = "http://127.0.0.1:9"  # never reached: no event is published here
    async with contextlib.AsyncExitStack() as a_life, contextlib.AsyncExitStack() as b_life:
        a = await a_life.enter_async_context(node(pg_server, db, clock, "na"))
        await add_subscriptions(a, SUBS, url)
        await _until(lambda: delivering(a) == [SUBS], "A alone delivers everything")
        # B reads the subscriptions A added from the registry in the database.
        b = await b_life.enter_async_context(node(pg_server, db, clock, "nb"))
        assert sorted(b.registry.subscriptions) == SUBS
        # B's join is a notice: A gives up what is over its share of 2, B takes it.
        await _until(lambda: sorted(delivering(a)[0] + delivering(b)[0]) == SUBS
                     and len(delivering(a)[0]) == 2 == len(delivering(b)[0]),
                     "two each, every subscription delivered once",
                     state=lambda: delivering(a, b))
        assert not set(delivering(a)[0]) & set(delivering(b)[0])
        shown = holders(pg_server, db)
        assert sorted(shown) == SUBS
        assert {s for s, n in shown.items() if n == "na"} == set(delivering(a)[0])
        answer = await status_of(b)
        status_schema = schema_validator(yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8")),
                                         "/components/schemas/Status")
        assert errors_of(status_schema, answer) == []
        status = answer["cluster"]
        assert status["node_id"] == "nb" and status["fair_share"] == 2
        nodes = {n["node_id"]: n for n in status["nodes"]}
        assert set(nodes) == {"na", "nb"} and nodes["nb"]["this_node"]
        assert nodes["na"]["state"] == "live"
        assert nodes["na"]["heartbeat_age_s"] <= LEASE_S
        assert sorted(x["subscription_id"] for x in nodes["na"]["leases"]) == sorted(
            delivering(a)[0])
        a_had = set(delivering(a)[0])
        await a_life.aclose()
        # A stopped gracefully: B holds everything, each as a released lease taken at
        # once (no takeover: nothing had to run out).
        assert b.cluster is not None
        await _until(lambda: delivering(b) == [SUBS], "B took A's subscriptions",
                     state=lambda: (delivering(b), holders(pg_server, db)))
        assert b.cluster.takeovers == 0
        assert set(holders(pg_server, db)) == set(SUBS) >= a_had
        metrics = b.metrics.render().decode()
        assert "palyra_leases_held 4.0" in metrics
        assert "palyra_lease_takeovers_total 0.0" in metrics
        status = (await status_of(b))["cluster"]
        assert {n["node_id"]: n["state"] for n in status["nodes"]} == {
            "na": "stopped", "nb": "live"}


async def test_a_node_stops_delivering_at_its_own_deadline_and_resumes_what_is_still_its(
    pg_server: PgServer, clock: ManualClock,
) -> None:
    pg_server.new_database("deadline")
    db = pg_server.databases[-1]
    async with node(pg_server, db, clock, "solo") as a:
        await add_subscriptions(a, SUBS[:2], "http://127.0.0.1:9")
        assert a.cluster is not None
        await _until(lambda: delivering(a) == [SUBS[:2]], "it delivers both")
        assert a.cluster.leases.renewed_at is not None
        # The node's clock says no renewal went through for 0.8 x lease_s: it stops.
        clock.advance(DROP_FRACTION * LEASE_S)
        assert await a.cluster.check_expiry() == SUBS[:2]
        assert delivering(a) == [[]]
        # Its next heartbeat finds both still its own in the database (they had not run
        # out): it resumes them, from the store.
        await _until(lambda: delivering(a) == [SUBS[:2]], "resumed after the renewal")
        # Gone from the registry: the lease is released, not kept.
        async with admin_session(a.socket_path) as admin, \
                admin.delete("/v1/subscriptions/s2") as resp:
            assert resp.status == 200
        await _until(lambda: delivering(a) == [["s1"]] and set(holders(pg_server, db))
                     == {"s1"}, "s2 released")


async def test_status_has_no_cluster_section_on_sqlite(state_dir: Path, clock: ManualClock,
                                                        memory_keyring: MemoryKeyring) -> None:
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as daemon:
        assert "cluster" not in await status_of(daemon)
        assert daemon.cluster is None




async def test_a_cursor_moved_on_another_node_is_read_again_by_the_holder(
    pg_server: PgServer, clock: ManualClock,
) -> None:
    pg_server.new_database("cursor")
    db = pg_server.databases[-1]
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(node(pg_server, db, clock, "ca"))
        b = await stack.enter_async_context(node(pg_server, db, clock, "cb"))
        # The registry is in the database: added on A, in force on B within a second.
        await add_subscriptions(a, ["only"], "http://127.0.0.1:9")
        await _until(lambda: "only" in b.registry.subscriptions, "B has the subscription")
        await _until(lambda: sorted(delivering(a)[0] + delivering(b)[0]) == ["only"],
                     "one node delivers it")
        holder, other = (a, b) if delivering(a)[0] else (b, a)
        with structlog.testing.capture_logs() as logs:
            # Enabled without catch-up on the node that does not hold it: the cursor moves
            # to the head there; the holder is told, and reads it from the store.
            async with admin_session(other.socket_path) as admin, admin.post(
                    "/v1/subscriptions/only/enable", json={"catch_up": False}) as resp:
                assert resp.status == 200, await resp.text()
            assert holder.cluster is not None
            await _until(lambda: any(e["event"] == "cursor_reread" for e in logs),
                         "the holder to read the cursor again")
        # (Two notices: the cursor set at the head, then the edit's forgetting.)
        rereads = {(e["node_id"], e["subscription_id"]) for e in logs
                   if e["event"] == "cursor_reread"}
        assert rereads == {(holder.cluster.node_id, "only")}


async def test_cut_connections_are_replaced_and_the_leases_stay_where_they_are(
    pg_server: PgServer, clock: ManualClock,
) -> None:
    pg_server.new_database("cut")
    db = pg_server.databases[-1]
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(node(pg_server, db, clock, "ta"))
        b_life = await stack.enter_async_context(contextlib.AsyncExitStack())
        b = await b_life.enter_async_context(node(pg_server, db, clock, "tb"))
        await add_subscriptions(a, SUBS[:2], "http://127.0.0.1:9")
        await _until(lambda: sorted(b.registry.subscriptions) == SUBS[:2],
                     "B has the subscriptions")
        await _until(lambda: len(delivering(a)[0]) == 1 == len(delivering(b)[0]),
                     "one each")
        before = holders(pg_server, db)
        assert pg_server.terminate_backends(db) > 0
        assert a.cluster is not None and b.cluster is not None
        beats = (a.cluster.leases.renewed_at, b.cluster.leases.renewed_at)

        def renewed_since() -> bool:
            assert a.cluster is not None and b.cluster is not None
            return (a.cluster.leases.renewed_at, b.cluster.leases.renewed_at) != beats
        # The clock is the test's: a renewal that went through moves renewed_at only when
        # the clock moved, so move it a little.
        clock.advance(0.01)
        await _until(renewed_since, "both nodes to renew on new connections")
        assert holders(pg_server, db) == before
        assert a.cluster.takeovers == b.cluster.takeovers == 0
        # The notices still arrive (the listener came back with the connection): B's
        # stop hands its subscription to A at once.
        await b_life.aclose()
        await _until(lambda: delivering(a) == [SUBS[:2]], "A took B's subscription")
        assert a.cluster.takeovers == 0
