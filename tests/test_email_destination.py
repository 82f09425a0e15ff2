"""The email destination end to end: the real daemon, a real SMTP server (aiosmtpd on
loopback, in its own thread), real SQLite; a clock the test moves for retries."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from palyra_py.events import PublishedEvent
from palyra_py.outbound.email import BODY_PAYLOAD_BYTES, build_message
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.subscriptions import Subscription, validate_subscription_fields
from palyra_py.server.daemon import Daemon
from palyra_py.settings import SettingsError
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests.fault_helpers import admin_session
from tests.helpers import create_token
from tests.pg import PgServer

# AUTH over plain text on loopback is what security = "none" is for (docs/settings.md).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

# -- the registry's rules and the message (pure) ----------------------------------------


@pytest.mark.parametrize(("fields", "field", "fragment"), [
    ({"email": ["nope"]}, "email[0]", "not an email address"),
    ({"email": ["Ops <ops@example.com>"]}, "email[0]", "not an email address"),
    ({"email": ["a@b.example\r\nBcc: x@y.example"]}, "email[0]", "not an email address"),
    ({"email": [f"u{i}@example.com" for i in range(21)]}, "email", "1 to 20"),
    ({"email": ["ops@example.com"], "url": "https://x.example/"}, "email", "exactly one"),
    ({"email": ["ops@example.com"], "command": ["/bin/true"]}, "email", "exactly one"),
    ({"email": ["ops@example.com"], "headers": {"X-A": "b"}}, "headers", "for a url"),
    ({"email": ["ops@example.com"], "format": "slack"}, "format", "for a url"),
    ({"email": ["ops@example.com"], "env": {"A": "b"}}, "env", "for a command"),
])
def test_the_email_destination_rules(fields: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(RegistryError) as info:
        validate_subscription_fields({"subscription_id": "s", **fields})
    assert info.value.field == field, info.value
    assert fragment in str(info.value)


def test_an_email_subscription_reads_back_from_its_dict() -> None:
    norm = validate_subscription_fields({"subscription_id": "ops-mail",
                                         "email": "ops@example.com", "events": ["github.*"]})
    sub = Subscription(**norm)
    assert (sub.destination, sub.email, sub.url, sub.command) == (
        "email", ("ops@example.com",), "", ())
    assert Subscription(**validate_subscription_fields(sub.to_dict())) == sub


def test_the_message_says_what_happened_and_bounds_the_payload() -> None:
    event = PublishedEvent(id="01J0000000000000000000000A", type="github.push",
                           timestamp="2026-01-01T00:00:00.000Z",
                           data={"ref": "refs/heads/main", "blob": "x" * (2 * BODY_PAYLOAD_BYTES)},
                           source="gh-main", actor=None, seq=7)
    msg = build_message(event, "ops-mail", "palyra@example.com", ("a@example.com",
                                                                  "b@example.com"), 0.0)
    assert msg["Subject"] == "[palyra] github.push from gh-main"
    assert msg["To"] == "a@example.com, b@example.com"
    body = msg.get_content()
    assert "Event type:   github.push" in body and "Source:       gh-main" in body
    assert "Event id:     01J0000000000000000000000A" in body
    assert '"ref": "refs/heads/main"' in body
    assert "[truncated:" in body and len(body.encode()) < BODY_PAYLOAD_BYTES + 2048


def test_line_breaks_in_an_events_fields_add_no_header() -> None:
    event = PublishedEvent(id="01J0000000000000000000000B", type="app.note",
                           timestamp="2026-01-01T00:00:00.000Z",
                           data={"note": "x\r\nBcc: victim@elsewhere.example"},
                           source="app\r\nBcc: victim@elsewhere.example\r\n", actor=None,
                           seq=8)
    msg = build_message(event, "ops-mail", "palyra@example.com", ("a@example.com",), 0.0)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "[palyra] app.note from app Bcc: victim@elsewhere.example"
    head = msg.as_bytes().split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    assert not any(line.lower().startswith(b"bcc") for line in head.splitlines())


def test_the_email_settings_are_checked(tmp_path: Path) -> None:
    from palyra_py.settings import load_settings

    with pytest.raises(SettingsError, match=r"email\.from"):
        load_settings(tmp_path, env={"PALYRA_EMAIL_HOST": "smtp.example"})
    with pytest.raises(SettingsError, match="not the password itself"):
        load_settings(tmp_path, env={"PALYRA_EMAIL_HOST": "smtp.example",
                                     "PALYRA_EMAIL_FROM": "p@example.com",
                                     "PALYRA_EMAIL_PASSWORD_REF": "hunter2"})
    with pytest.raises(SettingsError, match=r"email\.security"):
        load_settings(tmp_path, env={"PALYRA_EMAIL_SECURITY": "ssl"})


# -- a real SMTP server ------------------------------------------------------------------


@dataclass
class Mailbox:
    """What the server received, and how it answers: ``answers`` are DATA replies used in
    turn (then 250)."""

    messages: list[tuple[Envelope, email.message.EmailMessage]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        with self.lock:
            if self.answers:
                return self.answers.pop(0)
            assert isinstance(envelope.content, bytes)
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, email.message.EmailMessage)
            self.messages.append((envelope, parsed))
        return "250 2.0.0 Ok: queued as 4F2A"


class Authenticator:
    def __init__(self, mailbox: Mailbox, password: str) -> None:
        self._mailbox = mailbox
        self._password = password

    def __call__(self, server: Any, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == (
            self._password.encode())
        if ok:
            self._mailbox.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)


def free_port() -> int:
    """A loopback port nobody listens on (aiosmtpd's Controller checks it is up by
    connecting to the port it was given, so 0 will not do)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(),
                            authenticator=Authenticator(mailbox, "s3cret-smtp-pw"),
                            auth_require_tls=False, auth_required=True)
    controller.start()
    try:
        yield mailbox, controller.port
    finally:
        controller.stop()


