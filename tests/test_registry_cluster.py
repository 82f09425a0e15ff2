"""The registry in cluster mode, end to end: two real daemons (``palyra daemon run``
child processes, tests/daemon_process.py; node B with two ingress workers) on one real
PostgreSQL (tests/pg.py). An edit on node A is in force on node B, workers included,
within 1 s; concurrent edits from both nodes are all applied; comments survive; ``palyra
registry export`` / ``import`` round-trip byte for byte, and an invalid document changes
nothing; a rotated secret's previous one keeps verifying on the other node for its grace
period; PostgreSQL down is 503 ``registry_unavailable``, and the nodes recover by
themselves. Waits are on the daemons' own log lines (``registry_version_in_force``, logged
once every worker has the version), never on a timer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from palyra_py.providers import get_provider
from palyra_py.server.registry_keeper import IN_FORCE_BOUND_S
from tests import leakcheck
from tests.daemon_process import DaemonProcess, child_env
from tests.pg import PgServer

GITHUB = get_provider("github")
SECRET = "cluster-registry-secret-0001"
SEED = """# The team's webhook registry, reviewed in git.
version = 1

# GitHub: CI pushes
[[webhooks]]
integration_id = "gh"
provider = "github"
secret_ref = "env:GH_SECRET"   # the same on every node
"""


class Node:
    def __init__(self, name: str, state_dir: Path, process: DaemonProcess) -> None:
        self.name = name
        self.state_dir = state_dir
        self.process = process

    def admin(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.state_dir / "palyra.sock")),
            base_url="http://admin")

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   ) -> tuple[int, dict[str, Any]]:
        async with self.admin() as admin, admin.request(method, path, json=body) as resp:
            return resp.status, await resp.json()

    async def ok(self, method: str, path: str, body: dict[str, Any] | None = None,
                 ) -> dict[str, Any]:
        status, answer = await self.call(method, path, body)
        assert status in (200, 201), (self.name, method, path, answer)
        return answer

    async def hook(self, integration_id: str, delivery: str, secret: str = SECRET) -> int:
        """Post one signed GitHub push to this node's ingress; the status."""
        body = json.dumps({"ref": "refs/heads/main", "delivery": delivery}).encode()
        signed = GITHUB.sign(body, secret, time.time(), "push", delivery)
        async with aiohttp.ClientSession() as http, http.post(
                f"{self.process.ingress}/hooks/{integration_id}", data=signed.body,
                headers=dict(signed.headers)) as resp:
            return resp.status

    def mark(self) -> int:
        return len(self.process.log)

    async def in_force(self, version: int, since: int) -> float:
        """Wait for this node to log that ``version`` (or a later one) is in force on all
        its processes; the monotonic time it logged it."""
        start = since
        while True:
            record = await self.process.wait_for_log(("registry_version_in_force",), start)
            if int(record["version"]) >= version:
                return time.monotonic()
            start = self.process.log.index(record) + 1


@contextlib.asynccontextmanager
async def cluster(pg: PgServer, tmp_path: Path, **env: str) -> AsyncIterator[tuple[Node, Node]]:
    """Node A (one process, webhooks.toml = ``SEED``) then node B (control process and
    two workers, another webhooks.toml) on a fresh database."""
    dsn = pg.new_database("reg")
    common = {"PALYRA_STORAGE_BACKEND": "postgres", "PALYRA_STORAGE_DSN": dsn,
              "GH_SECRET": SECRET, **env}
    with leakcheck.checked_state_dir("pt-ra-") as dir_a, \
            leakcheck.checked_state_dir("pt-rb-") as dir_b:
        (dir_a / "webhooks.toml").write_text(SEED)
        (dir_b / "webhooks.toml").write_text("version = 1\n# node B's own file\n")
        a = await DaemonProcess(dir_a, env=common, workers="1").start()
        try:
            b = await DaemonProcess(dir_b, env=common, workers="2").start()
            try:
                yield Node("a", dir_a, a), Node("b", dir_b, b)
            finally:
                await stop(b)
        finally:
            await stop(a)


