"""Secret references, the secret store, its cache, and the choice of keyring backend."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import keyring
import keyring.backend
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import chainer, fail, null
from keyring.compat import properties
from keyring.errors import KeyringError, PasswordDeleteError

from palyra_py.secrets.keyring_file import StateDirKeyring
from palyra_py.secrets.refs import SecretRefError, parse_secret_ref
from palyra_py.secrets.store import (
    KEYRING_SERVICE,
    MAX_SECRET_FILE_BYTES,
    SecretBackendError,
    SecretNotFound,
    SecretStore,
    generate_secret,
)

SECRET = "s3cr3t-value-that-must-never-leak"


class DictKeyring(KeyringBackend):
    """A real keyring backend (keyring's API) over a dict.

    keyring registers every backend class and its auto-detection builds each viable one:
    this one is viable only while a test sets ``viable_now`` (through monkeypatch), so that
    detection elsewhere in the test run never picks it.
    """

    viable_now: ClassVar[bool] = False

    @properties.classproperty
    def priority(cls) -> float:
        if not cls.viable_now:
            raise RuntimeError("test backend, only viable inside its own tests")
        return 5

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.passwords.pop((service, username), None) is None:
            raise PasswordDeleteError(username)


class FlakyKeyring(DictKeyring):
    """Answers once, then fails like an OS keyring whose daemon went away."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get_password(self, service: str, username: str) -> str | None:
        self.reads += 1
        if self.reads > 1:
            raise KeyringError("org.freedesktop.secrets went away")
        return super().get_password(service, username)


@pytest.fixture
def global_keyring() -> Iterator[None]:
    """Restore keyring's process-wide backend after a test that sets it."""
    previous = keyring.get_keyring()
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def no_keyring_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty keyring config dir, so the machine's own keyringrc.cfg plays no part."""
    config_home = tmp_path / "xdg-config"
    config_home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    return config_home / "python_keyring"


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _private_file(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


# -- references ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("keyring:gh", ("keyring", "gh")),
        ("keyring:webhook:gh-org:previous", ("keyring", "webhook:gh-org:previous")),
        ("keyring:a/b.c_d-e", ("keyring", "a/b.c_d-e")),
        ("keyring:" + "n" * 128, ("keyring", "n" * 128)),
        ("env:GITHUB_SECRET", ("env", "GITHUB_SECRET")),
        ("env:_x1", ("env", "_x1")),
        ("file:/etc/palyra/gh.secret", ("file", "/etc/palyra/gh.secret")),
        ("file:/etc/palyra/../palyra/gh", ("file", "/etc/palyra/gh")),
    ],
)
def test_parse_secret_ref_accepts_the_three_forms(ref: str, expected: tuple[str, str]) -> None:
    assert parse_secret_ref(ref) == expected


def test_parse_secret_ref_expands_home() -> None:
    kind, path = parse_secret_ref("file:~/palyra/gh.secret")
    assert kind == "file"
    assert path == os.path.join(os.path.expanduser("~"), "palyra", "gh.secret")
    assert os.path.isabs(path)


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "gh",
        "vault:gh",
        "KEYRING:gh",
        "keyring:",
        "keyring:has space",
        "keyring:" + "n" * 129,
        "env:",
        "env:1ABC",
        "env:A-B",
        "file:",
        "file:relative/path",
        "file:/nul\x00byte",
    ],
)
def test_parse_secret_ref_rejects_other_forms_naming_the_allowed_ones(ref: str) -> None:
    with pytest.raises(SecretRefError) as info:
        parse_secret_ref(ref)
    assert "keyring:NAME" in str(info.value)
    assert "env:VAR" in str(info.value)
    assert "file:" in str(info.value)


def test_a_secret_pasted_as_a_reference_is_not_echoed() -> None:
    pasted = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    with pytest.raises(SecretRefError) as info:
        parse_secret_ref(pasted)
    assert pasted not in str(info.value)
    assert "MfKQ9r8G" not in str(info.value)


# -- resolving -------------------------------------------------------------------------


def test_resolve_each_form(tmp_path: Path) -> None:
    backend = DictKeyring()
    backend.set_password(KEYRING_SERVICE, "webhook:gh", "from-keyring")
    secret_file = _private_file(tmp_path / "gh.secret", "from-file\n")
    store = SecretStore(tmp_path, env={"GH_SECRET": "from-env"}, backend=backend)

    assert store.resolve("keyring:webhook:gh") == "from-keyring"
    assert store.resolve("env:GH_SECRET") == "from-env"
    assert store.resolve(f"file:{secret_file}") == "from-file"