@pytest.fixture
async def mailer(state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
                 smtp: tuple[Mailbox, int]) -> AsyncIterator[Daemon]:
    memory_keyring.set_password("palyra", "smtp-password", "s3cret-smtp-pw")
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              email__host="127.0.0.1", email__port=smtp[1],
                              email__security="none", email__username="palyra",
                              email__password_ref="keyring:smtp-password",
                              email__from="palyra@example.com") as d:
        yield d


@pytest.fixture
async def admin_m(mailer: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with admin_session(mailer.socket_path) as session:
        yield session


def published_source(published: dict[str, Any]) -> str:
    source: str = published.get("source", "gh-main")
    return source


async def subscribe(admin: aiohttp.ClientSession, sid: str, to: list[str],
                    **fields: Any) -> dict[str, Any]:
    async with admin.post("/v1/subscriptions",
                          json={"subscription_id": sid, "email": to, **fields}) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 201, answer
        return answer


async def publish(admin: aiohttp.ClientSession, type_: str, **fields: Any) -> dict[str, Any]:
    async with admin.post("/v1/events", json={"type": type_, **fields}) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 201, answer
        return answer


async def shown(admin: aiohttp.ClientSession) -> list[dict[str, Any]]:
    async with admin.get("/v1/deliveries") as resp:
        found = (await resp.json())["deliveries"]
    out = []
    for delivery in sorted(found, key=lambda d: d["delivery_id"]):
        async with admin.get(f"/v1/deliveries/{delivery['delivery_id']}") as resp:
            out.append(await resp.json())
    return out


async def test_an_event_becomes_a_message_with_its_smtp_reply_logged(
    mailer: Daemon, admin_m: aiohttp.ClientSession, smtp: tuple[Mailbox, int],
) -> None:
    mailbox, _ = smtp
    created = await subscribe(admin_m, "ops-mail", ["ops@example.com", "dev@example.com"],
                              events=["deploy.*"])
    assert created["subscription"]["email"] == ["ops@example.com", "dev@example.com"]
    published = await publish(admin_m, "deploy.finished", source="gh-main",
                              data={"ref": "refs/heads/main", "pusher": "ana"})
    await mailer.dispatcher.wait_for_attempts(1)
    ((envelope, msg),) = mailbox.messages
    assert envelope.mail_from == "palyra@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "dev@example.com"]
    assert mailbox.logins == ["palyra"]
    assert msg["Subject"] == f"[palyra] deploy.finished from {published_source(published)}"
    assert msg["From"] == "palyra@example.com"
    assert msg["X-Palyra-Event-Id"] == published["event_id"]
    body = msg.get_content()
    assert f"Event id:     {published['event_id']}" in body
    assert '"pusher": "ana"' in body and '"ref": "refs/heads/main"' in body
    ((attempt,),) = [d["attempts"] for d in await shown(admin_m)]
    assert (attempt["status_code"], attempt["error_class"]) == (250, None)
    assert attempt["response_excerpt"] == "SMTP 250 2.0.0 Ok: queued as 4F2A"
    # The SMTP password is written nowhere: not the registry, not the journal.
    assert "s3cret-smtp-pw" not in (mailer.state_dir / "webhooks.toml").read_text()
    async with admin_m.get("/v1/events", params={"limit": "1000"}) as resp:
        assert "s3cret-smtp-pw" not in json.dumps(await resp.json())


async def test_a_451_is_retried_on_the_schedule_and_deliveries_show_prints_the_reply(
    mailer: Daemon, admin_m: aiohttp.ClientSession, smtp: tuple[Mailbox, int],
    clock: ManualClock,
) -> None:
    mailbox, _ = smtp
    mailbox.answers.append("451 4.3.0 Mailbox temporarily unavailable")
    await subscribe(admin_m, "ops-mail", ["ops@example.com"], retry_schedule=["0s", "30s"])
    await publish(admin_m, "backup.failed", source="cron", data={"host": "db1"})
    await mailer.dispatcher.wait_for_attempts(1)
    assert mailbox.messages == []
    clock.advance(40)
    mailer.dispatcher.wake()
    await mailer.dispatcher.wait_for_attempts(2)
    assert len(mailbox.messages) == 1
    ((detail),) = await shown(admin_m)
    first, second = detail["attempts"]
    assert (first["status_code"], first["error_class"]) == (451, "smtp_status")
    assert first["response_excerpt"] == "SMTP 451 4.3.0 Mailbox temporarily unavailable"
    assert (second["status_code"], second["error_class"]) == (250, None)
    assert detail["delivery"]["status"] == "succeeded"

    from palyra_py.cli import outbound_views, output

    console = output.console()
    with console.capture() as captured:
        console.print(outbound_views.delivery_details(detail["delivery"], detail["attempts"]))
    text = captured.get()
    assert "SMTP 451" in text and "SMTP 250" in text and "HTTP" not in text, text
    assert "Mailbox" in text  # the reply's text, wrapped to the table's column


async def test_a_server_that_is_gone_is_a_connect_failure(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
) -> None:
    port = free_port()
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              email__host="127.0.0.1", email__port=port,
                              email__security="none", email__from="p@example.com") as d:
        async with admin_session(d.socket_path) as admin:
            await subscribe(admin, "ops-mail", ["ops@example.com"])
            await publish(admin, "a.b")
            await d.dispatcher.wait_for_attempts(1)
            ((attempt,),) = [x["attempts"] for x in await shown(admin)]
            assert attempt["error_class"] == "connect"
            assert f"127.0.0.1:{port}" in attempt["error_detail"]
            (delivery,) = [x["delivery"] for x in await shown(admin)]
            assert delivery["status"] == "pending"


