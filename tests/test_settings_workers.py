"""``daemon.workers`` / ``PALYRA_DAEMON_WORKERS`` / ``--workers N|auto``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from palyra_py.cli.app import app
from palyra_py.settings import MAX_WORKERS, SettingsError, load_settings, parse_workers


def test_counts_and_auto() -> None:
    assert parse_workers("1") == 1
    assert parse_workers(" 4 ") == 4
    assert parse_workers("AUTO") == max(1, min(MAX_WORKERS, os.cpu_count() or 1))


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "", str(MAX_WORKERS + 1)])
def test_bad_counts_are_refused(value: str) -> None:
    with pytest.raises(SettingsError, match=r"daemon\.workers"):
        parse_workers(value)


def test_the_default_is_one_process_and_env_overrides(tmp_path: Path) -> None:
    assert load_settings(tmp_path, env={}).get("daemon", "workers") == "1"
    settings = load_settings(tmp_path, env={"PALYRA_DAEMON_WORKERS": "3"})
    assert settings.get("daemon", "workers") == "3"
    with pytest.raises(SettingsError, match=r"daemon\.workers"):
        load_settings(tmp_path, env={"PALYRA_DAEMON_WORKERS": "many"})


def test_a_bad_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["daemon", "run", "--state-dir", str(tmp_path),
                                      "--workers", "0"])
    assert result.exit_code == 2
    assert "--workers" in result.output
