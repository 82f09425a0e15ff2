"""One attempt of a delivery, for the dispatcher: what it keeps per subscription, the
request (body rendered once per event and format, headers signed per attempt), what the
outcome means for the delivery (done, retry when, or failed for good), and running it:
send, record, count, and act on the outcome.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from palyra_py.delivery.backend import DeliveryQueue
from palyra_py.delivery.records import AttemptRecord, Delivery, DeliveryStatus
from palyra_py.filters import EventMatcher
from palyra_py.metrics import Metrics
from palyra_py.outbound.formats import PreparedEvent
from palyra_py.outbound.http import AttemptOutcome, Sender
from palyra_py.outbound.retry import RateLimiter, next_attempt_delay, parse_retry_after
from palyra_py.outbound.signing import (
    GITHUB_SIGNATURE_HEADER,
    StandardWebhooksSigner,
    github_signature,
)
from palyra_py.outbound.urls import check_url
from palyra_py.registry.subscriptions import Subscription, is_ref, is_url_ref, valid_header_value
from palyra_py.secrets.refs import SecretRefError
from palyra_py.secrets.rotation import RotatingSecrets
from palyra_py.secrets.store import SecretNotFound, SecretStore

JournalHook = Callable[[str, dict[str, Any]], Awaitable[None]]
DisableHook = Callable[[str, str], Awaitable[None]]
EventLookup = Callable[[int], Awaitable[PreparedEvent | None]]
THROTTLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(slots=True)
class DispatcherStats:
    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    waiters: dict[str, asyncio.Future[AttemptRecord]] = field(default_factory=dict)


@dataclass(slots=True)
class SubState:
    """The dispatcher's working state for one version of a subscription (a changed
    subscription gets a new one, so nothing cached outlives its settings)."""

    matcher: EventMatcher
    limiter: RateLimiter
    subscription: Subscription
    base_headers: dict[str, str] = field(repr=False)  # header refs resolved: never in a repr
    rotation: RotatingSecrets = field(repr=False)
    in_flight: int = 0
    """Attempts launched and not yet recorded (what a crash would make again)."""
    open: int = 0
    """Of those, the requests not yet answered: open at the receiver."""
    secrets: tuple[str, ...] | None = field(default=None, repr=False)  # never in a repr/log
    """What ``signer`` was built from (``load_secrets``)."""
    signer: StandardWebhooksSigner | None = field(default=None, repr=False)
    target: str | None = field(default=None, repr=False)  # the URL, once a ref is resolved
    headers_resolved: bool = False

    @classmethod
    def build(cls, sub: Subscription) -> SubState:
        headers = dict(sub.headers)
        headers["Content-Type"] = "application/json"
        rotation = RotatingSecrets(sub.secret_ref, sub.previous_secret_ref,
                                   sub.previous_valid_until)
        return cls(EventMatcher(sub.events, sub.filter), RateLimiter(sub.rate_limit_per_s),
                   sub, headers, rotation)

    def signer_cached(self, now: float) -> bool:
        """Whether ``signer`` is what ``load_secrets`` would return at ``now`` (no await)."""
        return self.signer is not None and self.rotation.cached(now) is self.secrets

    async def load_secrets(self, store: SecretStore, now: float) -> StandardWebhooksSigner:
        """The signer of the current secret and, inside its grace period, the previous
        one; resolved once and kept until that grace ends. Raises ``SecretNotFound`` /
        ``SecretRefError`` (nothing kept then), ``ValueError`` for a secret that is not
        ``whsec_<base64>``."""
        found = self.rotation.cached(now)
        if found is None:
            found = await self.rotation.resolve(store, now)
        if self.signer is None or found is not self.secrets:
            # Built before it is kept: a secret that is not whsec_ raises, nothing kept.
            signer = StandardWebhooksSigner(found)
            self.secrets, self.signer = found, signer
        return self.signer

    async def target_url(self, store: SecretStore, https_only: bool) -> str:
        """The URL to POST to: the subscription's ``url``, or what its secret reference
        holds, resolved once for this version of the subscription. Raises
        ``UrlUnavailable`` (never quoting the URL: it may carry a credential)."""
        if self.target is not None:
            return self.target
        url = self.subscription.url
        if is_url_ref(url):
            try:
                url = (await asyncio.to_thread(store.resolve, url)).strip()
            except (SecretNotFound, SecretRefError) as exc:
                raise UrlUnavailable(f"url reference unavailable: {exc}") from None
            problem = check_url(url)
            if problem is not None:
                raise UrlUnavailable(f"url reference does not hold a delivery URL: {problem}")
        if https_only and urlsplit(url).scheme.lower() != "https":
            # Added before [delivery] https_only was set, edited by hand, or from a reference.
            raise UrlUnavailable("https_only is set and the URL is not https", "ssrf_blocked")
        self.target = url
        return url


    async def resolve_headers(self, store: SecretStore) -> None:
        """Put in ``base_headers`` what the subscription's header references
        (``keyring:``/``env:``/``file:``) hold, once for this version of the subscription.
        Raises ``UrlUnavailable`` naming the header, never its value."""
        if self.headers_resolved:
            return
        for header, value in self.subscription.headers.items():
            if not is_ref(value):
                continue
            try:
                held = (await asyncio.to_thread(store.resolve, value)).strip()
            except (SecretNotFound, SecretRefError) as exc:
                raise UrlUnavailable(f"header {header}: reference unavailable: {exc}") from None
            if not held or not valid_header_value(held):
                raise UrlUnavailable(f"header {header}: the reference does not hold a header"
                                     " value (printable ASCII, at most 4096 characters)")
            self.base_headers[header] = held
        self.headers_resolved = True


class UrlUnavailable(Exception):
    """No URL to send to (yet): the attempt fails with ``error_class``."""

    def __init__(self, detail: str, error_class: str = "connect") -> None:
        super().__init__(detail)
        self.detail, self.error_class = detail, error_class


def prepare_request(state: SubState, event: PreparedEvent, now: float
                    ) -> tuple[bytes, dict[str, str]]:
    """The body (the subscription's format) and headers of an attempt made at ``now``:
    the subscription's own headers, ``Content-Type``, the Standard Webhooks headers and,
    for ``signature_format = "github"``, ``X-Hub-Signature-256``. Call after
    ``load_secrets``."""
    sub, signer, secrets = state.subscription, state.signer, state.secrets
    assert signer is not None and secrets is not None, "load_secrets first"
    body = event.body(sub.format)
    headers = state.base_headers.copy()
    headers.update(signer.headers(event.event.id, int(now), body))
    if sub.signature_format == "github":
        headers[GITHUB_SIGNATURE_HEADER] = github_signature(secrets[0], body)
    return body, headers


def decide(schedule: tuple[float, ...], attempt_no: int, outcome: AttemptOutcome, now: float,
           rand: random.Random) -> tuple[DeliveryStatus, int | None]:
    """The delivery's status after attempt ``attempt_no`` and, while ``pending``, when
    (unix ms) the next attempt is due: ``succeeded`` on 2xx; ``failed`` on 410 or when the
    schedule is spent; otherwise the schedule's next delay (jittered), at least what a
    ``Retry-After`` on 429/502/503/504 asks."""
    if outcome.ok:
        return "succeeded", None
    if outcome.status_code == 410:
        return "failed", None
    delay = next_attempt_delay(schedule, attempt_no, rand)
    if delay is None:
        return "failed", None
    if outcome.status_code in THROTTLE_STATUSES:
        asked = parse_retry_after(outcome.retry_after, now)
        if asked is not None:
            delay = max(delay, asked)
    return "pending", int(now * 1000) + int(delay * 1000)


class AttemptRunner:
    """Runs attempts and records them. ``stats`` and the waits count recorded attempts."""

    def __init__(
        self,
        *,
        store: DeliveryQueue,
        sender: Sender,
        secrets: SecretStore,
        journal_event: JournalHook,
        disable_subscription: DisableHook,
        clock: Callable[[], float],
        metrics: Metrics | None,
        rand: random.Random,
        disable_after_ms: int,
        event: EventLookup,
        https_only: bool = False,
    ) -> None:
        self._store = store
        self._sender = sender
        self._secrets = secrets
        self._journal_event = journal_event
        self._disable = disable_subscription
        self._clock = clock
        self._metrics = metrics
        self._rand = rand
        self._disable_after_ms = disable_after_ms
        self._event = event
        self._https_only = https_only
        self.stats = DispatcherStats()
        self._recorded = asyncio.Condition()
        self._attempt_waiters = 0

    def first_attempt(self, event_id: str) -> asyncio.Future[AttemptRecord]:
        fut = self.stats.waiters.get(event_id)
        if fut is None:
            fut = self.stats.waiters[event_id] = asyncio.get_running_loop().create_future()
        return fut

    async def wait_for_attempts(self, count: int, timeout: float) -> None:  # noqa: ASYNC109
        self._attempt_waiters += 1
        try:
            async with self._recorded:
                await asyncio.wait_for(
                    self._recorded.wait_for(lambda: self.stats.attempts >= count), timeout)
        finally:
            self._attempt_waiters -= 1

    async def run(self, delivery: Delivery, prepared: PreparedEvent | None, state: SubState,
                  *, answered: Callable[[], None], settled: Callable[[int | None], None]
                  ) -> None:
        """One attempt with the subscription as launched (``state``: its secrets and
        headers, even if the registry has changed since). ``answered()`` once the request
        is over (answer, error or timeout), before its outcome is recorded;
        ``settled(next_attempt_ms)`` as soon as the outcome is committed (``None``: no retry
        pending), before what follows from it (journaling an exhausted delivery, disabling,
        waking waiters)."""
        started_ms, outcome = await self._send(delivery, prepared, state)
        answered()
        await self._record(delivery, state.subscription, outcome, started_ms, settled)

    async def _send(self, delivery: Delivery, prepared: PreparedEvent | None,
                    state: SubState) -> tuple[int, AttemptOutcome]:
        sub = state.subscription
        now = self._clock()
        started_ms = int(now * 1000)
        url = state.target
        if url is None or not state.headers_resolved:  # once per version of the subscription
            try:
                url = await state.target_url(self._secrets, self._https_only)
                await state.resolve_headers(self._secrets)
            except UrlUnavailable as exc:
                return started_ms, AttemptOutcome(None, exc.error_class, exc.detail, None, 0,
                                                  None)
        if prepared is None:
            prepared = await self._event(delivery.event_seq)
        if prepared is None:
            return started_ms, AttemptOutcome(None, "connect", "event no longer in the journal",
                                              None, 0, None)
        if not state.signer_cached(now):
            try:
                await state.load_secrets(self._secrets, now)
            except (SecretNotFound, SecretRefError) as exc:
                return started_ms, AttemptOutcome(None, "connect",
                                                  f"signing secret unavailable: {exc}", None, 0,
                                                  None)
        body, headers = prepare_request(state, prepared, now)
        return started_ms, await self._sender.post(url, body, headers, sub.timeout_s)

    async def _record(self, delivery: Delivery, sub: Subscription, outcome: AttemptOutcome,
                      started_ms: int, settled: Callable[[int | None], None]) -> None:
        attempt_no = delivery.attempts + 1
        record = AttemptRecord(
            delivery.delivery_id, attempt_no, started_ms, outcome.duration_ms,
            outcome.status_code, outcome.error_class, outcome.error_detail, outcome.excerpt,
        )
        now = self._clock()
        now_ms = int(now * 1000)
        gone = outcome.status_code == 410
        status, next_ms = decide(sub.retry_schedule, attempt_no, outcome, now, self._rand)
        # settled as soon as the commit is seen, not when this coroutine's turn comes.
        updated = await self._store.record_attempt(
            record, status=status, next_attempt_ms=next_ms, now_ms=now_ms,
            on_committed=lambda _: settled(next_ms))
        self._count(sub, outcome, status)
        waiter = self.stats.waiters.pop(delivery.event_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(record)
        if status == "failed" and not gone:
            await self._journal_event("delivery.exhausted", {
                "delivery_id": delivery.delivery_id, "subscription_id": sub.subscription_id,
                "event_id": delivery.event_id, "event_type": delivery.event_type,
                "attempts": updated.attempts, "last_status_code": outcome.status_code,
                "last_error_class": outcome.error_class,
            })
        if gone:
            await self._disable(sub.subscription_id, "the endpoint answered 410 Gone")
        elif not outcome.ok:
            _, failing_since = await self._store.health(sub.subscription_id)
            if failing_since is not None and now_ms - failing_since >= self._disable_after_ms:
                days = self._disable_after_ms / 86_400_000
                await self._disable(sub.subscription_id,
                                    f"no successful delivery for {days:g} days")
        # Last: whoever waits for this attempt sees all of its consequences.
        if self._attempt_waiters:
            async with self._recorded:
                self._recorded.notify_all()

    def _count(self, sub: Subscription, outcome: AttemptOutcome, status: str) -> None:
        self.stats.attempts += 1
        if outcome.ok:
            self.stats.succeeded += 1
        elif status == "failed":
            self.stats.failed += 1
        if self._metrics is not None:
            result = "succeeded" if outcome.ok else (outcome.error_class or "failed")
            self._metrics.delivery_attempted(sub.subscription_id, result,
                                             outcome.duration_ms / 1000)
