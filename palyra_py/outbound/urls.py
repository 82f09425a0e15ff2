"""Whether a URL may be a delivery target, judged on its text alone. Pure, and free of
aiohttp so that the registry can check subscription URLs without loading the HTTP stack.
Addresses (private networks, metadata services...) are judged at connect time by ``ssrf``.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048


def client_host(host: str) -> str | None:
    """``host`` (a URL's host, as ``urlsplit`` gives it) as the HTTP client connects to it:
    yarl's spelling, IDNA (UTS 46) mapped, so ``127。0。0。1``, fullwidth ``１２７．０．０．１``
    and ``①②⑦.0.0.1`` all become ``127.0.0.1``. ``None`` when the client cannot encode it.
    ASCII hosts are only lowercased, as yarl does; yarl is imported only for the others,
    so that checking the usual URL stays free of the HTTP stack."""
    if host.isascii():
        return host.lower()
    from yarl import URL  # rare; and yarl is what aiohttp parses URLs with

    try:
        return URL.build(scheme="http", host=host).raw_host
    except (ValueError, UnicodeError):
        return None


def spells_an_address(host: str) -> bool:
    """Whether ``host`` (ASCII) is an IP address in any spelling the resolver would
    accept: dotted, IPv6, or the legacy decimal, octal and hex forms (``2130706433``,
    ``0177.0.0.1``, ``0x7f.1``)."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        return legacy_ipv4(bare)


def legacy_ipv4(host: str) -> bool:
    """Whether ``host`` is an IPv4 address only in a legacy spelling (``2130706433``,
    ``0177.0.0.1``, ``0x7f.1``, ``127.1``) that ``inet_aton`` accepts and a.b.c.d is not,
    or an address with trailing dots (``127.0.0.1.``)."""
    bare = host.rstrip(".")
    if not bare:
        return False
    try:
        ipaddress.IPv4Address(bare)
        return bare != host
    except ValueError:
        pass
    try:
        socket.inet_aton(bare)
    except (OSError, ValueError):
        return False
    return True


def check_url(url: str, https_only: bool = False) -> str | None:
    """``None`` when ``url`` may be a delivery target, else what is wrong with it: scheme
    ``http``/``https`` (``https`` only with ``https_only``), a host, no ``user:password@``,
    at most 2048 characters, no whitespace or control characters, and a host the HTTP client
    can encode whose non-ASCII spelling is not that of an IP address (``127。0。0。1`` is one:
    it would skip the resolver's check), nor an IPv4 address in a legacy form
    (``2130706433``, ``0177.0.0.1``: the HTTP client refuses them). Addresses are not
    judged here (see ``ssrf.AddressPolicy``)."""
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
    if not hostname.isascii():
        mapped = client_host(hostname)
        if mapped is None:
            return "URL host is not a valid internationalised domain name"
        if spells_an_address(mapped):
            return ("URL host is an IP address spelled with non-ASCII characters (fullwidth"
                    " digits, ideographic full stops, circled digits...): write it in ASCII")
    elif legacy_ipv4(hostname):
        return ("URL host is an IPv4 address in a legacy form (decimal, octal, hex,"
                " shortened or with a trailing dot): write it as four decimal numbers a.b.c.d")
    return None
