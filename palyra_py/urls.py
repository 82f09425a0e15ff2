"""Whether a URL may be a delivery target, judged on its text alone. Pure, and free of
aiohttp so that the registry can check subscription URLs without loading the HTTP stack.
Addresses (private networks, metadata services...) are judged at connect time by ``ssrf``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_URL_CHARS = 2048


def check_url(url: str, https_only: bool = False) -> str | None:
    """``None`` when ``url`` may be a delivery target, else what is wrong with it: scheme
    ``http``/``https`` (``https`` only with ``https_only``), a host, no ``user:password@``,
    at most 2048 characters, no whitespace or control characters. Addresses are not checked
    here (see ``ssrf.AddressPolicy``)."""
    if len(url) > MAX_URL_CHARS:
        return f"URL is longer than {MAX_URL_CHARS} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "URL contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        return "URL is malformed"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return "URL scheme must be http or https"
    if https_only and scheme != "https":
        return "URL must be https (https_only is set)"
    if "@" in parts.netloc:
        return "URL must not contain credentials (user:password@)"
    if not hostname:
        return "URL has no host"
    return None
