"""The CLI without a daemon: start-up cost, exit codes, argument checks, time parsing,
SSE parsing, outbound flag parsing, and the admin client and the commands against a canned
HTTP peer on a Unix socket."""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from palyra_py import __version__
from palyra_py.cli import output
from palyra_py.cli.app import app
from palyra_py.cli.subscription_inputs import (
    parse_filters,
    parse_headers,
    parse_retry_schedule,
)
from palyra_py.cli.timeparse import TimeParseError, parse_duration, parse_time
from palyra_py.cli.tokens_cmd import publish_base_url
from palyra_py.clients.admin import AdminClient, SseDecoder, SseEvent, iter_sse
from palyra_py.clients.errors import ApiError
from palyra_py.paths import SocketPathTooLong, resolve_state_dir, socket_path

runner = CliRunner()


def run(*args: str, input: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=input, env={"PALYRA_STATE_DIR": None})


def flat(text: str) -> str:
    """Rich panels wrap and frame messages; compare words, not layout."""
    return " ".join(text.replace("│", " ").split())


# --- start-up ------------------------------------------------------------------------

HELP_PROBE = """
import contextlib, io, json, sys
import typer.main
from palyra_py.cli.app import app
from palyra_py.cli.main import main

def walk(command, path):
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, [*path, name])

paths = list(walk(typer.main.get_command(app), []))
codes = []
for path in paths:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([*path, "--help"])
        except SystemExit as exc:
            codes.append(exc.code)
heavy = ["aiohttp", "jsonschema", "tomlkit", "keyring", "structlog", "sqlite3",
         "palyra_py.server.daemon"]
print(json.dumps({"paths": [" ".join(p) for p in paths], "codes": codes,
                  "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_every_help_page_loads_no_daemon_dependency() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, check=True
    )
    report = json.loads(done.stdout)
    assert report["loaded"] == []
    assert set(report["codes"]) == {0}
    assert {"", "daemon run", "webhooks add", "system events tail", "subscriptions add",
            "subscriptions test", "deliveries stats", "tokens create"} <= set(report["paths"])
    assert len(report["paths"]) >= 40


def test_python_m_shows_quick_start_exit_codes_and_version() -> None:
    help_page = subprocess.run(
        [sys.executable, "-m", "palyra_py", "--help"], capture_output=True, text=True
    )
    assert help_page.returncode == 0
    assert "Quick start" in help_page.stdout
    assert "Exit codes" in help_page.stdout
    assert "daemon is not reachable" in flat(help_page.stdout)
    version = run("--version")
    assert version.exit_code == 0
    assert version.stdout.strip() == f"palyra {__version__}"


# --- no daemon -----------------------------------------------------------------------


def test_missing_daemon_exits_3_with_start_hint(state_dir: Path) -> None:
    result = run("daemon", "status", "--state-dir", str(state_dir))
    assert result.exit_code == 3
    assert result.stderr.strip() == (
        f"palyra: the daemon is not running (no socket at {state_dir}/palyra.sock). "
        f"Start it with: palyra daemon run --state-dir {state_dir}"
    )
    assert result.stdout == ""


def test_stale_socket_counts_as_not_running(state_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / "palyra.sock"))  # bound, never listening: refused
    try:
        result = run("webhooks", "list", "--json", "--state-dir", str(state_dir))
    finally:
        stale.close()
    assert result.exit_code == 3
    assert "the daemon is not running (nothing is listening on" in result.stderr
    assert "palyra daemon run --state-dir" in result.stderr


def test_too_long_socket_path_is_a_clear_usage_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(SocketPathTooLong) as caught:
        socket_path(deep)
    assert "shorter --state-dir" in str(caught.value)
    result = run("webhooks", "list", "--state-dir", str(deep))
    assert result.exit_code == 2
    assert "choose a shorter --state-dir" in flat(result.stderr)


def test_state_dir_comes_from_flag_then_env() -> None:
    env = {"PALYRA_STATE_DIR": "/srv/palyra"}
    assert resolve_state_dir(Path("/flag"), env) == Path("/flag")
    assert resolve_state_dir(None, env) == Path("/srv/palyra")
    assert resolve_state_dir(None, {}).name.lower() == "palyra"
    assert socket_path(Path("/srv/palyra")) == Path("/srv/palyra/palyra.sock")


# --- argument checks (all before any connection: an empty state dir would give 3) -----


def test_add_without_secret_source_is_a_usage_error(state_dir: Path) -> None:
    result = run("webhooks", "add", "gh", "--provider", "github", "--state-dir", str(state_dir))
    assert result.exit_code == 2
    assert "a secret source is required" in flat(result.stderr)


def test_add_with_two_secret_sources_is_a_usage_error(state_dir: Path) -> None:
    result = run(
        "webhooks", "add", "gh", "--provider", "github", "--generate-secret",
        "--secret-ref", "env:GH", "--state-dir", str(state_dir),
    )
    assert result.exit_code == 2
    assert "choose one secret source" in flat(result.stderr)


def test_add_refuses_an_empty_secret_on_stdin(state_dir: Path) -> None:
    result = run(
        "webhooks", "add", "gh", "--provider", "github", "--secret-stdin",
        "--state-dir", str(state_dir), input="\n",
    )
    assert result.exit_code == 2
    assert "empty secret" in flat(result.stderr)


def test_remove_without_terminal_needs_yes(state_dir: Path) -> None:
    result = run("webhooks", "remove", "gh", "--state-dir", str(state_dir))
    assert result.exit_code == 2
    assert "--yes" in result.stderr


def test_bad_time_flag_is_a_usage_error(state_dir: Path) -> None:
    result = run("system", "events", "list", "--since", "yesterday", "--state-dir", str(state_dir))
    assert result.exit_code == 2
    assert "invalid time 'yesterday'" in flat(result.stderr)


# --- durations and times -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("90", 90), ("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800),
     ("1h30m", 5400), ("2w", 1209600), (" 5M ", 300),
     # The registry's forms too (one grammar): fractions, spaces before a unit, ms.
     ("1.5h", 5400), ("5 m", 300), ("2000ms", 2), ("250ms", None)],
)
def test_parse_duration(text: str, seconds: int | None) -> None:
    if seconds is None:  # a form of the grammar, but the CLI's options take whole seconds
        with pytest.raises(TimeParseError, match="whole number of seconds"):
            parse_duration(text)
    else:
        assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5", "10y", "h", "15m ago"])
def test_parse_duration_rejects_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(TimeParseError, match="15m"):
        parse_duration(text)


NOW = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", "2024-05-01T11:45:00.250Z"),
        ("7d", "2024-04-24T12:00:00.250Z"),
        ("1714564800", "2024-05-01T12:00:00.000Z"),
        ("1714564800.5", "2024-05-01T12:00:00.500Z"),
        ("2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00.000Z"),
        ("2024-05-01T12:00:00.123Z", "2024-05-01T12:00:00.123Z"),
        ("2024-05-01", "2024-05-01T00:00:00.000Z"),
    ],
)
def test_parse_time(text: str, expected: str) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("2024-05-01T12:00:00", "no timezone"), ("yesterday", "RFC 3339"), ("", "RFC 3339")],
)
def test_parse_time_rejects(text: str, message: str) -> None:
    with pytest.raises(TimeParseError, match=message):
        parse_time(text, now=NOW)


# --- server-sent events --------------------------------------------------------------

STREAM = (
    b": keepalive\n"
    b"id: 41\nevent: webhook\ndata: {\"seq\": 41}\n\n"
    b":another comment\n"
    b"event: system\ndata: first line\ndata:second line\ndata:  indented\n\n"
    b"id: 43\r\ndata: crlf \xc3\xa9t\xc3\xa9\r\n\r\n"
    b"event: lonely\n\n"  # no data: not dispatched
    b"retry: 5\rdata: cr only\r\r"
    b"data: never finished\n"
)
EXPECTED = [
    SseEvent(data='{"seq": 41}', event="webhook", id="41"),
    SseEvent(data="first line\nsecond line\n indented", event="system", id="41"),
    SseEvent(data="crlf été", event="message", id="43"),
    SseEvent(data="cr only", event="message", id="43"),
]


def test_sse_stream_in_one_read() -> None:
    assert list(iter_sse([STREAM])) == EXPECTED
    assert EXPECTED[0].json() == {"seq": 41}


def test_sse_events_split_at_every_byte() -> None:
    for cut in range(len(STREAM) + 1):
        assert list(iter_sse([STREAM[:cut], STREAM[cut:]])) == EXPECTED, cut
    assert list(iter_sse(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


def test_sse_decoder_keeps_last_event_id_and_drops_unfinished_event() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"id: 7\ndata: x") == []
    assert decoder.last_event_id == "7"
    decoder.close()
    assert decoder.feed(b"\n\n") == []  # the unfinished event did not survive close()


# --- admin client against a canned peer ------------------------------------------------

Route = tuple[int, Any]  # (status, JSON body) or (200, [SSE chunks as bytes])


class CannedDaemon:
    """Answers fixed JSON per ``(method, path)`` and records each request."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.routes: dict[tuple[str, str], Route | list[Route]] = {}
        self.requests: list[dict[str, Any]] = []

    def answer(self, method: str, target: str) -> Route:
        path = target.partition("?")[0]
        route = self.routes.get((method, path), (404, {"error": "not_found", "message": path}))
        if isinstance(route, list):  # successive answers, e.g. pages
            return route.pop(0)
        return route