async def stop(process: DaemonProcess) -> None:
    try:
        await process.stop()
    except TimeoutError:
        tail = process.log[-40:]
        raise AssertionError(f"the daemon did not stop; its last log records: {tail}") from None


async def cli(node: Node, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "palyra_py", "registry", *args, "--state-dir", str(node.state_dir),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=child_env(node.state_dir))
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def add_body(integration_id: str) -> dict[str, Any]:
    return {"integration_id": integration_id, "provider": "github",
            "secret": {"ref": "env:GH_SECRET"}}


async def test_an_edit_on_one_node_is_in_force_on_the_other_within_a_second(
    pg_server: PgServer, tmp_path: Path,
) -> None:
    async with cluster(pg_server, tmp_path) as (a, b):
        # The first node seeded the database from its file; B's file is not the source.
        assert any(r.get("event") == "registry_seeded" for r in a.process.log)
        assert any(r.get("event") == "registry_file_not_source" for r in b.process.log)
        assert await b.hook("gh", "first-on-b") == 202

        mark = b.mark()
        added = await a.ok("POST", "/v1/webhooks", add_body("gh2"))
        done = time.monotonic()
        version = (await a.ok("GET", "/v1/registry"))["version"]
        in_force = await asyncio.wait_for(b.in_force(version, mark), 5)
        assert in_force - done < IN_FORCE_BOUND_S
        assert added["webhook"]["integration_id"] == "gh2"
        # Logged once every worker of B has it: any connection, any worker, takes it.
        statuses = await asyncio.gather(*(b.hook("gh2", f"b-{n}") for n in range(20)))
        assert set(statuses) == {202}

        # A removal too, and it stays removed on every worker.
        mark = b.mark()
        await a.ok("DELETE", "/v1/webhooks/gh2")
        await asyncio.wait_for(b.in_force(version + 1, mark), 5)
        statuses = await asyncio.gather(*(b.hook("gh2", f"gone-{n}") for n in range(20)))
        assert set(statuses) == {404}

        # Comments and layout of the seeded file are kept through the edits.
        exported = await b.ok("GET", "/v1/registry")
        assert exported["source"] == "postgres"
        assert exported["document"] == SEED
        assert exported["version"] == version + 1


async def test_concurrent_edits_from_both_nodes_are_all_applied(
    pg_server: PgServer, tmp_path: Path,
) -> None:
    async with cluster(pg_server, tmp_path) as (a, b):
        ids = [f"c-{n}" for n in range(60)]
        results = await asyncio.gather(*((a if n % 2 else b).call(
            "POST", "/v1/webhooks", add_body(record_id)) for n, record_id in enumerate(ids)))
        statuses = [status for status, _ in results]
        # Every edit is applied, or refused cleanly (none is: the last try holds the row).
        assert set(statuses) <= {201, 409}, results
        refused = [answer for status, answer in results if status == 409]
        assert all(answer["error"] == "registry_conflict" for answer in refused)
        assert statuses.count(201) == 60
        document = await a.ok("GET", "/v1/registry")
        assert document["counts"]["integrations"] == 61
        assert document["version"] == 61  # the seed, then one version per edit
        assert document["document"].startswith(SEED)
        # Every node ends with every record in force (B logs A's next version once all
        # its processes have it; A has its own at once).
        mark = b.mark()
        await a.ok("POST", "/v1/webhooks", add_body("last"))
        await asyncio.wait_for(b.in_force(document["version"] + 1, mark), 5)
        for record_id in ("c-0", "c-59", "last"):
            assert await b.hook(record_id, f"end-{record_id}") == 202
            assert await a.hook(record_id, f"end-a-{record_id}") == 202


