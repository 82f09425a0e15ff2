"""Several nodes end to end: real ``palyra daemon run`` child processes
(tests/daemon_process.py), each with its own state dir, on one real PostgreSQL
(tests/pg.py), delivering to one real receiver. One node per subscription at a time; the
holder SIGKILLed mid-delivery: another takes its subscriptions over within the lease time
and delivers every event, an ordered subscription keeps its order, and what the receiver
sees twice stays within the documented bound; a graceful stop hands over at once; three
nodes share the subscriptions fairly; a retry or a recovery made on a node that does not
hold the subscription is delivered by the one that does.

The registry is in the database: the subscriptions are added on one node and awaited on
every other."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from palyra_py.outbound.dispatcher import RESEND_FACTOR
from palyra_py.testing import CapturingReceiver, Received
from tests import leakcheck
from tests.daemon_process import DaemonProcess
from tests.fault_helpers import admin_session, publish, subscribe
from tests.pg import PgServer
from tests.test_cli_e2e import palyra, palyra_json
from tests.test_storage_copy import new_key

LEASE_S, HEARTBEAT_S = 3.0, 0.5
SLACK_S = 1.5
"""Over the lease time: the survivor's planner wakes when the lease runs out, then one
read and one write on a loaded 2-core box."""


def node_env(pg: PgServer, database: str, name: str, key_ref: str | None = None,
             lease_s: float = LEASE_S) -> dict[str, str]:
    """A node's settings. ``key_ref``: the nodes' shared ``[secrets]`` key, so that the
    signing secret a subscription gets on one node is a ``db:`` secret every node signs
    with (a keyring secret would be on the first node only)."""
    key = {} if key_ref is None else {"PALYRA_SECRETS_KEY_REF": key_ref}
    return {**key, "PALYRA_STORAGE_BACKEND": "postgres", "PALYRA_STORAGE_DSN": pg.dsn(database),
            "PALYRA_DELIVERY_ALLOW_PRIVATE_NETWORKS": "true",
            "PALYRA_DELIVERY_MAX_SUBSCRIPTIONS_PER_OWNER": "10",
            "PALYRA_CLUSTER_NODE_ID": name, "PALYRA_CLUSTER_LEASE_S": str(lease_s),
            "PALYRA_CLUSTER_HEARTBEAT_S": str(HEARTBEAT_S)}


class Node:
    def __init__(self, name: str, state_dir: Path, process: DaemonProcess) -> None:
        self.name, self.state_dir, self.process = name, state_dir, process

    def admin(self) -> aiohttp.ClientSession:
        return admin_session(self.state_dir / "palyra.sock")

    async def status(self) -> dict[str, Any]:
        async with self.admin() as admin, admin.get("/v1/status") as resp:
            answer: dict[str, Any] = await resp.json()
            assert resp.status == 200, answer
            return answer

    async def stats(self) -> dict[str, int]:
        async with self.admin() as admin, admin.get("/v1/deliveries/stats") as resp:
            figures: dict[str, int] = (await resp.json())["deliveries"]
            return figures


@contextlib.asynccontextmanager
async def cluster(pg: PgServer, names: list[str], lease_s: float = LEASE_S
                  ) -> AsyncIterator[tuple[str, dict[str, Node]]]:
    pg.new_database("nodes")
    database = pg.databases[-1]
    async with contextlib.AsyncExitStack() as stack:
        key_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pt-key-")))
        key_ref = new_key(key_dir)
        nodes: dict[str, Node] = {}
        for name in names:
            state = stack.enter_context(leakcheck.checked_state_dir(f"pt-{name}-"))
            process = await DaemonProcess(state, env=node_env(pg, database, name, key_ref, lease_s)
                                          ).start()
            stack.push_async_callback(_stopped, process)
            nodes[name] = Node(name, state, process)
        yield database, nodes


async def _stopped(process: DaemonProcess) -> None:
    assert process.proc is not None
    if process.proc.returncode is None:
        await process.stop()


async def until(condition: Callable[[], Awaitable[bool]], what: str,
                timeout: float = 30.0) -> float:
    """Poll ``condition`` (every 50 ms) until it holds; the seconds it took. Fails naming
    ``what`` after ``timeout``."""
    began = time.monotonic()
    while not await condition():
        assert time.monotonic() - began < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # polling a condition under a deadline
    return time.monotonic() - began


def holders(pg: PgServer, database: str) -> dict[str, str]:
    out = pg.psql(database, "SELECT subscription_id || ' ' || node_id FROM cluster_leases"
                            " WHERE node_id IS NOT NULL AND expires_at > now()")
    return dict(line.split(" ") for line in out.splitlines() if line)


async def subscribe_everywhere(nodes: dict[str, Node], receiver: CapturingReceiver,
                               subs: dict[str, dict[str, Any]]) -> None:
    """Add the subscriptions on the first node (the registry is in the database), then
    wait until every node has them in force."""
    first = next(iter(nodes.values()))
    async with first.admin() as admin:
        for sid, fields in subs.items():
            await subscribe(admin, sid, f"{receiver.url}/{sid}", events=["job.*"],
                            **fields)
    for node in nodes.values():
        async def has_all(node: Node = node) -> bool:
            async with node.admin() as admin, admin.get("/v1/subscriptions") as resp:
                listed = (await resp.json())["subscriptions"]
                return set(subs) <= {s["subscription_id"] for s in listed}
        await until(has_all, f"the subscriptions in force on {node.name}", timeout=5.0)


async def publish_on(node: Node, first: int, count: int) -> list[str]:
    ids = []
    async with node.admin() as admin:
        for n in range(first, first + count):
            status, body = await publish(admin, "job.done", n=n)
            assert status == 201, body
            ids.append(body["event_id"])
    return ids


def sub_of(got: Received) -> str:
    return got.path.rsplit("/", 1)[-1]


async def test_sigkill_of_the_holder_another_node_takes_over_within_the_lease(
    pg_server: PgServer, receiver: CapturingReceiver,
) -> None:
    max_in_flight = 4
    subs = {"o1": {"ordered": True}, "o2": {"ordered": True},
            "u1": {"max_in_flight": max_in_flight}, "u2": {"max_in_flight": max_in_flight}}
    async with cluster(pg_server, ["n1", "n2"]) as (db, nodes):
        await subscribe_everywhere(nodes, receiver, subs)

        async def spread() -> bool:
            held = holders(pg_server, db)
            return sorted(held) == sorted(subs) and Counter(held.values()) == {"n1": 2,
                                                                               "n2": 2}
        await until(spread, "two subscriptions on each node")
        victim = holders(pg_server, db)["o1"]
        survivor = "n2" if victim == "n1" else "n1"
        victim_subs = {s for s, n in holders(pg_server, db).items() if n == victim}

        # The victim's receiver answers stop after its twentieth: its attempts hang, in
        # flight, when it is killed. The survivor's go on.
        hanging = True
        victim_answered = 0
        held_open: list[Received] = []

        def answer(got: Received) -> web.Response | None:
            nonlocal victim_answered
            if sub_of(got) in victim_subs and hanging:
                if victim_answered >= 20:
                    held_open.append(got)
                    return None
                victim_answered += 1
            return web.Response(status=200)

        receiver.script = [answer] * 100_000
        published = await publish_on(nodes["n1"], 0, 30)
        published += await publish_on(nodes["n2"], 30, 30)

        async def victim_stuck() -> bool:
            return {sub_of(r) for r in held_open} == victim_subs
        await until(victim_stuck, "an attempt in flight on each of the victim's")
        nodes[victim].process.kill()
        killed_at = time.monotonic()
        await nodes[victim].process.proc.wait()  # type: ignore[union-attr]
        hanging = False
        receiver.hang.set()

        async def survivor_holds_all() -> bool:
            return set(holders(pg_server, db)) == set(subs) and set(
                holders(pg_server, db).values()) == {survivor}
        await until(survivor_holds_all, "the survivor to take the leases over")
        took = time.monotonic() - killed_at
        assert took <= LEASE_S + SLACK_S, took
        published += await publish_on(nodes[survivor], 60, 40)

        async def delivered() -> bool:
            figures = await nodes[survivor].stats()
            return figures == {"pending": 0, "succeeded": len(published) * 4, "failed": 0}
        await until(delivered, "every delivery to succeed", timeout=60)
        status = (await nodes[survivor].status())["cluster"]
        assert status["lease_takeovers"] == 2
        shown = {n["node_id"]: n for n in status["nodes"]}
        assert shown[victim]["state"] == "lost" and shown[victim]["leases"] == []
        assert sorted(x["subscription_id"] for x in shown[survivor]["leases"]) == sorted(subs)

    for sid, fields in subs.items():
        seen = [r for r in receiver.received if sub_of(r) == sid]
        ids = [r.headers["webhook-id"] for r in seen]
        assert set(ids) == set(published), sid  # every event, on every subscription
        resent = len(ids) - len(set(ids))
        if fields.get("ordered"):
            # In order across the failover: the one in flight is sent again, then the next.
            numbers = [r.json()["data"]["n"] for r in seen]
            firsts = [n for i, n in enumerate(numbers) if i == 0 or numbers[i - 1] != n]
            assert firsts == list(range(len(published))), (sid, numbers)
            assert resent <= 1, (sid, resent)
        else:
            assert resent <= RESEND_FACTOR * max_in_flight, (sid, resent)
        if sid in victim_subs:
            # What hung at the kill was sent again by the survivor.
            hung = {r.headers["webhook-id"] for r in held_open if sub_of(r) == sid}
            arrivals = Counter(ids)
            assert hung and all(arrivals[i] >= 2 for i in hung), (sid, hung)


async def test_a_graceful_stop_hands_the_leases_over_at_once(
    pg_server: PgServer, receiver: CapturingReceiver,
) -> None:
    long_lease = 30.0  # "at once" is far below it
    subs = {"a": {}, "b": {"ordered": True}}
    async with cluster(pg_server, ["g1", "g2"], lease_s=long_lease) as (db, nodes):
        await subscribe_everywhere(nodes, receiver, subs)

        async def spread() -> bool:
            return sorted(holders(pg_server, db).values()) == ["g1", "g2"]
        await until(spread, "one subscription on each node")
        published = await publish_on(nodes["g1"], 0, 20)
        stopping = holders(pg_server, db)["a"]
        staying = "g2" if stopping == "g1" else "g1"
        stopped_at = time.monotonic()
        assert await nodes[stopping].process.stop() == 0

        async def handed_over() -> bool:
            return set(holders(pg_server, db).values()) == {staying}
        await until(handed_over, "the other node to hold both")
        assert time.monotonic() - stopped_at < long_lease / 3
        published += await publish_on(nodes[staying], 20, 10)

        async def delivered() -> bool:
            figures = await nodes[staying].stats()
            return figures == {"pending": 0, "succeeded": len(published) * 2, "failed": 0}
        await until(delivered, "every delivery to succeed")
        status = (await nodes[staying].status())["cluster"]
        assert status["lease_takeovers"] == 0  # released, not run out
        assert {n["node_id"]: n["state"] for n in status["nodes"]}[stopping] == "stopped"
        assert any(r.get("event") == "cluster_left" for r in nodes[stopping].process.log)
        # The CLI shows the cluster to people too, and in --json.
        code, out, err = await palyra(nodes[staying].state_dir, "daemon", "status",
                                      columns=220)
        assert code == 0, err
        assert "cluster nodes" in out and f"{staying} (this node)  live" in out, out
        assert f"{stopping}  stopped" in out and "leases 2: a, b" in out, out
        shown = await palyra_json(nodes[staying].state_dir, "daemon", "status")
        assert shown["cluster"]["leases_held"] == ["a", "b"]
    for sid in subs:
        ids = [r.headers["webhook-id"] for r in receiver.received if sub_of(r) == sid]
        assert set(ids) == set(published) and len(ids) == len(published), sid


async def test_three_nodes_share_fairly_and_a_retry_on_a_non_holder_is_delivered(
    pg_server: PgServer, receiver: CapturingReceiver,
) -> None:
    subs = {f"s{i}": {"retry_schedule": ["0s"]} for i in range(6)}
    async with cluster(pg_server, ["f1", "f2", "f3"]) as (db, nodes):
        await subscribe_everywhere(nodes, receiver, subs)

        async def fair() -> bool:
            return Counter(holders(pg_server, db).values()) == {"f1": 2, "f2": 2, "f3": 2}
        await until(fair, "two subscriptions on each of three nodes")
        status = (await nodes["f1"].status())["cluster"]
        assert status["fair_share"] == 2 and len(status["nodes"]) == 3

        # The first attempt on s0 and s1 fails, and with it the delivery (the schedule has
        # no retry left). The retry (s0) and the recovery (s1) are asked of nodes that do
        # not hold them; the holders, told, deliver them.
        def first_fails(got: Received) -> web.Response:
            sid = sub_of(got)
            status = 500 if sid in ("s0", "s1") and sum(
                1 for r in receiver.received if sub_of(r) == sid) <= 1 else 200
            return web.Response(status=status)

        receiver.script = [first_fails] * 1000
        holder = holders(pg_server, db)["s0"]
        other = next(n for n in nodes.values() if n.name != holder)
        (event_id,) = await publish_on(other, 0, 1)

        async def failed_once() -> bool:
            figures = await other.stats()
            return figures == {"pending": 0, "succeeded": 4, "failed": 2}
        await until(failed_once, "s0 and s1 to fail and the others to succeed")
        async with other.admin() as admin:
            async with admin.get("/v1/deliveries", params={"subscription": "s0"}) as resp:
                (row,) = (await resp.json())["deliveries"]
            async with admin.post(f"/v1/deliveries/{row['delivery_id']}/retry") as resp:
                assert resp.status == 200, await resp.text()

        async def retried() -> bool:
            return (await other.stats()) == {"pending": 0, "succeeded": 5, "failed": 1}
        await until(retried, "the retry, by the holder", timeout=10)
        s0 = [r for r in receiver.received if sub_of(r) == "s0"]
        assert [r.headers["webhook-id"] for r in s0] == [event_id] * 2

        # A recovery asked of the other node: s1's delivery is made again.
        recover_on = next(n for n in nodes.values() if n.name != holders(pg_server, db)["s1"])
        async with recover_on.admin() as admin:
            async with admin.post("/v1/deliveries/recover", json={
                    "subscription_id": "s1", "since": 0}) as resp:
                assert resp.status == 200 and (await resp.json())["recovered"] == 1

        async def recovered() -> bool:
            return (await other.stats()) == {"pending": 0, "succeeded": 6, "failed": 0}
        await until(recovered, "the recovered delivery, by the holder", timeout=10)
        s1 = [r.headers["webhook-id"] for r in receiver.received if sub_of(r) == "s1"]
        assert s1 == [event_id] * 2

        # A subscription test asked of a node that does not hold it: the holder sends it,
        # and the answer carries the attempt it recorded.
        test_on = next(n for n in nodes.values() if n.name != holders(pg_server, db)["s2"])
        async with test_on.admin() as admin, admin.post("/v1/subscriptions/s2/test",
                                                        json={}) as resp:
            tested = await resp.json()
            assert resp.status == 200, tested
        assert tested["attempt"] is not None and tested["attempt"]["status_code"] == 200
        assert tested["delivery"]["status"] == "succeeded"


async def test_a_second_live_node_with_the_same_id_refuses_to_start(
    pg_server: PgServer,
) -> None:
    async with cluster(pg_server, ["twin"]) as (db, _nodes):
        with leakcheck.checked_state_dir("pt-twin2-") as state:
            began = time.monotonic()
            second = DaemonProcess(state, env=node_env(pg_server, db, "twin"))
            try:
                await second.start()
            except RuntimeError:
                pass
            else:
                await second.stop()
                raise AssertionError("a second node with the same id started")
            assert second.proc is not None and await second.proc.wait() != 0
            (refused,) = [r for r in second.log if r.get("event") == "daemon_cannot_start"]
            assert "cannot join the cluster: node id twin is in use" in refused["error"]
            # It waited for the first one's heartbeat to lapse, which it never did.
            assert time.monotonic() - began >= LEASE_S


async def publish_until_taken(node: Node, n: int, timeout: float = 30.0) -> str:
    """Publish one event, again while the journal answers 503 (PostgreSQL restarting)."""
    began = time.monotonic()
    async with node.admin() as admin:
        while True:
            status, body = await publish(admin, "job.done", n=n)
            if status == 201:
                return str(body["event_id"])
            assert status == 503 and body["error"] == "journal_unavailable", body
            assert time.monotonic() - began < timeout, "the journal did not come back"
            await asyncio.sleep(0.1)  # a client's retry pause, not a synchronisation


async def test_postgresql_restarted_mid_run_one_holder_each_and_every_event_delivered(
    pg_server: PgServer, receiver: CapturingReceiver,
) -> None:
    subs = {"in-order": {"ordered": True}, "any": {"max_in_flight": 4}}
    async with cluster(pg_server, ["r1", "r2"]) as (db, nodes):
        await subscribe_everywhere(nodes, receiver, subs)

        async def spread() -> bool:
            return sorted(holders(pg_server, db).values()) == ["r1", "r2"]
        await until(spread, "one subscription on each node")
        published = [await publish_until_taken(nodes["r1" if n % 2 else "r2"], n)
                     for n in range(20)]
        pg_server.restart("fast")
        published += [await publish_until_taken(nodes["r1" if n % 2 else "r2"], n)
                      for n in range(20, 40)]

        async def delivered() -> bool:
            try:
                figures = await nodes["r1"].stats()
            except (KeyError, aiohttp.ClientError):
                return False
            return figures == {"pending": 0, "succeeded": 2 * len(published), "failed": 0}
        await until(delivered, "every delivery to succeed", timeout=60)
        await until(spread, "one holder each again")
    for sid, fields in subs.items():
        seen = [r for r in receiver.received if sub_of(r) == sid]
        ids = [r.headers["webhook-id"] for r in seen]
        assert set(ids) == set(published), sid
        if fields.get("ordered"):
            numbers = [r.json()["data"]["n"] for r in seen]
            firsts = [n for i, n in enumerate(numbers) if i == 0 or numbers[i - 1] != n]
            assert firsts == list(range(len(published))), numbers
            assert len(ids) - len(set(ids)) <= 1
        else:
            assert len(ids) - len(set(ids)) <= RESEND_FACTOR * 4
