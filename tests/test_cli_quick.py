"""The read commands that run without Typer (``palyra_py.cli.quick``) give what their Typer
commands give: every case runs both ways, as real processes against a canned daemon."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from palyra_py.cli import quick
from palyra_py.cli.app import app
from tests.test_cli_offline import CannedDaemon, serving

HOOK = {"integration_id": "gh", "provider": "github", "enabled": True, "readiness": "ready",
        "allowed_events": ["push"], "last_test_status": "accepted",
        "last_test_at": "2024-05-01T12:00:00.000Z", "secret_ref": "keyring:gh"}
SUB = {"subscription_id": "ci", "url": "https://ci.example/hook", "enabled": True,
       "events": ["github.*"], "pending": 2, "health": {"failing_since": None}}
DELIVERY = {"delivery": {"delivery_id": "d-1", "subscription_id": "ci", "status": "failed",
                         "attempts": 1}, "attempts": [{"attempt": 1, "status_code": 500}]}
STATUS = {"version": "0.1.0", "pid": 42, "uptime_s": 93784, "journal": {"last_seq": 7},
          "listeners": [{"kind": "ingress", "address": "http://127.0.0.1:8080"}],
          "settings": [{"section": "daemon", "key": "public_url", "value": "",
                        "source": "default"}]}
NOT_FOUND = (404, {"error": "not_found", "message": "no such thing", "field": "id"})

TYPER_ONLY = "import sys; from palyra_py.cli.app import app; app(prog_name='palyra')"
ENTRY = "import sys; from palyra_py.cli.main import main; main()"


@pytest.fixture
def canned(state_dir: Path) -> Iterator[CannedDaemon]:
    daemon = CannedDaemon(state_dir)
    daemon.routes.update({
        ("GET", "/v1/webhooks"): (200, {"webhooks": [HOOK]}),
        ("GET", "/v1/webhooks/gh"): (200, {"webhook": HOOK}),
        ("GET", "/v1/webhooks/nope"): NOT_FOUND,
        ("GET", "/v1/subscriptions"): (200, {"subscriptions": []}),
        ("GET", "/v1/subscriptions/ci"): (200, {"subscription": SUB}),
        ("GET", "/v1/deliveries/d-1"): (200, DELIVERY),
        ("GET", "/v1/tokens"): (200, {"tokens": []}),
        ("GET", "/v1/status"): (200, STATUS),
    })
    with serving(daemon):
        yield daemon


def both_ways(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(through the entry point, through Typer alone): exit code, stdout, stderr, and
    under "app" whether the Typer application was loaded (``quick`` did not run it)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PALYRA_")}
    environ.update(COLUMNS="100", **env)
    runs = []
    for code in (ENTRY, TYPER_ONLY):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code, *args],
            capture_output=True, text=True, env=environ, timeout=60,
        )
        timings = [x for x in done.stderr.splitlines() if x.startswith("import time:")]
        runs.append({
            "code": done.returncode,
            "stdout": done.stdout,
            "stderr": "".join(x for x in done.stderr.splitlines(keepends=True)
                              if not x.startswith("import time:")),
            "app": any(x.rstrip().endswith(" palyra_py.cli.app") for x in timings),
        })
    return runs[0], runs[1]


def same(entry: dict[str, Any], typer_run: dict[str, Any]) -> bool:
    return entry | {"app": None} == typer_run | {"app": None}


def test_python_c_passes_the_arguments_through() -> None:
    # ``python -c CODE ARGS``: sys.argv[1:] are ARGS, as for the console script.
    done = subprocess.run([sys.executable, "-c", ENTRY, "--version"], capture_output=True,
                          text=True, check=True)
    assert done.stdout.startswith("palyra ")


QUICK_CASES = [
    ["webhooks", "list"],
    ["webhooks", "list", "--json"],
    ["--json", "webhooks", "list"],  # not the command's words first: Typer's
    ["webhooks", "show", "gh"],
    ["webhooks", "show", "--json", "gh"],
    ["webhooks", "show", "nope"],
    ["webhooks", "show", "nope", "--json"],
    ["subscriptions", "list"],
    ["subscriptions", "show", "ci", "--json"],
    ["subscriptions", "show", "ci"],
    ["deliveries", "show", "d-1"],
    ["tokens", "list"],
    ["tokens", "list", "--json", "--json"],
    ["daemon", "status"],
    ["daemon", "status", "--json"],
]


@pytest.mark.parametrize("args", QUICK_CASES, ids=" ".join)
def test_each_read_gives_what_typer_gives(canned: CannedDaemon, args: list[str]) -> None:
    sd = str(canned.state_dir)
    entry, typer_run = both_ways([*args, "--state-dir", sd], {})
    assert same(entry, typer_run)
    assert typer_run["app"]
    assert entry["app"] is (args[0] == "--json")


@pytest.mark.parametrize(
    ("args", "env", "quick_expected"),
    [
        (["webhooks", "list", "--state-dir={sd}"], {}, True),
        (["webhooks", "list"], {"PALYRA_STATE_DIR": "{sd}"}, True),
        (["webhooks", "list", "--state-dir", "/nonexistent", "--state-dir", "{sd}"], {}, True),
        (["webhooks", "list", "--state-dir", "{sd}", "extra"], {}, False),
        (["webhooks", "list", "--state-dir", "{sd}", "-h"], {}, False),
        (["webhooks", "list", "--state-dir"], {}, False),
        (["webhooks", "list", "--state-dir", "--json"], {}, False),
        (["webhooks", "list", "--state-dir="], {}, False),
        (["webhooks", "list", "--jsn", "--state-dir", "{sd}"], {}, False),
        (["webhooks", "show", "--state-dir", "{sd}"], {}, False),
        (["webhooks", "show", "gh", "gh", "--state-dir", "{sd}"], {}, False),
        (["webhooks", "show", "--", "gh", "--state-dir", "{sd}"], {}, False),
        (["webhooks", "list", "--state-dir", "/tmp/" + "d" * 120], {}, False),
        (["webhooks", "list", "--state-dir", "{sd}"], {"_PALYRA_COMPLETE": "bash_complete",
                                                      "COMP_WORDS": "palyra webhooks li",
                                                      "COMP_CWORD": "2"}, False),
    ],
)
def test_other_forms_are_typers_and_agree(
    canned: CannedDaemon, args: list[str], env: dict[str, str], quick_expected: bool
) -> None:
    sd = str(canned.state_dir)
    args = [arg.replace("{sd}", sd) for arg in args]
    env = {key: value.replace("{sd}", sd) for key, value in env.items()}
    entry, typer_run = both_ways(args, env)
    assert same(entry, typer_run)
    assert entry["app"] is not quick_expected


def test_unreachable_and_unreadable_state_dirs(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    entry, typer_run = both_ways(["webhooks", "list", "--state-dir", str(missing)], {})
    assert same(entry, typer_run)
    assert entry["code"] == 3 and "Start it with" in entry["stderr"]
    assert not entry["app"]
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user who can read anything")
        entry, typer_run = both_ways(["tokens", "list", "--state-dir", str(locked)], {})
        assert same(entry, typer_run)  # Typer refuses it (usage error); quick left it
        assert entry["code"] == 2 and entry["app"]
    finally:
        locked.chmod(0o700)


def test_each_read_matches_its_typer_command() -> None:
    root: Any = typer.main.get_command(app)
    for words, (id_kind, _, show) in quick.READS.items():
        command = root
        for word in words:
            command = command.commands[word]
        params = [(param.name, param.required) for param in command.params]
        expected = [("state_dir", False), ("json_output", False)]
        if id_kind == quick.REQUIRED_ID:
            assert params[0][1] and params[0][0].endswith("_id"), words
            params = params[1:]
        assert params == expected, words
        module, _, name = show.partition(":")
        assert callable(getattr(importlib.import_module(f"palyra_py.cli.{module}"), name))


def test_a_reader_that_goes_away_ends_the_command_quietly(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/webhooks")] = (200, {"webhooks": [HOOK] * 2000})
    sd = str(canned.state_dir)
    for code in (ENTRY, TYPER_ONLY):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "webhooks", "list", "--json", "--state-dir", sd],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(10) == b'{\n  "webho'
        proc.stdout.close()  # as `| head -c 10` does
        err = proc.stderr.read()
        assert (proc.wait(60), err) == (1, b""), code


def test_json_of_a_read_is_the_answer(canned: CannedDaemon) -> None:
    entry, _ = both_ways(["webhooks", "list", "--json", "--state-dir",
                          str(canned.state_dir)], {})
    assert json.loads(entry["stdout"]) == {"webhooks": [HOOK]}
    assert not entry["app"]