async def test_export_and_import_round_trip_and_an_invalid_import_changes_nothing(
    pg_server: PgServer, tmp_path: Path,
) -> None:
    async with cluster(pg_server, tmp_path) as (a, b):
        await a.ok("POST", "/v1/webhooks", add_body("old"))
        code, exported, _ = await cli(a, "export")
        assert code == 0
        assert exported.startswith(SEED)
        before = (await a.ok("GET", "/v1/registry"))["version"]

        edited = exported.replace('secret_ref = "env:GH_SECRET"   # the same on every node',
                                  'secret_ref = "env:GH_SECRET"   # the same on every node\n'
                                  'display_name = "GitHub CI"')
        cut = edited.index('\n[[webhooks]]\nintegration_id = "old"')
        edited = (edited[:cut] + "\n\n# added in git\n[[webhooks]]\n"
                  'integration_id = "new"\nprovider = "github"\n'
                  'secret_ref = "env:GH_SECRET"\n')
        path = tmp_path / "webhooks.toml"
        path.write_text(edited)

        code, out, err = await cli(b, "import", str(path), "--dry-run")
        assert code == 0, err
        assert out.splitlines() == ["+ integration new", "- integration old",
                                    "~ integration gh"]
        assert f"against version {before}" in err and "nothing was stored" in err
        assert (await a.ok("GET", "/v1/registry"))["version"] == before

        mark = a.mark()
        code, out, err = await cli(b, "import", str(path), "--json")
        assert code == 0, err
        answer = json.loads(out)
        assert answer["status"] == "imported"
        assert answer["version"] == before + 1
        await asyncio.wait_for(a.in_force(before + 1, mark), 5)
        assert await a.hook("new", "imported-new") == 202
        assert await a.hook("old", "imported-old") == 404
        code, again, _ = await cli(a, "export")
        assert again == edited  # byte for byte, comments too

        # An invalid document: refused with its line, and nothing changes anywhere.
        broken = tmp_path / "broken.toml"
        broken.write_text(edited + '\n[[webhooks]]\nintegration_id = "bad"\nprovider = "nope"\n')
        code, out, err = await cli(a, "import", str(broken))
        assert code == 1
        assert "registry_invalid" in err or "provider" in err
        assert f"{edited.count(chr(10)) + 4}" in err  # the line of the bad provider
        after = await b.ok("GET", "/v1/registry")
        assert (after["version"], after["document"]) == (before + 1, edited)

        # An import that expects another version is refused.
        code, out, err = await cli(a, "import", str(path), "--expected-version", "1", "--json")
        assert code == 1
        assert json.loads(out)["error"] == "registry_conflict"


async def test_a_rotated_secrets_previous_one_verifies_on_the_other_node(
    pg_server: PgServer, tmp_path: Path,
) -> None:
    raw = os.urandom(32)
    key = base64.b64encode(raw).decode()
    leakcheck.WATCH.remember(key)
    key_file = tmp_path / "secrets.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    async with cluster(pg_server, tmp_path, PALYRA_SECRETS_KEY_REF=f"file:{key_file}") as (a, b):
        mark = b.mark()
        added = await a.ok("POST", "/v1/webhooks", {
            "integration_id": "rot", "provider": "github", "secret": {"generate": True}})
        first = added["secret"]
        leakcheck.WATCH.remember(first)
        assert added["webhook"]["secret_ref"] == "db:webhook:rot"
        version = (await a.ok("GET", "/v1/registry"))["version"]
        await asyncio.wait_for(b.in_force(version, mark), 5)
        assert await b.hook("rot", "rot-1", first) == 202

        mark = b.mark()
        rotated = await a.ok("POST", "/v1/webhooks/rot/rotate-secret", {"grace_s": 3600})
        second = rotated["secret"]
        leakcheck.WATCH.remember(second)
        await asyncio.wait_for(b.in_force(version + 1, mark), 5)
        # On every process of B: the new secret, and the previous one for the grace period.
        news = await asyncio.gather(*(b.hook("rot", f"new-{n}", second) for n in range(10)))
        olds = await asyncio.gather(*(b.hook("rot", f"old-{n}", first) for n in range(10)))
        assert set(news) == {202} and set(olds) == {202}
        assert await b.hook("rot", "wrong", "not-the-secret") == 401