async def test_email_without_an_smtp_server_is_refused_at_add(
    outbound: Daemon, admin_o: aiohttp.ClientSession,
) -> None:
    async with admin_o.post("/v1/subscriptions", json={
            "subscription_id": "ops-mail", "email": ["ops@example.com"]}) as resp:
        answer = await resp.json()
    assert resp.status == 400, answer
    assert (answer["error"], answer["field"]) == ("invalid_request", "email")
    assert "[email] host" in answer["message"]


async def test_the_cli_adds_an_email_subscription(
    mailer: Daemon, smtp: tuple[Mailbox, int],
) -> None:
    from tests.test_cli_e2e import palyra

    code, out, err = await palyra(
        mailer.state_dir, "subscriptions", "add", "ops-mail", "--email", "ops@example.com",
        "--email", "dev@example.com", "--events", "github.*")
    assert code == 0, (out, err)
    assert "ops@example.com, dev@example.com" in out
    assert "whsec_" not in out  # no signing secret to show for email
    sub = mailer.registry.subscriptions["ops-mail"]
    assert sub.email == ("ops@example.com", "dev@example.com")
    assert sub.events == ("github.*",)
    text = (mailer.state_dir / "webhooks.toml").read_text()
    assert 'email = ["ops@example.com", "dev@example.com"]' in text
    # subscriptions test: a real message, its SMTP reply shown; exit 0.
    code, out, err = await palyra(mailer.state_dir, "subscriptions", "test", "ops-mail",
                                  columns=200)
    assert code == 0, (out, err)
    assert "SMTP 250" in out and "HTTP" not in out, out
    ((envelope, msg),) = smtp[0].messages
    assert envelope.rcpt_tos == ["ops@example.com", "dev@example.com"]
    assert msg["Subject"].startswith("[palyra] palyra.test from ")
    code, out, err = await palyra(
        mailer.state_dir, "subscriptions", "add", "both", "--email", "ops@example.com",
        "--url", "https://x.example/", columns=200)
    assert code == 2
    assert "exactly one of --url and --command, or --email" in " ".join((out + err).split())


