"""Where an attempt goes: one class per kind of destination, behind one small interface.

The attempt runner asks ``Destinations.of(subscription)`` and awaits ``attempt``; what
follows (recording, the retry schedule, health, disabling) is the same for every kind. A
destination never raises for what its receiver does: every failure is an
``AttemptOutcome`` with an ``error_class``. A new kind (email) is one more class here and
one more branch in ``Destinations.of``.
"""

from __future__ import annotations

import asyncio
import json
import pwd
from collections.abc import Awaitable, Callable
from typing import Protocol

from palyra_py.delivery.records import Delivery
from palyra_py.outbound.command import CommandRun, clean_environment, run_command
from palyra_py.outbound.email import EmailSettings, build_message, send_message
from palyra_py.outbound.formats import PreparedEvent
from palyra_py.outbound.http import AttemptOutcome, Sender
from palyra_py.outbound.placeholders import TemplateError, render_argv
from palyra_py.outbound.substate import SubState, UrlUnavailable, prepare_request
from palyra_py.registry.subscriptions import Subscription, is_ref
from palyra_py.secrets.refs import SecretRefError
from palyra_py.secrets.store import SecretNotFound, SecretStore

__all__ = ["CommandDestination", "Destination", "Destinations", "EmailDestination",
           "HttpDestination"]

EventLookup = Callable[[int], Awaitable[PreparedEvent | None]]


def _failed(error_class: str, detail: str) -> AttemptOutcome:
    return AttemptOutcome(None, error_class, detail, None, 0, None)


class Destination(Protocol):
    async def attempt(self, delivery: Delivery, prepared: PreparedEvent | None,
                      state: SubState, now: float) -> AttemptOutcome:
        """One attempt of ``delivery`` with the subscription as launched (``state``);
        ``prepared`` is the event when the caller has it (else it is read by seq)."""
        ...


class HttpDestination:
    """``url``: a signed POST (``outbound.http``)."""

    def __init__(self, sender: Sender, secrets: SecretStore, event: EventLookup,
                 https_only: bool) -> None:
        self._sender = sender
        self._secrets = secrets
        self._event = event
        self._https_only = https_only

    async def attempt(self, delivery: Delivery, prepared: PreparedEvent | None,
                      state: SubState, now: float) -> AttemptOutcome:
        url = state.target
        if url is None or not state.headers_resolved:  # once per version of the subscription
            try:
                url = await state.target_url(self._secrets, self._https_only)
                await state.resolve_headers(self._secrets)
            except UrlUnavailable as exc:
                return _failed(exc.error_class, exc.detail)
        if prepared is None:
            prepared = await self._event(delivery.event_seq)
        if prepared is None:
            return _failed("connect", "event no longer in the journal")
        if not state.signer_cached(now):
            try:
                await state.load_secrets(self._secrets, now)
            except (SecretNotFound, SecretRefError) as exc:
                return _failed("connect", f"signing secret unavailable: {exc}")
        body, headers = prepare_request(state, prepared, now)
        return await self._sender.post(url, body, headers, state.subscription.timeout_s)


class CommandDestination:
    """``command``: a local program run with the event (``outbound.command``)."""

    def __init__(self, secrets: SecretStore, event: EventLookup) -> None:
        self._secrets = secrets
        self._event = event

    async def _env(self, state: SubState) -> dict[str, str]:
        """The subscription's ``env`` with its references resolved, once per version of
        the subscription (kept only in memory). ``UrlUnavailable`` names the variable,
        never its value."""
        if state.command_env is not None:
            return state.command_env
        resolved: dict[str, str] = {}
        for name, value in state.subscription.env.items():
            if is_ref(value):
                try:
                    value = (await asyncio.to_thread(self._secrets.resolve, value)).strip()
                except (SecretNotFound, SecretRefError) as exc:
                    raise UrlUnavailable(f"env {name}: reference unavailable: {exc}",
                                         "command_unavailable") from None
            if "\x00" in value:
                raise UrlUnavailable(f"env {name}: the value holds a NUL byte",
                                     "command_unavailable")
            resolved[name] = value
        state.command_env = resolved
        return resolved

    async def attempt(self, delivery: Delivery, prepared: PreparedEvent | None,
                      state: SubState, now: float) -> AttemptOutcome:
        sub = state.subscription
        try:
            extra = await self._env(state)
        except UrlUnavailable as exc:
            return _failed(exc.error_class, exc.detail)
        if prepared is None:
            prepared = await self._event(delivery.event_seq)
        if prepared is None:
            return _failed("command_unavailable", "event no longer in the journal")
        event = prepared.event
        try:
            argv = render_argv(sub.command, event)
        except TemplateError as exc:
            return _failed("command_template", str(exc))
        home = None
        if sub.run_as is not None:
            try:
                home = pwd.getpwnam(sub.run_as).pw_dir
            except KeyError:
                return _failed("command_unavailable", f"run_as: no user {sub.run_as!r}")
        env = clean_environment(home)
        env.update(extra)
        env.update({
            "PALYRA_EVENT_ID": event.id, "PALYRA_EVENT_TYPE": event.type,
            "PALYRA_EVENT_SOURCE": event.source, "PALYRA_EVENT_SEQ": str(event.seq),
            "PALYRA_DELIVERY_ID": delivery.delivery_id,
            "PALYRA_ATTEMPT": str(delivery.attempts + 1),
            "PALYRA_SUBSCRIPTION_ID": sub.subscription_id,
        })
        stdin = json.dumps(event.body(), ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "replace") + b"\n"
        run = CommandRun(argv, stdin, env, sub.working_dir, sub.timeout_s,
                         sub.success_exit_codes, sub.run_as)
        return await run_command(run)


class EmailDestination:
    """``email``: one message per event over SMTP (``outbound.email``, ``[email]``)."""

    def __init__(self, settings: EmailSettings | None, secrets: SecretStore,
                 event: EventLookup, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._secrets = secrets
        self._event = event
        self._clock = clock

    async def attempt(self, delivery: Delivery, prepared: PreparedEvent | None,
                      state: SubState, now: float) -> AttemptOutcome:
        settings = self._settings
        if settings is None:
            return _failed("email_unavailable", "[email] host is not set in palyra.toml")
        password = None
        if settings.username and settings.password_ref:
            try:  # the store caches it; the value is never logged
                password = (await asyncio.to_thread(self._secrets.resolve,
                                                    settings.password_ref)).strip()
            except (SecretNotFound, SecretRefError) as exc:
                return _failed("email_unavailable",
                               f"[email] password_ref unavailable: {exc}")
        if prepared is None:
            prepared = await self._event(delivery.event_seq)
        if prepared is None:
            return _failed("email_unavailable", "event no longer in the journal")
        sub = state.subscription
        msg = build_message(prepared.event, sub.subscription_id, settings.sender, sub.email,
                            now)
        return await send_message(settings, password, msg, sub.email)


class Destinations:
    """The destination of each kind, built once per dispatcher."""

    def __init__(self, *, sender: Sender, secrets: SecretStore, event: EventLookup,
                 https_only: bool, email: EmailSettings | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.http = HttpDestination(sender, secrets, event, https_only)
        self.command = CommandDestination(secrets, event)
        self.email = EmailDestination(email, secrets, event, clock or (lambda: 0.0))

    def of(self, sub: Subscription) -> Destination:
        if sub.email:
            return self.email
        if sub.command:
            return self.command
        return self.http