def test_file_secret_loses_exactly_one_trailing_newline(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, env={}, backend=DictKeyring())
    crlf = _private_file(tmp_path / "crlf", "abc\r\n")
    two = _private_file(tmp_path / "two", "abc\n\n")
    inner = _private_file(tmp_path / "inner", "line1\nline2")
    assert store.resolve(f"file:{crlf}") == "abc"
    assert store.resolve(f"file:{two}") == "abc\n"
    assert store.resolve(f"file:{inner}") == "line1\nline2"


def test_env_is_the_given_mapping_not_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PALYRA_TEST_ONLY_IN_OS", SECRET)
    store = SecretStore(tmp_path, env={}, backend=DictKeyring())
    with pytest.raises(SecretNotFound, match="PALYRA_TEST_ONLY_IN_OS is not set"):
        store.resolve("env:PALYRA_TEST_ONLY_IN_OS")


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("missing", "no such file"),
        ("group_readable", "chmod 600"),
        ("world_readable", "mode 0604"),
        ("too_large", f"larger than {MAX_SECRET_FILE_BYTES} bytes"),
        ("empty", "empty"),
        ("directory", "not a regular file"),
        ("fifo", "not a regular file"),
    ],
)
def test_unusable_secret_files_are_refused_without_showing_content(
    tmp_path: Path, setup: str, fragment: str
) -> None:
    path = tmp_path / "secret"
    if setup == "group_readable":
        _private_file(path, SECRET, 0o640)
    elif setup == "world_readable":
        _private_file(path, SECRET, 0o604)
    elif setup == "too_large":
        _private_file(path, SECRET + "x" * MAX_SECRET_FILE_BYTES)
    elif setup == "empty":
        _private_file(path, "\n")
    elif setup == "directory":
        path.mkdir(mode=0o700)
    elif setup == "fifo":
        os.mkfifo(path, 0o600)  # opening it must not block
    store = SecretStore(tmp_path, env={}, backend=DictKeyring())
    with pytest.raises(SecretNotFound) as info:
        store.resolve(f"file:{path}")
    message = str(info.value)
    assert fragment in message
    assert f"file:{path}" in message
    assert SECRET not in message


def test_not_found_messages_name_the_reference_never_a_value(tmp_path: Path) -> None:
    backend = DictKeyring()
    backend.set_password(KEYRING_SERVICE, "other", SECRET)
    store = SecretStore(tmp_path, env={"EMPTY": "", "OTHER": SECRET}, backend=backend)
    for ref, fragment in [
        ("keyring:webhook:gh", "no entry 'webhook:gh' in keyring service 'palyra'"),
        ("env:UNSET_VAR", "UNSET_VAR is not set"),
        ("env:EMPTY", "EMPTY is empty"),
    ]:
        with pytest.raises(SecretNotFound) as info:
            store.resolve(ref)
        assert ref in str(info.value)
        assert fragment in str(info.value)
        assert SECRET not in str(info.value)


def test_cached_secrets_survive_a_keyring_that_fails_later(tmp_path: Path) -> None:
    backend = FlakyKeyring()
    backend.set_password(KEYRING_SERVICE, "webhook:gh", SECRET)
    store = SecretStore(tmp_path, env={}, backend=backend)

    assert store.resolve("keyring:webhook:gh") == SECRET
    # The keyring is gone now; verification keeps working from the cache.
    assert store.resolve("keyring:webhook:gh") == SECRET
    assert store.readiness("keyring:webhook:gh") == ("ready", "keyring:webhook:gh resolves")
    assert backend.reads == 1

    store.forget_cached("keyring:webhook:gh")
    with pytest.raises(SecretBackendError) as info:
        store.resolve("keyring:webhook:gh")
    assert isinstance(info.value, SecretNotFound)
    assert "went away" in str(info.value)
    assert SECRET not in str(info.value)
    state, detail = store.readiness("keyring:webhook:gh")
    assert state == "secret_not_found"
    assert SECRET not in detail


