"""The daemon: two listeners (public ingress on TCP, admin API on a 0600 Unix socket), one
journal; one process (``role`` ``single``), or by default a control process and one
ingress worker process per core (``control``, ``worker``). :class:`Daemon` is an app
factory that tests start in one line (one process); :func:`run_daemon` is what ``palyra
daemon run`` calls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
import tomlkit
from aiohttp import web, web_response

from palyra_py import __version__
from palyra_py.admin.context import (
    DeliveriesContext,
    EventsContext,
    ReplayContext,
    StatusContext,
    SubscriptionsContext,
    WebhooksContext,
)
from palyra_py.admin.deliveries import DeliveriesApi
from palyra_py.admin.destination_guard import refuse_guarded_edits
from palyra_py.admin.errors import ApiError, error_middleware
from palyra_py.admin.events import PRINCIPAL, EventsApi, body_capped
from palyra_py.admin.registry import RegistryApi
from palyra_py.admin.replay import ReplayApi
from palyra_py.admin.status import AdminApi
from palyra_py.admin.subscriptions import SubscriptionsApi
from palyra_py.admin.webhooks import WebhooksApi
from palyra_py.bus.local import SeqBus
from palyra_py.bus.socket import HeadRelay
from palyra_py.delivery.backend import DeliveryBackend, DeliveryStoreUnavailable
from palyra_py.delivery.start import DeliveriesFrom, parse_deliveries_from
from palyra_py.inbound.forwarded import ClientAddress, parse_proxies
from palyra_py.inbound.ingress import ActiveIntegration, Ingress
from palyra_py.inbound.listener import CappedTCPSite, ConnectionCap
from palyra_py.inbound.rejections import RejectionLog
from palyra_py.journal.backend import JournalBackend
from palyra_py.journal.journal import (
    AppendResult,
    EventFilter,
    Journal,
    JournalDamaged,
    JournalUnavailable,
    NewEvent,
)
from palyra_py.journal.sqlite_journal import SqliteJournal
from palyra_py.metrics import Metrics
from palyra_py.outbound.dispatcher import Dispatcher
from palyra_py.outbound.email import EmailSettings
from palyra_py.outbound.http import Sender
from palyra_py.outbound.ssrf import AddressPolicy
from palyra_py.paths import JOURNAL_FILE, REGISTRY_FILE, resolve_state_dir, socket_path
from palyra_py.registry.document import Registry
from palyra_py.registry.file import RegistryFile
from palyra_py.registry.integrations import Integration
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.source import FileSource, RegistryUnavailable
from palyra_py.registry.subscriptions import update_subscription
from palyra_py.registry.tokens import Principal, split_token, token_matches
from palyra_py.secrets.dsn import storage_dsn
from palyra_py.secrets.refs import SecretRefError
from palyra_py.secrets.shared import DbSecrets, DbSecretsUnavailable
from palyra_py.secrets.store import SecretNotFound, SecretStore
from palyra_py.server.admin_relay import relay_to_admin_socket
from palyra_py.server.cluster_bus import start_head_feed
from palyra_py.server.fd_limits import FdBudget, FdLimitError, fit_open_file_limit
from palyra_py.server.metrics_view import merge_expositions
from palyra_py.server.registry_keeper import RegistryKeeper, node_name, open_db_registry
from palyra_py.server.stores import delivery_backend, delivery_file, delivery_location
from palyra_py.server.supervisor import (
    Supervisor,
    WorkerSlot,
    WorkerStartFailed,
    bind_listener,
    own_process,
)
from palyra_py.server.token_usage import FLUSH_INTERVAL_S, USAGE_FILE, TokenUsage
from palyra_py.settings import Settings, SettingsError, load_settings, parse_listen, parse_workers
from palyra_py.storage.ownership import ForeignOwner, check_path_owner
from palyra_py.storage.sqlite import related_files
from palyra_py.storage.state_lock import StateDirBusy, StateDirLock
from palyra_py.stream.hub import StreamHub
from palyra_py.times import format_rfc3339

if TYPE_CHECKING:  # the driver is imported in cluster mode only
    from palyra_py.bus.postgres import PostgresHeadFeed
    from palyra_py.cluster.node import ClusterNode
    from palyra_py.server.cluster import Notices

log = structlog.get_logger("palyra.daemon")

TOKEN_REFUSALS = frozenset({"unauthorized", "token_expired", "scope_denied"})
"""The refusals of the token routes, counted in ``palyra_token_refusals_total``."""

SERVER_HEADER = "palyra"
"""The ``Server`` header of every answer on every listener: no version banner."""


def hide_server_version() -> None:
    """aiohttp names itself and Python with their versions in every answer's ``Server``
    header (``Python/3.11 aiohttp/3.14.5``), including the 400s its parser sends before any
    handler runs; the daemon says ``palyra`` and nothing an advisory could be matched
    against. aiohttp reads this module global when it prepares each answer."""
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]


EXIT_CANNOT_START = 1
EXIT_JOURNAL_DAMAGED = 3
"""``palyra daemon run`` refused to start on a damaged journal (docs/cli.md)."""
EXIT_DELIVERIES_MISSING = 4
"""``deliveries.db`` is missing while the journal has events and there are subscriptions:
``--deliveries-from`` must say where deliveries resume (docs/cli.md)."""


class DaemonError(Exception):
    """The daemon cannot start; the message says why and what to do."""

    def __init__(self, message: str, *, exit_code: int = EXIT_CANNOT_START) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def prepare_state_dir(state_dir: Path, *, expected_uid: int | None = None) -> None:
    """Create the state dir 0700 (and tighten an existing one: it holds the journal, the
    registry, the admin socket and maybe the fallback secrets file). An existing one owned
    by another user than ``expected_uid`` (default: the effective uid) and root is refused
    (``DaemonError``): that user could loosen it again or swap its files."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        check_path_owner(state_dir, what="the state dir", expected_uid=expected_uid)
    except ForeignOwner as exc:
        raise DaemonError(str(exc)) from None
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if mode != 0o700:
        os.chmod(state_dir, 0o700)
        log.warning("state_dir_permissions_tightened", path=str(state_dir), was=oct(mode))