async def test_postgresql_down_is_503_registry_unavailable_and_the_nodes_recover(
    pg_server: PgServer, tmp_path: Path,
) -> None:
    async with cluster(pg_server, tmp_path) as (a, b):
        pg_server.stop()
        try:
            status, answer = await a.call("POST", "/v1/webhooks", add_body("while-down"))
            assert (status, answer["error"]) == (503, "registry_unavailable"), answer
            assert "PostgreSQL unreachable" in answer["message"]
            assert "postgresql://" not in answer["message"]
            status, answer = await b.call("GET", "/v1/registry")
            assert (status, answer["error"]) == (503, "registry_unavailable")
            # The registry in force stays: B still knows gh (and answers 503 for the
            # journal, not 404 for the integration).
            assert await b.hook("gh", "down-1") == 503
        finally:
            pg_server.start()
        mark = b.mark()
        added = await a.ok("POST", "/v1/webhooks", add_body("after"))
        assert added["webhook"]["integration_id"] == "after"
        version = (await a.ok("GET", "/v1/registry"))["version"]
        await asyncio.wait_for(b.in_force(version, mark), 5)
        assert await b.hook("after", "after-1") == 202
        # Nothing of the refused edit was stored.
        status, _ = await b.call("GET", "/v1/webhooks/while-down")
        assert status == 404


@pytest.fixture(autouse=True)
def _no_stray_env() -> None:
    assert "PALYRA_STORAGE_DSN" not in os.environ


async def test_an_admin_token_exports_and_imports_over_tcp_through_a_worker(
    pg_server: PgServer, tmp_path: Path,
) -> None:
    async with cluster(pg_server, tmp_path) as (a, b):
        tokens = {}
        for scope in ("admin", "publish"):
            created = await b.ok("POST", "/v1/tokens", {"name": f"ci-{scope}",
                                                        "scopes": [scope]})
            tokens[scope] = created["secret"]
            leakcheck.WATCH.remember(created["secret"])
        base = b.process.ingress  # served by B's workers
        async with aiohttp.ClientSession() as http:
            bearer = {"Authorization": f"Bearer {tokens['admin']}"}
            async with http.get(f"{base}/v1/registry", headers=bearer) as resp:
                exported = await resp.json()
                assert resp.status == 200, exported
            assert exported["document"] == (await a.ok("GET", "/v1/registry"))["document"]
            async with http.get(f"{base}/v1/registry",
                                headers={"Authorization": f"Bearer {tokens['publish']}"}
                                ) as resp:
                assert (resp.status, (await resp.json())["error"]) == (403, "scope_denied")
            async with http.get(f"{base}/v1/registry") as resp:
                assert resp.status == 401

            assert exported["document"].startswith(SEED)  # then the two [[tokens]]
            text = SEED + (
                '\n[[webhooks]]\nintegration_id = "from-ci"\nprovider = "github"\n'
                'secret_ref = "env:GH_SECRET"\n') + exported["document"][len(SEED):]
            mark = a.mark()
            async with http.post(f"{base}/v1/registry/import", headers=bearer,
                                 json={"document": text}) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
            assert answer["status"] == "imported"
            assert answer["changes"]["integrations"]["added"] == ["from-ci"]
        # In force on every process of B when it answered, and on A within the bound.
        statuses = await asyncio.gather(*(b.hook("from-ci", f"ci-{n}") for n in range(10)))
        assert set(statuses) == {202}
        await asyncio.wait_for(a.in_force(answer["version"], mark), 5)
        assert await a.hook("from-ci", "ci-a") == 202