async def test_from_the_registry_file_on_postgresql_retried_under_its_lease(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
    smtp: tuple[Mailbox, int],
) -> None:
    mailbox, port = smtp
    mailbox.answers.append("452 4.3.1 Insufficient system storage")
    memory_keyring.set_password("palyra", "smtp-password", "s3cret-smtp-pw")
    (state_dir / "webhooks.toml").write_text(
        '[[subscriptions]]\nsubscription_id = "pg-mail"\nemail = ["ops@example.com"]\n'
        'events = ["backup.*"]\nretry_schedule = ["0s", "10s"]\n')
    pg_server.new_database("mail")
    database = pg_server.databases[-1]
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              storage__backend="postgres",
                              storage__dsn=pg_server.dsn(database),
                              email__host="127.0.0.1", email__port=port,
                              email__security="none", email__username="palyra",
                              email__password_ref="keyring:smtp-password",
                              email__from="palyra@example.com") as daemon, \
            admin_session(daemon.socket_path) as admin:
        assert daemon.registry.subscriptions["pg-mail"].email == ("ops@example.com",)
        # A subscription from the file starts at the journal's head when the dispatcher
        # first sees it (it may take its lease after the publish): set that head now.
        await daemon.dispatcher.start_at_head("pg-mail")
        await publish(admin, "backup.failed", data={"host": "db1"})
        await daemon.dispatcher.wait_for_attempts(1)
        clock.advance(15)
        daemon.dispatcher.wake()
        await daemon.dispatcher.wait_for_attempts(2)
        ((first, second),) = [d["attempts"] for d in await shown(admin)]
    assert (first["status_code"], first["error_class"]) == (452, "smtp_status")
    assert (second["status_code"], second["error_class"]) == (250, None)
    ((_, msg),) = mailbox.messages
    assert '"host": "db1"' in msg.get_content()
    # The attempt log is PostgreSQL's.
    stored = pg_server.psql(database, "SELECT string_agg(response_excerpt, '|' ORDER BY"
                                      " attempt_no) FROM delivery_attempts")
    assert stored == "SMTP 452 4.3.1 Insufficient system storage|SMTP 250 2.0.0 Ok: queued as 4F2A"


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[tuple[Mailbox, int, Path]]:
    """An SMTP server that requires STARTTLS (a self-signed certificate for 127.0.0.1)
    before AUTH PLAIN."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(),
                            authenticator=Authenticator(mailbox, "s3cret-smtp-pw"),
                            tls_context=context, require_starttls=True,
                            auth_require_tls=True, auth_required=True)
    controller.start()
    try:
        yield mailbox, controller.port, cert
    finally:
        controller.stop()


async def test_starttls_then_auth_plain_with_the_servers_ca(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
    tls_smtp: tuple[Mailbox, int, Path],
) -> None:
    mailbox, port, cert = tls_smtp
    memory_keyring.set_password("palyra", "smtp-password", "s3cret-smtp-pw")
    settings = {"email__host": "127.0.0.1", "email__port": port,
                "email__security": "starttls", "email__username": "palyra",
                "email__password_ref": "keyring:smtp-password",
                "email__from": "palyra@example.com"}
    # The system's CAs do not know the server's certificate: a tls failure, retried.
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              **settings) as daemon, \
            admin_session(daemon.socket_path) as admin:
        await subscribe(admin, "ops-mail", ["ops@example.com"], events=["backup.*"])
        await publish(admin, "backup.failed", data={"host": "db1"})
        await daemon.dispatcher.wait_for_attempts(1)
        ((attempt,),) = [d["attempts"] for d in await shown(admin)]
        assert attempt["error_class"] == "tls", attempt
        assert mailbox.messages == [] and mailbox.logins == []
    # Trusting its CA: STARTTLS, AUTH PLAIN, delivered.
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              email__ca_file=str(cert), **settings) as daemon, \
            admin_session(daemon.socket_path) as admin:
        await publish(admin, "backup.failed", data={"host": "db2"})
        await daemon.dispatcher.wait_for_attempts(1)
        ((envelope, msg),) = mailbox.messages
        assert mailbox.logins == ["palyra"]
        assert envelope.rcpt_tos == ["ops@example.com"]
        assert '"host": "db2"' in msg.get_content()


async def test_a_token_cannot_choose_recipients_but_the_socket_can(
    mailer: Daemon, admin_m: aiohttp.ClientSession, smtp: tuple[Mailbox, int],
) -> None:
    token = await create_token(admin_m, "ci", scopes=["admin"])
    base = mailer.ingress_url_for("x", local=True).rsplit("/hooks/", 1)[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/registry", headers=token.bearer) as resp:
            exported = (await resp.json())["document"]
        added = exported + ('\n[[subscriptions]]\nsubscription_id = "leak"\n'
                            'email = ["someone@elsewhere.example"]\n')
        for dry_run in (True, False):
            async with http.post(f"{base}/v1/registry/import", headers=token.bearer,
                                 json={"document": added, "dry_run": dry_run}) as resp:
                answer = await resp.json()
                assert (resp.status, answer["error"]) == (403, "email_needs_socket"), answer
                assert "leak" in answer["message"]
        assert "leak" not in mailer.registry.subscriptions

        # On the socket: allowed; the token may then neither add a recipient nor turn a
        # URL subscription into mail, but may re-import it unchanged or remove it.
        await subscribe(admin_m, "ops-mail", ["ops@example.com"])
        async with admin_m.post("/v1/subscriptions", json={
                "subscription_id": "hooked", "url": "https://hooks.example.com/x"}) as resp:
            assert resp.status == 201, await resp.json()
        async with http.get(f"{base}/v1/registry", headers=token.bearer) as resp:
            exported = (await resp.json())["document"]
        widened = exported.replace('"ops@example.com"',
                                   '"ops@example.com", "someone@elsewhere.example"')
        switched = exported.replace('url = "https://hooks.example.com/x"',
                                    'email = ["someone@elsewhere.example"]')
        for document in (widened, switched):
            assert document != exported
            async with http.post(f"{base}/v1/registry/import", headers=token.bearer,
                                 json={"document": document}) as resp:
                assert (resp.status, (await resp.json())["error"]) == (
                    403, "email_needs_socket")
        assert mailer.registry.subscriptions["ops-mail"].email == ("ops@example.com",)
        assert mailer.registry.subscriptions["hooked"].destination == "url"
        async with http.post(f"{base}/v1/registry/import", headers=token.bearer,
                             json={"document": exported}) as resp:
            assert resp.status == 200, await resp.json()
        removed = exported.split("[[subscriptions]]")[0]
        async with http.post(f"{base}/v1/registry/import", headers=token.bearer,
                             json={"document": removed}) as resp:
            assert resp.status == 200, await resp.json()
        assert "ops-mail" not in mailer.registry.subscriptions
    assert smtp[0].messages == []


async def test_an_email_subscription_has_no_signing_secret(
    mailer: Daemon, admin_m: aiohttp.ClientSession, memory_keyring: MemoryKeyring,
) -> None:
    from tests.test_cli_e2e import palyra

    created = await subscribe(admin_m, "ops-mail", ["ops@example.com"])
    assert "secret" not in created and created["subscription"]["secret_ref"] is None
    assert not [n for _, n in memory_keyring.passwords if n.startswith("subscription:")]
    async with admin_m.post("/v1/subscriptions/ops-mail/rotate-secret", json={}) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (409, "not_signed"), answer
        assert "email destination" in answer["message"]
    code, out, err = await palyra(mailer.state_dir, "subscriptions", "show", "ops-mail",
                                  columns=200)
    assert code == 0, err
    assert "none (messages are not signed)" in out
