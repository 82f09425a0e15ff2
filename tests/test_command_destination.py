"""The command destination end to end: the real daemon, real programs (scripts written to
a temp dir and run by the daemon), real SQLite; a clock the test moves for retries."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from palyra_py.events import PublishedEvent
from palyra_py.outbound import command as command_module
from palyra_py.outbound.placeholders import TemplateError, check_template, render_argv
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.subscriptions import validate_subscription_fields
from palyra_py.server.daemon import Daemon
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests.fault_helpers import admin_session
from tests.helpers import add_integration, create_token, events, send_signed
from tests.pg import PgServer

# -- the placeholders (pure) -----------------------------------------------------------


def _event(**data: Any) -> PublishedEvent:
    return PublishedEvent(id="01J0000000000000000000000A", type="github.push",
                          timestamp="2026-01-01T00:00:00.000Z", data=data, source="gh",
                          actor=None, seq=7)


def test_placeholders_take_fields_of_the_event_each_as_one_argument() -> None:
    event = _event(ref="refs/heads/main", n=3, ok=True, repo={"name": "x"},
                   commits=[{"id": "abc"}])
    argv = render_argv(["/bin/deploy", "{data.ref}", "--n={data.n}", "{data.ok}",
                        "{data.repo}", "{data.commits.0.id}", "{id}", "{type}", "{source}",
                        "{timestamp}", "{seq}", "{{literal}}"], event)
    assert argv == ["/bin/deploy", "refs/heads/main", "--n=3", "true", '{"name":"x"}', "abc",
                    event.id, "github.push", "gh", "2026-01-01T00:00:00.000Z", "7",
                    "{literal}"]


def test_a_missing_field_fails_unless_a_default_is_given() -> None:
    event = _event()
    assert render_argv(["/p", "{data.ref:-main}", "{data.x:-}"], event) == ["/p", "main", ""]
    with pytest.raises(TemplateError, match=r"\{data\.ref\}: the event has no such field"):
        render_argv(["/p", "{data.ref}"], event)
    with pytest.raises(TemplateError, match="NUL"):
        render_argv(["/p", "{data.v}"], _event(v="a\x00b"))


@pytest.mark.parametrize("arg", ["{nope}", "{data..x}", "{", "a}b", "{data.ref:main}"])
def test_what_is_not_a_placeholder_is_refused(arg: str) -> None:
    with pytest.raises(TemplateError):
        check_template(arg)


# -- the registry's rules ----------------------------------------------------------------


@pytest.mark.parametrize(("fields", "field", "fragment"), [
    ({}, "url", "is required (or command"),
    ({"url": "https://x.example/", "command": ["/bin/true"]}, "command", "exactly one"),
    ({"url": "https://x.example/", "env": {"A": "b"}}, "env", "for a command"),
    ({"command": ["/bin/true"], "headers": {"X-A": "b"}}, "headers", "for a url"),
    ({"command": ["/bin/true"], "max_in_flight": 3}, "max_in_flight", "max_concurrent"),
    ({"command": []}, "url", "is required (or command"),
    ({"command": ["/bin/true"] * 257}, "command", "1 to 256"),
    ({"command": "/bin/true"}, "command", "array"),
    ({"command": ["{data.prog}"]}, "command[0]", "no placeholders"),
    ({"command": ["/bin/echo", "{nope}"]}, "command[1]", "not a placeholder"),
    ({"command": ["/bin/echo", "a\x00"]}, "command[1]", "no NUL"),
    ({"command": ["/bin/true"], "env": {"PALYRA_X": "1"}}, "env", "set by palyra"),
    ({"command": ["/bin/true"], "env": {"1A": "1"}}, "env", "not a variable name"),
    ({"command": ["/bin/true"], "working_dir": "rel/dir"}, "working_dir", "absolute"),
    ({"command": ["/bin/true"], "success_exit_codes": [256]}, "success_exit_codes[0]",
     "0 to 255"),
    ({"command": ["/bin/true"], "max_concurrent": 33}, "max_concurrent", "1 to 32"),
    ({"command": ["/bin/true"], "run_as": "Root Admin"}, "run_as", "user name"),
    ({"url": "https://x.example/", "timeout_s": 600}, "timeout_s", "a command: to 86400"),
])
def test_the_destination_rules(fields: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(RegistryError) as info:
        validate_subscription_fields({"subscription_id": "s", **fields})
    assert info.value.field == field, info.value
    assert fragment in str(info.value)


def test_a_command_subscription_reads_back_from_its_dict() -> None:
    from palyra_py.registry.subscriptions import Subscription

    norm = validate_subscription_fields({
        "subscription_id": "ci-deploy", "command": ["/bin/deploy", "{data.ref}"],
        "env": {"TOKEN": "keyring:deploy"}, "timeout_s": 600, "max_concurrent": 2,
        "success_exit_codes": [0, 3]})
    sub = Subscription(**norm)
    assert (sub.destination, sub.concurrency, sub.url) == ("command", 2, "")
    again = Subscription(**validate_subscription_fields(sub.to_dict()))
    assert again == sub


# -- the real daemon ---------------------------------------------------------------------

RECORDER = """#!{python}
import json, os, sys, time
out = {out!r}
record = {{"argv": sys.argv, "stdin": sys.stdin.read(), "env": dict(os.environ),
          "cwd": os.getcwd()}}
