"""In cluster mode with ``[secrets] key_ref``, the secrets the daemon stores for
subscriptions (signing secret, credential URL, credential headers) and API tokens are
``db:`` secrets like the integrations' (tests/test_secrets_cluster.py), on a real
PostgreSQL: none goes to the node's keyring, another node reads each one, a rotation keeps
the previous one as ``db:...:previous``, and removing the record removes its rows."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from palyra_py.testing import CapturingReceiver, ManualClock, MemoryKeyring
from tests import leakcheck
from tests.fault_helpers import admin_session, publish
from tests.pg import PgServer
from tests.test_secrets_cluster import answer, database, new_key, node


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    """Where the key files are: outside every state dir (the leak check scans those)."""
    return tmp_path


async def test_subscription_and_token_secrets_are_db_secrets_every_node_reads(
    pg_server: PgServer, key_dir: Path, clock: ManualClock,
    receiver: CapturingReceiver, http: aiohttp.ClientSession,
) -> None:
    db = database(pg_server)
    _, key_ref = new_key(key_dir, "key")
    keyring_a, keyring_b = MemoryKeyring(), MemoryKeyring()
    async with node(pg_server, db, clock, keyring_a, secrets__key_ref=key_ref,
                    delivery__allow_private_networks=True) as a, \
            admin_session(a.socket_path) as admin_a, \
            node(pg_server, db, clock, keyring_b, secrets__key_ref=key_ref,
                 delivery__allow_private_networks=True) as b:
        added = await answer(admin_a, "POST", "/v1/subscriptions", subscription_id="ci",
                             url=receiver.url, events=["app.*"],
                             headers={"Authorization": "Bearer tok-0123456789abcdef"})
        leakcheck.WATCH.remember(added["secret"])
        leakcheck.WATCH.remember("Bearer tok-0123456789abcdef")
        sub = added["subscription"]
        assert sub["secret_ref"] == "db:subscription:ci"
        assert sub["headers"]["Authorization"] == "db:subscription-header:ci:authorization"
        token = await answer(admin_a, "POST", "/v1/tokens", name="ci")
        leakcheck.WATCH.remember(token["secret"])
        token_id = token["token"]["token_id"]
        assert keyring_a.passwords == {}  # nothing in this node's keyring

        # Another node reads each of them from the table.
        assert b.db_secrets is not None
        while "token:" + token_id not in b.db_secrets.names():
            await b.db_secrets.next_poll()
        assert b.secrets.resolve("db:subscription:ci") == added["secret"]
        assert b.secrets.resolve(f"db:token:{token_id}") == token["secret"]
        assert (b.secrets.resolve("db:subscription-header:ci:authorization")
                == "Bearer tok-0123456789abcdef")

        # Whichever node holds the subscription's lease signs and sends with them.
        status, body = await publish(admin_a, "app.built", n=1)
        assert status in (200, 201, 202), body
        got = (await receiver.wait_for(1))[0]
        assert got.headers["Authorization"] == "Bearer tok-0123456789abcdef"
        assert "webhook-signature" in {k.lower() for k in got.headers}

        rotated = await answer(admin_a, "POST", "/v1/subscriptions/ci/rotate-secret",
                               grace_s=3600)
        leakcheck.WATCH.remember(rotated["secret"])
        assert rotated["subscription"]["secret_ref"] == "db:subscription:ci"
        assert rotated["subscription"]["previous_secret_ref"] == "db:subscription:ci:previous"
        assert a.secrets.resolve("db:subscription:ci:previous") == added["secret"]

        await answer(admin_a, "DELETE", "/v1/subscriptions/ci")
        await answer(admin_a, "DELETE", f"/v1/tokens/{token_id}")
        assert pg_server.psql(db, "SELECT count(*) FROM palyra_secrets") == "0"
        assert keyring_a.passwords == {} and keyring_b.passwords == {}


async def test_without_a_key_ref_they_stay_in_the_keyring(
    pg_server: PgServer, clock: ManualClock, receiver: CapturingReceiver,
) -> None:
    db = database(pg_server)
    keyring = MemoryKeyring()
    async with node(pg_server, db, clock, keyring) as a, admin_session(a.socket_path) as admin:
        added = await answer(admin, "POST", "/v1/subscriptions", subscription_id="ci",
                             url=receiver.url, events=["palyra.*"])
        assert added["subscription"]["secret_ref"] == "keyring:subscription:ci"
        token = await answer(admin, "POST", "/v1/tokens", name="ci")
        assert set(keyring.passwords) == {("palyra", "subscription:ci"),
                                          ("palyra", f"token:{token['token']['token_id']}")}
