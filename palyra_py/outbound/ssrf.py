"""SSRF guard for outbound deliveries: which addresses a delivery may connect to, an
aiohttp resolver that refuses blocked ones, and a connector that checks every socket's
address before it connects.

Threat: a subscription URL (or its DNS) pointing at the daemon's own host, the local
network or a cloud metadata service, under any spelling (``127。0。0。1``, ``2130706433``,
``[::ffff:7f00:1]``...). The last check runs on the address each socket is about to
connect to (``GuardedConnector``), after every URL parser and resolver has had its say, so
no difference between how we and the HTTP client read a URL can bypass it, and DNS
rebinding has no gap between check and connect. ``AddressPolicy`` is pure.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import TCPConnector, ThreadedResolver
from aiohttp.abc import AbstractResolver, ResolveResult

# check_url and MAX_URL_CHARS live in the aiohttp-free urls module; re-exported here.
from palyra_py.outbound.urls import MAX_URL_CHARS as MAX_URL_CHARS
from palyra_py.outbound.urls import check_url as check_url

if TYPE_CHECKING:
    from aiohappyeyeballs import AddrInfoType

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


METADATA: tuple[Network, ...] = _nets(
    "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, Oracle... instance metadata
    "169.254.170.2/32",  # AWS ECS task credentials
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "fd00:ec2::254/128",  # AWS IMDS over IPv6
)
"""Cloud metadata endpoints: refused even with ``allow_private`` (they hand out credentials)."""

# First match wins, so the narrower categories come before the ranges that hold them.
_BLOCKED: tuple[tuple[str, tuple[Network, ...]], ...] = (
    ("metadata", METADATA),
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")),
    ("private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
                      "fec0::/10")),
    ("cgnat", _nets("100.64.0.0/10")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    ("reserved", _nets(
        "240.0.0.0/4",  # future use, and 255.255.255.255 broadcast
        "192.0.0.0/24", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
        "198.18.0.0/15", "192.88.99.0/24",
        "::/8",  # IPv4-compatible and other legacy forms (mapped ones are unwrapped first)
        "100::/64", "2001:db8::/32", "3fff::/20", "64:ff9b:1::/48",
    )),
)

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_COMPATIBLE = ipaddress.ip_network("::/96")  # IPv4-compatible ::a.b.c.d (deprecated)


class SsrfBlocked(OSError):
    """A delivery target resolved to (or is) an address the policy refuses. An ``OSError``
    so that aiohttp wraps it as a connection error (``ClientConnectorDNSError``, with this
    exception as ``os_error`` and ``__cause__``); see ``find_ssrf_blocked``."""

    def __init__(self, host: str, ip: str, reason: str) -> None:
        super().__init__(errno.EACCES, f"{host} -> {ip} is a blocked address ({reason})")
        self.host = host
        self.ip = ip
        self.reason = reason


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped ``::ffff:a.b.c.d``, NAT64
    ``64:ff9b::a.b.c.d`` or 6to4 ``2002:AABB:CCDD::``."""
    if address in _MAPPED:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def _classify(address: Address) -> str | None:
    for reason, networks in _BLOCKED:
        if any(address in network for network in networks):
            return reason
    return None