def test_forget_cached_without_ref_drops_everything(tmp_path: Path) -> None:
    secret_file = _private_file(tmp_path / "s", "old")
    env = {"A": "env-old"}
    store = SecretStore(tmp_path, env=env, backend=DictKeyring())
    assert store.resolve(f"file:{secret_file}") == "old"
    assert store.resolve("env:A") == "env-old"
    _private_file(secret_file, "new")
    env["A"] = "env-new"
    assert store.resolve(f"file:{secret_file}") == "old"  # cached until told
    store.forget_cached()
    assert store.resolve(f"file:{secret_file}") == "new"
    assert store.resolve("env:A") == "env-new"


def test_readiness_states(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, env={"GH": SECRET}, backend=DictKeyring())
    assert store.readiness(None) == ("invalid_secret_ref", "no secret_ref set")
    state, detail = store.readiness("vault:gh")
    assert state == "invalid_secret_ref"
    assert "keyring:NAME" in detail
    state, detail = store.readiness("keyring:webhook:gh")
    assert state == "secret_not_found"
    assert "webhook:gh" in detail
    state, detail = store.readiness("env:GH")
    assert state == "ready"
    assert SECRET not in detail


def test_store_then_resolve_and_delete(tmp_path: Path) -> None:
    backend = DictKeyring()
    store = SecretStore(tmp_path, env={}, backend=backend)
    ref = store.store("webhook:gh", SECRET)
    assert ref == "keyring:webhook:gh"
    assert backend.passwords[(KEYRING_SERVICE, "webhook:gh")] == SECRET
    store.forget_cached()
    assert store.resolve(ref) == SECRET

    store.delete("webhook:gh")
    assert (KEYRING_SERVICE, "webhook:gh") not in backend.passwords
    with pytest.raises(SecretNotFound):
        store.resolve(ref)  # delete also dropped the cached value
    store.delete("webhook:gh")  # absent: not an error


def test_store_replaces_a_cached_value(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, env={}, backend=DictKeyring())
    store.store("webhook:gh", "first")
    assert store.resolve("keyring:webhook:gh") == "first"
    store.store("webhook:gh", "second")
    assert store.resolve("keyring:webhook:gh") == "second"


def test_store_refuses_bad_names_and_empty_secrets(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, env={}, backend=DictKeyring())
    with pytest.raises(SecretRefError):
        store.store("has space", SECRET)
    with pytest.raises(ValueError, match="empty"):
        store.store("webhook:gh", "")


# -- the file backend --------------------------------------------------------------------


def test_file_backend_is_private_atomic_and_outlives_the_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    backend = StateDirKeyring(state / "secrets.json")
    store = SecretStore(state, env={}, backend=backend)
    assert store.is_fallback
    assert store.backend_name == f"palyra file backend ({state / 'secrets.json'})"

    store.store("webhook:gh", SECRET)
    store.store("webhook:gh:previous", "older")
    path = state / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "secrets.json.lock").stat().st_mode) == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["secrets.json", "secrets.json.lock"]
    data = json.loads(path.read_text())
    assert data["entries"][KEYRING_SERVICE]["webhook:gh"] == SECRET

    again = SecretStore(state, env={}, backend=StateDirKeyring(path))
    assert again.resolve("keyring:webhook:gh") == SECRET
    again.delete("webhook:gh")
    assert store.backend.get_password(KEYRING_SERVICE, "webhook:gh") is None
    assert store.backend.get_password(KEYRING_SERVICE, "webhook:gh:previous") == "older"
    again.delete("webhook:gh")  # absent: not an error


def test_file_backend_reports_a_corrupt_file_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    _private_file(path, '{"entries": {"palyra": {"gh": "' + SECRET)
    store = SecretStore(tmp_path, env={}, backend=StateDirKeyring(path))
    with pytest.raises(SecretBackendError) as info:
        store.resolve("keyring:gh")
    assert "not valid JSON" in str(info.value)
    assert SECRET not in str(info.value)


# -- choosing the backend ----------------------------------------------------------------


@pytest.mark.usefixtures("global_keyring", "no_keyring_config")
def test_falls_back_to_the_state_dir_when_no_keyring_is_usable(tmp_path: Path) -> None:
    keyring.set_keyring(fail.Keyring())
    store = SecretStore(tmp_path / "state", env={})
    assert store.is_fallback
    assert store.backend_name == f"palyra file backend ({tmp_path / 'state' / 'secrets.json'})"
    assert store.fallback_reason is not None
    assert "fail.Keyring" in store.fallback_reason
    # Nothing global changed: keyring's own backend is still the one we set.
    assert isinstance(keyring.get_keyring(), fail.Keyring)

    ref = store.store("webhook:gh", SECRET)
    assert SecretStore(tmp_path / "state", env={}).resolve(ref) == SECRET


