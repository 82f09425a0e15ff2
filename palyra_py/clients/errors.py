"""What the palyra clients raise, one hierarchy for all of them: the Python client
(``palyra_py.client``: ``Client`` and ``AsyncClient``, which re-exports these names) and the
CLI's admin client (``clients.admin.AdminClient``). The same failure is the same class
whichever client met it::

    PalyraError             base: status, code, message, field
    ├── PalyraUnreachable   nothing answered: not running, refused, timed out, broken, TLS
    └── ApiError            the daemon answered an error status (or an unreadable answer)

Standard library only: the CLI imports this at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["NOT_RUNNING_ERRORS", "ApiError", "PalyraError", "PalyraUnreachable"]

# What connecting to a socket raises when the daemon is simply not started: no socket file
# (or no state directory), or a socket left behind that nobody listens on.
NOT_RUNNING_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError, NotADirectoryError, ConnectionRefusedError,
)  # fmt: skip


class PalyraError(Exception):
    """Base of everything the clients raise. ``status`` is the HTTP status (``0`` when
    nothing answered), ``code`` the API's stable reason code (``invalid_request``,
    ``unauthorized``, ``journal_unavailable``, ... or ``unreachable``), ``message`` its
    text and ``field`` the request field at fault, when one is. ``str()`` is
    ``"<code>: <message>"`` and never holds a token."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class PalyraUnreachable(PalyraError):
    """No answer: nothing listens, the connection was refused, failed or broke, TLS failed,
    or the daemon did not answer within the timeout. ``status`` is 0, ``code``
    ``unreachable``; ``where`` is the socket path or URL; ``not_running`` is true when the
    socket is missing or refuses connections (the daemon is simply not started)."""

    def __init__(self, message: str, *, where: str = "", not_running: bool = False) -> None:
        super().__init__(0, "unreachable", message)
        self.where = where
        self.not_running = not_running


class ApiError(PalyraError):
    """The daemon answered with an error status, or with an answer the client cannot read
    (``code`` ``invalid_response``). ``body`` is the API's JSON error document
    (``{"error", "message", "field"?, "location"?}``), made up when it sent none;
    ``location`` points into ``webhooks.toml`` for a registry error."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        field = body.get("field")
        location = body.get("location")
        super().__init__(
            status,
            str(body.get("error") or "unknown"),
            str(body.get("message") or f"HTTP {status}"),
            field=None if field is None else str(field),
        )
        self.body = dict(body)
        self.location = None if location is None else str(location)
