"""The admin API on the real daemon's Unix socket."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
from typing import Any

import aiohttp

from palyra_py.server.daemon import Daemon
from palyra_py.testing import ManualClock, MemoryKeyring
from tests.helpers import add_integration, events


async def test_state_files_are_private(daemon: Daemon, admin: aiohttp.ClientSession) -> None:
    await add_integration(admin, "gh")
    assert stat.S_IMODE(daemon.state_dir.stat().st_mode) == 0o700
    for name in ("palyra.sock", "webhooks.toml", "journal.db"):
        mode = stat.S_IMODE((daemon.state_dir / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


async def test_status_reports_parts_and_setting_sources(
    daemon: Daemon, admin: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "gh")
    await add_integration(admin, "env-missing", secret="x")
    async with admin.patch("/v1/webhooks/env-missing", json={"enabled": False}) as resp:
        assert resp.status == 200
    async with admin.get("/v1/status") as resp:
        status = await resp.json()
    assert status["integrations"]["by_readiness"]["ready"] == 1
    assert status["integrations"]["by_readiness"]["disabled"] == 1
    assert status["journal"]["last_seq"] >= 3
    assert status["keyring"]["backend"]
    sources = {(s["section"], s["key"]): s["source"] for s in status["settings"]}
    assert sources[("daemon", "listen")] == "flag"
    assert sources[("journal", "retention_days")] == "default"


async def test_add_validation_names_the_field(admin: aiohttp.ClientSession) -> None:
    cases = [
        ({"integration_id": "Bad Id!", "provider": "github"}, "integration_id"),
        ({"integration_id": "ok", "provider": "carrier-pigeon"}, "provider"),
        ({"integration_id": "ok", "provider": "github", "max_payload_bytes": 0},
         "max_payload_bytes"),
    ]
    for body, field in cases:
        body["secret"] = {"value": "s"}
        async with admin.post("/v1/webhooks", json=body) as resp:
            answer = await resp.json()
            assert resp.status == 400, answer
            assert answer["error"] == "invalid_request" and field in answer["message"]
    await add_integration(admin, "dup")
    async with admin.post("/v1/webhooks", json={"integration_id": "DUP", "provider": "github",
                                                "secret": {"value": "s"}}) as resp:
        assert resp.status == 409


async def test_generated_secret_is_shown_once(admin: aiohttp.ClientSession) -> None:
    async with admin.post("/v1/webhooks", json={
        "integration_id": "sw", "provider": "standard-webhooks", "secret": {"generate": True},
    }) as resp:
        created = await resp.json()
    assert created["secret"].startswith("whsec_")
    async with admin.get("/v1/webhooks/sw") as resp:
        shown = await resp.text()
    assert created["secret"] not in shown
    assert json.loads(shown)["webhook"]["readiness"] == "ready"


async def test_broken_hand_edit_is_refused_and_old_registry_serves(
    daemon: Daemon, admin: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "gh")
    path = daemon.state_dir / "webhooks.toml"
    good = path.read_text()
    path.write_text(good + "\n[[webhooks]]\nintegration_id = \"x\"\nprovider = \n")
    async with admin.post("/v1/reload") as resp:
        answer = await resp.json()
    assert resp.status == 422 and answer["error"] == "registry_invalid"
    assert answer["location"].startswith(f"{path}:")
    line = int(answer["location"].split(":")[-2])
    assert path.read_text().splitlines()[line - 1].startswith("provider")
    async with admin.get("/v1/webhooks") as resp:
        assert [w["integration_id"] for w in (await resp.json())["webhooks"]] == ["gh"]
    path.write_text(good.replace('display_name = ""', 'display_name = "renamed"') +
                    "\n# a comment\n")
    async with admin.post("/v1/reload") as resp:
        assert resp.status == 200
    assert "daemon.reloaded" in [e["kind"] for e in await events(admin)]


async def test_a_replay_window_a_signed_timestamp_outlives_is_refused_on_every_path(
    daemon: Daemon, admin: aiohttp.ClientSession
) -> None:
    """Stripe signs a timestamp accepted for 300 s either side of now: a shorter-lived
    replay key would let a captured request in again. Refused on add, on update and in a
    hand-edited registry; the message names both fields."""

    def names_both(answer: dict[str, Any]) -> bool:
        return "replay_window_s" in answer["message"] and "timestamp_tolerance_s" in answer[
            "message"]

    async with admin.post("/v1/webhooks", json={
        "integration_id": "st", "provider": "stripe", "replay_window_s": 120,
        "secret": {"value": "whsec_test"},
    }) as resp:
        answer = await resp.json()
    assert (resp.status, answer["error"], answer["field"]) == (
        400, "invalid_request", "replay_window_s")
    assert names_both(answer)
    await add_integration(admin, "st", provider="stripe", secret="whsec_test")
    async with admin.patch("/v1/webhooks/st", json={"replay_window_s": 600}) as resp:
        answer = await resp.json()
    assert resp.status == 400 and names_both(answer), answer
    async with admin.patch("/v1/webhooks/st", json={"replay_window_s": 601}) as resp:
        assert resp.status == 200, await resp.text()
    async with admin.patch("/v1/webhooks/st", json={"timestamp_tolerance_s": 301}) as resp:
        answer = await resp.json()
    assert resp.status == 400 and names_both(answer), answer

    path = daemon.state_dir / "webhooks.toml"
    path.write_text(path.read_text().replace("replay_window_s = 601", "replay_window_s = 300"))
    async with admin.post("/v1/reload") as resp:
        answer = await resp.json()
    assert (resp.status, answer["error"]) == (422, "registry_invalid") and names_both(answer)
    async with admin.get("/v1/webhooks/st") as resp:  # the registry as it was still serves
        assert (await resp.json())["webhook"]["replay_window_s"] == 601


async def test_emit_then_list_with_filters_and_paging(admin: aiohttp.ClientSession) -> None:
    for i in range(7):
        async with admin.post("/v1/events", json={
            "type": "deploy.finished" if i % 2 else "qa.validation_failed",
            "data": {"n": i, "api_token": "tok-123"}, "severity": "warn",
        }) as resp:
            assert resp.status == 201, await resp.text()
    got = await events(admin, type="qa.*")
    assert [e["payload"]["data"]["n"] for e in got] == [0, 2, 4, 6]
    assert all(e["source"] == "operator" and e["redacted"] for e in got)
    assert "tok-123" not in json.dumps(got)
    page1 = await events(admin, type="deploy.*", limit=2)
    page2 = await events(admin, type="deploy.*", limit=2, after_seq=page1[-1]["seq"])
    assert [e["payload"]["data"]["n"] for e in page1 + page2] == [1, 3, 5]


async def test_emit_refuses_reserved_and_malformed_names(admin: aiohttp.ClientSession) -> None:
    for name in ("webhook.received", "daemon.started", "has space", "", "x" * 65):
        async with admin.post("/v1/events", json={"type": name}) as resp:
            answer = await resp.json()
            assert resp.status == 400 and answer["field"] == "type", name
    async with admin.post("/v1/events", data=b"{oops") as resp:
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"


async def test_verify_catches_a_row_changed_behind_the_daemons_back(
    daemon: Daemon, admin: aiohttp.ClientSession
) -> None:
    seqs = []
    for i in range(5):
        async with admin.post("/v1/events", json={"type": "t.x", "data": {"i": i}}) as resp:
            seqs.append((await resp.json())["seq"])
    tampered_seq = seqs[2]
    async with admin.post("/v1/journal/verify") as resp:
        assert (await resp.json())["ok"] is True
    db = sqlite3.connect(daemon.journal_path)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute("UPDATE journal_events SET payload_json = ? WHERE seq = ?",
               ('{"data":{"i":99}}', tampered_seq))
    db.commit()
    db.close()
    async with admin.post("/v1/journal/verify") as resp:
        result = await resp.json()
    assert result["ok"] is False and result["first_broken_seq"] == tampered_seq


async def test_stream_pushes_new_events_and_resumes_by_last_event_id(
    admin: aiohttp.ClientSession,
) -> None:
    async def read_events(resp: aiohttp.ClientResponse, n: int) -> list[dict[str, object]]:
        got: list[dict[str, object]] = []
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if len(got) == n:
                    break
        return got

    async with admin.get("/v1/events/stream", params={"type": "app.*"}) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        reader = asyncio.create_task(read_events(resp, 2))
        for name in ("app.one", "other.skip", "app.two"):
            async with admin.post("/v1/events", json={"type": name}) as r:
                assert r.status == 201
        first = await asyncio.wait_for(reader, 10)
    assert [e["kind"] for e in first] == ["app.one", "app.two"]
    async with admin.post("/v1/events", json={"type": "app.three"}) as r:
        assert r.status == 201
    headers = {"Last-Event-ID": str(first[-1]["seq"])}
    async with admin.get("/v1/events/stream", params={"type": "app.*"}, headers=headers) as resp:
        resumed = await asyncio.wait_for(read_events(resp, 1), 10)
    assert [e["kind"] for e in resumed] == ["app.three"]


async def test_secret_null_means_default(admin: aiohttp.ClientSession) -> None:
    async with admin.post("/v1/webhooks", json={
        "integration_id": "open", "provider": "generic", "signature_required": False,
        "secret": None,
    }) as resp:
        assert resp.status == 201, await resp.text()
    await add_integration(admin, "gh")
    async with admin.post("/v1/webhooks/gh/rotate-secret", json={"secret": None}) as resp:
        rotated = await resp.json()
        assert resp.status == 200, rotated
    assert rotated["secret"] and rotated["webhook"]["readiness"] == "ready"


async def test_keyring_failure_is_a_secret_error_without_the_value(
    admin: aiohttp.ClientSession, memory_keyring: MemoryKeyring
) -> None:
    def broken(service: str, username: str, password: str) -> None:
        raise RuntimeError(f"backend exploded with {password}")

    memory_keyring.set_password = broken  # type: ignore[method-assign]
    async with admin.post("/v1/webhooks", json={
        "integration_id": "gh", "provider": "github", "secret": {"value": "do-not-echo"},
    }) as resp:
        answer = await resp.json()
    assert resp.status == 422 and answer["error"] == "secret_error"
    assert "do-not-echo" not in json.dumps(answer)
    async with admin.get("/v1/webhooks") as resp:
        assert (await resp.json())["webhooks"] == []


async def test_publish_with_idempotency_key_publishes_once_per_day(
    admin: aiohttp.ClientSession, clock: ManualClock
) -> None:
    body = {"type": "sync.finished", "data": {"n": 1}, "source": "kb-sync",
            "idempotency_key": "sync-2026-11-23"}
    async with admin.post("/v1/events", json=body) as resp:
        first = await resp.json()
        assert resp.status == 201 and first["duplicate"] is False
    async with admin.post("/v1/events", json={**body, "data": {"n": 2}}) as resp:
        again = await resp.json()
        assert resp.status == 200
    assert again == {**first, "duplicate": True}
    clock.advance(24 * 3600 + 1)
    async with admin.post("/v1/events", json=body) as resp:
        assert resp.status == 201 and (await resp.json())["seq"] > first["seq"]
    (event, *_) = await events(admin, type="sync.*")
    assert (event["source"], event["actor"]) == ("kb-sync", "kb-sync")
    async with admin.post("/v1/events", json={"type": "x.y", "source": "daemon"}) as resp:
        assert resp.status == 400 and (await resp.json())["field"] == "source"


async def test_out_of_range_times_are_refused_not_crashed(admin: aiohttp.ClientSession) -> None:
    # Found by fuzzing: such values overflowed (500) in the float and SQLite conversions.
    for since in ("1e400", "inf", "nan", "17000170000000000000", "-5", "99999-01-01T00:00:00Z"):
        async with admin.get("/v1/events", params={"since": since}) as resp:
            assert resp.status == 400, since
            assert (await resp.json())["field"] == "since"
