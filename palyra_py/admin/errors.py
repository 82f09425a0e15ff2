"""Errors of the admin API, rendered as ``{"error", "message", ...}`` by one middleware."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger("palyra.admin")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", what)


def invalid(message: str, field: str | None = None) -> ApiError:
    extra = {"field": field} if field else {}
    return ApiError(400, "invalid_request", message, **extra)


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, **exc.extra)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "payload_too_large", "request body too large")
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "invalid_request")
            return error_response(exc.status, code, exc.reason)
        raise
    except Exception:
        log.exception("admin_internal_error", path=request.path)
        return error_response(500, "internal", "internal error; see the daemon log")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(raw, parse_constant=no_constants)
    except (ValueError, RecursionError):
        raise invalid("request body is not valid JSON (RFC 8259: no NaN or Infinity)") from None
    if not isinstance(value, dict):
        raise invalid("request body must be a JSON object")
    return value