class AddressPolicy:
    """Which IP addresses deliveries may connect to.

    Refused by default, with the reason ``check`` returns: ``metadata``, ``unspecified``,
    ``loopback``, ``link-local``, ``private`` (RFC 1918, ULA), ``cgnat``, ``multicast``,
    ``reserved`` (240/4, documentation and benchmarking ranges...). IPv4-mapped, NAT64 and
    6to4 IPv6 addresses are judged by the IPv4 address inside them.

    ``allow_cidrs`` wins over the block: an address inside any of them is allowed, except a
    metadata address, which only an entry naming exactly that address (``/32``, ``/128``)
    allows. ``allow_private`` allows every blocked category except ``metadata``.
    ``ValueError`` for a malformed CIDR (host bits set count as malformed).
    """

    def __init__(self, allow_private: bool = False, allow_cidrs: Sequence[str] = ()) -> None:
        self.allow_private = allow_private
        networks: list[Network] = []
        for cidr in allow_cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr.strip()))
            except ValueError as exc:
                raise ValueError(f"allow_cidrs: {cidr[:64]!r} is not a CIDR ({exc})") from None
        self.allow_cidrs: tuple[Network, ...] = tuple(networks)

    def check(self, ip: str) -> str | None:
        """``None`` when a delivery may connect to ``ip``, else a short reason (``invalid``
        for text that is not an IP address). An IPv6 zone (``%eth0``) is ignored."""
        try:
            address: Address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return "invalid"
        candidates: list[Address] = [address]
        spellings: list[Address] = [address]  # every address this one may stand for
        if isinstance(address, ipaddress.IPv6Address):
            inner = _embedded_ipv4(address)
            if inner is not None:
                candidates = [inner, address]
                spellings = candidates
            elif address in _COMPATIBLE and int(address) > 1:
                spellings = [address, ipaddress.IPv4Address(int(address))]
        # Metadata under any spelling (mapped, NAT64, 6to4, IPv4-compatible) stays refused
        # unless listed exactly.
        if any(s in n for n in METADATA for s in spellings):
            exact = any(n.num_addresses == 1 and s in n for n in self.allow_cidrs
                        for s in spellings)
            return None if exact else "metadata"
        # The embedded IPv4 address decides: ::ffff:0:0/96 itself sits inside ::/8.
        reason = _classify(candidates[0])
        if reason is None:
            return None
        if self.allow_private:
            return None
        if any(c in n for n in self.allow_cidrs for c in candidates):
            return None
        return reason

    def check_literal_host(self, host: str) -> None:
        """Raise ``SsrfBlocked`` when ``host`` (a URL's host, brackets allowed) is an IP
        literal the policy refuses; do nothing for a host name (the resolver checks those)."""
        bare = host.strip()
        if bare.startswith("[") and bare.endswith("]"):
            bare = bare[1:-1]
        try:
            ipaddress.ip_address(bare.split("%", 1)[0])
        except ValueError:
            return
        reason = self.check(bare)
        if reason is not None:
            raise SsrfBlocked(host, bare, reason)


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that resolves through ``inner`` (default ``ThreadedResolver``,
    created on first use) and raises ``SsrfBlocked`` if ANY resolved address is refused, so
    a name with one public and one private address is refused as a whole.

    ``GuardedConnector`` uses it. Alone (``TCPConnector(resolver=GuardedResolver(policy))``)
    it leaves two gaps: aiohttp does not call the resolver for IP-literal hosts (which
    ``GuardedConnector`` checks at the socket); and through a proxy only the proxy's address
    would be checked, so do not use one (``trust_env=False``). ``close`` also closes
    ``inner``.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = self.policy.check(result["host"])
            if reason is not None:
                raise SsrfBlocked(host, result["host"], reason)
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()

    def check_literal_host(self, host: str) -> None:
        """See ``AddressPolicy.check_literal_host``."""
        self.policy.check_literal_host(host)


class GuardedConnector(TCPConnector):
    """A ``TCPConnector`` that resolves names through ``GuardedResolver(policy)`` and, for
    every socket it opens, checks the address that socket is about to connect to (its
    ``socket_factory`` hook): IP-literal hosts, which aiohttp never hands to the resolver,
    are caught there, whatever spelling of the host got them past the earlier checks.
    A refused address raises ``SsrfBlocked`` before anything is sent (not even a SYN);
    aiohttp reports it as a connection error whose ``os_error`` it is (see
    ``find_ssrf_blocked``). Other ``TCPConnector`` keywords pass through."""

    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        self._policy = policy
        super().__init__(resolver=GuardedResolver(policy), socket_factory=self._open_socket,
                         **kwargs)

    def _open_socket(self, addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, address = addr_info
        ip = str(address[0])
        reason = self._policy.check(ip)
        if reason is not None:
            raise SsrfBlocked(ip, ip, reason)
        return socket.socket(family=family, type=type_, proto=proto)


def find_ssrf_blocked(exc: BaseException | None) -> SsrfBlocked | None:
    """The ``SsrfBlocked`` behind an aiohttp client error, if any (follows ``os_error``,
    ``__cause__`` and ``__context__``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SsrfBlocked):
            return exc
        seen.add(id(exc))
        os_error = getattr(exc, "os_error", None)
        if isinstance(os_error, SsrfBlocked):
            return os_error
        exc = exc.__cause__ or exc.__context__
    return None
