"""Publishing events to palyra from Python applications.

``Client`` uses the standard library only; ``AsyncClient`` uses aiohttp, imported the first
time it opens a connection (so ``from palyra_py.client import Client`` stays light). Both talk
either to the daemon's admin socket (same machine, no token; the state directory is found
as the CLI finds it) or, given ``url`` and ``token``, to its ingress listener over HTTP(S)
with ``Authorization: Bearer``. See "Python client" in ``docs/cli.md``.

    from palyra_py.client import Client

    result = Client().emit("deploy.done", {"version": "2.3"}, idempotency_key="deploy-2.3")
    print(result.seq, result.duplicate)
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlencode, urlsplit

from palyra_py import __version__
from palyra_py.clients.admin import SseDecoder, SseEvent
from palyra_py.clients.errors import NOT_RUNNING_ERRORS, ApiError, PalyraError, PalyraUnreachable
from palyra_py.paths import resolve_state_dir, socket_path

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ApiError", "AsyncClient", "Client", "EmitResult", "PalyraError", "PalyraUnreachable"]

Severity = Literal["info", "warn", "error"]
Event = dict[str, Any]
_T = TypeVar("_T")

DEFAULT_TIMEOUT_S = 10.0
# The daemon sends a keepalive comment every 15 s on a stream, so a silent minute means
# the connection is dead.
STREAM_READ_TIMEOUT_S = 60.0
MAX_ANSWER_BYTES = 1024 * 1024
USER_AGENT = f"palyra-py/{__version__}"


@dataclass(frozen=True, slots=True)
class EmitResult:
    """What ``emit`` got back. ``duplicate`` is true when the idempotency key was already
    used in the last 24 h: ``event_id`` and ``seq`` are then the first event's, and nothing
    new was published."""

    event_id: str
    seq: int
    duplicate: bool


# --- what both clients share ---------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """``HTTPConnection`` whose ``connect()`` opens an ``AF_UNIX`` stream socket."""

    def __init__(self, path: Path, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self.unix_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True, slots=True)
class _Endpoint:
    unix_path: Path | None
    scheme: str = "http"
    host: str = "localhost"
    port: int | None = None
    prefix: str = ""

    @property
    def where(self) -> str:
        if self.unix_path is not None:
            return str(self.unix_path)
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{self.host}{port}{self.prefix}"

    @property
    def base_url(self) -> str:
        if self.unix_path is not None:
            return "http://localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{host}{port}{self.prefix}"


def _endpoint(state_dir: Path | str | None, url: str | None) -> _Endpoint:
    if url is None:
        directory = resolve_state_dir(None if state_dir is None else Path(state_dir))
        return _Endpoint(unix_path=socket_path(directory))
    if state_dir is not None:
        raise ValueError("give state_dir (the local socket) or url (HTTP), not both")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be http://HOST[:PORT] or https://HOST[:PORT]")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not hold credentials: pass token= instead")
    if parts.query or parts.fragment:
        raise ValueError("url must not have a query or a fragment")
    return _Endpoint(
        unix_path=None, scheme=parts.scheme, host=parts.hostname, port=parts.port,
        prefix=parts.path.rstrip("/"),
    )


def _headers(token: str | None, *, accept: str = "application/json") -> dict[str, str]:
    headers = {"Accept": accept, "User-Agent": USER_AGENT}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _emit_body(
    type: str, data: Mapping[str, Any] | None, *, source: str | None, actor: str | None,
    idempotency_key: str | None, severity: str | None, summary: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type}
    optional = {
        "data": None if data is None else dict(data),
        "source": source,
        "actor": actor,
        "idempotency_key": idempotency_key,
        "severity": severity,
        "summary": summary,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def _stream_target(
    types: str | Sequence[str] | None, after_seq: int | None, integration: str | None,
    source: str | None,
) -> str:
    pairs: list[tuple[str, str]] = []
    if types is not None:
        pairs.extend(("type", item) for item in ([types] if isinstance(types, str) else types))
    for key, value in (("integration", integration), ("source", source), ("after_seq", after_seq)):
        if value is not None:
            pairs.append((key, str(value)))
    return "/v1/events/stream" + ("?" + urlencode(pairs) if pairs else "")


def _error(status: int, reason: str, raw: bytes) -> ApiError:
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "error" in doc:
        return ApiError(status, doc)
    text = raw[:200].decode("utf-8", errors="replace").strip()
    message = f"HTTP {status} {reason}".rstrip() + (f": {text}" if text else "")
    return ApiError(status, {"error": "http_error", "message": message})


def _unreachable(exc: BaseException, where: str) -> PalyraUnreachable:
    """What a transport failure means, the same for ``Client`` and ``AsyncClient``."""
    if isinstance(exc, NOT_RUNNING_ERRORS):
        return PalyraUnreachable(
            f"the daemon is not running (nothing listens on {where})", where=where,
            not_running=True,
        )
    if isinstance(exc, TimeoutError):
        return PalyraUnreachable(f"no answer from {where} within the timeout", where=where)
    if isinstance(exc, ssl.SSLError):
        return PalyraUnreachable(f"TLS with {where} failed: {exc}", where=where)
    return PalyraUnreachable(f"cannot talk to {where}: {exc or type(exc).__name__}", where=where)


def _emit_result(status: int, reason: str, raw: bytes) -> EmitResult:
    if not 200 <= status < 300:
        raise _error(status, reason, raw)
    try:
        doc = json.loads(raw)
        return EmitResult(
            event_id=_checked(doc["event_id"], str),
            seq=_checked(doc["seq"], int),
            duplicate=doc.get("duplicate") is True,
        )
    except (ValueError, KeyError, TypeError):
        raise ApiError(
            status, {"error": "invalid_response", "message": "the answer has no event_id and seq"}
        ) from None


def _checked(value: Any, kind: type[Any]) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(kind.__name__)
    return value


def _events(messages: list[SseEvent]) -> Iterator[Event]:
    for message in messages:
        try:
            event = message.json()
        except ValueError:
            continue  # not an event document; the stream carries nothing else we know
        if isinstance(event, dict):
            yield event


# --- the synchronous client ------------------------------------------------------------


class Client:
    """Publishes events and follows the event stream, one request per connection.

    ``state_dir``: the daemon's state directory (default: ``$PALYRA_STATE_DIR``, else the
    platform's data dir, as for the CLI); its ``palyra.sock`` is used. ``url`` (with
    ``token``): the daemon's ingress listener, e.g. ``https://hooks.example:8443``, instead.
    ``timeout``: seconds for connecting and for each answer. ``ssl_context``: for HTTPS with
    a private CA. Raises ``ValueError`` for a bad ``url`` and ``paths.SocketPathTooLong`` for
    a socket path that cannot be bound. Methods raise ``PalyraError``s
    (``palyra_py.clients.errors``, the CLI's admin client's classes too):
    ``ApiError`` when the daemon refuses, ``PalyraUnreachable`` when it cannot be reached;
    never with the token in the message.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._endpoint = _endpoint(state_dir, url)
        self._token = token
        self.timeout = timeout
        self._ssl_context = ssl_context

    def __repr__(self) -> str:
        return f"Client({self._endpoint.where!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (each request has its own connection); for symmetry with
        ``AsyncClient``."""

    def emit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        actor: str | None = None,
        idempotency_key: str | None = None,
        severity: Severity | None = None,
        summary: str | None = None,
    ) -> EmitResult:
        """Publish one event (``POST /v1/events``). It is journaled durably before this
        returns, and reaches every stream and matching subscription.

        ``type``: lowercase ``a-z 0-9 . _ : -``, at most 64; not a reserved prefix.
        ``data``: a JSON object of at most 8 KiB. ``source`` defaults to ``operator`` on the
        socket and to the token's name over HTTP. With ``idempotency_key`` (1-128 printable
        characters) a retry after a timeout is safe: the same key within 24 h publishes
        nothing new and answers with the first event (``duplicate=True``).
        """
        body = _emit_body(
            type, data, source=source, actor=actor, idempotency_key=idempotency_key,
            severity=severity, summary=summary,
        )
        payload = json.dumps(body).encode()
        headers = {**_headers(self._token), "Content-Type": "application/json"}
        conn = self._connection(self.timeout)
        try:
            self._guard(lambda: conn.request(
                "POST", self._endpoint.prefix + "/v1/events", body=payload, headers=headers
            ))
            response = self._guard(conn.getresponse)
            raw = self._guard(lambda: response.read(MAX_ANSWER_BYTES))
            return _emit_result(response.status, response.reason, raw)
        finally:
            conn.close()

    def stream(
        self,
        types: str | Sequence[str] | None = None,
        after_seq: int | None = None,
        *,
        integration: str | None = None,
        source: str | None = None,
    ) -> Iterator[Event]:
        """Yield journal events (``GET /v1/events/stream``) as dicts (the API's ``Event``:
        ``seq``, ``event_id``, ``kind``, ``event_type``, ``payload``, ...), those after
        ``after_seq`` first, then new ones as they are journaled. ``types`` are globs.

        Ends when the daemon closes the stream (it stops); resume with ``after_seq`` set
        to the last ``seq`` seen. Closing the generator closes the connection.
        """
        target = self._endpoint.prefix + _stream_target(types, after_seq, integration, source)
        headers = _headers(self._token, accept="text/event-stream")
        conn = self._connection(STREAM_READ_TIMEOUT_S)
        try:
            self._guard(lambda: conn.request("GET", target, headers=headers))
            response = self._guard(conn.getresponse)
            if not 200 <= response.status < 300:
                raw = self._guard(lambda: response.read(MAX_ANSWER_BYTES))
                raise _error(response.status, response.reason, raw)
            decoder = SseDecoder()
            while True:
                line = self._guard(response.readline)
                if not line:
                    return
                yield from _events(decoder.feed(line))
        finally:
            conn.close()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        end = self._endpoint
        if end.unix_path is not None:
            return UnixHTTPConnection(end.unix_path, timeout=timeout)
        if end.scheme == "https":
            context = self._ssl_context or ssl.create_default_context()
            return http.client.HTTPSConnection(
                end.host, end.port, timeout=timeout, context=context
            )
        return http.client.HTTPConnection(end.host, end.port, timeout=timeout)

    def _guard(self, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except (TimeoutError, ssl.SSLError, http.client.HTTPException, OSError) as exc:
            raise _unreachable(exc, self._endpoint.where) from None


# --- the asynchronous client -----------------------------------------------------------


class AsyncClient:
    """``Client`` for asyncio applications, on one aiohttp session (connections are
    reused). Same constructor and errors as ``Client``. Use ``async with AsyncClient() as
    client:``, or call ``await client.close()`` when done.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._endpoint = _endpoint(state_dir, url)
        self._token = token
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"AsyncClient({self._endpoint.where!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session; the client opens a new one if used again."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def emit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        actor: str | None = None,
        idempotency_key: str | None = None,
        severity: Severity | None = None,
        summary: str | None = None,
    ) -> EmitResult:
        """As ``Client.emit``."""
        import aiohttp

        body = _emit_body(
            type, data, source=source, actor=actor, idempotency_key=idempotency_key,
            severity=severity, summary=summary,
        )
        session = self._session()
        try:
            async with session.post(
                self._endpoint.base_url + "/v1/events", json=body, headers=_headers(self._token),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES)
                return _emit_result(response.status, response.reason or "", raw)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None

    async def stream(
        self,
        types: str | Sequence[str] | None = None,
        after_seq: int | None = None,
        *,
        integration: str | None = None,
        source: str | None = None,
    ) -> AsyncIterator[Event]:
        """As ``Client.stream``: ``async for event in client.stream("deploy.*"):``."""
        import aiohttp

        target = self._endpoint.base_url + _stream_target(types, after_seq, integration, source)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=STREAM_READ_TIMEOUT_S
        )
        session = self._session()
        decoder = SseDecoder()
        try:
            async with session.get(
                target, headers=_headers(self._token, accept="text/event-stream"),
                timeout=timeout,
            ) as response:
                if not 200 <= response.status < 300:
                    raw = await response.content.read(MAX_ANSWER_BYTES)
                    raise _error(response.status, response.reason or "", raw)
                async for line in response.content:
                    for event in _events(decoder.feed(line)):
                        yield event
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None

    def _session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._http is None:
            connector: aiohttp.BaseConnector
            if self._endpoint.unix_path is not None:
                connector = aiohttp.UnixConnector(path=str(self._endpoint.unix_path))
            else:
                connector = aiohttp.TCPConnector(ssl=self._ssl_context or True)
            self._http = aiohttp.ClientSession(connector=connector)
        return self._http

    def _unreachable(self, exc: BaseException) -> PalyraUnreachable:
        # aiohttp wraps the socket's own error (ClientConnectorError.os_error).
        cause = getattr(exc, "os_error", None)
        if isinstance(cause, NOT_RUNNING_ERRORS) and not isinstance(exc, TimeoutError):
            exc = cause
        return _unreachable(exc, self._endpoint.where)
