"""``daemon.workers`` / ``PALYRA_DAEMON_WORKERS`` / ``--workers N|auto``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from palyra_py.cli.app import app
from palyra_py.server.daemon import load_for_tests
from palyra_py.settings import MAX_WORKERS, SettingsError, load_settings, parse_workers


def test_counts_and_auto() -> None:
    assert parse_workers("1") == 1
    assert parse_workers(" 4 ") == 4
    assert parse_workers("AUTO") == min(MAX_WORKERS, len(os.sched_getaffinity(0)))


def test_auto_counts_the_cores_this_process_may_run_on() -> None:
    """A process limited to one core (a container's cpuset, ``taskset``) gets one process,
    however many cores the machine has."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from palyra_py.settings import parse_workers; print(parse_workers('auto'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "1"


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "", str(MAX_WORKERS + 1)])
def test_bad_counts_are_refused(value: str) -> None:
    with pytest.raises(SettingsError, match=r"daemon\.workers"):
        parse_workers(value)


def test_the_default_is_one_worker_per_core_and_env_overrides(tmp_path: Path) -> None:
    assert load_settings(tmp_path, env={}).get("daemon", "workers") == "auto"
    settings = load_settings(tmp_path, env={"PALYRA_DAEMON_WORKERS": "3"})
    assert settings.get("daemon", "workers") == "3"
    with pytest.raises(SettingsError, match=r"daemon\.workers"):
        load_settings(tmp_path, env={"PALYRA_DAEMON_WORKERS": "many"})


def test_a_bad_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["daemon", "run", "--state-dir", str(tmp_path),
                                      "--workers", "0"])
    assert result.exit_code == 2
    assert "--workers" in result.output


def test_in_process_test_daemons_keep_one_process_unless_asked(tmp_path: Path) -> None:
    assert load_for_tests(tmp_path).get("daemon", "workers") == "1"
    assert load_for_tests(tmp_path, daemon__workers="auto").get("daemon", "workers") == "auto"
