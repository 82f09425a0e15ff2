"""One outbound HTTP attempt: POST, no redirects, bounded time and response, classified.

The session connects through :class:`GuardedConnector`: names are resolved through
:class:`GuardedResolver`, and every socket's address is checked right before it connects,
so the address judged by the SSRF policy is the address connected to. IP-literal URLs
(which aiohttp never resolves) are also judged here first, on the host exactly as the client
reads it (yarl, IDNA-mapped: ``http://127。0。0。1/`` is ``127.0.0.1``); the verdict for an IP
literal never changes, so it is kept per URL. Proxies from the environment are ignored: behind
a proxy only the proxy's address would be checked."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from palyra_py import __version__
from palyra_py.outbound.ssrf import AddressPolicy, GuardedConnector, SsrfBlocked, find_ssrf_blocked

EXCERPT_BYTES = 4096
USER_AGENT = f"palyra-py/{__version__} (+webhooks)"
LITERAL_VERDICTS = 1024
"""URLs whose IP-literal verdict is kept (then the memo starts again)."""
# The attempt's own deadline (asyncio.timeout, per subscription) bounds everything; the
# session's default timers would only be armed and cancelled on every request.
_NO_SESSION_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=None)


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    status_code: int | None
    error_class: str | None
    """None on success (2xx); else timeout, connect, dns, tls, http_status, ssrf_blocked."""
    error_detail: str | None
    excerpt: str | None
    duration_ms: int
    retry_after: str | None

    @property
    def ok(self) -> bool:
        return self.error_class is None


class Sender:
    def __init__(self, policy: AddressPolicy, *, max_connections: int = 256) -> None:
        self._policy = policy
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        # URL -> the parsed URL (not a refused IP literal), or (ip, reason).
        self._literal_verdicts: dict[str, URL | tuple[str, str]] = {}

    async def start(self) -> None:
        connector = GuardedConnector(
            self._policy, limit=self._max_connections, limit_per_host=0, ttl_dns_cache=None,
            use_dns_cache=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=False,
            headers={"User-Agent": USER_AGENT}, timeout=_NO_SESSION_TIMEOUT,
            # One session serves every subscriber: a cookie one receiver sets must never
            # ride along on later deliveries (to it or to anyone else).
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> AttemptOutcome:
        assert self._session is not None, "sender not started"
        started = time.perf_counter()

        def done(status: int | None, error: str | None, detail: str | None = None,
                 excerpt: str | None = None, retry_after: str | None = None) -> AttemptOutcome:
            elapsed = int((time.perf_counter() - started) * 1000)
            return AttemptOutcome(status, error, detail and detail[:512], excerpt, elapsed,
                                  retry_after)

        try:
            target = self._literal_verdict(url)
        except ValueError:
            return done(None, "connect", "the HTTP client cannot parse the URL")
        if isinstance(target, tuple):
            return done(None, "ssrf_blocked", f"{target[0]} is {target[1]}")
        try:
            # The URL judged is the URL sent: the same parse, handed over as is.
            async with asyncio.timeout(timeout_s), self._session.post(
                target, data=body, headers=headers, allow_redirects=False,
            ) as resp:
                # Never read more than the excerpt: an endless or huge answer costs 4 KiB.
                raw = await resp.content.read(EXCERPT_BYTES)
                excerpt = raw.decode("utf-8", errors="replace")
                if 200 <= resp.status < 300:
                    return done(resp.status, None, None, excerpt)
                return done(resp.status, "http_status", f"HTTP {resp.status}", excerpt,
                            resp.headers.get("Retry-After"))
        except TimeoutError:
            return done(None, "timeout", f"no answer within {timeout_s:g} s")
        except aiohttp.ClientConnectorDNSError as exc:
            blocked = find_ssrf_blocked(exc)
            if blocked is not None:
                return done(None, "ssrf_blocked", f"{blocked.ip} is {blocked.reason}")
            return done(None, "dns", f"cannot resolve {exc.host}")
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            return done(None, "tls", type(exc).__name__)
        except (aiohttp.ClientError, OSError) as exc:
            blocked = find_ssrf_blocked(exc)
            if blocked is not None:
                return done(None, "ssrf_blocked", f"{blocked.ip} is {blocked.reason}")
            return done(None, "connect", f"{type(exc).__name__}: {exc}"[:200])

    def _literal_verdict(self, url: str) -> URL | tuple[str, str]:
        """``(ip, reason)`` when the URL's host, as the HTTP client reads it, is an IP
        literal the policy refuses; else the parsed URL to send to. ``ValueError`` for a
        URL the client cannot parse (an ``aiohttp.ClientError`` would say the same)."""
        try:
            return self._literal_verdicts[url]
        except KeyError:
            pass
        parsed = URL(url)
        verdict: URL | tuple[str, str] = parsed
        try:
            self._policy.check_literal_host(parsed.raw_host or "")
        except SsrfBlocked as exc:
            verdict = (exc.ip, exc.reason)
        if len(self._literal_verdicts) >= LITERAL_VERDICTS:
            self._literal_verdicts.clear()
        self._literal_verdicts[url] = verdict
        return verdict
