"""What a CLI command loads to start, and that the light paths it takes instead of Typer's
heavy ones (groups built on first use, values coerced without pydantic) change nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.core import TyperArgument, TyperOption
from typer.testing import CliRunner

from palyra_py.cli import typer_params
from palyra_py.cli.app import GROUPS, app
from tests.test_cli_offline import CannedDaemon, serving

# Modules a command must not need: Typer (for the reads in ``quick``), pydantic (Typer's
# coercion), rich (human output), http.client and what it drags in, platformdirs (only
# without a state dir), and the command groups not asked for.
WATCHED = ["typer", "pydantic", "rich", "http.client", "email.parser", "ssl", "platformdirs",
           *(module for module in GROUPS.values())]

PROBE = """
import contextlib, io, json, sys
from palyra_py.cli.main import main
out, code = io.StringIO(), None
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[2:])
    except SystemExit as exc:
        code = exc.code
watched = json.loads(sys.argv[1])
print(json.dumps({"code": code, "stdout": out.getvalue(),
                  "loaded": sorted(m for m in watched if m in sys.modules)}))
"""

HOOK = {"integration_id": "gh", "provider": "github", "enabled": True, "readiness": "ready",
        "allowed_events": [], "last_test_status": None}


@pytest.fixture
def canned(state_dir: Path) -> Iterator[CannedDaemon]:
    with serving(CannedDaemon(state_dir)) as daemon:
        yield daemon


def probe(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PALYRA_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(WATCHED), *args],
        capture_output=True, text=True, check=True, env={**environ, **(env or {})},
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_a_json_listing_loads_nothing_it_does_not_use(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/webhooks")] = (200, {"webhooks": [HOOK]})
    report = probe("webhooks", "list", "--json", "--state-dir", str(canned.state_dir))
    assert report["code"] == 0
    assert json.loads(report["stdout"]) == {"webhooks": [HOOK]}
    assert report["loaded"] == []


def test_a_human_listing_adds_only_rich(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/webhooks")] = (200, {"webhooks": [HOOK]})
    report = probe("webhooks", "list", env={"PALYRA_STATE_DIR": str(canned.state_dir)})
    assert report["code"] == 0
    assert "│ gh │ github" in report["stdout"]
    assert report["loaded"] == ["rich"]


def test_a_typer_command_loads_only_its_own_group(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/webhooks/readiness")] = (200, {"readiness": []})
    # The state dir from the environment: Typer coerces it too, from a string.
    report = probe("webhooks", "readiness", "--json",
                   env={"PALYRA_STATE_DIR": str(canned.state_dir)})
    assert report["code"] == 0
    assert json.loads(report["stdout"]) == {"readiness": []}
    assert report["loaded"] == ["palyra_py.cli.webhooks_cmd", "typer"]


def test_a_value_typer_rejects_still_gets_typers_message(canned: CannedDaemon) -> None:
    report = probe("system", "events", "list", "--limit", "0", "--state-dir",
                   str(canned.state_dir))
    assert report["code"] == 2
    assert canned.requests == []  # rejected before connecting
    # Only now, for the message, does Typer's own coercion (and pydantic) load.
    assert "pydantic" in report["loaded"]


def test_groups_are_built_on_first_use_in_help_order() -> None:
    root = typer.main.get_command(app)
    assert list(root.commands) == list(GROUPS)  # names only: nothing imported for this
    webhooks = root.commands["webhooks"]
    assert isinstance(webhooks, typer.core.TyperGroup)
    assert {"add", "list", "show", "test"} <= set(webhooks.commands)
    assert root.commands.get("nope") is None
    help_page = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    positions = [help_page.index(f"│ {name} ") for name in GROUPS]
    assert positions == sorted(positions)
    assert "System-wide views: the event journal." in help_page


def test_a_mistyped_group_is_still_suggested() -> None:
    result = CliRunner().invoke(app, ["webhoks", "list"])
    assert result.exit_code == 2
    assert "Did you mean 'webhooks'?" in result.stderr


# --- the plain coercion agrees with Typer's ------------------------------------------------


def _parameters() -> list[tuple[typer.core.TyperCommand | typer.core.TyperGroup,
                                TyperOption | TyperArgument]]:
    found = []

    def walk(command: Any) -> None:
        for param in command.params:
            if isinstance(param, TyperOption | TyperArgument):
                found.append((command, param))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


PARAMETERS = _parameters()
NUMBERISH = st.from_regex(r"[+-]?[ 0-9_]{0,22}(\.[0-9]{0,20})?([eE][0-9]{1,3})?",
                          fullmatch=True)


def _values(param: TyperOption | TyperArgument) -> st.SearchStrategy[Any]:
    annotation = param.type_descriptor.annotation
    texts = st.text() | NUMBERISH
    if annotation in (int, float):
        return texts | st.integers(-(10**20), 10**20) | st.floats() | st.booleans()
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        names = st.sampled_from([str(member.value) for member in annotation])
        return (st.sampled_from(list(annotation)) | names | names.map(str.upper) | texts)
    if param.multiple:
        return st.lists(texts, max_size=4).map(tuple)
    return texts | st.builds(Path, st.text())


def test_every_parameter_of_the_tree_is_covered() -> None:
    kinds = {repr(param.type_descriptor.annotation) for _, param in PARAMETERS}
    assert {"<class 'str'>", "<class 'pathlib.Path'>", "<class 'int'>", "<class 'float'>",
            "list[str]", "<class 'bool'>"} <= kinds
    assert len(PARAMETERS) > 100


@settings(max_examples=1500, deadline=None)
@given(data=st.data())
def test_plain_coercion_gives_what_typer_gives(data: st.DataObject) -> None:
    command, param = data.draw(st.sampled_from(PARAMETERS))
    value = data.draw(_values(param))
    ctx = typer.Context(command)
    coercion = typer_params.PlainRuntimeParam(param.type_descriptor)
    try:
        plain = typer_params.plain_value(param.type_descriptor, value, param, ctx)
    except Exception:
        plain = typer_params.UNSURE  # redone by Typer, whose error is the one shown
    try:
        expected: Any = coercion.typer_coercion()._coerce_value(value, param=param, ctx=ctx)
    except Exception as exc:
        expected = exc
    if plain is typer_params.UNSURE:
        return
    assert not isinstance(expected, Exception), (param.name, value, expected)
    if isinstance(plain, float) and math.isnan(plain):
        # NaN equals nothing, itself included: both sides must be a float NaN (the
        # registry's range check then refuses it with its own error).
        assert isinstance(expected, float) and math.isnan(expected), (param.name, value)
        return
    assert (type(plain), plain) == (type(expected), expected), (param.name, value)


def test_install_is_in_force_and_idempotent() -> None:
    hook = typer.core._TyperParameter.get_runtime_param
    assert getattr(hook, "palyra_plain", False)
    typer_params.install()
    assert typer.core._TyperParameter.get_runtime_param is hook
