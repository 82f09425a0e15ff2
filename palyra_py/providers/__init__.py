"""Signature schemes, one small pure class each.

``get_provider(name, options)`` is the only constructor the daemon needs; ``PROVIDER_NAMES``
is what the registry accepts; ``secret_format`` tells ``generate_secret`` what to produce;
``check_secret`` says whether a given secret can work for a provider.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from palyra_py.providers import gitlab, standard_webhooks
from palyra_py.providers.base import (
    CannotSign,
    Headers,
    Provider,
    SignedRequest,
    Verified,
    get_header,
)
from palyra_py.providers.generic import GenericHmac
from palyra_py.providers.github import GitHubSignature
from palyra_py.providers.gitlab import GitLabToken
from palyra_py.providers.palyra import PalyraSignature
from palyra_py.providers.shopify import ShopifySignature
from palyra_py.providers.slack import SlackSignature
from palyra_py.providers.standard_webhooks import StandardWebhooksSignature
from palyra_py.providers.stripe import StripeSignature

__all__ = [
    "PROVIDER_NAMES",
    "CannotSign",
    "GenericHmac",
    "GitHubSignature",
    "GitLabToken",
    "Headers",
    "PalyraSignature",
    "Provider",
    "SecretFormat",
    "ShopifySignature",
    "SignedRequest",
    "SlackSignature",
    "StandardWebhooksSignature",
    "StripeSignature",
    "Verified",
    "check_secret",
    "get_header",
    "get_provider",
    "secret_format",
]

_FACTORIES: dict[str, Callable[[Mapping[str, Any] | None], Provider]] = {
    GenericHmac.name: GenericHmac,
    GitHubSignature.name: GitHubSignature,
    GitLabToken.name: GitLabToken,
    PalyraSignature.name: PalyraSignature,
    ShopifySignature.name: ShopifySignature,
    SlackSignature.name: SlackSignature,
    StandardWebhooksSignature.name: StandardWebhooksSignature,
    StripeSignature.name: StripeSignature,
}

PROVIDER_NAMES: tuple[str, ...] = tuple(sorted(_FACTORIES))

SecretFormat = Literal["whsec", "hex", "token"]
"""How a fresh secret for a provider is written:

- ``"whsec"``: ``whsec_`` + standard base64 (padded) of 32 random bytes; the HMAC key is the
  decoded bytes (Standard Webhooks).
- ``"token"``: ``whsec_`` + 32 random ASCII letters and digits, used verbatim as the key, the
  whole string included (Stripe).
- ``"hex"``: 32 random bytes as 64 lower-case hex characters, used verbatim (everything else).
"""

_SECRET_FORMATS: dict[str, SecretFormat] = {
    StandardWebhooksSignature.name: "whsec",
    StripeSignature.name: "token",
}


_SECRET_CHECKS: dict[str, Callable[[str], None]] = {
    StandardWebhooksSignature.name: standard_webhooks.check_secret,
    GitLabToken.name: gitlab.check_secret,
}


def _check_name(name: str) -> None:
    if name not in _FACTORIES:
        raise ValueError(f"unknown provider {name!r} (allowed: {', '.join(PROVIDER_NAMES)})")


def get_provider(name: str, options: Mapping[str, Any] | None = None) -> Provider:
    """A provider for ``name`` configured by ``options`` (an integration's
    ``provider_options``). Raise ``ValueError`` naming the allowed providers for an unknown
    name, or naming the option for an unknown or bad option."""
    _check_name(name)
    return _FACTORIES[name](options)


def secret_format(name: str) -> SecretFormat:
    """Which form :func:`palyra_py.secrets.store.generate_secret` should produce (see
    :data:`SecretFormat`). Raise ``ValueError`` for an unknown provider."""
    _check_name(name)
    return _SECRET_FORMATS.get(name, "hex")


def check_secret(name: str, secret: str) -> None:
    """Raise ``ValueError`` with a message that never names the secret when ``secret`` can
    never verify for provider ``name`` (e.g. a Standard Webhooks ``whsec_`` secret whose
    base64 does not decode). Any text is a valid secret for the other providers."""
    _check_name(name)
    check = _SECRET_CHECKS.get(name)
    if check is not None:
        check(secret)