def canned_handler(daemon: CannedDaemon) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the default one indexes client_address, which AF_UNIX leaves empty

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            daemon.requests.append(
                {
                    "method": self.command,
                    "target": self.path,
                    "headers": dict(self.headers),
                    "body": json.loads(raw) if raw else None,
                }
            )
            status, body = daemon.answer(self.command, self.path)
            self.send_response(status)
            self.send_header("Connection", "close")
            if isinstance(body, list):  # SSE, chunked, split wherever the test says
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in body:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
                return
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

    return Handler


@contextmanager
def serving(daemon: CannedDaemon) -> Iterator[CannedDaemon]:
    """``daemon``'s canned answers on ``<state_dir>/palyra.sock`` until the block ends."""
    server = socketserver.ThreadingUnixStreamServer(
        str(daemon.state_dir / "palyra.sock"), canned_handler(daemon)
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def canned(state_dir: Path) -> Iterator[CannedDaemon]:
    with serving(CannedDaemon(state_dir)) as daemon:
        yield daemon


def cli(canned: CannedDaemon, *args: str, input: str | None = None) -> Result:
    return run(*args, "--state-dir", str(canned.state_dir), input=input)


NOT_FOUND = {"error": "not_found", "message": "no integration 'nope'"}


def test_client_maps_error_answers(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/webhooks/nope")] = (404, NOT_FOUND)
    canned.routes[("GET", "/v1/status")] = (500, b"Internal Server Error")
    client = AdminClient(canned.state_dir)
    with pytest.raises(ApiError) as caught:
        client.get_webhook("nope")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert caught.value.message == "no integration 'nope'"
    with pytest.raises(ApiError) as caught:
        client.status()
    assert caught.value.code == "http_error"
    assert "HTTP 500" in caught.value.message


def test_404_exits_1_with_the_message_or_the_json(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/webhooks/nope")] = (404, NOT_FOUND)
    human = cli(canned, "webhooks", "show", "nope")
    assert human.exit_code == 1
    assert human.stderr.strip() == "palyra: no integration 'nope' [not_found]"
    machine = cli(canned, "webhooks", "show", "nope", "--json")
    assert machine.exit_code == 1
    assert json.loads(machine.stdout) == NOT_FOUND


def test_registry_error_shows_its_location(canned: CannedDaemon) -> None:
    canned.routes[("POST", "/v1/reload")] = (
        422,
        {"error": "registry_invalid", "message": "expected '='", "location": "webhooks.toml:3:7"},
    )
    result = cli(canned, "daemon", "reload")
    assert result.exit_code == 1
    assert "webhooks.toml:3:7: expected '='" in result.stderr


def test_add_sends_the_documented_body_and_shows_the_secret_once(canned: CannedDaemon) -> None:
    hook = {"integration_id": "gh", "provider": "github", "readiness": "ready",
            "ingress_url": "http://127.0.0.1:8080/hooks/gh", "secret_ref": "keyring:gh"}
    canned.routes[("POST", "/v1/webhooks")] = (201, {"webhook": hook, "secret": "s3cr3t-value"})
    result = cli(
        canned, "webhooks", "add", "gh", "--provider", "github", "-e", "push,issues",
        "-e", "ping", "--replay-window", "2d", "--option", "header=X-Sig", "--disabled",
        "--generate-secret",
    )
    assert result.exit_code == 0, result.output
    assert canned.requests[0]["method"] == "POST"
    assert canned.requests[0]["body"] == {
        "integration_id": "gh",
        "provider": "github",
        "secret": {"generate": True},
        "allowed_events": ["push", "issues", "ping"],
        "replay_window_s": 172800,
        "enabled": False,
        "provider_options": {"header": "X-Sig"},
    }
    assert canned.requests[0]["headers"]["Content-Type"] == "application/json"
    assert result.stdout.count("s3cr3t-value") == 1
    assert "will not be shown again" in flat(result.stdout)
    assert "http://127.0.0.1:8080/hooks/gh" in result.stdout
    assert "palyra webhooks test gh" in flat(result.stdout)


def test_secret_from_stdin_is_sent_but_never_printed(canned: CannedDaemon) -> None:
    hook = {"integration_id": "st", "provider": "stripe", "secret_ref": "keyring:st"}
    canned.routes[("POST", "/v1/webhooks")] = (201, {"webhook": hook})
    result = cli(
        canned, "webhooks", "add", "st", "--provider", "stripe", "--secret-stdin",
        input="whsec_abc\r\n",
    )
    assert result.exit_code == 0, result.output
    assert canned.requests[0]["body"]["secret"] == {"value": "whsec_abc"}
    assert "whsec_abc" not in result.output


def test_list_all_follows_next_after_seq(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/events")] = [
        (200, {"events": [{"seq": 1}, {"seq": 2}], "next_after_seq": 2}),
        (200, {"events": [{"seq": 3}], "next_after_seq": None}),
    ]
    result = cli(canned, "system", "events", "list", "--all", "--type", "push", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "events": [{"seq": 1}, {"seq": 2}, {"seq": 3}],
        "next_after_seq": None,
    }
    assert [r["target"] for r in canned.requests] == [
        "/v1/events?type=push",
        "/v1/events?type=push&after_seq=2",
    ]


def test_tail_follow_prints_streamed_events_as_json_lines(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/status")] = (200, {"journal": {"last_seq": 0}})
    canned.routes[("GET", "/v1/events/stream")] = (
        200,
        [b": keepalive\n\nid: 1\nevent: webhook\nda", b'ta: {"seq": 1, "kind": "webhook"}\n\n',
         b'id: 2\nevent: system\ndata: {"seq": 2, "kind": "system"}\n\n'],
    )
    result = cli(canned, "system", "events", "tail", "-f", "--json", "-i", "gh")
    # The canned stream ends, as when the daemon stops: the follower says so and exits 3.
    assert result.exit_code == 3
    assert "closed the event stream" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [{"seq": 1, "kind": "webhook"}, {"seq": 2, "kind": "system"}]
    assert canned.requests[-1]["target"] == "/v1/events/stream?integration=gh&after_seq=0"
    assert canned.requests[-1]["headers"]["Accept"] == "text/event-stream"


@pytest.mark.parametrize(
    ("args", "outcome", "code"),
    [((), "accepted", 0), ((), "rejected", 4), (("--tamper",), "rejected", 0),
     (("--tamper",), "accepted", 4)],
)
def test_webhook_test_exit_code_follows_the_expected_outcome(
    canned: CannedDaemon, args: tuple[str, ...], outcome: str, code: int
) -> None:
    canned.routes[("POST", "/v1/webhooks/gh/test")] = (
        200,
        {"outcome": outcome, "status_code": 202, "reason": outcome, "integration_id": "gh"},
    )
    result = cli(canned, "webhooks", "test", "gh", *args)
    assert result.exit_code == code
    assert canned.requests[0]["body"] == ({"tamper": True} if args else {})


def test_broken_chain_and_unready_integration_exit_4(canned: CannedDaemon) -> None:
    canned.routes[("POST", "/v1/journal/verify")] = (
        200,
        {"ok": False, "checked": 9, "first_seq": 1, "last_seq": 9, "first_broken_seq": 5,
         "reason": "hash mismatch"},
    )
    canned.routes[("GET", "/v1/webhooks/readiness")] = (
        200,
        {"readiness": [
            {"integration_id": "a", "readiness": "disabled", "detail": ""},
            {"integration_id": "b", "readiness": "secret_not_found", "detail": "env:B unset"},
        ]},
    )
    verify = cli(canned, "system", "events", "verify")
    assert verify.exit_code == 4
    assert "broken at seq 5: hash mismatch" in verify.stderr
    readiness = cli(canned, "webhooks", "readiness")
    assert readiness.exit_code == 4
    assert readiness.stderr.strip() == "palyra: not ready: b"


# --- outbound: flag parsing (no daemon needed) ------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("docs", "docs"), ("true", True), ("false", False), ("3", 3), ("-2", -2), ("1.5", 1.5),
     ("1e3", 1000.0), ('"3"', "3"), ('"true"', "true"), ('"a\\"b"', 'a"b'), ("True", "True"),
     ("", ""), ("a=b", "a=b"), ('"unclosed', '"unclosed'), ("null", "null")],
)
def test_filter_values_are_typed(text: str, value: object) -> None:
    parsed = parse_filters([f"data.x={text}"])
    assert parsed is not None
    assert parsed["data.x"] == value and type(parsed["data.x"]) is type(value)


def test_parse_filters_builds_the_filter_object() -> None:
    assert parse_filters(None) is None
    assert parse_filters(["data.kb=docs", " data.n =3", "data.q=a=b", 'data.v="7"']) == {
        "data.kb": "docs", "data.n": 3, "data.q": "a=b", "data.v": "7",
    }


def test_parse_headers_and_retry_schedule() -> None:
    assert parse_headers(["Authorization: Bearer abc", "X-Team:ops "]) == {
        "Authorization": "Bearer abc", "X-Team": "ops",
    }
    assert parse_retry_schedule(" 0s, 5s,5m ,2h") == ["0s", "5s", "5m", "2h"]
    assert parse_retry_schedule(None) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--filter", "data.kb"), "'data.kb' is not PATH=VALUE"),
        (("--filter", "=docs"), "the path needs dot-separated names"),
        (("--filter", "data..kb=x"), "the path needs dot-separated names"),
        (("--filter", "a=1", "--filter", "a=2"), "'a' is given twice"),
        (("--header", "X-Team ops"), "is not 'Name: value'"),
        (("--header", "A: 1", "--header", "a: 2"), "'a' is given twice"),
        (("--retry-schedule", "0s,soon"), "retry schedule entry 2"),
        (("--secret-stdin", "--generate-secret"),
         "choose one secret source, not --generate-secret and --secret-stdin"),
        (("--format", "teams"), "'teams' is not one of"),
    ],
)
def test_subscription_add_usage_errors(
    state_dir: Path, args: tuple[str, ...], message: str
) -> None:
    result = run("subscriptions", "add", "ci", "--url", "https://ci.example/h", *args,
                 "--state-dir", str(state_dir))
    assert result.exit_code == 2
    assert message in flat(result.stderr)