n = len([f for f in os.listdir(out) if f.startswith("run-")])
name = "run-%d-%d.json" % (time.time_ns(), os.getpid())  # runs may be concurrent
with open(os.path.join(out, name), "w") as f:
    json.dump(record, f)
print("ran", n, "for", sys.argv[1:])
print("warning: nothing to worry about", file=sys.stderr)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


def script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(stat.S_IRWXU)
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    out = tmp_path / "runs"
    out.mkdir()
    return out


@pytest.fixture
def recorder(tmp_path: Path, runs: Path) -> Path:
    return script(tmp_path / "record.py", RECORDER.format(python=sys.executable, out=str(runs)))


def recorded(runs: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("run-*.json"))]


async def subscribe(admin: aiohttp.ClientSession, sid: str, command: list[str],
                    **fields: Any) -> dict[str, Any]:
    async with admin.post("/v1/subscriptions",
                          json={"subscription_id": sid, "command": command, **fields}) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 201, answer
        return answer


async def publish(admin: aiohttp.ClientSession, type_: str, **fields: Any) -> dict[str, Any]:
    async with admin.post("/v1/events", json={"type": type_, **fields}) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 201, answer
        return answer


async def shown(admin: aiohttp.ClientSession, **query: str) -> list[dict[str, Any]]:
    """Every delivery with its attempts, oldest first."""
    async with admin.get("/v1/deliveries", params=query) as resp:
        found = (await resp.json())["deliveries"]
    out = []
    for delivery in sorted(found, key=lambda d: d["delivery_id"]):
        async with admin.get(f"/v1/deliveries/{delivery['delivery_id']}") as resp:
            out.append(await resp.json())
    return out


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition the test cannot await (a process gone) with a deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_run_gets_the_argv_the_event_on_stdin_and_a_clean_environment(
    outbound: Daemon, admin_o: aiohttp.ClientSession, recorder: Path, runs: Path,
    memory_keyring: MemoryKeyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAEMON_ONLY_SECRET", "never-in-a-run")
    memory_keyring.set_password("palyra", "deploy-token", "tok-3f9a")
    await subscribe(admin_o, "ci", [str(recorder), "--ref", "{data.ref}", "{data.sha:-none}"],
                    events=["deploy.*"], working_dir=str(tmp_path),
                    env={"DEPLOY_TOKEN": "keyring:deploy-token", "STAGE": "prod"})
    published = await publish(admin_o, "deploy.requested", data={"ref": "main"})
    await outbound.dispatcher.wait_for_attempts(1)
    (run,) = recorded(runs)
    assert run["argv"][1:] == ["--ref", "main", "none"]
    event = json.loads(run["stdin"])
    assert (event["id"], event["type"], event["data"]) == (
        published["event_id"], "deploy.requested", {"ref": "main"})
    env = run["env"]
    (delivery,) = await shown(admin_o)
    assert env["PALYRA_EVENT_ID"] == published["event_id"]
    assert env["PALYRA_EVENT_TYPE"] == "deploy.requested"
    assert env["PALYRA_EVENT_SEQ"] == str(published["seq"])
    assert env["PALYRA_DELIVERY_ID"] == delivery["delivery"]["delivery_id"]
    assert env["PALYRA_ATTEMPT"] == "1"
    assert env["DEPLOY_TOKEN"] == "tok-3f9a" and env["STAGE"] == "prod"
    allowed = {"PATH", "HOME", "LANG", "DEPLOY_TOKEN", "STAGE", "PALYRA_EVENT_ID",
               "PALYRA_EVENT_TYPE", "PALYRA_EVENT_SOURCE", "PALYRA_EVENT_SEQ",
               "PALYRA_DELIVERY_ID", "PALYRA_ATTEMPT", "PALYRA_SUBSCRIPTION_ID"}
    # Python itself may add LC_CTYPE; nothing of the daemon's environment leaks.
    assert set(env) - {"LC_CTYPE"} == allowed
    assert os.path.realpath(run["cwd"]) == os.path.realpath(tmp_path)
    (attempt,) = delivery["attempts"]
    assert (attempt["status_code"], attempt["error_class"]) == (0, None)
    assert "ran 0 for ['--ref', 'main', 'none']" in attempt["response_excerpt"]
    assert "--- stderr ---\nwarning: nothing to worry about" in attempt["response_excerpt"]
    # The resolved secret is written nowhere: not the registry, not the journal.
    assert "tok-3f9a" not in (outbound.state_dir / "webhooks.toml").read_text()
    journal = json.dumps(await events(admin_o, limit=1000))
    assert "tok-3f9a" not in journal


async def test_a_credential_env_value_given_plainly_goes_to_the_keyring(
    outbound: Daemon, admin_o: aiohttp.ClientSession, recorder: Path, runs: Path,
    memory_keyring: MemoryKeyring,
) -> None:
    created = await subscribe(admin_o, "ci", [str(recorder)], events=["k.*"],
                              env={"DEPLOY_TOKEN": "plain-9b7c", "STAGE": "prod"})
    env = created["subscription"]["env"]
    assert env == {"DEPLOY_TOKEN": "keyring:subscription-env:ci:DEPLOY_TOKEN", "STAGE": "prod"}
    assert "plain-9b7c" not in (outbound.state_dir / "webhooks.toml").read_text()
    await publish(admin_o, "k.x")
    await outbound.dispatcher.wait_for_attempts(1)
    (run,) = recorded(runs)
    assert run["env"]["DEPLOY_TOKEN"] == "plain-9b7c"
    async with admin_o.delete("/v1/subscriptions/ci") as resp:
        assert resp.status == 200
    assert memory_keyring.get_password("palyra", "subscription-env:ci:DEPLOY_TOKEN") is None


HOSTILE = ["$(touch {marker})", "`touch {marker}`", "; touch {marker}; rm -rf /",
           "a\nb; touch {marker}", "' \" | & > {marker}", "--help", "-rf /", "*", "~"]


async def test_payload_values_never_reach_a_shell(
    outbound: Daemon, admin_o: aiohttp.ClientSession, recorder: Path, runs: Path,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"
    values = [v.format(marker=marker) for v in HOSTILE]
    argv = [str(recorder), *[f"{{data.v{i}}}" for i in range(len(values))], "{actor}",
            "{source}", "{type}", "pre-{data.v0}-post", "{data.missing:-$(touch " +
            str(marker) + ")}"]
    await subscribe(admin_o, "hostile", argv, events=["evil.*"])
    await publish(admin_o, "evil.thing", actor="$(touch " + str(marker) + ")",
                  source="app@host", data={f"v{i}": v for i, v in enumerate(values)})
    await outbound.dispatcher.wait_for_attempts(1)
    (run,) = recorded(runs)
    assert run["argv"][1:] == [*values, "$(touch " + str(marker) + ")", "app@host",
                               "evil.thing", f"pre-{values[0]}-post",
                               "$(touch " + str(marker) + ")"]
    assert not marker.exists()

    # A NUL in a value: the attempt fails, saying so; nothing runs.
    await publish(admin_o, "evil.nul", data={"v0": "a\x00; touch " + str(marker)})
    await outbound.dispatcher.wait_for_attempts(2)
    assert len(recorded(runs)) == 1 and not marker.exists()
    nul = [d for d in await shown(admin_o) if d["delivery"]["event_type"] == "evil.nul"]
    (attempt,) = nul[0]["attempts"]
    assert attempt["error_class"] == "command_template"
    assert "NUL" in attempt["error_detail"]


async def test_a_missing_field_is_a_clear_attempt_failure(
    outbound: Daemon, admin_o: aiohttp.ClientSession, recorder: Path, runs: Path,
) -> None:
    await subscribe(admin_o, "needs-ref", [str(recorder), "{data.ref}"], events=["x.*"],
                    retry_schedule=["0s"])
    await publish(admin_o, "x.y", data={})
    await outbound.dispatcher.wait_for_attempts(1)
    assert recorded(runs) == []
    ((attempt,),) = [d["attempts"] for d in await shown(admin_o)]
    assert attempt["error_class"] == "command_template"
    assert "{data.ref}: the event has no such field" in attempt["error_detail"]


async def test_missing_unexecutable_and_failing_programs_fail_the_attempt_only(
    outbound: Daemon, admin_o: aiohttp.ClientSession, recorder: Path, runs: Path,
    tmp_path: Path,
) -> None:
    plain = tmp_path / "not-executable.sh"
    plain.write_text("#!/bin/sh\nexit 0\n")
    await subscribe(admin_o, "missing", [str(tmp_path / "nope")], events=["a.*"])
    await subscribe(admin_o, "plain", [str(plain)], events=["a.*"])
    await subscribe(admin_o, "nowhere", [str(recorder)], events=["a.*"],
                    working_dir=str(tmp_path / "no-such-dir"))
    await subscribe(admin_o, "fails", [str(recorder)], events=["a.*"],
                    env={"EXIT_CODE": "3"})
    await subscribe(admin_o, "fine", [str(recorder)], events=["a.*"],
                    env={"EXIT_CODE": "3"}, success_exit_codes=[0, 3])
    await publish(admin_o, "a.b")
    await outbound.dispatcher.wait_for_attempts(5)
    got = {d["delivery"]["subscription_id"]: d["attempts"][0] for d in await shown(admin_o)}
    assert got["missing"]["error_class"] == "command_unavailable"
    assert "no such file" in got["missing"]["error_detail"]
    assert got["plain"]["error_class"] == "command_unavailable"
    assert "not executable" in got["plain"]["error_detail"]
    assert got["nowhere"]["error_class"] == "command_unavailable"
    assert "working_dir" in got["nowhere"]["error_detail"]
    assert (got["fails"]["status_code"], got["fails"]["error_class"]) == (3, "command_exit")
    assert "exit code 3 (success: 0)" in got["fails"]["error_detail"]
    assert (got["fine"]["status_code"], got["fine"]["error_class"]) == (3, None)
    # The daemon goes on: the next event runs again.
    await publish(admin_o, "a.c")
    await outbound.dispatcher.wait_for_attempts(10)
    assert len(recorded(runs)) == 4


async def test_run_as_switches_user_only_for_root_and_an_unknown_user_fails_the_attempt(
    outbound: Daemon, admin_o: aiohttp.ClientSession,
) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    await subscribe(admin_o, "as-nobody", ["/usr/bin/id", "-u"], events=["u.*"],
                    run_as="nobody", retry_schedule=["0s"])
    await subscribe(admin_o, "as-ghost", ["/usr/bin/id", "-u"], events=["u.*"],
                    run_as="no-such-user-here", retry_schedule=["0s"])
    await publish(admin_o, "u.x")
    await outbound.dispatcher.wait_for_attempts(2)
    attempts = {d["delivery"]["subscription_id"]: d["attempts"][0]
                for d in await shown(admin_o)}
    ghost = attempts["as-ghost"]
    assert ghost["error_class"] == "command_unavailable"
    assert "no user 'no-such-user-here'" in ghost["error_detail"]
    ran = attempts["as-nobody"]
    if os.geteuid() == 0:
        assert (ran["error_class"], ran["status_code"]) == (None, 0), ran
        assert f"--- stdout ---\n{nobody.pw_uid}" in ran["response_excerpt"]
    else:  # never a run as the daemon's own user instead
        assert ran["error_class"] == "command_unavailable"
        assert "needs the daemon to run as root" in ran["error_detail"]


async def test_a_hanging_command_is_killed_with_its_process_group(
    outbound: Daemon, admin_o: aiohttp.ClientSession, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(command_module, "KILL_GRACE_S", 0.5)
    pids = tmp_path / "pids"
    # The leader ignores SIGTERM and waits on a child; both must be gone after the timeout.
    hang = script(tmp_path / "hang.sh", f"""#!/bin/sh
trap '' TERM
sleep 300 &
echo "$$ $!" > {pids}
echo started
wait
""")
    await subscribe(admin_o, "hangs", [str(hang)], events=["h.*"], timeout_s=1,
                    retry_schedule=["0s"])
    await publish(admin_o, "h.x")
    await outbound.dispatcher.wait_for_attempts(1)
    ((attempt,),) = [d["attempts"] for d in await shown(admin_o)]
    assert attempt["error_class"] == "timeout"
    assert "SIGTERM, then SIGKILL" in attempt["error_detail"]
    assert "started" in attempt["response_excerpt"]
    leader, child = (int(p) for p in pids.read_text().split())

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await until(lambda: gone(leader) and gone(child))


async def test_failed_runs_are_retried_on_the_schedule_and_their_output_is_logged(
    outbound: Daemon, admin_o: aiohttp.ClientSession, tmp_path: Path, clock: ManualClock,
) -> None:
    count = tmp_path / "count"
    flaky = script(tmp_path / "flaky.sh", f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0)
echo $((n + 1)) > {count}
echo "attempt $PALYRA_ATTEMPT"
if [ "$n" = 0 ]; then echo "deploy failed: lock held" >&2; exit 1; fi
echo "deployed"
""")
    await subscribe(admin_o, "deploy", [str(flaky)], events=["d.*"],
                    retry_schedule=["0s", "30s"])
    await publish(admin_o, "d.go")
    await outbound.dispatcher.wait_for_attempts(1)
    clock.advance(40)
    outbound.dispatcher.wake()
    await outbound.dispatcher.wait_for_attempts(2)
    ((first, second),) = [d["attempts"] for d in await shown(admin_o)]
    assert (first["status_code"], first["error_class"]) == (1, "command_exit")
    assert "deploy failed: lock held" in first["response_excerpt"]
    assert (second["status_code"], second["error_class"]) == (0, None)
    assert "attempt 2\ndeployed" in second["response_excerpt"]

    from palyra_py.cli import outbound_views, output

    (detail,) = await shown(admin_o)
    console = output.console()
    with console.capture() as captured:
        console.print(outbound_views.delivery_details(detail["delivery"], detail["attempts"]))
    text = captured.get()
    assert "exit 1" in text and "exit 0" in text and "HTTP" not in text, text
    assert "deploy failed: lock held" in text and "deployed" in text


async def test_max_concurrent_one_runs_one_at_a_time(
    outbound: Daemon, admin_o: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    busy = tmp_path / "busy"
    # Fails if another run of it is inside (mkdir is atomic), and logs start and end.
    serial = script(tmp_path / "serial.sh", f"""#!/bin/sh
mkdir {busy} || exit 9
echo "start $PALYRA_EVENT_SEQ" >> {log}
sleep 0.05
echo "end $PALYRA_EVENT_SEQ" >> {log}
rmdir {busy}
""")
    await subscribe(admin_o, "serial", [str(serial)], events=["s.*"])
    for n in range(4):
        await publish(admin_o, "s.x", data={"n": n})
    await outbound.dispatcher.wait_for_attempts(4)
    lines = log.read_text().split()
    assert len(lines) == 16
    kinds = lines[0::2]
    assert kinds == ["start", "end"] * 4
    attempts = [d["attempts"][0] for d in await shown(admin_o)]
    assert all(a["error_class"] is None for a in attempts)


async def test_ordered_runs_keep_the_event_order(
    outbound: Daemon, admin_o: aiohttp.ClientSession, tmp_path: Path, clock: ManualClock,
) -> None:
    log = tmp_path / "log"
    # The first run of event 0 fails: the later events wait for its retry.
    step = script(tmp_path / "step.sh", f"""#!/bin/sh
if [ "$1" = 0 ] && [ "$PALYRA_ATTEMPT" = 1 ]; then exit 1; fi
echo "$1" >> {log}
""")
    await subscribe(admin_o, "ordered", [str(step), "{data.n}"], events=["o.*"],
                    ordered=True, retry_schedule=["0s", "10s"])
    for n in range(3):
        await publish(admin_o, "o.x", data={"n": n})
    await outbound.dispatcher.wait_for_attempts(1)
    assert not log.exists()
    clock.advance(15)
    outbound.dispatcher.wake()
    await outbound.dispatcher.wait_for_attempts(4)
    assert log.read_text().split() == ["0", "1", "2"]


async def test_a_token_cannot_set_a_command_but_the_socket_can(
    outbound: Daemon, admin_o: aiohttp.ClientSession, http: aiohttp.ClientSession,
    recorder: Path, runs: Path,
) -> None:
    token = await create_token(admin_o, "ci", scopes=["admin"])
    base = outbound.ingress_url_for("x", local=True).rsplit("/hooks/", 1)[0]
    async with http.get(f"{base}/v1/registry", headers=token.bearer) as resp:
        exported = (await resp.json())["document"]
    added = exported + (f'\n[[subscriptions]]\nsubscription_id = "sneaky"\n'
                        f'command = ["{recorder}"]\n')
    for dry_run in (True, False):
        async with http.post(f"{base}/v1/registry/import", headers=token.bearer,
                             json={"document": added, "dry_run": dry_run}) as resp:
            answer = await resp.json()
            assert (resp.status, answer["error"]) == (403, "command_needs_socket"), answer
    assert "sneaky" not in outbound.registry.subscriptions
    # A plain URL subscription through the same import is fine.
    url_sub = exported + ('\n[[subscriptions]]\nsubscription_id = "hooked"\n'
                          'url = "https://hooks.example.com/x"\n')
    async with http.post(f"{base}/v1/registry/import", headers=token.bearer,
                         json={"document": url_sub}) as resp:
        assert resp.status == 200, await resp.json()

    # On the socket: allowed; then the token may not change it, but may remove it.
    await subscribe(admin_o, "ci-deploy", [str(recorder), "{data.ref}"], events=["g.*"])
    async with http.get(f"{base}/v1/registry", headers=token.bearer) as resp:
        exported = (await resp.json())["document"]
    changed = exported.replace('"{data.ref}"', '"{data.ref}", "--force"')
    assert changed != exported
    async with http.post(f"{base}/v1/registry/import", headers=token.bearer,
                         json={"document": changed}) as resp:
        assert (resp.status, (await resp.json())["error"]) == (403, "command_needs_socket")
    assert outbound.registry.subscriptions["ci-deploy"].command[-1] == "{data.ref}"
    # Re-importing what was exported changes nothing of it: allowed.
    async with http.post(f"{base}/v1/registry/import", headers=token.bearer,
                         json={"document": exported}) as resp:
        assert resp.status == 200, await resp.json()


async def test_a_command_subscription_has_no_signing_secret(
    outbound: Daemon, admin_o: aiohttp.ClientSession, memory_keyring: MemoryKeyring,
    recorder: Path,
) -> None:
    from tests.test_cli_e2e import palyra

    def stored() -> set[str]:
        return {name for _, name in memory_keyring.passwords
                if name.startswith("subscription:")}

    created = await subscribe(admin_o, "ci-deploy", [str(recorder)], events=["g.*"])
    assert "secret" not in created and created["subscription"]["secret_ref"] is None
    assert stored() == set()
    assert "secret_ref" not in (outbound.state_dir / "webhooks.toml").read_text()
    async with admin_o.post("/v1/subscriptions", json={
            "subscription_id": "signed-run", "command": [str(recorder)],
            "secret": {"generate": True}}) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"], answer["field"]) == (
            400, "invalid_request", "secret"), answer
        assert "not signed" in answer["message"]
    async with admin_o.post("/v1/subscriptions/ci-deploy/rotate-secret", json={}) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (409, "not_signed"), answer
    assert stored() == set()

    state = outbound.state_dir
    code, out, err = await palyra(state, "subscriptions", "show", "ci-deploy", columns=200)
    assert code == 0, err
    assert "none (runs are not signed)" in out and "previous_secret_ref" not in out
    code, out, err = await palyra(state, "subscriptions", "rotate-secret", "ci-deploy")
    assert code == 1 and "[not_signed]" in " ".join((out + err).split()), (out, err)
    code, out, err = await palyra(state, "subscriptions", "add", "again", "--command",
                                  str(recorder), "--generate-secret", columns=200)
    assert code == 2 and "not signed" in out + err, (out, err)

    # A URL switched to a command loses its secret; a command switched to a URL gets one,
    # shown this once.
    async with admin_o.post("/v1/subscriptions", json={
            "subscription_id": "hooked", "url": "https://hooks.example.com/x"}) as resp:
        assert resp.status == 201
    assert stored() == {"subscription:hooked"}
    async with admin_o.patch("/v1/subscriptions/hooked",
                             json={"url": None, "command": [str(recorder)]}) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    assert answer["subscription"]["secret_ref"] is None and "secret" not in answer
    assert stored() == set()
    async with admin_o.patch("/v1/subscriptions/hooked",
                             json={"command": None, "url": "https://hooks.example.com/y"}
                             ) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    assert answer["secret"].startswith("whsec_")
    assert answer["subscription"]["secret_ref"] == "keyring:subscription:hooked"
    assert memory_keyring.get_password("palyra", "subscription:hooked") == answer["secret"]


async def test_github_push_on_main_runs_the_deploy_script(
    outbound: Daemon, admin_o: aiohttp.ClientSession, http: aiohttp.ClientSession,
    recorder: Path, runs: Path,
) -> None:
    """The README walkthrough: a signed GitHub push on main runs the script; other
    branches and a bad signature run nothing."""
    await add_integration(admin_o, "gh")
    await subscribe(admin_o, "ci-deploy", [str(recorder), "{data.ref}", "{data.after}"],
                    events=["github.push"], filter={"data.ref": "refs/heads/main"})
    push = {"ref": "refs/heads/main", "after": "9f2c1e0"}
    status, _, _ = await send_signed(http, outbound, "gh", json.dumps(push).encode())
    assert status == 202
    other = {"ref": "refs/heads/feature", "after": "1111111"}
    status, _, _ = await send_signed(http, outbound, "gh", json.dumps(other).encode(),
                                     delivery_id="8f7d1c3e-0000-4000-8000-000000000002")
    assert status == 202
    status, _, _ = await send_signed(http, outbound, "gh", json.dumps(push).encode(),
                                     secret="wrong",
                                     delivery_id="8f7d1c3e-0000-4000-8000-000000000003")
    assert status == 401
    await outbound.dispatcher.wait_for_attempts(1)
    (run,) = recorded(runs)
    assert run["argv"][1:] == ["refs/heads/main", "9f2c1e0"]
    assert run["env"]["PALYRA_EVENT_TYPE"] == "github.push"


async def test_on_postgresql_a_run_is_delivered_under_its_lease_and_logged(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
    tmp_path: Path,
) -> None:
    pg_server.new_database("cmd")
    database = pg_server.databases[-1]
    count = tmp_path / "count"
    flaky = script(tmp_path / "flaky.sh", f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0)
echo $((n + 1)) > {count}
[ "$n" = 0 ] && {{ echo "first run fails" >&2; exit 2; }}
echo "ran for $1"
""")
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              storage__backend="postgres",
                              storage__dsn=pg_server.dsn(database)) as daemon, \
            admin_session(daemon.socket_path) as admin:
        await subscribe(admin, "pg-deploy", [str(flaky), "{data.ref}"], events=["d.*"],
                        retry_schedule=["0s", "10s"])
        await publish(admin, "d.push", data={"ref": "main"})
        await daemon.dispatcher.wait_for_attempts(1)
        clock.advance(15)
        daemon.dispatcher.wake()
        await daemon.dispatcher.wait_for_attempts(2)
        ((first, second),) = [d["attempts"] for d in await shown(admin)]
    assert (first["status_code"], first["error_class"]) == (2, "command_exit")
    assert (second["status_code"], second["error_class"]) == (0, None)
    # The attempt log is PostgreSQL's.
    stored = pg_server.psql(database, "SELECT string_agg(response_excerpt, '|' ORDER BY"
                                      " attempt_no) FROM delivery_attempts")
    assert "first run fails" in stored and "ran for main" in stored


async def test_the_cli_adds_a_command_subscription_and_shows_its_runs(
    outbound: Daemon, admin_o: aiohttp.ClientSession, http: aiohttp.ClientSession,
    recorder: Path, runs: Path,
) -> None:
    from tests.test_cli_e2e import palyra, palyra_json

    sd = outbound.state_dir
    await add_integration(admin_o, "gh")
    code, out, err = await palyra(
        sd, "subscriptions", "add", "ci-deploy", "--command", str(recorder),
        "--arg", "{data.ref}", "--events", "github.push",
        "--filter", "data.ref=refs/heads/main", "--env", "STAGE=prod", columns=200)
    assert code == 0, err
    assert "ci-deploy" in out and str(recorder) in out
    shown_sub = (await palyra_json(sd, "subscriptions", "show", "ci-deploy"))["subscription"]
    assert shown_sub["command"] == [str(recorder), "{data.ref}"]
    assert (shown_sub["url"], shown_sub["max_concurrent"], shown_sub["env"]) == (
        "", 1, {"STAGE": "prod"})
    status, _, _ = await send_signed(http, outbound, "gh",
                                     json.dumps({"ref": "refs/heads/main"}).encode())
    assert status == 202
    await outbound.dispatcher.wait_for_attempts(1)
    assert [r["argv"][1:] for r in recorded(runs)] == [["refs/heads/main"]]
    listed = await palyra_json(sd, "deliveries", "list", "--subscription", "ci-deploy")
    delivery_id = listed["deliveries"][0]["delivery_id"]
    code, out, err = await palyra(sd, "deliveries", "show", delivery_id, columns=200)
    assert code == 0, err
    assert "exit 0" in out and "ran 0 for ['refs/heads/main']" in out
    # subscriptions test: a palyra.test event to it alone, its run shown.
    code, out, err = await palyra(sd, "subscriptions", "add", "probe", "--command",
                                  str(recorder), "--arg", "{type}")
    assert code == 0, err
    code, out, err = await palyra(sd, "subscriptions", "test", "probe", columns=200)
    assert code == 0, out + err
    assert "exit code" in out and "ran 1 for ['palyra.test']" in out
    # The test event has no data.ref: a clear failure, exit code 4.
    code, out, err = await palyra(sd, "subscriptions", "test", "ci-deploy", columns=200)
    assert code == 4 and "command_template" in out, out + err
    # Both destinations, or neither: usage errors.
    code, _, err = await palyra(sd, "subscriptions", "add", "x", "--command", "/bin/true",
                                "--url", "https://x.example/")
    assert code == 2 and "exactly one of --url and --command" in err
    code, _, err = await palyra(sd, "subscriptions", "add", "y", "--url",
                                "https://x.example/", "--arg", "a")
    assert code == 2 and "--arg is for --command" in err


async def test_a_run_in_flight_is_killed_with_its_group_when_the_daemon_stops(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring, tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    long = script(tmp_path / "long.sh", f"""#!/bin/sh
sleep 300 &
echo "$$ $!" > {pids}.tmp && mv {pids}.tmp {pids}
wait
""")
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as daemon, \
            admin_session(daemon.socket_path) as admin:
        await subscribe(admin, "long", [str(long)], events=["l.*"], timeout_s=600)
        await publish(admin, "l.x")
        await until(pids.exists)
        leader, child = (int(p) for p in pids.read_text().split())
    # Stopped: the run is cancelled (it stays pending for the next start) and killed.

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await until(lambda: gone(leader) and gone(child))
