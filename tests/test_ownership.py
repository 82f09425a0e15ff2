"""Files owned by another user are refused (issue 9, item 13): the state dir, the registry
and ``file:`` secrets. Another user's file can be loosened or rewritten by that user at any
time, whatever its mode is now.

The tests chown real files to another uid (as root, which the test machines are); the
expected owner is a parameter, so the "owned by the daemon's user" side is shown too.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from palyra_py.registry.file import RegistryFile
from palyra_py.registry.positions import RegistryError
from palyra_py.secrets.store import SecretNotFound, SecretStore
from palyra_py.server.daemon import Daemon, DaemonError
from palyra_py.storage.ownership import ForeignOwner, check_path_owner
from palyra_py.testing import MemoryKeyring, running_daemon
from tests.helpers import add_integration

OTHER_UID = 12345
SECRET = "owned-secret-value-never-shown"

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="chown to another uid needs root",
)


def _owned_by(path: Path, uid: int) -> Path:
    os.chown(path, uid, -1)
    return path


def _secret_file(directory: Path, uid: int) -> Path:
    path = directory / "gh.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return _owned_by(path, uid)


def test_a_secret_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, OTHER_UID)
    store = SecretStore(tmp_path, env={}, backend=MemoryKeyring())
    with pytest.raises(SecretNotFound) as info:
        store.resolve(f"file:{path}")
    message = str(info.value)
    assert f"file:{path}" in message and f"uid {OTHER_UID}" in message
    assert "chown" in message and SECRET not in message
    assert store.readiness(f"file:{path}")[0] == "secret_not_found"


def test_a_secret_file_of_the_daemons_user_or_root_is_accepted(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, OTHER_UID)
    # The daemon running as OTHER_UID: its own file.
    own = SecretStore(tmp_path, env={}, backend=MemoryKeyring(), expected_uid=OTHER_UID)
    assert own.resolve(f"file:{path}") == SECRET
    # Root's file is accepted for any daemon user.
    _owned_by(path, 0)
    other = SecretStore(tmp_path, env={}, backend=MemoryKeyring(), expected_uid=OTHER_UID)
    assert other.resolve(f"file:{path}") == SECRET


def test_a_registry_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    path.write_text("version = 1\n")
    _owned_by(path, OTHER_UID)
    with pytest.raises(RegistryError) as info:
        RegistryFile(path).load()
    assert f"uid {OTHER_UID}" in str(info.value) and "chown" in str(info.value)
    with pytest.raises(RegistryError):
        RegistryFile(path).edit(lambda doc: None)
    assert RegistryFile(path, expected_uid=OTHER_UID).load().integrations == {}


def test_check_path_owner_takes_the_expected_uid(tmp_path: Path) -> None:
    _owned_by(tmp_path, OTHER_UID)
    with pytest.raises(ForeignOwner):
        check_path_owner(tmp_path, what="the state dir")
    with pytest.raises(ForeignOwner):
        check_path_owner(tmp_path, what="the state dir", expected_uid=OTHER_UID + 1)
    check_path_owner(tmp_path, what="the state dir", expected_uid=OTHER_UID)


async def test_the_daemon_refuses_a_state_dir_of_another_user(state_dir: Path) -> None:
    state_dir.chmod(0o755)
    _owned_by(state_dir, OTHER_UID)
    with pytest.raises(DaemonError) as info:
        async with running_daemon(state_dir):
            pass
    assert "the state dir" in str(info.value) and f"uid {OTHER_UID}" in str(info.value)
    # Refused before anything was touched: not chmod'ed, no journal made.
    assert state_dir.stat().st_mode & 0o777 == 0o755
    assert not (state_dir / "journal.db").exists()
    os.chown(state_dir, 0, -1)


async def test_the_daemon_refuses_a_registry_of_another_user(state_dir: Path) -> None:
    (state_dir / "webhooks.toml").write_text("version = 1\n")
    _owned_by(state_dir / "webhooks.toml", OTHER_UID)
    with pytest.raises(DaemonError) as info:
        async with running_daemon(state_dir):
            pass
    assert "the registry" in str(info.value)


async def test_a_reload_of_a_registry_given_to_another_user_keeps_the_last_good(
    daemon: Daemon, admin: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "gh")
    _owned_by(daemon.registry_file.path, OTHER_UID)
    async with admin.post("/v1/reload") as resp:
        body = await resp.json()
    assert (resp.status, body["error"]) == (422, "registry_invalid"), body
    assert f"uid {OTHER_UID}" in body["message"]
    assert "gh" in daemon.registry.integrations
