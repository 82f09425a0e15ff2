"""The answer to the sender of an accepted webhook, when its integration sets one.

Called only after the journal's commit: whatever the answer, the event is journaled.

- ``response`` alone: that static answer, for a new event and a duplicate alike.
- ``response_command``: for a new event, the command runs (inbound.response_command) with
  the sender's payload as JSON on stdin and ``PALYRA_EVENT_ID``, ``PALYRA_EVENT_TYPE``,
  ``PALYRA_INTEGRATION_ID``, ``PALYRA_SEQ`` in its environment; its stdout is the body, with
  ``response.status`` (else 200) and ``response.content_type`` (else ``application/json``
  when stdout is JSON, ``text/plain; charset=utf-8`` otherwise). When it cannot run, exits
  non-zero, passes ``response_timeout_s`` or writes more than 64 KiB, the fallback is sent:
  the static ``response``, else the usual 202 ``accepted`` answer.
- A duplicate (a replay of one delivery) never runs the command again: it gets the
  fallback (the static ``response``, else the usual 200 ``duplicate`` answer).

Every custom answer carries ``Palyra-Event-Id``, ``Palyra-Seq`` and ``Palyra-Status``
(``accepted`` or ``duplicate``) headers: ``webhooks test`` reads its outcome there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import structlog
from aiohttp import web

from palyra_py.events import AppendResult, EncodedPayload, NewEvent
from palyra_py.inbound.response_command import CommandResult, clean_env, run_bounded
from palyra_py.registry.integrations import Integration

log = structlog.get_logger("palyra.ingress")

MAX_CONCURRENT_COMMANDS = 16
"""Reply commands running at once in one process; a request waiting for a slot waits
within its own ``response_timeout_s``, then gets the fallback."""

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"


def wants_reply(integ: Integration) -> bool:
    return integ.response is not None or bool(integ.response_command)


def _headers(result: AppendResult, content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, "Palyra-Event-Id": result.event_id,
            "Palyra-Seq": str(result.seq),
            "Palyra-Status": "duplicate" if result.duplicate else "accepted"}


def static_answer(integ: Integration, result: AppendResult) -> web.Response | None:
    spec = integ.response
    if spec is None:
        return None
    return web.Response(body=str(spec["body"]).encode("utf-8"), status=int(spec["status"]),
                        headers=_headers(result, str(spec["content_type"])))


def _stdin_of(event: NewEvent) -> bytes:
    """The sender's payload (the envelope's ``payload`` object) as JSON."""
    text = event.payload.text if isinstance(event.payload, EncodedPayload) else "{}"
    payload = orjson.loads(text).get("payload", {})
    return orjson.dumps(payload)


def _content_type(integ: Integration, stdout: bytes) -> str:
    if integ.response is not None:
        return str(integ.response["content_type"])
    try:
        orjson.loads(stdout)
    except orjson.JSONDecodeError:
        return TEXT_TYPE
    return JSON_TYPE


class Replies:
    """The custom answers of one ingress process (see the module's docstring)."""

    def __init__(self, max_concurrent: int = MAX_CONCURRENT_COMMANDS) -> None:
        self._slots = asyncio.Semaphore(max_concurrent)

    async def answer(
        self, integ: Integration, event: NewEvent, result: AppendResult,
        fallback: Callable[[], web.Response],
    ) -> web.Response:
        """The answer for ``event`` just appended (``result``); ``fallback()`` is the usual
        answer, used when the integration has no static ``response``."""
        if result.duplicate or not integ.response_command:
            return static_answer(integ, result) or fallback()
        outcome = await self._run(integ, event, result)
        if outcome.ok:
            status = int(integ.response["status"]) if integ.response is not None else 200
            return web.Response(body=outcome.stdout, status=status,
                                headers=_headers(result, _content_type(integ, outcome.stdout)))
        # Neither stdout nor stderr is logged: either may carry what the sender sent.
        log.warning("response_command_failed", integration_id=integ.integration_id,
                    event_id=result.event_id, outcome=outcome.outcome, detail=outcome.detail)
        return static_answer(integ, result) or fallback()

    async def _run(
        self, integ: Integration, event: NewEvent, result: AppendResult
    ) -> CommandResult:
        env = clean_env({
            "PALYRA_EVENT_ID": result.event_id,
            "PALYRA_EVENT_TYPE": event.event_type or "",
            "PALYRA_INTEGRATION_ID": integ.integration_id,
            "PALYRA_SEQ": str(result.seq),
        })
        stdin = _stdin_of(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + integ.response_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            return CommandResult("timeout", detail="no free slot for a reply command in time")
        try:
            left = max(deadline - loop.time(), 0.001)
            return await run_bounded(integ.response_command, stdin, env, left)
        finally:
            self._slots.release()
