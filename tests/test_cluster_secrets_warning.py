"""Cluster mode without ``[secrets] key_ref``: the secrets a node generates go to its own
keyring, so no other node can verify or sign with them. The node says so at start (a
``secrets_per_node`` warning) and in ``daemon status`` (``keyring.warning``); a node with
the key, and an embedded daemon, say nothing of the kind."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

from palyra_py.secrets.shared import NO_SHARED_KEY_WARNING
from palyra_py.server.daemon import Daemon
from tests import leakcheck
from tests.daemon_process import DaemonProcess
from tests.fault_helpers import admin_session
from tests.pg import PgServer
from tests.test_cli_e2e import palyra, palyra_json
from tests.test_cluster_failover import node_env
from tests.test_storage_copy import new_key


def warnings_of(process: DaemonProcess) -> list[dict[str, object]]:
    return [r for r in process.log if r.get("event") == "secrets_per_node"]


async def test_a_node_without_the_shared_key_warns_that_its_secrets_are_per_node(
    pg_server: PgServer,
) -> None:
    pg_server.new_database("nokey")
    database = pg_server.databases[-1]
    async with contextlib.AsyncExitStack() as stack:
        key_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pt-key-")))
        key_ref = new_key(key_dir)
        started = {}
        for name, key in (("keyless", None), ("keyed", key_ref)):
            state = stack.enter_context(leakcheck.checked_state_dir(f"pt-{name}-"))
            process = await DaemonProcess(state, env=node_env(pg_server, database, name, key)
                                          ).start()
            stack.push_async_callback(process.stop)
            started[name] = (state, process)

        keyless_state, keyless = started["keyless"]
        (logged,) = warnings_of(keyless)
        assert logged["level"] == "warning" and logged["hint"] == NO_SHARED_KEY_WARNING
        shown = await palyra_json(keyless_state, "daemon", "status")
        assert shown["keyring"]["warning"] == NO_SHARED_KEY_WARNING
        code, out, err = await palyra(keyless_state, "daemon", "status", columns=400)
        assert code == 0, err
        assert "warning secrets" in out and "[secrets] key_ref" in out, out

        keyed_state, keyed = started["keyed"]
        assert warnings_of(keyed) == []
        shown = await palyra_json(keyed_state, "daemon", "status")
        assert shown["keyring"]["warning"] is None
        code, out, err = await palyra(keyed_state, "daemon", "status", columns=400)
        assert code == 0 and "warning secrets" not in out, (out, err)

        # What the warning is about: a secret generated on the keyless node is a keyring one.
        code, out, err = await palyra(keyless_state, "webhooks", "add", "gh", "--provider",
                                      "github", "--generate-secret", "--json")
        assert code == 0, err
        added = json.loads(out)
        leakcheck.WATCH.remember(added["secret"])
        assert added["webhook"]["secret_ref"].startswith("keyring:"), added["webhook"]


async def test_an_embedded_daemon_has_no_such_warning(daemon: Daemon) -> None:
    async with admin_session(daemon.socket_path) as admin, admin.get("/v1/status") as resp:
        assert resp.status == 200
        assert (await resp.json())["keyring"]["warning"] is None
