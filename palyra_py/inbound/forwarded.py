"""The sender's address behind a load balancer: ``[ingress] trusted_proxies``.

Nodes of a cluster usually sit behind HAProxy or nginx (docs/cluster.md), so the address
a webhook connects from is the balancer's. When, and only when, the connected peer is one
of the trusted proxies, the sender is read from ``X-Forwarded-For``: its addresses are
walked from the right (the one the nearest proxy appended) past every trusted proxy, and
the first address that is not one is the sender. A header from anyone else is ignored,
so a sender cannot pick its own address by sending the header.

Only rules that look at one request use it (``allowed_sources``, the addresses sampled
in rejection events); the connection caps count TCP peers, which behind a balancer are
the balancer's connections.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["MAX_FORWARDED_HOPS", "ClientAddress", "parse_proxies"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_FORWARDED_HOPS = 16
"""Addresses of ``X-Forwarded-For`` looked at, from the right; further ones are ignored."""


def parse_proxies(text: str) -> tuple[Network, ...]:
    """The comma-separated CIDRs (or addresses) of ``trusted_proxies``. Raises
    ``ValueError`` naming the first one that is not."""
    networks: list[Network] = []
    for part in text.split(","):
        cidr = part.strip()
        if not cidr:
            continue
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"[ingress] trusted_proxies: {cidr[:64]!r} is not a CIDR ({exc})") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class ClientAddress:
    """Tells a request's sender from its peer address and ``X-Forwarded-For``."""

    def __init__(self, proxies: Sequence[Network] = ()) -> None:
        self.proxies = tuple(proxies)

    def _trusted(self, addr: Address) -> bool:
        return any(addr in net for net in self.proxies)

    def sender(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The sender's address as text: ``peer`` unless it is a trusted proxy that
        forwarded the request, then the right-most forwarded address that is not a trusted
        proxy (the left-most when every one is; ``peer`` when an address is garbled)."""
        if not self.proxies or peer is None or not forwarded_for:
            return peer
        addr = _address(peer)
        if addr is None or not self._trusted(addr):
            return peer
        hops = [h for h in forwarded_for.split(",") if h.strip()][-MAX_FORWARDED_HOPS:]
        found: Address | None = None
        for hop in reversed(hops):
            found = _address(hop)
            if found is None:
                return peer  # a garbled header: nothing after it can be trusted either
            if not self._trusted(found):
                break
        return peer if found is None else str(found)