def claim_socket(path: Path) -> None:
    """Remove a stale socket; refuse if another daemon answers on it."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise DaemonError(f"another daemon is running on {path}; stop it first")
    finally:
        probe.close()


Role = Literal["single", "control", "worker"]
"""``single``: everything in one process (``daemon.workers = 1``). ``control``: admin
socket, registry writer, dispatcher, retention, supervision of the workers. ``worker``: the
public listener (webhooks, publishing, streams, metrics, health) on the control process's
socket."""


@dataclass(frozen=True, slots=True)
class Listener:
    kind: str
    address: str


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        secrets: SecretStore | None = None,
        deliveries_from: DeliveriesFrom | None = None,
        worker_of: socket.socket | None = None,
        flags: Mapping[tuple[str, str], Any] | None = None,
    ) -> None:
        """``deliveries_from``: where deliveries resume if ``deliveries.db`` is missing
        (``palyra daemon run --deliveries-from``; ignored on PostgreSQL). The role follows
        ``daemon.workers`` (1: ``single``, more: ``control``), or is ``worker`` when
        ``worker_of`` (the control process's listening socket) is given. ``flags``: the
        ``daemon run`` flags, passed on to the workers."""
        self.settings = settings
        self.workers = parse_workers(settings.get("daemon", "workers"))
        self.role: Role = ("worker" if worker_of is not None
                           else "control" if self.workers > 1 else "single")
        self._listen_socket = worker_of
        self._flags = dict(flags or {})
        self.supervisor: Supervisor | None = None
        self.relay: HeadRelay | None = None
        """The bus across this daemon's processes (not in a single process)."""
        self.head_feed: PostgresHeadFeed | None = None
        """On PostgreSQL, the bus across nodes (LISTEN/NOTIFY; not in a worker)."""
        self.metrics_view: Callable[[], Awaitable[bytes]] | None = None
        """What ``/metrics`` answers when it is more than this process's registry (every
        process's, merged)."""
        self.readiness_view: Callable[[], Awaitable[tuple[str, str] | None]] | None = None
        """A worker's: what keeps the control process from taking events (its journal and
        its delivery store, which a worker does not open), asked by each ``/readyz``."""
        self._deliveries_from = deliveries_from
        self.delivery_store_lost = asyncio.Event()
        """Set once the removal of ``deliveries.db`` is logged (tests wait for it)."""
        self.state_dir = settings.state_dir
        self.clock = clock
        self._secrets = secrets
        self.bus = SeqBus()
        self.metrics = Metrics()
        self.stream_hub: StreamHub
        self.rejections = RejectionLog()
        self.registry_file = RegistryFile(self.state_dir / REGISTRY_FILE)
        self.registry = Registry(self.registry_file.path, {})
        self._edit_lock = asyncio.Lock()
        self.registry_keeper = RegistryKeeper(
            FileSource(self.registry_file), node=node_name(self.state_dir), lock=self._edit_lock,
            activate=self._activate, refresh_secrets=self._forget_secrets,
            everywhere=self._in_force_everywhere)
        """The registry's source (the file; in cluster mode the database) and its watch."""
        self.active: dict[str, ActiveIntegration] = {}
        self.journal = Journal(self._journal_backend())
        # A worker builds one too, and never starts it: the control process delivers.
        self.deliveries: DeliveryBackend = delivery_backend(
            settings, self.state_dir, dsn=self._storage_dsn,
            on_file_lost=self._delivery_store_unavailable)
        self._deliveries_file = delivery_file(self.deliveries)
        """``deliveries.db`` (SQLite), else ``None``."""
        cidrs = [c.strip() for c in settings.get("delivery", "allow_cidrs").split(",")
                 if c.strip()]
        self._trusted_proxies = parse_proxies(settings.get("ingress", "trusted_proxies"))
        self.sender = Sender(
            AddressPolicy(settings.get("delivery", "allow_private_networks"), cidrs),
            max_connections=settings.get("delivery", "max_in_flight_total"),
        )
        self._dispatcher: Dispatcher | None = None
        self.listeners: list[Listener] = []
        self.started_at = 0.0
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._ingress: Ingress | None = None
        self.ingress_port = 0
        self.connections = ConnectionCap(0, 0)  # replaced when the listener starts
        self.fd_budget: FdBudget | None = None  # set at start
        self.fd_warning = ""
        """Why the caps were lowered to fit the open-file limit ("" when they were not)."""
        self._ingress_host = "127.0.0.1"
        self._tls = False
        self.stopped = asyncio.Event()
        self.streams: set[asyncio.Task[Any]] = set()
        self.retention_passes = 0
        self.retention_ran = asyncio.Event()
        """Set after each retention pass (tests await it instead of a timer)."""
        self.token_usage = TokenUsage(self.state_dir / USAGE_FILE)
        self.db_secrets: DbSecrets | None = None
        """Cluster mode with ``[secrets] key_ref``: the shared ``db:`` secrets."""
        self.cluster: ClusterNode | None = None
        """Cluster mode: this node's heartbeat and delivery leases."""
        self._notices: Notices | None = None
        self._state_lock = StateDirLock(self.state_dir, "a palyra daemon")

    def _journal_backend(self) -> JournalBackend:
        """The journal's engine, as ``[storage] backend`` says."""
        settings = self.settings
        if settings.get("storage", "backend") == "postgres":
            # Loaded only here: the driver is not imported by an embedded daemon.
            from palyra_py.journal.postgres_journal import PostgresJournal

            return PostgresJournal(
                self._storage_dsn, clock=self.clock,
                batch_max=settings.get("journal", "batch_max"), on_commit=self._committed,
            )
        return SqliteJournal(
            self.state_dir / JOURNAL_FILE,
            clock=self.clock,
            batch_max=settings.get("journal", "batch_max"),
            on_commit=self._committed,
            # The control process checked the file before it started the workers.
            start_check_s=0 if self.role == "worker" else settings.get("journal", "start_check_s"),
            on_unavailable=self._journal_unavailable,
            several_appenders=self.role != "single",
        )

    def _storage_dsn(self) -> str:
        """The PostgreSQL URI, read when the journal starts (a ``dsn_ref`` secret too)."""
        dsn = storage_dsn(self.settings, self.secrets.resolve)
        assert dsn is not None, "storage.backend is postgres"
        return dsn

    async def _start_db_secrets(self) -> None:
        """Cluster mode: the ``db:`` secrets every node shares, and their poll."""
        from palyra_py.secrets.postgres import start_db_secrets  # asyncpg: cluster mode only

        try:
            self.db_secrets = await start_db_secrets(
                self.settings, self.secrets, self._storage_dsn, self._db_secrets_changed)
        except SettingsError:
            await self.journal.close()
            raise
        except Exception as exc:
            await self.journal.close()
            raise DaemonError(f"cannot read the db: secrets: {exc}") from None
        if self.db_secrets is not None:
            self._tasks.append(asyncio.create_task(self.db_secrets.run()))
        elif self.role != "worker" and (warning := self.secrets.new_secrets_warning()):
            log.warning("secrets_per_node", hint=warning)

    async def _start_db_registry(self) -> None:
        """Cluster mode: the registry in the database (seeded from this node's file if it
        has none), and in the control process its watch."""
        keeper = self.registry_keeper
        try:
            keeper.source = await open_db_registry(
                self._storage_dsn, self.registry_file, node=keeper.node,
                seed=self.role != "worker", on_notify=keeper.notified)
            await keeper.load()
        except (RegistryError, RegistryUnavailable) as exc:
            await keeper.close()
            if self.db_secrets is not None:
                await self.db_secrets.close()
            await self.journal.close()
            raise DaemonError(f"cannot read the registry: {exc}") from None
        if self.role != "worker":
            self._tasks.append(asyncio.create_task(keeper.watch()))

    def _db_secrets_changed(self, names: frozenset[str]) -> None:
        """``db:`` secrets changed (here or on another node): what the ingress resolved
        from them is read again on its next use."""
        refs = {f"db:{name}" for name in names}
        for entry in self.active.values():
            integ = entry.integration
            if integ.secret_ref in refs or integ.previous_secret_ref in refs:
                entry.secrets.forget()

    def _committed(self, seq: int, events: int) -> None:
        self.metrics.committed(seq, events)
        self.bus.publish(seq)
        if self.relay is not None:
            self.relay.notify(seq)

    def _journal_unavailable(self, reason: str) -> None:
        """The journal file was found removed, replaced or damaged: from now on nothing is
        acknowledged, readiness is false, and the log and ``daemon status`` say why."""
        log.error("journal_damaged" if self.journal.damaged else "journal_removed",
                  error=reason)

    def _delivery_store_unavailable(self, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._report_deliveries_lost(reason))
        self._tasks.append(task)

    async def _report_deliveries_lost(self, reason: str) -> None:
        """Say that dispatching stopped, and from where a restart must re-deliver so that
        nothing is lost: the open (removed) file still tells the lowest pending seq and
        cursor."""
        try:
            resume = await self.deliveries.resume_seq()
        except DeliveryStoreUnavailable:
            resume = None
        if resume is None:
            resume = self.bus.head + 1
        log.error(
            "delivery_store_removed", error=reason, deliveries_from=f"seq:{resume}",
            what_to_do=(
                "events are still journaled and acknowledged, but nothing is delivered "
                "until a restart. Restart with `palyra daemon run --deliveries-from "
                f"seq:{resume}` to deliver every pending retry and every event journaled "
                "since (receivers may see some again), or --deliveries-from head to skip "
                "them"),
        )
        self.delivery_store_lost.set()

    def not_ready_because(self) -> tuple[str, str] | None:
        """``(code, detail)`` of what keeps this process from taking events, else ``None``.
        A worker checks the journal, not ``deliveries.db`` (only the control process opens
        it): its ``/readyz`` adds the control process's answer (``readiness_view``)."""
        if self._ingress is None or self.stopped.is_set():
            return "not_started", "the daemon is starting or stopping"
        journal = self.journal.check_file()
        if journal is not None:
            return "journal_unavailable", journal
        deliveries = (None if self.role == "worker"
                      else self.deliveries.check_file() or self.deliveries.down_reason)
        if deliveries is not None:
            return "deliveries_unavailable", deliveries
        return None

    # -- parts ---------------------------------------------------------------------------

    @property
    def secrets(self) -> SecretStore:
        assert self._secrets is not None, "daemon not started"
        return self._secrets

    @property
    def dispatcher(self) -> Dispatcher:
        assert self._dispatcher is not None, "daemon not started"
        return self._dispatcher

    @property
    def ingress(self) -> Ingress:
        assert self._ingress is not None, "daemon not started"
        return self._ingress

    @property
    def journal_path(self) -> Path:
        return self.state_dir / JOURNAL_FILE

    @property
    def socket_path(self) -> Path:
        return socket_path(self.state_dir)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=UTC).replace(microsecond=0)

    def ingress_url_for(self, integration_id: str, *, local: bool = False) -> str:
        public = self.settings.get("daemon", "public_url")
        if public and not local:
            return f"{public.rstrip('/')}/hooks/{integration_id}"
        host = self._ingress_host
        if local and host in ("0.0.0.0", "::", ""):  # noqa: S104
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{host}:{self.ingress_port}/hooks/{integration_id}"

    async def readiness_of(self, integ: Integration) -> tuple[str, str]:
        if not integ.enabled:
            return "disabled", "integration is disabled"
        if not integ.signature_required:
            return "ready", "signature not required"
        readiness, detail = await asyncio.to_thread(self.secrets.readiness, integ.secret_ref)
        return readiness, detail

    # -- registry ------------------------------------------------------------------------

    def _activate(self, registry: Registry) -> None:
        active: dict[str, ActiveIntegration] = {}
        for integration_id, integ in registry.integrations.items():
            previous = self.active.get(integration_id)
            entry = ActiveIntegration.build(integ)
            if previous is not None and previous.integration == integ:
                entry.secrets = previous.secrets  # same references: keep what they held
            active[integration_id] = entry
        self.registry, self.active = registry, active
        if self._dispatcher is not None:
            self._dispatcher.wake()
        if self.cluster is not None:
            self.cluster.poke()

    async def disable_subscription(self, subscription_id: str, reason: str) -> None:
        """Disable (410 Gone, days of failures, an operator) and journal why."""
        if subscription_id not in self.registry.subscriptions:
            return
        now = self.now_dt()
        try:
            await self.edit_registry(lambda doc: update_subscription(
                doc, subscription_id, {"enabled": False, "disabled_reason": reason[:240]}, now))
        except (RegistryError, KeyError, ApiError) as exc:
            log.error("subscription_disable_failed", subscription_id=subscription_id,
                      error=str(exc))
            return
        await self.append(kind="subscription.disabled", source="daemon",
                          event_type="subscription.disabled",
                          payload={"subscription_id": subscription_id, "reason": reason})
        log.warning("subscription_disabled", subscription_id=subscription_id, reason=reason)

    async def _check_cursors(self) -> None:
        """A cursor past the journal's head means the journal was replaced (removed, or
        restored from an older copy): new events would be skipped until seq caught up. Such
        cursors restart at the head, and the daemon says so."""
        head = await self.journal.last_seq()
        for subscription_id in self.registry.subscriptions:
            cursor = await self.deliveries.cursor(subscription_id)
            if cursor is not None and cursor > head:
                await self.deliveries.set_cursor(subscription_id, head)
                log.warning("delivery_cursor_reset", subscription_id=subscription_id,
                            cursor=cursor, journal_head=head,
                            reason="the journal is behind the cursor: it was replaced")

    async def _without_delivery_store(self, path: Path) -> None:
        """``deliveries.db`` (``path``) is missing. A first start (empty journal) or one
        without subscriptions has nothing to lose; otherwise the file was lost and where
        deliveries resume is the operator's choice, never a guess."""
        head = await self.journal.last_seq()
        if head > 0 and self.registry.subscriptions and self._deliveries_from is None:
            raise DaemonError(
                f"{path} is missing, but the journal has events (head seq "
                f"{head}) and there are {len(self.registry.subscriptions)} subscriptions: the "
                "delivery store (pending retries and each subscription's cursor) was removed "
                "or lost, and palyra will not guess where deliveries resume. Restore it from "
                "a backup, or start with --deliveries-from head (every subscription starts "
                "at the journal head: what happened in the gap is not delivered), "
                "--deliveries-from seq:N (re-deliver from seq N) or --deliveries-from "
                "2026-12-07T10:00Z (re-deliver from that time). If the daemon logged "
                "delivery_store_removed, its deliveries_from says where nothing is lost",
                exit_code=EXIT_DELIVERIES_MISSING)
        for orphan in related_files(path)[1:]:
            if orphan.exists():  # a WAL without its database would be replayed into a new one
                aside = orphan.with_name(f"{orphan.name}.orphaned-{int(self.clock())}")
                orphan.rename(aside)
                log.warning("delivery_store_orphan_moved", path=str(orphan), to=str(aside))

    async def _place_cursors(self, choice: DeliveriesFrom) -> None:
        """Every subscription's cursor where the operator chose (a new delivery store)."""
        head = await self.journal.last_seq()
        if choice.kind == "head":
            cursor = head
        elif choice.kind == "seq":
            cursor = min(head, choice.value - 1)
        else:
            first = await self.journal.list(EventFilter(since_ms=choice.value), limit=1)
            cursor = first[0].seq - 1 if first else head
        for subscription_id in self.registry.subscriptions:
            await self.deliveries.set_cursor(subscription_id, cursor)
        log.warning("delivery_cursors_placed", deliveries_from=choice.describe(),
                    cursor=cursor, journal_head=head,
                    subscriptions=len(self.registry.subscriptions))

    async def _journal_from_dispatcher(self, kind: str, payload: dict[str, Any]) -> None:
        with contextlib.suppress(ApiError):
            await self.append(kind=kind, source="daemon", event_type=kind, payload=payload)

    # -- tokens (publishing and streaming over TCP) ---------------------------------------

    async def authorize(self, request: web.Request) -> Principal:
        """Who a valid ``Authorization: Bearer`` token speaks for, else 401 ``unauthorized``
        (401 ``token_expired`` for a genuine token past its ``expires_at``). Notes the use
        in memory (``token_usage``)."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        parsed = split_token(value.strip()) if scheme.lower() == "bearer" else None
        token = self.registry.tokens.get(parsed[0]) if parsed else None
        if parsed is None or token is None or token.secret_ref is None:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <palyra token>")
        try:
            expected = await asyncio.to_thread(self.secrets.resolve, token.secret_ref)
        except (SecretNotFound, SecretRefError):
            raise ApiError(401, "unauthorized", "the token's secret is unavailable") from None
        if not token_matches(expected, parsed[1]):
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <palyra token>")
        now = self.clock()
        if token.expires_at is not None and now >= token.expires_at.timestamp():
            expired = format_rfc3339(token.expires_at, timespec="auto")
            raise ApiError(401, "token_expired",
                           f"token {token.token_id} expired at {expired}; create a new one"
                           " (palyra tokens create) and revoke this one")
        self.token_usage.touch(token.token_id, int(now))
        return Principal.of(token)

    def _token_required(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                        scope: str = "", allowed: Callable[[Principal], bool] | None = None,
                        ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``handler`` behind a valid token (``request[PRINCIPAL]``); with ``allowed``, a
        token it refuses gets 403 ``scope_denied`` naming ``scope``."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                principal = await self.authorize(request)
                if allowed is not None and not allowed(principal):
                    raise ApiError(403, "scope_denied",
                                   f"token {principal.token_id} lacks the {scope} scope")
                request[PRINCIPAL] = principal
                return await handler(request)
            except ApiError as exc:
                if exc.code in TOKEN_REFUSALS:  # a bounded label: three codes
                    self.metrics.token_refusals.labels(exc.code).inc()
                raise

        async def rendered(request: web.Request) -> web.StreamResponse:
            return await error_middleware(request, guarded)

        return rendered

    def _registry_vanished(self) -> bool:
        """The file is gone while the registry in force is not empty: reading it as empty
        would drop every integration, subscription and token at once."""
        if self.registry_keeper.clustered:  # the file is not the source
            return False
        current = self.registry
        in_force = bool(current.integrations or current.subscriptions or current.tokens)
        return in_force and not self.registry_file.path.exists()

    def _refuse_if_vanished(self) -> None:
        if self._registry_vanished():
            raise RegistryError(
                "the file is missing; the last good registry stays in force. Restore the file "
                "(or restart the daemon to begin with an empty registry)",
                path=self.registry_file.path,
            )

    async def edit_registry(self, change: Callable[[tomlkit.TOMLDocument], None]) -> Registry:
        async with self._edit_lock:
            self._refuse_if_vanished()
            return await self.registry_keeper.edit(change)

    async def reload(self) -> Registry:
        """Re-read the registry (``webhooks.toml``; in cluster mode the database's). An
        invalid one raises ``RegistryError`` and the last good registry stays in force."""
        async with self._edit_lock:
            self._refuse_if_vanished()
            registry = await self.registry_keeper.reload()
        await self.append(kind="daemon.reloaded", source="daemon",
                          payload={"integrations": len(registry.integrations)})
        return registry

    async def _in_force_everywhere(self) -> None:
        """Return once every worker has read the registry just written and forgotten the
        secrets it cached (the control process asks, each worker acknowledges)."""
        if self.supervisor is not None:
            await self.supervisor.broadcast_reload()

    async def _forget_secrets(self) -> None:
        """Before a registry read anew is put in force: the ``db:`` secrets an edit (here
        or on another node) wrote are read again, and every cached secret is forgotten."""
        if self.db_secrets is not None:
            with contextlib.suppress(DbSecretsUnavailable):
                await self.db_secrets.refresh()
        self.secrets.forget_cached()
        for entry in self.active.values():
            entry.secrets.forget()

    async def refresh_registry(self) -> None:
        """A worker, told by the control process: re-read the registry and forget every
        cached secret. A document that does not validate (a hand edit the control process
        refused too) leaves the registry in force."""
        async with self._edit_lock:
            await self.registry_keeper.refresh()

    # -- journal -------------------------------------------------------------------------

    async def append(self, *, kind: str, source: str, payload: dict[str, Any],
                     **fields: Any) -> AppendResult:
        try:
            return await self.journal.append(
                NewEvent(kind=kind, source=source, payload=payload, **fields)
            )
        except JournalUnavailable as exc:
            raise ApiError(503, "journal_unavailable", f"journal unavailable: {exc}") from None

    async def journal_admin(self, kind: str, integration_id: str,
                            payload: Mapping[str, Any]) -> None:
        await self.append(kind=kind, source="admin", integration_id=integration_id,
                          event_type=kind, payload={"integration_id": integration_id, **payload})

    # -- lifecycle -----------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        cert, key = self.settings.get("daemon", "tls_cert"), self.settings.get("daemon", "tls_key")
        if not cert and not key:
            return None
        if not (cert and key):
            raise DaemonError("TLS needs both daemon.tls_cert and daemon.tls_key")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise DaemonError(f"cannot load TLS certificate/key: {exc}") from None
        return ctx

    def _ingress_app(self) -> web.Application:
        # No middleware here: every /hooks request would pay for it; the token routes get
        # the admin error rendering through their own wrapper.
        app = web.Application(client_max_size=32 * 1024 * 1024 + 1)
        app.add_routes(self.ingress.routes())
        events = EventsApi(self._events_context())

        def can_read(principal: Principal) -> bool:
            return principal.can_read

        def can_scrape(principal: Principal) -> bool:
            return principal.can_scrape_metrics

        app.add_routes([
            web.post("/v1/events", self._token_required(body_capped(events.emit))),
            web.get("/v1/events", self._token_required(body_capped(events.list), "read",
                                                       can_read)),
            web.get("/v1/events/stream",
                    self._token_required(body_capped(events.stream), "read", can_read)),
            web.get("/v1/events/ws",
                    self._token_required(body_capped(events.websocket), "read", can_read)),
        ])
        def can_administer(principal: Principal) -> bool:
            return principal.can_administer

        if self.role == "worker":  # the control process writes the registry
            show = update = relay_to_admin_socket(self.socket_path)
        else:
            registry = RegistryApi(self.registry_keeper, self)
            show, update = registry.show, registry.import_document
        import_limit = self.settings.get("admin", "max_body_bytes")
        app.add_routes([
            web.get("/v1/registry", self._token_required(show, "admin", can_administer)),
            web.post("/v1/registry/import", self._token_required(
                body_capped(refuse_guarded_edits(update, lambda: self.registry.subscriptions),
                            import_limit), "admin", can_administer)),
        ])
        metrics = (self._metrics if self.settings.get("metrics", "public")
                   else self._token_required(self._metrics, "metrics", can_scrape))
        app.add_routes([web.get("/healthz", self._healthz), web.get("/readyz", self._readyz),
                        web.get("/metrics", metrics)])
        return app

    def _admin_app(self) -> web.Application:
        app = web.Application(
            middlewares=[error_middleware],
            client_max_size=self.settings.get("admin", "max_body_bytes"),
        )
        app.add_routes(AdminApi(self._status_context()).routes())
        app.add_routes(WebhooksApi(self._webhooks_context()).routes())
        app.add_routes(EventsApi(self._events_context()).routes())
        app.add_routes(SubscriptionsApi(self._subscriptions_context()).routes())
        app.add_routes(DeliveriesApi(self._deliveries_context()).routes())
        app.add_routes(ReplayApi(ReplayContext(
            registry_view=self, journal=self.journal, deliveries=self.deliveries,
            dispatcher=self.dispatcher, time=self)).routes())
        app.add_routes(RegistryApi(self.registry_keeper, self).routes())
        return app

    # -- the admin handlers' contexts: the parts each uses, never the daemon itself --------
    # The daemon implements the operation Protocols (registry edits, appends, the clock);
    # the other parts exist once the start has built them.

    def _status_context(self) -> StatusContext:
        return StatusContext(
            reloader=self, readiness=self, runtime=self, listener=self, time=self,
            journal=self.journal, deliveries=self.deliveries, secrets=self.secrets,
            ingress_stats=self.ingress.stats, rejections=self.rejections,
            settings=self.settings, state_dir=self.state_dir, admin_socket=self.socket_path,
            registry_path=self.registry_file.path, journal_path=self.journal_path,
            deliveries_location=delivery_location(self.settings, self.deliveries),
        )

    def _webhooks_context(self) -> WebhooksContext:
        return WebhooksContext(editor=self, appender=self, ingress=self, readiness=self,
                               secrets=self.secrets, time=self)

    def _subscriptions_context(self) -> SubscriptionsContext:
        return SubscriptionsContext(
            editor=self, appender=self, switch=self,
            dispatcher=self.dispatcher, deliveries=self.deliveries, secrets=self.secrets,
            settings=self.settings, time=self,
        )

    def _deliveries_context(self) -> DeliveriesContext:
        return DeliveriesContext(
            editor=self, appender=self, deliveries=self.deliveries, dispatcher=self.dispatcher,
            secrets=self.secrets, token_use=self.token_usage, time=self,
        )

    def _events_context(self) -> EventsContext:
        return EventsContext(
            registry_view=self, appender=self, journal=self.journal,
            stream_hub=self.stream_hub, listener=self, streams=self.streams,
            metrics=self.metrics, settings=self.settings,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.render() if self.metrics_view is None else await self.metrics_view()
        return web.Response(body=body,
                            headers={"Content-Type": self.metrics.content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        problem = self.not_ready_because()
        if problem is None and self.readiness_view is not None:
            problem = await self.readiness_view()
        if problem is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready", "reason": problem[0],
                                  "detail": problem[1]}, status=503)

    def _fit_open_file_limit(self) -> FdBudget:
        """Raise the soft RLIMIT_NOFILE as far as the caps need; lower the caps (with a
        warning) where the limit cannot hold them, refuse to start where it holds nothing."""
        max_connections = self.settings.get("ingress", "max_connections")
        max_streams = self.settings.get("stream", "max_clients")
        try:
            budget = fit_open_file_limit(
                max_connections=max_connections, max_streams=max_streams,
                outbound=self.settings.get("delivery", "max_in_flight_total"))
        except FdLimitError as exc:
            raise DaemonError(str(exc)) from None
        if budget.raised_from is not None:
            log.info("open_file_limit_raised", was=budget.raised_from, now=budget.limit,
                     needed=budget.needed)
        self.fd_warning = budget.warning(max_connections, max_streams)
        if self.fd_warning:
            log.warning("open_file_limit_lowers_caps", limit=budget.limit, hard=budget.hard,
                        needed=budget.needed, max_connections=budget.max_connections,
                        max_streams=budget.max_streams, hint=self.fd_warning)
        return budget

    async def start(self) -> None:
        prepare_state_dir(self.state_dir)
        if self.role != "worker":  # the control process holds it for them all
            try:
                self._state_lock.acquire()
            except StateDirBusy as exc:
                raise DaemonError(f"{exc}; stop it first") from None
        try:
            await self._start()
        except BaseException:
            # Whatever stopped the start, the registry's connection does not outlive it,
            # nor the state dir's lock.
            try:
                await self.registry_keeper.close()
            finally:
                self._state_lock.release()
            raise

    async def _start(self) -> None:
        hide_server_version()
        self.fd_budget = budget = self._fit_open_file_limit()
        ssl_ctx = self._ssl_context()
        host, port = parse_listen(self.settings.get("daemon", "listen"))
        sock_path = self.socket_path
        if self.role != "worker":  # a worker leaves the admin socket to the control process
            claim_socket(sock_path)
        if self._secrets is None:
            self._secrets = SecretStore(self.state_dir)
        if self.secrets.is_fallback and self.role != "worker":
            log.warning("keyring_fallback", backend=self.secrets.backend_name,
                        hint="no usable OS keyring; secrets are kept in a 0600 file")
        cluster = self.settings.get("storage", "backend") == "postgres"
        if not cluster:
            try:
                await self.registry_keeper.load()
            except RegistryError as exc:
                raise DaemonError(f"registry invalid: {exc}") from None
        self.token_usage.load()
        try:
            await self.journal.start()
        except JournalDamaged as exc:
            raise DaemonError(f"refusing to start: {exc}",
                              exit_code=EXIT_JOURNAL_DAMAGED) from None
        except Exception as exc:
            raise DaemonError(f"cannot open the journal: {exc}") from None
        if cluster:
            await self._start_db_secrets()
            await self._start_db_registry()
        if self.journal.start_check == "incomplete":
            log.warning("journal_check_incomplete",
                        checked_s=self.settings.get("journal", "start_check_s"),
                        hint="the quick check stopped at journal.start_check_s; run "
                             "`palyra system events verify` to check the whole chain")
        self.bus.publish(await self.journal.last_seq())
        if self.role != "single":
            self.relay = HeadRelay(self.state_dir, self.bus, self.journal.last_seq)
            await self.relay.start()
        if self.settings.get("storage", "backend") == "postgres" and self.role != "worker":
            self.head_feed = await start_head_feed(self._storage_dsn, self.bus, self.relay)
        if self.role == "worker":
            await self._start_worker(budget, ssl_ctx, host, port)
            return
        file = self._deliveries_file
        deliveries_missing = file is not None and not file.exists()
        if file is not None and deliveries_missing:
            try:
                await self._without_delivery_store(file)
            except DaemonError:
                await self.journal.close()
                raise
        elif self._deliveries_from is not None:
            log.warning("deliveries_from_ignored", deliveries_from=self._deliveries_from.describe(),
                        reason=(f"{file} exists: its cursors stay" if file is not None else
                                "the delivery store is in PostgreSQL: its cursors stay"))
        self._start_stream_hub(budget)
        try:
            await self.deliveries.start()
        except Exception as exc:
            raise DaemonError(f"cannot open the delivery store: {exc}") from None
        await self.sender.start()
        if deliveries_missing and self._deliveries_from is not None:
            await self._place_cursors(self._deliveries_from)
        await self._check_cursors()
        cluster_mode = self.settings.get("storage", "backend") == "postgres"
        if cluster_mode:
            from palyra_py.server.cluster import Notices  # asyncpg: cluster mode only

            self._notices = Notices()
        self._dispatcher = Dispatcher(
            journal=self.journal, bus=self.bus, store=self.deliveries, sender=self.sender,
            subscriptions=lambda: self.registry.subscriptions, secrets=self.secrets,
            journal_event=self._journal_from_dispatcher,
            disable_subscription=self.disable_subscription, clock=self.clock,
            metrics=self.metrics,
            disable_after_s=self.settings.get("delivery", "disable_after_s"),
            max_in_flight_total=self.settings.get("delivery", "max_in_flight_total"),
            https_only=self.settings.get("delivery", "https_only"),
            email=EmailSettings.from_settings(self.settings.get),
            leased=cluster_mode, peers=self._notices,
        )
        self._tasks.append(asyncio.create_task(self._dispatcher.run()))
        if cluster_mode:
            await self._join_cluster()
        if self.role == "control":
            self._build_ingress(budget)
            await self._start_workers(host, port, ssl_ctx)
        else:
            await self._serve_ingress(budget, ssl_ctx, host, port)
        admin_runner = web.AppRunner(self._admin_app(), access_log=None)
        await admin_runner.setup()
        self._runners.append(admin_runner)
        old_umask = os.umask(0o077)  # the socket is born 0600: no window with looser modes
        try:
            await web.UnixSite(admin_runner, str(sock_path)).start()
        finally:
            os.umask(old_umask)
        os.chmod(sock_path, 0o600)
        self.listeners = [
            Listener("ingress", self.ingress_url_for("{id}", local=True).rsplit("/hooks", 1)[0]),
            Listener("admin", str(sock_path)),
        ]
        self.started_at = self.clock()
        await self.append(
            kind="daemon.started", source="daemon",
            payload={"version": __version__, "pid": os.getpid(),
                     "listeners": [vars_of(x) for x in self.listeners],
                     "keyring_backend": self.secrets.backend_name,
                     "workers": [slot.pid for slot in self._worker_slots()]},
        )
        self._tasks.append(asyncio.create_task(self._flush_rejections_forever()))
        self._tasks.append(asyncio.create_task(self._retention_forever()))
        self._tasks.append(asyncio.create_task(self._token_usage_forever()))
        log.info("daemon_started", version=__version__, ingress=self.listeners[0].address,
                 admin_socket=str(sock_path), state_dir=str(self.state_dir),
                 registry_integrations=len(self.registry.integrations),
                 workers=len(self._worker_slots()))

    async def _join_cluster(self) -> None:
        """Cluster mode: take this node's place (heartbeat, delivery leases); the
        dispatcher delivers the subscriptions it leases."""
        from palyra_py.server.cluster import ClusterJoinFailed, join_cluster

        assert self._notices is not None
        try:
            self.cluster = await join_cluster(
                self.settings, self._storage_dsn, subscriptions=self._enabled_subscriptions,
                control=self.dispatcher, notices=self._notices, metrics=self.metrics,
                clock=None if self.clock is time.time else self.clock)
        except ClusterJoinFailed as exc:
            await self.stop()
            raise DaemonError(f"cannot join the cluster: {exc}") from None

    def _enabled_subscriptions(self) -> list[str]:
        return [s for s, sub in self.registry.subscriptions.items() if sub.enabled]

    async def cluster_view(self) -> dict[str, Any] | None:
        return None if self.cluster is None else await self.cluster.view()

    def _start_stream_hub(self, budget: FdBudget) -> None:
        self.stream_hub = StreamHub(
            self.journal, self.bus,
            max_clients=budget.max_streams,
            buffer=self.settings.get("stream", "buffer_events"),
            max_per_owner=self.settings.get("stream", "max_per_token"),
        )
        self._tasks.append(asyncio.create_task(self.stream_hub.run()))

    def _build_ingress(self, budget: FdBudget) -> None:
        self._ingress = Ingress(
            integrations=lambda: self.active,
            secrets=self.secrets,
            journal=self.journal,
            rejections=self.rejections,
            clock=self.clock,
            body_timeout_s=self.settings.get("ingress", "body_timeout_s"),
            retry_after_s=self.settings.get("ingress", "retry_after_s"),
            metrics=self.metrics,
            client_address=ClientAddress(self._trusted_proxies),
        )
        self.connections = ConnectionCap(
            budget.max_connections,
            self.settings.get("ingress", "retry_after_s"),
            on_refused=self._ingress.stats.count,
            per_source=self.settings.get("ingress", "max_connections_per_source"),
            max_head_bytes=self.settings.get("ingress", "max_head_bytes"))

    async def _serve_ingress(self, budget: FdBudget, ssl_ctx: ssl.SSLContext | None,
                             host: str, port: int) -> None:
        """Serve the public listener in this process: on ``host``:``port``, or on the
        socket the control process handed over (a worker)."""
        self._build_ingress(budget)
        ingress_runner = web.AppRunner(
            self._ingress_app(), access_log=None,
            max_headers=self.settings.get("ingress", "max_headers"),
            max_field_size=self.settings.get("ingress", "max_header_bytes"),
            max_line_size=self.settings.get("ingress", "max_header_bytes"),
            # Armed when a connection opens (aiohttp >= 3.14): bounds idle connections and
            # request heads that never finish, not only keep-alive between requests.
            keepalive_timeout=self.settings.get("ingress", "idle_timeout_s"),
        )
        await ingress_runner.setup()
        self._runners.append(ingress_runner)
        self.metrics.ingress_connections.set_function(lambda: self.connections.open)
        site = CappedTCPSite(ingress_runner, host, port, cap=self.connections,
                             ssl_context=ssl_ctx, reuse_address=True, sock=self._listen_socket)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise DaemonError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.ingress_port = sockets[0].getsockname()[1] if sockets else port
        self._ingress_host, self._tls = host, ssl_ctx is not None

    async def _start_worker(self, budget: FdBudget, ssl_ctx: ssl.SSLContext | None,
                            host: str, port: int) -> None:
        """An ingress worker: the public listener, publishing and streams on the shared
        socket; the registry read-only (the control process tells it when to re-read)."""
        self._start_stream_hub(budget)
        await self._serve_ingress(budget, ssl_ctx, host, port)
        self.started_at = self.clock()
        self._tasks.append(asyncio.create_task(self._flush_rejections_forever()))

    async def _start_workers(self, host: str, port: int, ssl_ctx: ssl.SSLContext | None) -> None:
        """The control process: bind the public socket once, start the workers on it."""
        try:
            self._listen_socket = bind_listener(host, port)
        except OSError as exc:
            await self.stop()
            raise DaemonError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.ingress_port = self._listen_socket.getsockname()[1]
        self._ingress_host, self._tls = host, ssl_ctx is not None
        flags = {f"{section}.{key}": value for (section, key), value in self._flags.items()
                 if value is not None}
        self.supervisor = Supervisor(
            count=self.workers, listener=self._listen_socket, state_dir=str(self.state_dir),
            flags=flags, on_restart=self._worker_restarted, on_usage=self._tokens_used,
            answers={"metrics": self._merged_metrics_answer, "readiness": self._readiness_answer},
            clock=self.clock,
            ack_timeout_s=self.settings.get("daemon", "worker_ack_timeout_s"))
        self.metrics_view = self._merged_metrics
        try:
            await self.supervisor.start()
        except WorkerStartFailed as exc:
            self.supervisor = None
            await self.stop()
            raise DaemonError(f"cannot start the ingress workers: {exc}") from None

    async def _merged_metrics(self) -> bytes:
        """This process's metrics and every worker's, as one view (``metrics_view``)."""
        assert self.supervisor is not None
        texts = [self.metrics.render().decode(), *await self.supervisor.scrape()]
        return merge_expositions(texts)

    async def _merged_metrics_answer(self) -> dict[str, Any]:
        return {"text": (await self._merged_metrics()).decode()}

    async def _readiness_answer(self) -> dict[str, Any]:
        problem = self.not_ready_because()
        return {"problem": None if problem is None else list(problem)}

    def ingress_figures(self) -> dict[str, Any]:
        """Answers by reason, open connections, streams and pending rejections of the
        public listener: this process's, or with workers the sum of what each reported
        last (``processes`` refreshes them)."""
        cap = self.connections
        answers = dict(self.ingress.stats.by_reason)
        figures = {"connections": cap.open, "streams": cap.streams,
                   "rejections_pending": self.rejections.pending()}
        for slot in self._worker_slots():
            for reason, count in (slot.ingress.get("answers") or {}).items():
                answers[reason] = answers.get(reason, 0) + int(count)
            for key in figures:
                figures[key] += int(slot.ingress.get(key) or 0)
        return {"answers": answers, **figures}

    def journal_commits(self) -> int:
        """Journal commits since start: this process's, plus with workers what each
        reported last (a restarted worker counts from its own start)."""
        return self.journal.commits + sum(
            int(slot.ingress.get("journal_commits") or 0) for slot in self._worker_slots())

    def _worker_slots(self) -> list[WorkerSlot]:
        return [] if self.supervisor is None else self.supervisor.slots

    async def _worker_restarted(self, slot: WorkerSlot, code: int | None,
                                previous_pid: int) -> None:
        signal_name = None
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                signal_name = signal.Signals(-code).name
        payload = {"index": slot.index, "pid": slot.pid, "previous_pid": previous_pid,
                   "exit_code": code, "signal": signal_name, "restarts": slot.restarts}
        log.warning("worker_restarted", **payload)
        with contextlib.suppress(ApiError):
            await self.append(kind="daemon.worker_restarted", source="daemon",
                              event_type="daemon.worker_restarted", severity="warning",
                              payload=payload)

    def _tokens_used(self, uses: Mapping[str, int]) -> None:
        for token_id, at in uses.items():
            if at > (self.token_usage.last_used(token_id) or 0):
                self.token_usage.touch(token_id, at)

    async def processes(self) -> list[dict[str, Any]]:
        """This daemon's processes for ``daemon status``: this one (``single`` or
        ``control``), then each worker (pid, role, started_at, restarts, accepted)."""
        if self.supervisor is not None:
            await self.supervisor.refresh()
        own = own_process(self.role, self.started_at)
        if self.role == "single" and self._ingress is not None:
            own["accepted"] = self._ingress.stats.by_reason.get("accepted", 0)
        return [own, *(slot.describe() for slot in self._worker_slots())]

    async def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self.supervisor is not None:
            # Workers first: each drains its requests and streams while the control
            # process still takes their admin edits' journal events and dispatches.
            await self.supervisor.stop()
        if self._notices is not None:
            await self._notices.drain()
        if self.cluster is not None:
            # Before the dispatcher stops: what is in flight finishes, then every lease is
            # released and the other nodes told, so they take over at once.
            await self.cluster.leave()
        for task in [*self._tasks, *self.streams]:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a background task died earlier: stop the rest regardless
                log.exception("background_task_failed", task=task.get_name())
        for runner in reversed(self._runners):
            await runner.cleanup()
        with contextlib.suppress(JournalUnavailable, RuntimeError):
            await self.rejections.flush(self.journal)
            if self.role != "worker":
                await self.journal.append(NewEvent(kind="daemon.stopped", source="daemon",
                                                   payload={"pid": os.getpid()}))
        if self.role != "worker":  # a worker's uses go to the control process
            await asyncio.to_thread(self.token_usage.flush, set(self.registry.tokens))
        if self.head_feed is not None:
            await self.head_feed.close()
        if self.relay is not None:
            await self.relay.close()
        if self._listen_socket is not None and self.role == "control":
            self._listen_socket.close()
        await self.sender.close()
        await self.deliveries.close()
        if self.db_secrets is not None:
            await self.db_secrets.close()
        await self.registry_keeper.close()
        await self.journal.close()
        with contextlib.suppress(FileNotFoundError):
            if self.listeners:
                self.socket_path.unlink()
        self._state_lock.release()
        log.info("daemon_stopped")

    async def _flush_rejections_forever(self) -> None:
        window = self.settings.get("ingress", "rejection_window_s")
        while True:
            await asyncio.sleep(window)
            if self.rejections.pending():
                await self.rejections.flush(self.journal)

    async def _token_usage_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await asyncio.to_thread(self.token_usage.flush, set(self.registry.tokens))

    async def _retention_forever(self) -> None:
        days = self.settings.get("journal", "retention_days")
        max_bytes = self.settings.get("journal", "retention_max_bytes")
        interval = self.settings.get("journal", "retention_interval_s")
        if not days and not max_bytes:
            return
        while True:
            try:
                removed = await self.journal.apply_retention(
                    max_age_s=days * 86400 if days else None, max_bytes=max_bytes or None
                )
                if removed:
                    log.info("journal_retention", removed=removed)
            except JournalUnavailable as exc:
                log.warning("journal_retention_failed", error=str(exc))
            if days:
                # The delivery log keeps finished deliveries as long as the journal keeps
                # their events; pending ones are never pruned.
                try:
                    pruned = await self.deliveries.prune(self.now_ms() - int(days * 86400_000))
                    if pruned:
                        log.info("delivery_log_retention", removed=pruned)
                except DeliveryStoreUnavailable as exc:
                    log.warning("delivery_log_retention_failed", error=str(exc))
            self.retention_passes += 1
            self.retention_ran.set()
            await asyncio.sleep(interval)


def vars_of(listener: Listener) -> dict[str, str]:
    return {"kind": listener.kind, "address": listener.address}


async def _serve(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            registry = await daemon.reload()
            log.info("registry_reloaded", integrations=len(registry.integrations))
        except RegistryError as exc:
            log.error("registry_reload_refused", error=str(exc))
        except ApiError as exc:
            log.error("registry_reload_failed", error=exc.message)

    def on_hup() -> None:
        if daemon.started_at == 0.0:
            log.warning("registry_reload_ignored", reason="the daemon is still starting")
            return
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Handlers go in before start() says "started": a SIGHUP that follows that line at
    # once must reload, not kill the process with the default action.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await daemon.start()
    try:
        await stop.wait()
    finally:
        await daemon.stop()


def run_daemon(
    *,
    state_dir: Path | None,
    listen: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    deliveries_from: str | None = None,
    workers: str | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the registry. Returns the exit code.
    ``deliveries_from``: ``--deliveries-from`` (``delivery_start``). ``workers``:
    ``--workers N|auto`` (``daemon.workers``)."""
    from palyra_py.logs import configure_logging

    flags = {
        ("daemon", "listen"): listen,
        ("daemon", "tls_cert"): str(tls_cert) if tls_cert else None,
        ("daemon", "tls_key"): str(tls_key) if tls_key else None,
        ("daemon", "log_level"): log_level,
        ("daemon", "log_format"): log_format,
        ("daemon", "workers"): workers,
    }
    resolved = resolve_state_dir(state_dir)
    try:
        settings = load_settings(resolved, flags=flags)
    except SettingsError as exc:
        configure_logging()
        log.error("settings_invalid", error=str(exc))
        return 2
    configure_logging(settings.get("daemon", "log_level"), settings.get("daemon", "log_format"))
    try:
        start_from = None if deliveries_from is None else parse_deliveries_from(deliveries_from)
    except ValueError as exc:
        log.error("daemon_cannot_start", error=str(exc))
        return 2
    daemon = Daemon(settings, deliveries_from=start_from, flags=flags)
    try:
        asyncio.run(_serve(daemon))
    except DaemonError as exc:
        log.error("daemon_cannot_start", error=str(exc))
        return exc.exit_code
    except SettingsError as exc:
        log.error("settings_invalid", error=str(exc))
        return 2
    return 0


def load_for_tests(state_dir: Path, env: Mapping[str, str] | None = None,
                   **flags: Any) -> Settings:
    """Settings for an in-process daemon: ``listen="127.0.0.1:0"`` and one process
    (``daemon__workers="1"``: workers are child processes, which an in-process daemon
    cannot start) unless ``flags`` say otherwise."""
    values = {("daemon", "listen"): flags.pop("listen", "127.0.0.1:0"),
              ("daemon", "workers"): flags.pop("daemon__workers", "1")}
    values.update({tuple(k.split("__", 1)): v for k, v in flags.items()})  # type: ignore[misc]
    return load_settings(state_dir, env=env or {}, flags=values)
