"""The dispatcher's working state per version of a subscription: its matcher, rate limiter,
resolved headers, URL and signer (``SubState``), and the signed request of an HTTP attempt
(``prepare_request``). Shared by the attempt runner and the destinations.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from palyra_py.events import PublishedEvent, is_reserved, target_subscription
from palyra_py.filters import EventMatcher
from palyra_py.journal.journal import JournalEvent
from palyra_py.outbound.formats import PreparedEvent
from palyra_py.outbound.retry import RateLimiter
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

__all__ = ["SubState", "UrlUnavailable", "prepare_request"]


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
    command_env: dict[str, str] | None = field(default=None, repr=False)
    """A command's ``env`` with its references resolved (never in a repr, log or file)."""

    @classmethod
    def build(cls, sub: Subscription) -> SubState:
        headers = dict(sub.headers)
        headers["Content-Type"] = "application/json"
        rotation = RotatingSecrets(sub.secret_ref, sub.previous_secret_ref,
                                   sub.previous_valid_until)
        return cls(EventMatcher(sub.events, sub.filter), RateLimiter(sub.rate_limit_per_s),
                   sub, headers, rotation)

    def wants(self, event: JournalEvent, published: PublishedEvent) -> bool:
        """Whether this subscription is to receive the journal event ``event`` (published
        as ``published``): a ``palyra.test`` only to the subscription it names; without
        ``events`` patterns, application events and received webhooks but not the
        daemon's own (``integration.*``, ``subscription.*``...), which go only where
        named; then the patterns and the filter. The dispatcher and replays ask it."""
        target = target_subscription(event)
        if target is not None:
            return target == self.subscription.subscription_id
        if not self.subscription.events and is_reserved(published.type):
            return False
        return self.matcher.matches(published)

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
