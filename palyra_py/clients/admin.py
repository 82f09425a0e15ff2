"""A small client of the daemon's admin API (``docs/admin-api.md``) over its Unix socket.

Standard library only: the CLI must start without importing aiohttp (nor ``http.client``,
see ``unix_http``). One request per connection; JSON in, JSON out; ``stream()`` yields
server-sent events as they arrive.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from palyra_py import __version__
from palyra_py.clients import unix_http
from palyra_py.clients.errors import NOT_RUNNING_ERRORS, ApiError, PalyraUnreachable
from palyra_py.paths import socket_path

_T = TypeVar("_T")
JsonObject = dict[str, Any]
QueryValue = str | int | Sequence[str] | None

DEFAULT_TIMEOUT_S = 30.0
# The daemon sends a keepalive comment every 15 s, so a silent minute means it is stuck.
STREAM_TIMEOUT_S = 60.0
# POST /v1/subscriptions/{id}/test waits for the first attempt: up to timeout_s (at most
# 60 s) plus 5 s, so the client waits a little longer than the daemon can.
SUBSCRIPTION_TEST_TIMEOUT_S = 75.0
USER_AGENT = f"palyra-cli/{__version__}"


def _rotation(grace_s: int | None, secret: JsonObject | None) -> JsonObject:
    """The body of a rotate-secret request: only the fields given."""
    body: JsonObject = {}
    if grace_s is not None:
        body["grace_s"] = grace_s
    if secret is not None:
        body["secret"] = secret
    return body


# --- server-sent events -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event. ``event`` defaults to ``"message"`` as in the SSE spec."""

    data: str
    event: str = "message"
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SseDecoder:
    """Incremental ``text/event-stream`` parser: ``feed()`` bytes in any split, get the
    events completed so far. Follows the HTML spec's field rules: ``:`` lines are
    comments, one space after the colon is dropped, ``data`` lines join with newlines,
    a blank line dispatches, an event with no data is not dispatched."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None

    @property
    def last_event_id(self) -> str | None:
        return self._last_id

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            line, found = self._take_line()
            if not found:
                return events
            event = self._line(line)
            if event is not None:
                events.append(event)

    def close(self) -> None:
        """End of stream: an event not closed by a blank line is discarded (as the spec
        says), and the decoder is ready for a new stream."""
        self._buffer, self._data, self._event = b"", [], ""

    def _take_line(self) -> tuple[bytes, bool]:
        buf = self._buffer
        lf, cr = buf.find(b"\n"), buf.find(b"\r")
        if lf < 0 and cr < 0:
            return b"", False
        if cr >= 0 and (lf < 0 or cr < lf):
            if cr == len(buf) - 1:
                # A CR at the end of a read may be the first half of a CRLF.
                return b"", False
            end = cr + 2 if buf[cr + 1 : cr + 2] == b"\n" else cr + 1
            line = buf[:cr]
        else:
            end, line = lf + 1, buf[:lf]
        self._buffer = buf[end:]
        return line, True

    def _line(self, raw: bytes) -> SseEvent | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SseEvent(data="\n".join(data), event=event or "message", id=self._last_id)


def iter_sse(chunks: Iterable[bytes]) -> Iterator[SseEvent]:
    """Parse a whole stream given as byte chunks split anywhere."""
    decoder = SseDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    decoder.close()


# --- transport -----------------------------------------------------------------------


def _build_query(query: Mapping[str, QueryValue] | None) -> str:
    if not query:
        return ""
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        if value is None:
            continue
        if isinstance(value, str | int):
            pairs.append((key, str(value)))
        else:
            pairs.extend((key, item) for item in value)
    return "?" + urlencode(pairs) if pairs else ""


def _segment(value: str) -> str:
    return quote(value, safe="")


class AdminClient:
    """Talks to the daemon whose state directory is ``state_dir``.

    Every method returns the API's JSON answer as a dict, or raises ``PalyraUnreachable``
    (nothing answers), ``ApiError`` (the daemon answered an error), both ``PalyraError``s
    (``clients.errors``, the same classes the Python client raises), or
    ``paths.SocketPathTooLong`` (raised at construction).
    """

    def __init__(self, state_dir: Path, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.state_dir = state_dir
        self.socket_path = socket_path(state_dir)
        self.timeout = timeout

    # -- generic --

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, QueryValue] | None = None,
        body: JsonObject | None = None,
        timeout: float | None = None,
    ) -> JsonObject:
        """One exchange; ``timeout`` (seconds) overrides the client's for routes that wait
        on purpose (``test_subscription``)."""
        wait = self.timeout if timeout is None else timeout
        response = self._send(method, path + _build_query(query), body, wait)
        try:
            raw = self._guard(response.read)
            return self._decode(response.status, response.reason, raw)
        finally:
            response.close()

    def stream(
        self,
        path: str,
        *,
        query: Mapping[str, QueryValue] | None = None,
        last_event_id: str | None = None,
        timeout: float = STREAM_TIMEOUT_S,
    ) -> Iterator[SseEvent]:
        """Yield events until the daemon ends the stream. Closing the generator (or an
        exception such as KeyboardInterrupt in the consumer) closes the connection."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        response = self._send("GET", path + _build_query(query), None, timeout, headers)
        try:
            if not 200 <= response.status < 300:
                raw = self._guard(response.read)
                self._decode(response.status, response.reason, raw)
            decoder = SseDecoder()
            pieces = response.iter_body()
            while piece := self._guard(lambda: next(pieces, b"")):
                yield from decoder.feed(piece)
        finally:
            response.close()

    def _send(
        self,
        method: str,
        target: str,
        body: JsonObject | None,
        timeout: float,
        extra_headers: Mapping[str, str] | None = None,
    ) -> unix_http.UnixHttpResponse:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if extra_headers:
            headers.update(extra_headers)
        return self._guard(
            lambda: unix_http.request(
                self.socket_path, method, target, headers=headers, body=payload,
                timeout=timeout,
            )
        )

    def _guard(self, action: Callable[[], _T]) -> _T:
        """Run one step of the exchange, turning transport failures into
        ``PalyraUnreachable``."""
        try:
            return action()
        except ConnectionRefusedError:
            raise self._unreachable(f"nothing is listening on {self.socket_path}", True) from None
        except NOT_RUNNING_ERRORS:
            raise self._unreachable(f"no socket at {self.socket_path}", True) from None
        except TimeoutError:
            raise self._unreachable(
                f"the daemon did not answer on {self.socket_path} in time", False
            ) from None
        except PermissionError:
            raise self._unreachable(
                f"permission denied on {self.socket_path} (is the daemon run by another user?)",
                False,
            ) from None
        except (ConnectionResetError, BrokenPipeError):
            raise self._unreachable(
                f"the daemon closed the connection on {self.socket_path}", False
            ) from None
        except OSError as exc:
            raise self._unreachable(
                f"cannot talk to the daemon on {self.socket_path}: {exc}", False
            ) from None

    def _unreachable(self, text: str, not_running: bool) -> PalyraUnreachable:
        if not_running:
            text = f"the daemon is not running ({text})"
        return PalyraUnreachable(text, where=str(self.socket_path), not_running=not_running)

    @staticmethod
    def _decode(status: int, reason: str, raw: bytes) -> JsonObject:
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = None
        ok = 200 <= status < 300
        if isinstance(doc, dict):
            if ok:
                return doc
            raise ApiError(status, doc if "error" in doc else {"error": "http_error", **doc})
        text = raw[:200].decode("utf-8", errors="replace").strip()
        raise ApiError(
            status,
            {
                "error": "invalid_response" if ok else "http_error",
                "message": f"the daemon answered HTTP {status} {reason} "
                f"without a JSON object{': ' + text if text else ''}",
            },
        )

    # -- the API, one method per route --

    def status(self) -> JsonObject:
        return self.request("GET", "/v1/status")

    def reload(self) -> JsonObject:
        return self.request("POST", "/v1/reload")

    def registry_document(self) -> JsonObject:
        return self.request("GET", "/v1/registry")

    def import_registry(self, document: str, *, dry_run: bool = False,
                        expected_version: int | None = None) -> JsonObject:
        body: JsonObject = {"document": document, "dry_run": dry_run}
        if expected_version is not None:
            body["expected_version"] = expected_version
        return self.request("POST", "/v1/registry/import", body=body)

    def list_webhooks(self) -> JsonObject:
        return self.request("GET", "/v1/webhooks")

    def add_webhook(self, fields: JsonObject) -> JsonObject:
        return self.request("POST", "/v1/webhooks", body=fields)

    def get_webhook(self, integration_id: str) -> JsonObject:
        return self.request("GET", f"/v1/webhooks/{_segment(integration_id)}")

    def update_webhook(self, integration_id: str, fields: JsonObject) -> JsonObject:
        return self.request("PATCH", f"/v1/webhooks/{_segment(integration_id)}", body=fields)

    def remove_webhook(self, integration_id: str) -> JsonObject:
        return self.request("DELETE", f"/v1/webhooks/{_segment(integration_id)}")

    def set_webhook_enabled(self, integration_id: str, enabled: bool) -> JsonObject:
        action = "enable" if enabled else "disable"
        return self.request("POST", f"/v1/webhooks/{_segment(integration_id)}/{action}")

    def rotate_secret(
        self, integration_id: str, *, grace_s: int | None, secret: JsonObject | None
    ) -> JsonObject:
        path = f"/v1/webhooks/{_segment(integration_id)}/rotate-secret"
        return self.request("POST", path, body=_rotation(grace_s, secret))

    def readiness(self, integration_id: str | None = None) -> JsonObject:
        return self.request(
            "GET", "/v1/webhooks/readiness", query={"integration_id": integration_id}
        )

    def test_webhook(self, integration_id: str, body: JsonObject) -> JsonObject:
        return self.request("POST", f"/v1/webhooks/{_segment(integration_id)}/test", body=body)

    def list_events(self, query: Mapping[str, QueryValue]) -> JsonObject:
        return self.request("GET", "/v1/events", query=query)

    def stream_events(self, query: Mapping[str, QueryValue]) -> Iterator[SseEvent]:
        return self.stream("/v1/events/stream", query=query)

    def emit_event(self, body: JsonObject) -> JsonObject:
        return self.request("POST", "/v1/events", body=body)

    def verify_journal(self) -> JsonObject:
        return self.request("POST", "/v1/journal/verify")

    # -- outbound: subscriptions --

    def list_subscriptions(self) -> JsonObject:
        return self.request("GET", "/v1/subscriptions")

    def add_subscription(self, fields: JsonObject) -> JsonObject:
        return self.request("POST", "/v1/subscriptions", body=fields)

    def get_subscription(self, subscription_id: str) -> JsonObject:
        return self.request("GET", f"/v1/subscriptions/{_segment(subscription_id)}")

    def update_subscription(self, subscription_id: str, fields: JsonObject) -> JsonObject:
        path = f"/v1/subscriptions/{_segment(subscription_id)}"
        return self.request("PATCH", path, body=fields)

    def remove_subscription(self, subscription_id: str) -> JsonObject:
        return self.request("DELETE", f"/v1/subscriptions/{_segment(subscription_id)}")

    def enable_subscription(self, subscription_id: str, *, catch_up: bool = False) -> JsonObject:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/enable"
        return self.request("POST", path, body={"catch_up": catch_up})

    def disable_subscription(self, subscription_id: str) -> JsonObject:
        return self.request("POST", f"/v1/subscriptions/{_segment(subscription_id)}/disable")

    def rotate_subscription_secret(
        self, subscription_id: str, *, grace_s: int | None, secret: JsonObject | None
    ) -> JsonObject:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/rotate-secret"
        return self.request("POST", path, body=_rotation(grace_s, secret))

    def test_subscription(
        self, subscription_id: str, body: JsonObject, *,
        timeout: float = SUBSCRIPTION_TEST_TIMEOUT_S,
    ) -> JsonObject:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/test"
        return self.request("POST", path, body=body, timeout=timeout)

    def replay_subscription(self, subscription_id: str, body: JsonObject) -> JsonObject:
        """One page of a replay: ``{replayed, scanned, to_seq, next_from_seq}``."""
        path = f"/v1/subscriptions/{_segment(subscription_id)}/replay"
        return self.request("POST", path, body={k: v for k, v in body.items()
                                                if v is not None})

    # -- outbound: deliveries --

    def list_deliveries(self, query: Mapping[str, QueryValue]) -> JsonObject:
        return self.request("GET", "/v1/deliveries", query=query)

    def get_delivery(self, delivery_id: str) -> JsonObject:
        return self.request("GET", f"/v1/deliveries/{_segment(delivery_id)}")

    def retry_delivery(self, delivery_id: str) -> JsonObject:
        return self.request("POST", f"/v1/deliveries/{_segment(delivery_id)}/retry")

    def retry_deliveries(self, subscription_id: str, status: str, *, after: str | None = None,
                         limit: int = 100) -> JsonObject:
        """One page of a bulk retry: ``{retried, next_after}``."""
        body: JsonObject = {"subscription_id": subscription_id, "status": status,
                            "limit": limit}
        if after is not None:
            body["after"] = after
        return self.request("POST", "/v1/deliveries/retry", body=body)

    def recover_deliveries(
        self, subscription_id: str, *, since: str, until: str | None = None
    ) -> JsonObject:
        body: JsonObject = {"subscription_id": subscription_id, "since": since}
        if until is not None:
            body["until"] = until
        return self.request("POST", "/v1/deliveries/recover", body=body)

    def delivery_stats(self, query: Mapping[str, QueryValue]) -> JsonObject:
        return self.request("GET", "/v1/deliveries/stats", query=query)

    # -- outbound: publishing tokens --

    def list_tokens(self) -> JsonObject:
        return self.request("GET", "/v1/tokens")

    def create_token(self, fields: JsonObject) -> JsonObject:
        return self.request("POST", "/v1/tokens", body=fields)

    def revoke_token(self, token_id: str) -> JsonObject:
        return self.request("DELETE", f"/v1/tokens/{_segment(token_id)}")