@pytest.mark.usefixtures("global_keyring", "no_keyring_config")
def test_uses_the_current_keyring_when_it_is_usable(tmp_path: Path) -> None:
    backend = DictKeyring()
    keyring.set_keyring(backend)
    store = SecretStore(tmp_path, env={})
    assert not store.is_fallback
    assert store.backend is backend
    assert store.backend_name == _dotted(DictKeyring)
    store.store("webhook:gh", SECRET)
    assert backend.passwords[(KEYRING_SERVICE, "webhook:gh")] == SECRET
    assert not (tmp_path / "secrets.json").exists()


@pytest.mark.usefixtures("global_keyring", "no_keyring_config")
def test_a_chainer_with_nothing_to_chain_is_not_a_keyring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keyring's own limit hook: no backend passes, whatever this machine has installed.
    monkeypatch.setattr(keyring.backend, "_limit", lambda backend: False)
    keyring.set_keyring(chainer.ChainerBackend())
    assert SecretStore(tmp_path, env={}).is_fallback


@pytest.mark.usefixtures("global_keyring", "no_keyring_config")
@pytest.mark.parametrize("unusable", [fail.Keyring, null.Keyring])
def test_an_explicitly_configured_fail_or_null_keyring_means_fallback(
    tmp_path: Path, unusable: type[KeyringBackend]
) -> None:
    keyring.set_keyring(DictKeyring())  # ignored: the explicit setting wins
    store = SecretStore(tmp_path, env={"PYTHON_KEYRING_BACKEND": _dotted(unusable)})
    assert store.is_fallback
    assert store.fallback_reason is not None
    assert "PYTHON_KEYRING_BACKEND" in store.fallback_reason


@pytest.mark.usefixtures("global_keyring", "no_keyring_config")
def test_an_explicitly_configured_backend_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DictKeyring, "viable_now", True)
    keyring.set_keyring(fail.Keyring())
    store = SecretStore(tmp_path, env={"PYTHON_KEYRING_BACKEND": _dotted(DictKeyring)})
    assert not store.is_fallback
    assert type(store.backend) is DictKeyring
    assert store.fallback_reason is None


@pytest.mark.usefixtures("global_keyring")
def test_keyring_config_file_backend_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_keyring_config: Path
) -> None:
    monkeypatch.setattr(DictKeyring, "viable_now", True)
    no_keyring_config.mkdir(parents=True)
    (no_keyring_config / "keyringrc.cfg").write_text(
        f"[backend]\ndefault-keyring = {_dotted(DictKeyring)}\n"
    )
    keyring.set_keyring(fail.Keyring())
    store = SecretStore(tmp_path, env={})
    assert type(store.backend) is DictKeyring
    assert not store.is_fallback


@pytest.mark.usefixtures("global_keyring", "no_keyring_config")
def test_an_explicit_backend_that_cannot_load_means_fallback(tmp_path: Path) -> None:
    store = SecretStore(tmp_path, env={"PYTHON_KEYRING_BACKEND": "no.such.module.Keyring"})
    assert store.is_fallback
    assert store.fallback_reason is not None
    assert "no.such.module.Keyring" in store.fallback_reason


# -- generated secrets -----------------------------------------------------------------


def test_generate_secret_forms() -> None:
    sw = generate_secret("standard-webhooks")
    assert sw.startswith("whsec_")
    assert len(base64.b64decode(sw.removeprefix("whsec_"), validate=True)) == 32

    stripe = generate_secret("Stripe")
    assert re.fullmatch(r"whsec_[A-Za-z0-9]{32}", stripe)

    for provider in ("github", "gitlab", "shopify", "slack", "generic", "palyra"):
        assert re.fullmatch(r"[0-9a-f]{64}", generate_secret(provider)), provider


def test_generate_secret_is_random() -> None:
    seen: set[Any] = {generate_secret("github") for _ in range(50)}
    seen |= {generate_secret("stripe") for _ in range(50)}
    assert len(seen) == 100
