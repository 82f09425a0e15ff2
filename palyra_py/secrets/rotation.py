"""The secrets of one record (an integration or a subscription) across a rotation: the
current secret and, while ``rotate-secret --grace`` lasts, the previous one.

The ingress verifies with them, the dispatcher signs with them, and ``webhooks test``
signs its sample with the first. Each keeps one ``RotatingSecrets`` per version of a
record: resolved once (in a thread: a keyring or file read never blocks the event loop),
kept until the grace period ends, then resolved again, now without the previous secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from palyra_py.secrets.refs import SecretRefError
from palyra_py.secrets.store import SecretNotFound, SecretStore

__all__ = ["RotatingSecrets"]


@dataclass(slots=True)
class RotatingSecrets:
    """The secret references of one version of a record, and what they held when last
    resolved. A changed record gets a new ``RotatingSecrets``; ``forget`` makes the next
    ``resolve`` read the references again (after a reload). The secrets never appear in a
    repr."""

    secret_ref: str | None
    previous_secret_ref: str | None = None
    previous_valid_until: datetime | None = None
    on_previous_unavailable: Callable[[], None] | None = field(default=None, repr=False)
    """Called when the previous secret, still inside its grace period, cannot be read: the
    current one is then used alone (until the grace period would have ended)."""
    _secrets: tuple[str, ...] | None = field(default=None, init=False, repr=False)
    _until: float = field(default=float("inf"), init=False, repr=False)

    def cached(self, now: float) -> tuple[str, ...] | None:
        """What the last ``resolve`` found, if it still holds at ``now`` (unix seconds);
        else ``None``. No I/O: the ingress's fast path."""
        if self._secrets is not None and now < self._until:
            return self._secrets
        return None

    async def resolve(self, store: SecretStore, now: float) -> tuple[str, ...]:
        """The current secret first, then the previous one while ``now`` (unix seconds) is
        inside its grace period and it can be read. The same tuple object is returned for as
        long as it holds, so a caller may key what it derives (a signer) on its identity.
        Raises ``SecretNotFound`` (no ``secret_ref``, or it cannot be read) or
        ``SecretRefError``; nothing is kept then."""
        held = self.cached(now)
        if held is not None:
            return held
        if self.secret_ref is None:
            raise SecretNotFound("no secret_ref set")
        found = [await asyncio.to_thread(store.resolve, self.secret_ref)]
        until = float("inf")
        if self.previous_secret_ref and self.previous_valid_until is not None:
            valid_until = self.previous_valid_until.timestamp()
            if now < valid_until:
                until = valid_until
                try:
                    found.append(await asyncio.to_thread(store.resolve, self.previous_secret_ref))
                except (SecretNotFound, SecretRefError):
                    if self.on_previous_unavailable is not None:
                        self.on_previous_unavailable()
        self._secrets, self._until = tuple(found), until
        return self._secrets

    def forget(self) -> None:
        """Drop what was resolved: the next ``resolve`` reads the references again."""
        self._secrets, self._until = None, float("inf")