@pytest.mark.parametrize(
    "args",
    [("subscriptions", "remove", "ci"), ("tokens", "revoke", "t1")],
)
def test_outbound_removals_need_yes_without_a_terminal(
    state_dir: Path, args: tuple[str, ...]
) -> None:
    result = run(*args, "--state-dir", str(state_dir))
    assert result.exit_code == 2
    assert "add --yes" in result.stderr


def test_outbound_time_and_limit_flags_are_checked_before_connecting(state_dir: Path) -> None:
    recover = run("deliveries", "recover", "ci", "--since", "last week",
                  "--state-dir", str(state_dir))
    assert recover.exit_code == 2
    assert "invalid time 'last week'" in flat(recover.stderr)
    missing = run("deliveries", "recover", "ci", "--state-dir", str(state_dir))
    assert missing.exit_code == 2
    assert "--since" in flat(missing.stderr)
    limit = run("deliveries", "list", "--limit", "5000", "--state-dir", str(state_dir))
    assert limit.exit_code == 2


# --- outbound: commands against the canned daemon ----------------------------------------


def wide(canned: CannedDaemon, *args: str, input: str | None = None) -> Result:
    """``cli`` with a 250-column console, so table cells are not folded."""
    output.console.cache_clear()  # the console keeps the width it was created with
    try:
        return runner.invoke(
            app, [*args, "--state-dir", str(canned.state_dir)], input=input,
            env={"PALYRA_STATE_DIR": None, "COLUMNS": "250"},
        )
    finally:
        output.console.cache_clear()


