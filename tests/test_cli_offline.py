"""The CLI without a daemon: start-up cost, exit codes, argument checks, time parsing,
SSE parsing, and the admin client against a canned HTTP peer on a Unix socket."""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from palyra_py import __version__
from palyra_py.admin_client import AdminClient, ApiError, SseDecoder, SseEvent, iter_sse
from palyra_py.cli.main import app
from palyra_py.cli.timeparse import TimeParseError, parse_duration, parse_time
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
from palyra_py.cli.main import app, main

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
         "palyra_py.daemon"]
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
    assert {"", "daemon run", "webhooks add", "system events tail"} <= set(report["paths"])
    assert len(report["paths"]) >= 20


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
     ("1h30m", 5400), ("2w", 1209600), (" 5M ", 300)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5", "1.5h", "5 m", "10y", "h", "15m ago"])
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


def _handler(daemon: CannedDaemon) -> type[BaseHTTPRequestHandler]:
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


@pytest.fixture
def canned(state_dir: Path) -> Iterator[CannedDaemon]:
    daemon = CannedDaemon(state_dir)
    server = socketserver.ThreadingUnixStreamServer(
        str(state_dir / "palyra.sock"), _handler(daemon)
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield daemon
    server.shutdown()
    server.server_close()
    thread.join()


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
