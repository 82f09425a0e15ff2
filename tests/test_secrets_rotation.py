"""palyra_py.secrets.rotation: the one cache of a record's secrets across a rotation, as the
ingress, the dispatcher and ``webhooks test`` use it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from palyra_py.inbound.ingress import ActiveIntegration
from palyra_py.outbound.attempt import SubState
from palyra_py.registry.integrations import Integration
from palyra_py.registry.subscriptions import Subscription
from palyra_py.secrets.refs import SecretRefError
from palyra_py.secrets.rotation import RotatingSecrets
from palyra_py.secrets.store import SecretNotFound, SecretStore
from palyra_py.testing import MemoryKeyring

NOW = 1_800_000_000.0
GRACE_END = datetime.fromtimestamp(NOW + 60, UTC)


@pytest.fixture
def env() -> dict[str, str]:
    return {"CURRENT": "new-secret", "PREVIOUS": "old-secret"}


@pytest.fixture
def store(tmp_path: Path, env: dict[str, str]) -> SecretStore:
    return SecretStore(tmp_path, env=env, backend=MemoryKeyring())


async def test_both_secrets_count_until_the_grace_period_ends(store: SecretStore) -> None:
    secrets = RotatingSecrets("env:CURRENT", "env:PREVIOUS", GRACE_END)
    assert secrets.cached(NOW) is None
    during = await secrets.resolve(store, NOW)
    assert during == ("new-secret", "old-secret")
    assert secrets.cached(NOW + 59) is during
    assert await secrets.resolve(store, NOW + 59) is during  # kept: the same tuple
    assert secrets.cached(NOW + 60) is None
    assert await secrets.resolve(store, NOW + 60) == ("new-secret",)
    assert secrets.cached(NOW + 10**6) == ("new-secret",)


async def test_kept_until_forgotten(store: SecretStore, env: dict[str, str]) -> None:
    secrets = RotatingSecrets("env:CURRENT")
    assert await secrets.resolve(store, NOW) == ("new-secret",)
    env["CURRENT"] = "newer-secret"
    store.forget_cached()
    assert await secrets.resolve(store, NOW) == ("new-secret",)
    secrets.forget()
    assert secrets.cached(NOW) is None
    assert await secrets.resolve(store, NOW) == ("newer-secret",)


async def test_a_previous_secret_that_cannot_be_read_leaves_the_current_alone(
    store: SecretStore,
) -> None:
    missed: list[str] = []
    secrets = RotatingSecrets("env:CURRENT", "env:GONE", GRACE_END,
                              on_previous_unavailable=lambda: missed.append("gone"))
    assert await secrets.resolve(store, NOW) == ("new-secret",)
    assert missed == ["gone"]
    assert "new-secret" not in repr(secrets)


async def test_a_past_grace_period_is_not_read_at_all(store: SecretStore) -> None:
    missed: list[str] = []
    secrets = RotatingSecrets("env:CURRENT", "env:GONE", GRACE_END,
                              on_previous_unavailable=lambda: missed.append("gone"))
    assert await secrets.resolve(store, NOW + 60) == ("new-secret",)
    assert missed == []


@pytest.mark.parametrize(("ref", "error"), [(None, SecretNotFound),
                                              ("env:MISSING", SecretNotFound),
                                              ("nonsense", SecretRefError)])
async def test_no_current_secret_keeps_nothing(
    store: SecretStore, ref: str | None, error: type[Exception],
) -> None:
    secrets = RotatingSecrets(ref, "env:PREVIOUS", GRACE_END)
    with pytest.raises(error):
        await secrets.resolve(store, NOW)
    assert secrets.cached(NOW) is None


async def test_ingress_and_dispatcher_use_it(store: SecretStore, tmp_path: Path) -> None:
    rotated = {"secret_ref": "env:CURRENT", "previous_secret_ref": "env:PREVIOUS",
               "previous_valid_until": GRACE_END}
    active = ActiveIntegration.build(
        Integration(integration_id="gh", provider="github", **rotated))
    state = SubState.build(Subscription(subscription_id="s", url="https://r.example/",
                                        **rotated))
    assert isinstance(active.secrets, RotatingSecrets)
    assert await active.secrets.resolve(store, NOW) == ("new-secret", "old-secret")
    # The dispatcher's signer is built from the same kind of cache, and rebuilt only when
    # the secrets change (the grace period ended).
    store_env = {"CURRENT": "whsec_" + "A" * 32, "PREVIOUS": "whsec_" + "B" * 32}
    whsec = SecretStore(tmp_path, env=store_env, backend=MemoryKeyring())
    signer = await state.load_secrets(whsec, NOW)
    assert state.secrets == (store_env["CURRENT"], store_env["PREVIOUS"])
    assert await state.load_secrets(whsec, NOW + 1) is signer
    after = await state.load_secrets(whsec, NOW + 60)
    assert after is not signer and state.secrets == (store_env["CURRENT"],)