SUB = {
    "subscription_id": "ci", "url": "https://ci.example/hook", "enabled": True,
    "events": ["github.*"], "filter": {"data.kb": "docs"}, "format": "standard",
    "signature_format": "github", "secret_ref": "keyring:subscription:ci",
    "headers": {"Authorization": "Bearer receiver-auth-value", "X-Team": "ops"},
    "pending": 3, "health": {"last_success_at": "2024-05-01T12:00:00.000Z",
                             "failing_since": None},
}


def test_subscription_add_sends_the_fields_and_shows_the_secret_once(
    canned: CannedDaemon,
) -> None:
    canned.routes[("POST", "/v1/subscriptions")] = (
        201, {"subscription": SUB, "secret": "whsec_c2VjcmV0LXNob3duLW9uY2U="},
    )
    result = wide(
        canned, "subscriptions", "add", "ci", "--url", "https://ci.example/hook",
        "-e", "github.*,stripe.charge.*", "--filter", "data.kb=docs", "--filter", "data.n=2",
        "--format", "slack", "--signature-format", "github", "--ordered", "--rate-limit", "2.5",
        "--max-in-flight", "4", "--timeout", "20", "--retry-schedule", "0s,1m,1h",
        "-H", "X-Team: ops", "--owner", "team-a", "--description", "CI", "--disabled",
        "--url-in-registry",
    )
    assert result.exit_code == 0, result.output
    assert canned.requests[0]["body"] == {
        "subscription_id": "ci", "url": "https://ci.example/hook",
        "secret": {"generate": True},
        "events": ["github.*", "stripe.charge.*"], "filter": {"data.kb": "docs", "data.n": 2},
        "format": "slack", "signature_format": "github", "ordered": True,
        "rate_limit_per_s": 2.5, "max_in_flight": 4, "timeout_s": 20.0,
        "retry_schedule": ["0s", "1m", "1h"], "headers": {"X-Team": "ops"},
        "owner": "team-a", "description": "CI", "enabled": False, "url_in_keyring": False,
    }
    text = flat(result.stdout)
    assert result.stdout.count("whsec_c2VjcmV0LXNob3duLW9uY2U=") == 1
    assert "will not be shown again" in text
    assert "webhook-id, webhook-timestamp (unix s), webhook-signature" in text
    assert "X-Hub-Signature-256" in text  # signature_format github explains the extra header
    assert "palyra subscriptions test ci" in text


