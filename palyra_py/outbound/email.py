"""The email destination: one message per event to a subscription's ``email`` addresses.

SMTP is set once, in ``[email]`` of ``palyra.toml`` (``EmailSettings``). One attempt is one
SMTP session (``smtplib`` in a thread: the stdlib does STARTTLS, implicit TLS and AUTH;
a session per attempt keeps nothing open between events): connect, ``security``
(``starttls``, the default; ``tls``; ``none``, for a relay on loopback), ``AUTH`` when
``username`` is set (its password read from ``password_ref``, never logged), then
``MAIL``/``RCPT``/``DATA``. The attempt's ``status_code`` is the SMTP reply code and its
excerpt the reply text; a 4xx or 5xx reply, a refused recipient, a connection or TLS
error is a failure retried on the subscription's schedule, as an HTTP answer would be.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from palyra_py.events import PublishedEvent
from palyra_py.outbound.http import AttemptOutcome

__all__ = ["BODY_PAYLOAD_BYTES", "EmailSettings", "build_message", "send_message"]

BODY_PAYLOAD_BYTES = 64 * 1024
"""Most bytes of the pretty-printed payload in a message's body (then a truncated line)."""
SECURITY = ("starttls", "tls", "none")
SMTP_REPLY_MARK = "SMTP "
"""How the attempt log's excerpt of an email attempt begins: ``SMTP 250 2.0.0 Ok ...``."""


@dataclass(frozen=True, slots=True)
class EmailSettings:
    host: str
    port: int
    security: str
    username: str
    password_ref: str
    sender: str
    timeout_s: float
    ca_file: str = ""

    @classmethod
    def from_settings(cls, get: Any) -> EmailSettings | None:
        """From ``Settings.get``; ``None`` when ``[email] host`` is not set."""
        host = get("email", "host")
        if not host:
            return None
        security = get("email", "security")
        port = get("email", "port") or {"tls": 465, "starttls": 587}.get(security, 25)
        return cls(host, port, security, get("email", "username"),
                   get("email", "password_ref"), get("email", "from"),
                   get("email", "timeout_s"), get("email", "ca_file"))


def _subject(event: PublishedEvent) -> str:
    subject = f"[palyra] {event.type} from {event.source}"
    return " ".join(subject.split())[:200]


def build_message(event: PublishedEvent, subscription_id: str, sender: str,
                  to: tuple[str, ...], now: float) -> EmailMessage:
    """A plain-text message: the event's type, source, time and id, then its payload
    pretty-printed (at most ``BODY_PAYLOAD_BYTES``, then a line saying it was cut)."""
    msg = EmailMessage()
    msg["Subject"] = _subject(event)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["X-Palyra-Event-Id"] = event.id
    msg["X-Palyra-Subscription"] = subscription_id
    payload = json.dumps(event.data, indent=2, ensure_ascii=False, default=str)
    raw = payload.encode("utf-8")
    if len(raw) > BODY_PAYLOAD_BYTES:
        payload = raw[:BODY_PAYLOAD_BYTES].decode("utf-8", "ignore") + (
            f"\n[truncated: {len(raw) - BODY_PAYLOAD_BYTES} of {len(raw)} bytes not shown]")
    lines = [
        f"Event type:   {event.type}",
        f"Source:       {event.source}",
        f"Time:         {event.timestamp}",
        f"Event id:     {event.id}",
        f"Subscription: {subscription_id}",
        "",
        "Payload:",
        payload,
        "",
        "-- ",
        "Sent by palyra for the subscription above.",
    ]
    msg.set_content("\n".join(lines))
    return msg


def _reply(code: int, text: bytes | str) -> str:
    body = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{SMTP_REPLY_MARK}{code} {' '.join(body.split())}"[:1000]


def _send(settings: EmailSettings, password: str | None, msg: EmailMessage,
          to: tuple[str, ...]) -> tuple[int, str]:
    """One SMTP session; the final reply (code, text). Raises smtplib/OS errors."""
    context = ssl.create_default_context(cafile=settings.ca_file or None)
    client: smtplib.SMTP
    if settings.security == "tls":
        client = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout_s,
                                  context=context)
    else:
        client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
    with client:
        client.ehlo()
        if settings.security == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if settings.username:
            client.login(settings.username, password or "")
        client.mail(settings.sender)
        for rcpt in to:
            code, text = client.rcpt(rcpt)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
        code, text = client.data(msg.as_bytes())
        if code != 250:
            raise smtplib.SMTPDataError(code, text)
        return code, _reply(code, text)


async def send_message(settings: EmailSettings, password: str | None, msg: EmailMessage,
                       to: tuple[str, ...]) -> AttemptOutcome:
    """Send and classify: success (``status_code`` 250, the reply as the excerpt);
    ``smtp_status`` (a 4xx/5xx reply: its code and text), ``connect``, ``timeout``,
    ``tls``. Never raises for what the server does."""
    started = time.perf_counter()

    def elapsed() -> int:
        return int((time.perf_counter() - started) * 1000)

    try:
        code, reply = await asyncio.to_thread(_send, settings, password, msg, to)
    except smtplib.SMTPRecipientsRefused as exc:
        rcpt, (code, text) = next(iter(exc.recipients.items()))
        reply = _reply(code, text)
        return AttemptOutcome(code, "smtp_status", f"recipient {rcpt} refused: {reply}",
                              reply, elapsed(), None)
    except smtplib.SMTPResponseException as exc:
        reply = _reply(exc.smtp_code, exc.smtp_error)
        said = reply.removeprefix(SMTP_REPLY_MARK)
        return AttemptOutcome(exc.smtp_code, "smtp_status", f"the server answered {said}",
                              reply, elapsed(), None)
    except TimeoutError:
        return AttemptOutcome(None, "timeout", f"no SMTP answer within {settings.timeout_s:g}"
                              " s", None, elapsed(), None)
    except ssl.SSLError as exc:
        return AttemptOutcome(None, "tls", f"TLS with {settings.host}: {exc.reason or exc}",
                              None, elapsed(), None)
    except (OSError, smtplib.SMTPException) as exc:
        detail = str(exc) or type(exc).__name__
        return AttemptOutcome(None, "connect",
                              f"SMTP {settings.host}:{settings.port}: {detail}"[:400], None,
                              elapsed(), None)
    return AttemptOutcome(code, None, None, reply, elapsed(), None)
