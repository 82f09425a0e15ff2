"""``[storage]``: SQLite by default with nothing to set; ``postgres`` needs one DSN, from
the file, the environment or a secret reference; a DSN is never shown or quoted in an
error with its password."""

from __future__ import annotations

from pathlib import Path

import pytest

from palyra_py.secrets.dsn import storage_dsn
from palyra_py.secrets.store import SecretNotFound, SecretStore
from palyra_py.settings import SettingsError, load_settings
from palyra_py.storage.dsn import dsn_problem, redact_dsn
from palyra_py.testing import MemoryKeyring

PASSWORD = "s3cr3t-pw-9f4e"
DSN = f"postgresql://palyra:{PASSWORD}@db.example:5433/palyra?sslmode=require"


def test_sqlite_is_the_default_and_needs_nothing(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={})
    assert settings.get("storage", "backend") == "sqlite"
    assert storage_dsn(settings, lambda ref: pytest.fail("no secret is read")) is None


def test_postgres_from_the_environment_is_shown_without_its_password(tmp_path: Path) -> None:
    env = {"PALYRA_STORAGE_BACKEND": "postgres", "PALYRA_STORAGE_DSN": DSN}
    settings = load_settings(tmp_path, env=env)
    assert storage_dsn(settings, lambda ref: pytest.fail("no secret is read")) == DSN
    shown = {(row["section"], row["key"]): row for row in settings.table()}
    row = shown[("storage", "dsn")]
    assert row["source"] == "env" and PASSWORD not in str(settings.table())
    assert row["value"] == "postgresql://palyra:***@db.example:5433/palyra?sslmode=require"


def test_postgres_from_a_secret_reference_in_the_file(tmp_path: Path) -> None:
    (tmp_path / "palyra.toml").write_text(
        '[storage]\nbackend = "postgres"\ndsn_ref = "keyring:palyra-dsn"\n')
    settings = load_settings(tmp_path, env={})
    keyring = MemoryKeyring()
    secrets = SecretStore(tmp_path, env={}, backend=keyring)
    with pytest.raises(SecretNotFound):
        storage_dsn(settings, secrets.resolve)
    secrets.store("palyra-dsn", DSN + "\n")
    assert storage_dsn(settings, secrets.resolve) == DSN
    assert PASSWORD not in str(settings.table())


@pytest.mark.parametrize(("env", "message"), [
    ({"PALYRA_STORAGE_BACKEND": "postgres"}, "needs storage.dsn or storage.dsn_ref"),
    ({"PALYRA_STORAGE_BACKEND": "postgres", "PALYRA_STORAGE_DSN": DSN,
      "PALYRA_STORAGE_DSN_REF": "env:PGURI"}, "not both"),
    ({"PALYRA_STORAGE_BACKEND": "mysql"}, "must be one of sqlite, postgres"),
    ({"PALYRA_STORAGE_BACKEND": "postgres",
      "PALYRA_STORAGE_DSN": f"mysql://u:{PASSWORD}@h/db"}, "must be a postgresql:// URI"),
    ({"PALYRA_STORAGE_BACKEND": "postgres",
      "PALYRA_STORAGE_DSN": f"postgresql://u:{PASSWORD}@h:port/db"}, "port"),
])
def test_bad_storage_settings_are_refused_without_quoting_the_dsn(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings(tmp_path, env=env)
    assert PASSWORD not in str(caught.value)


def test_a_bad_reference_or_referenced_uri_is_refused_without_quoting_it(
    tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={"PALYRA_STORAGE_BACKEND": "postgres",
                                            "PALYRA_STORAGE_DSN_REF": PASSWORD})
    with pytest.raises(SettingsError, match=r"storage\.dsn_ref") as caught:
        storage_dsn(settings, lambda ref: DSN)
    assert PASSWORD not in str(caught.value)
    settings = load_settings(tmp_path, env={"PALYRA_STORAGE_BACKEND": "postgres",
                                            "PALYRA_STORAGE_DSN_REF": "env:PGURI"})
    with pytest.raises(SettingsError, match="names no database") as caught:
        storage_dsn(settings, lambda ref: f"postgresql://u:{PASSWORD}@h")
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(("dsn", "shown"), [
    ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
    ("postgres://u@h:5432/db", "postgres://u@h:5432/db"),
    ("postgresql://u:p%40ss@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
    ("postgresql:///db?host=/run/pg&password=pw", "postgresql:///db?host=/run/pg&password=***"),
    ("host=h password=pw dbname=db", "***"),
])
def test_redaction(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_a_unix_socket_uri_is_usable() -> None:
    assert dsn_problem("postgresql://palyra@/db?host=/tmp/pg/sock&port=5432") is None
    assert dsn_problem("postgresql://palyra@/?host=/tmp") == (
        "names no database (postgresql://USER@HOST/DATABASE)")