def test_subscription_add_minimal_json_and_stdin_secret(canned: CannedDaemon) -> None:
    answer = {"subscription": {**SUB, "signature_format": "standard"}}
    canned.routes[("POST", "/v1/subscriptions")] = (201, answer)
    result = cli(canned, "subscriptions", "add", "ci", "--url", "https://ci.example/hook",
                 "--secret-stdin", "--json", input="whsec_from_stdin\n")
    assert result.exit_code == 0, result.output
    assert canned.requests[0]["body"] == {
        "subscription_id": "ci", "url": "https://ci.example/hook",
        "secret": {"value": "whsec_from_stdin"},
    }
    assert json.loads(result.stdout) == answer
    assert "whsec_from_stdin" not in result.output


def test_subscription_list_and_show(canned: CannedDaemon) -> None:
    failing = {**SUB, "subscription_id": "pager", "events": [],
               "health": {"failing_since": "2024-05-02T08:00:00.000Z"}}
    off = {**SUB, "subscription_id": "old", "enabled": False, "disabled_reason": "http_410"}
    new = {**SUB, "subscription_id": "fresh", "health": {}}
    listing = {"subscriptions": [SUB, failing, off, new]}
    canned.routes[("GET", "/v1/subscriptions")] = (200, listing)
    canned.routes[("GET", "/v1/subscriptions/ci")] = (200, {"subscription": SUB})
    table = wide(canned, "subscriptions", "list")
    assert table.exit_code == 0, table.output
    rows = {line.split("│")[1].strip(): flat(line) for line in table.stdout.splitlines()
            if line.count("│") > 2}
    assert "https://ci.example/hook" in rows["ci"] and " ok" in rows["ci"]
    assert "github.*" in rows["ci"] and " 3 " in rows["ci"]
    assert "all" in rows["pager"] and "failing since 2024-05-02T08:00:00.000Z" in rows["pager"]
    assert "disabled (http_410)" in rows["old"]
    assert "no delivery yet" in rows["fresh"]
    machine = cli(canned, "subscriptions", "list", "--json")
    assert json.loads(machine.stdout) == listing
    show = wide(canned, "subscriptions", "show", "ci")
    assert show.exit_code == 0
    text = flat(show.stdout)
    assert "Authorization: ***" in text and "X-Team: ops" in text
    assert "receiver-auth-value" not in show.stdout  # masked for people; in --json only
    assert "keyring:subscription:ci" in text and "data.kb=docs" in text
    assert "last success 2024-05-01T12:00:00.000Z" in text


def test_subscription_enable_disable_rotate_remove(canned: CannedDaemon) -> None:
    for action in ("enable", "disable", "rotate-secret"):
        canned.routes[("POST", f"/v1/subscriptions/ci/{action}")] = (
            200, {"subscription": SUB, "secret": "whsec_bmV3LXNlY3JldA==",
                  "previous_valid_until": "2024-05-02T12:00:00.000Z"},
        )
    canned.routes[("DELETE", "/v1/subscriptions/ci")] = (
        200, {"status": "deleted", "subscription_id": "ci"},
    )
    assert cli(canned, "subscriptions", "enable", "ci", "--catch-up").exit_code == 0
    skipped = cli(canned, "subscriptions", "enable", "ci")
    assert "--catch-up delivers them" in flat(skipped.stdout)
    assert cli(canned, "subscriptions", "disable", "ci").exit_code == 0
    rotated = wide(canned, "subscriptions", "rotate-secret", "ci", "--grace", "1h")
    assert rotated.exit_code == 0, rotated.output
    assert rotated.stdout.count("whsec_bmV3LXNlY3JldA==") == 1
    assert "both signatures until 2024-05-02T12:00:00.000Z" in flat(rotated.stdout)
    removed = cli(canned, "subscriptions", "remove", "ci", "--yes", "--json")
    assert json.loads(removed.stdout) == {"status": "deleted", "subscription_id": "ci"}
    assert [(r["method"], r["target"], r["body"]) for r in canned.requests] == [
        ("POST", "/v1/subscriptions/ci/enable", {"catch_up": True}),
        ("POST", "/v1/subscriptions/ci/enable", {"catch_up": False}),
        ("POST", "/v1/subscriptions/ci/disable", None),
        ("POST", "/v1/subscriptions/ci/rotate-secret",
         {"grace_s": 3600, "secret": {"generate": True}}),
        ("DELETE", "/v1/subscriptions/ci", None),
    ]


def _test_answer(status: str, attempt: dict[str, Any] | None) -> dict[str, Any]:
    return {"event_id": "01J0TEST", "seq": 77,
            "delivery": {"delivery_id": "d-1", "status": status}, "attempt": attempt}


def test_subscription_test_shows_the_attempt_and_exits_0_when_delivered(
    canned: CannedDaemon,
) -> None:
    attempt = {"attempt_no": 1, "status_code": 204, "duration_ms": 42, "error_class": None,
               "response_excerpt": ""}
    canned.routes[("POST", "/v1/subscriptions/ci/test")] = (200, _test_answer("succeeded", attempt))
    result = wide(canned, "subscriptions", "test", "ci", "-d", '{"hello": "world"}')
    assert result.exit_code == 0, result.output
    assert canned.requests[0]["body"] == {"data": {"hello": "world"}}
    text = flat(result.stdout)
    assert "HTTP 204" in text and "42 ms" in text and "succeeded" in text
    assert "01J0TEST (seq 77)" in text


def test_subscription_test_exits_4_and_defuses_the_receivers_answer(
    canned: CannedDaemon,
) -> None:
    hostile = "\x1b[2J\x1b]0;pwned\x07[bold]oops[/bold]" + "x" * 400
    attempt = {"attempt_no": 1, "status_code": 500, "duration_ms": 12_500,
               "error_class": "http_status", "response_excerpt": hostile}
    canned.routes[("POST", "/v1/subscriptions/ci/test")] = (200, _test_answer("pending", attempt))
    result = wide(canned, "subscriptions", "test", "ci")
    assert result.exit_code == 4
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    text = flat(result.stdout)
    assert "\\x1b[2J" in text and "[bold]oops[/bold]" in text  # shown, not obeyed
    assert "HTTP 500" in text and "http_status" in text and "12s" in text
    assert "more characters; see --json" in text
    assert "palyra deliveries show d-1" in flat(result.stderr)
    none_yet = {**_test_answer("pending", None), "delivery": None}
    canned.routes[("POST", "/v1/subscriptions/ci/test")] = (200, none_yet)
    machine = cli(canned, "subscriptions", "test", "ci", "--json")
    assert machine.exit_code == 4
    assert json.loads(machine.stdout) == none_yet
    human = cli(canned, "subscriptions", "test", "ci")
    assert human.exit_code == 4
    assert "none yet" in flat(human.stdout)
    assert "no attempt within the wait" in human.stderr


DELIVERY = {"delivery_id": "d-1", "subscription_id": "ci", "event_seq": 41,
            "event_id": "01J0EVENT", "event_type": "github.push", "status": "failed",
            "attempts": 2, "next_attempt_at": None, "created_at": "2024-05-01T12:00:00.000Z",
            "updated_at": "2024-05-01T12:05:00.000Z", "last_status_code": None,
            "last_error_class": "timeout"}


def test_deliveries_list_all_follows_next_after(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/deliveries")] = [
        (200, {"deliveries": [DELIVERY], "next_after": "d-1"}),
        (200, {"deliveries": [{**DELIVERY, "delivery_id": "d-2"}], "next_after": None}),
    ]
    result = cli(canned, "deliveries", "list", "--all", "-s", "ci", "--status", "failed",
                 "--since", "2024-05-01", "--limit", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "deliveries": [DELIVERY, {**DELIVERY, "delivery_id": "d-2"}], "next_after": None,
    }
    first = "/v1/deliveries?subscription=ci&status=failed&since=2024-05-01T00%3A00%3A00.000Z"
    assert [r["target"] for r in canned.requests] == [f"{first}&limit=1",
                                                      f"{first}&limit=1&after=d-1"]


def test_deliveries_list_table_says_when_there_is_more(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/deliveries")] = (
        200, {"deliveries": [DELIVERY], "next_after": "d-1"},
    )
    result = wide(canned, "deliveries", "list")
    assert result.exit_code == 0
    text = flat(result.stdout)
    assert "d-1" in text and "github.push (seq 41)" in text and "failed" in text
    assert "timeout" in text
    assert "add --all" in result.stderr


def test_deliveries_show_retry_recover(canned: CannedDaemon) -> None:
    attempts = [
        {"delivery_id": "d-1", "attempt_no": 1, "started_at": "2024-05-01T12:00:00.000Z",
         "duration_ms": 15000, "status_code": None, "error_class": "timeout",
         "error_detail": "no answer in 15 s", "response_excerpt": None},
        {"delivery_id": "d-1", "attempt_no": 2, "started_at": "2024-05-01T12:00:05.000Z",
         "duration_ms": 80, "status_code": 503, "error_class": "http_status",
         "error_detail": None, "response_excerpt": "busy"},
    ]
    canned.routes[("GET", "/v1/deliveries/d-1")] = (
        200, {"delivery": {**DELIVERY, "created_ms": 1714564800000}, "attempts": attempts},
    )
    canned.routes[("POST", "/v1/deliveries/d-1/retry")] = (
        200, {"delivery": {**DELIVERY, "status": "pending"}},
    )
    canned.routes[("POST", "/v1/deliveries/recover")] = (200, {"recovered": 12})
    show = wide(canned, "deliveries", "show", "d-1")
    assert show.exit_code == 0, show.output
    text = flat(show.stdout)
    assert "Attempts" in text and "no answer in 15 s" in text
    assert "created_ms" not in text  # created_at says it for people
    assert "HTTP 503" in text and "busy" in text and "80 ms" in text
    assert "(http_status)" not in text  # the status code says it already
    retry = cli(canned, "deliveries", "retry", "d-1")
    assert "d-1 is pending again" in flat(retry.stdout)
    recover = cli(canned, "deliveries", "recover", "ci", "--since", "1714564800",
                  "--until", "2024-05-01T14:00:00+02:00")
    assert recover.exit_code == 0, recover.output
    assert "Re-sending 12 failed or waiting deliveries of ci" in flat(recover.stdout)
    assert canned.requests[-1]["body"] == {
        "subscription_id": "ci", "since": "2024-05-01T12:00:00.000Z",
        "until": "2024-05-01T12:00:00.000Z",
    }


def test_deliveries_stats(canned: CannedDaemon) -> None:
    stats = {"deliveries": {"pending": 4, "succeeded": 95, "failed": 1}, "attempts": 120,
             "success_rate": 0.95, "latency_ms": {"p50": 35, "p95": 870},
             "failures_by_class": {"timeout": 3, "http_status": 9},
             "busiest": [{"subscription_id": "ci", "deliveries": 70}],
             "oldest_pending_age_ms": 3_723_000}
    canned.routes[("GET", "/v1/deliveries/stats")] = (200, stats)
    result = wide(canned, "deliveries", "stats", "--subscription", "ci", "--since", "1714564800")
    assert result.exit_code == 0, result.output
    assert canned.requests[0]["target"] == (
        "/v1/deliveries/stats?subscription=ci&since=2024-05-01T12%3A00%3A00.000Z"
    )
    text = flat(result.stdout)
    assert "succeeded 95, failed 1, pending 4" in text
    assert "95.0 %" in text and "35 ms" in text and "870 ms" in text
    assert "1h 2m 3s" in text
    assert text.index("http_status 9") < text.index("timeout 3")  # most failures first
    assert "ci 70" in text
    assert json.loads(cli(canned, "deliveries", "stats", "--json").stdout) == stats


def test_token_create_shows_it_once_with_a_curl_example(canned: CannedDaemon) -> None:
    canned.routes[("GET", "/v1/status")] = (
        200, {"listeners": [{"kind": "ingress", "address": "http://127.0.0.1:8080"},
                            {"kind": "admin", "address": "/x/palyra.sock"}],
              "settings": [{"section": "daemon", "key": "public_url", "value": "",
                            "source": "default"}]},
    )
    token = {"token_id": "t1", "name": "ci", "description": "deploys",
             "created_at": "2024-05-01T12:00:00.000Z"}
    canned.routes[("POST", "/v1/tokens")] = (201, {"token": token, "secret": "plt_t1_s3cr3t"})
    result = wide(canned, "tokens", "create", "ci", "--description", "deploys")
    assert result.exit_code == 0, result.output
    assert canned.requests[-1]["body"] == {"name": "ci", "description": "deploys"}
    assert result.stdout.count("plt_t1_s3cr3t") == 1
    text = flat(result.stdout)
    assert "will not be shown again" in text
    assert "curl -sS -X POST http://127.0.0.1:8080/v1/events" in text
    assert 'Authorization: Bearer $PALYRA_TOKEN' in text
    canned.requests.clear()
    machine = cli(canned, "tokens", "create", "ci", "--json")
    assert json.loads(machine.stdout) == {"token": token, "secret": "plt_t1_s3cr3t"}
    assert [r["target"] for r in canned.requests] == ["/v1/tokens"]  # no status lookup


def test_token_curl_example_prefers_the_public_url() -> None:
    status = {"listeners": [{"kind": "ingress", "address": "http://0.0.0.0:8080"}],
              "settings": [{"section": "daemon", "key": "public_url",
                            "value": "https://hooks.example/", "source": "file"}]}
    assert publish_base_url(status) == "https://hooks.example"
    assert publish_base_url({"listeners": status["listeners"]}) == "http://0.0.0.0:8080"
    assert publish_base_url({}) == "http://HOST:PORT"


def test_token_list_and_revoke(canned: CannedDaemon) -> None:
    tokens = {"tokens": [{"token_id": "t1", "name": "ci", "description": None,
                          "created_at": "2024-05-01T12:00:00.000Z"}]}
    canned.routes[("GET", "/v1/tokens")] = (200, tokens)
    canned.routes[("DELETE", "/v1/tokens/t1")] = (200, {"status": "revoked", "token_id": "t1"})
    listing = wide(canned, "tokens", "list")
    assert "t1" in listing.stdout and "2024-05-01T12:00:00.000Z" in listing.stdout
    assert json.loads(cli(canned, "tokens", "list", "--json").stdout) == tokens
    revoked = cli(canned, "tokens", "revoke", "t1", "--yes")
    assert revoked.exit_code == 0
    assert "Revoked token t1" in revoked.stdout


def test_token_create_sends_scopes_and_expiry_and_list_shows_them(
    canned: CannedDaemon,
) -> None:
    token = {"token_id": "t2", "name": "app", "description": "", "legacy": False,
             "scopes": ["publish:entry.*", "read:entry.*"], "expires_at": None,
             "created_at": "2024-05-01T12:00:00.000Z", "last_used_at": None}
    canned.routes[("POST", "/v1/tokens")] = (201, {"token": token, "secret": "plt_t2_s3cr3t"})
    created = cli(canned, "tokens", "create", "app", "--scope", "publish:entry.*",
                  "-s", "read:entry.*", "--expires", "90d", "--json")
    assert created.exit_code == 0, created.output
    assert canned.requests[-1]["body"] == {
        "name": "app", "scopes": ["publish:entry.*", "read:entry.*"], "expires_in_s": 90 * 86400}
    bad = cli(canned, "tokens", "create", "app", "--expires", "soon")
    assert bad.exit_code == 2 and "--expires" in bad.output
    legacy = {"token_id": "t1", "name": "old", "description": "", "legacy": True,
              "scopes": None, "expires_at": None, "created_at": None, "last_used_at": None}
    used = {**token, "expires_at": "2024-08-01T12:00:00Z",
            "last_used_at": "2024-05-02T08:00:00Z"}
    canned.routes[("GET", "/v1/tokens")] = (200, {"tokens": [legacy, used]})
    text = flat(wide(canned, "tokens", "list").stdout)
    assert "legacy: publish any type, read every event (no scopes set)" in text
    assert "publish:entry.* read:entry.*" in text
    assert "2024-08-01T12:00:00Z" in text and "2024-05-02T08:00:00Z" in text
    assert "never" in text


def test_emit_with_idempotency_key_and_source(canned: CannedDaemon) -> None:
    canned.routes[("POST", "/v1/events")] = [
        (201, {"event_id": "01J0A", "seq": 5, "duplicate": False}),
        (200, {"event_id": "01J0A", "seq": 5, "duplicate": True}),
        (200, {"event_id": "01J0A", "seq": 5, "duplicate": True}),
    ]
    args = ("system", "events", "emit", "deploy.done", "--idempotency-key", "job-42",
            "--source", "ci")
    first = cli(canned, *args)
    assert first.exit_code == 0
    assert "Journaled deploy.done as seq 5" in flat(first.stdout)
    again = cli(canned, *args)
    assert again.exit_code == 0
    assert "Duplicate: this idempotency key already published seq 5" in flat(again.stdout)
    machine = cli(canned, *args, "--json")
    assert json.loads(machine.stdout)["duplicate"] is True
    assert canned.requests[0]["body"] == {
        "type": "deploy.done", "source": "ci", "idempotency_key": "job-42",
    }


# Issue 9 item 14: every human printer shows what the daemon hands it (stored names,
# receivers' answers, provider event types, error messages) with control characters and
# bidi controls escaped and rich markup inert. The real daemon refuses these characters in
# the names it stores, so a canned peer hands them over.
H = "\x1b[2J\x1b]8;;https://evil.example/\x1b\\ok\x9b31m\u202eexe.txt\u2069[bold]x[/bold]\x00"
H_SHOWN = "\\x1b[2J\\x1b]8;;https://evil.example/\\x1b\\ok\\x9b31m\\u202eexe.txt\\u2069"
RAW = ("\x1b", "\x9b", "\u202e", "\u2069", "\x00")
HOSTILE_ROUTES: dict[tuple[str, str], Any] = {
    ("GET", "/v1/webhooks"): {"webhooks": [{
        "integration_id": "gh", "provider": H, "enabled": True, "readiness": H,
        "allowed_events": [H], "last_test_status": H, "last_test_at": H}]},
    ("GET", "/v1/webhooks/gh"): {"webhook": {
        "integration_id": H, "provider": H, "display_name": H, "readiness": H,
        "provider_options": {"event_header": H}, "last_test_message": H}},
    ("GET", "/v1/webhooks/nope"): (404, {"error": "not_found", "message": f"no {H}"}),
    ("GET", "/v1/subscriptions"): {"subscriptions": [{
        "subscription_id": H, "url": H, "enabled": False, "disabled_reason": H,
        "events": [H], "format": H, "pending": H, "health": {}}]},
    ("GET", "/v1/subscriptions/ci"): {"subscription": {
        "subscription_id": H, "url": H, "owner": H, "description": H, "headers": {"X-A": H},
        "health": {"failing_since": H}, "events": [H], "filter": {"data.kb": H}}},
    ("GET", "/v1/deliveries"): {"deliveries": [{
        "delivery_id": H, "subscription_id": H, "event_type": H, "event_seq": H,
        "status": H, "attempts": 1, "last_status_code": None, "last_error_class": H,
        "next_attempt_at": H}]},
    ("GET", "/v1/deliveries/d-1"): {"delivery": {"delivery_id": H, "event_type": H,
                                                 "status": H, "next_attempt_at": H},
                                    "attempts": [{"attempt_no": 1, "started_at": H,
                                                  "error_class": H, "error_detail": H,
                                                  "response_excerpt": H}]},
    ("GET", "/v1/tokens"): {"tokens": [{"token_id": H, "name": H, "description": H,
                                        "created_at": H}]},
    ("GET", "/v1/status"): {"version": H, "state_dir": H, "listeners": [{"kind": H,
                                                                         "address": H}],
                            "journal": {"path": H}, "keyring": {"backend": H},
                            "integrations": {"total": 1, "by_readiness": {H: 1}},
                            "settings": [{"section": H, "key": H, "value": H,
                                          "source": H}]},
}


@pytest.mark.parametrize(("command", "route"), [
    (("webhooks", "list"), "/v1/webhooks"),
    (("webhooks", "show", "gh"), "/v1/webhooks/gh"),
    (("webhooks", "show", "nope"), "/v1/webhooks/nope"),
    (("subscriptions", "list"), "/v1/subscriptions"),
    (("subscriptions", "show", "ci"), "/v1/subscriptions/ci"),
    (("deliveries", "list"), "/v1/deliveries"),
    (("deliveries", "show", "d-1"), "/v1/deliveries/d-1"),
    (("tokens", "list"), "/v1/tokens"),
    (("daemon", "status"), "/v1/status"),
], ids=lambda value: " ".join(value) if isinstance(value, tuple) else str(value))
def test_human_output_shows_control_characters_escaped(
    canned: CannedDaemon, command: tuple[str, ...], route: str,
) -> None:
    for key, answer in HOSTILE_ROUTES.items():
        canned.routes[key] = answer if isinstance(answer, tuple) else (200, answer)
    output.console.cache_clear()  # a console wide enough that no cell is folded
    try:
        result = runner.invoke(app, [*command, "--state-dir", str(canned.state_dir)],
                               env={"PALYRA_STATE_DIR": None, "COLUMNS": "4000"})
    finally:
        output.console.cache_clear()
    shown = result.stdout + result.stderr
    assert not [c for c in RAW if c in shown], shown
    assert H_SHOWN in shown, shown
    assert "[bold]x[/bold]" in shown  # markup shown as text, not applied
    machine = cli(canned, *command, "--json")
    answer = HOSTILE_ROUTES[("GET", route)]
    expected = answer[1] if isinstance(answer, tuple) else answer
    assert json.loads(machine.stdout) == expected  # exact, control characters and all


def test_printable_escapes_c0_del_c1_and_bidi_controls_only() -> None:
    controls = {chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
    controls |= set(output.BIDI_CONTROLS)
    kept = "".join(chr(c) for c in range(0x20, 0x7F)) + "\xa0é\xff漢😀\u200b\u200d"
    shown = output.printable("".join(sorted(controls)) + kept)
    assert not controls & set(shown)
    assert shown.endswith(kept)
    assert output.printable("\x1b\x9b\x7f\n\t\r\u202e\u061c") == (
        "\\x1b\\x9b\\x7f\\n\\t\\r\\u202e\\u061c")
    assert output.printable("a\nb\tc", newlines=True) == "a\nb\\tc"


def test_the_console_escapes_what_a_printer_forgot(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.text import Text

    output.console.cache_clear()
    try:
        output.console().print(Text("ok\x1b[2J\x9b31m\u202e"), "two\nlines")
    finally:
        output.console.cache_clear()
    assert capsys.readouterr().out == "ok\\x1b[2J\\x9b31m\\u202e two\nlines\n"
