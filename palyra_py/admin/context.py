"""What the admin API's handlers are given: one frozen context per handler class, holding
only the parts that handler uses, and the small Protocols for the operations and the live
state the composition root (the daemon) provides.

A handler never sees the daemon: it reaches the registry, the journal, the clock and the
listener only through these Protocols, so the admin package does not import the server
package, and any process that can give these parts (an ingress worker, a test) can serve
the handlers. Parts that change while the daemon runs (the registry in force, the connection
cap, the start time and listeners) are reached through a Protocol at each use, never copied
into the context.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, MutableSet, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import tomlkit

from palyra_py.delivery.backend import DeliveryLog
from palyra_py.inbound.ingress import ActiveIntegration, IngressStats
from palyra_py.inbound.listener import ConnectionCap
from palyra_py.inbound.rejections import RejectionLog
from palyra_py.journal.journal import AppendResult, Journal
from palyra_py.metrics import Metrics
from palyra_py.outbound.dispatcher import Dispatcher
from palyra_py.registry.document import Registry
from palyra_py.registry.integrations import Integration
from palyra_py.secrets.store import SecretStore
from palyra_py.settings import Settings
from palyra_py.stream.hub import StreamHub

RegistryChange = Callable[[tomlkit.TOMLDocument], None]
"""An edit of the registry document, applied by its only writer."""


# -- operations and live state the daemon provides ----------------------------------------


class Clock(Protocol):
    """The daemon's one clock (a test's fixed clock when it gave one)."""

    @property
    def clock(self) -> Callable[[], float]:
        """Unix seconds now."""
        ...

    def now_ms(self) -> int:
        """Unix milliseconds now."""
        ...

    def now_dt(self) -> datetime:
        """Now in UTC, to the whole second (what registry records are stamped with)."""
        ...


class RegistryView(Protocol):
    @property
    def registry(self) -> Registry:
        """The registry in force now. An edit or a reload replaces it: read it at each use,
        never keep it."""
        ...


class RegistryEditor(RegistryView, Protocol):
    async def edit_registry(self, change: RegistryChange) -> Registry:
        """Apply ``change`` to the registry document and put the result in force before
        returning it. ``RegistryError`` when the change (or the file) is refused, the
        registry in force staying as it was; ``KeyError`` when the record the change names
        is gone."""
        ...


class RegistryReloader(RegistryView, Protocol):
    async def reload(self) -> Registry:
        """Re-read the registry file and put it in force (cached secrets are forgotten);
        ``RegistryError`` for an invalid file, the last good registry staying in force."""
        ...


class JournalAppender(Protocol):
    async def append(self, *, kind: str, source: str, payload: dict[str, Any],
                     **fields: Any) -> AppendResult:
        """Append one event (the other ``NewEvent`` fields by name); it is durable when this
        returns. ``ApiError`` 503 ``journal_unavailable`` when the journal is not."""
        ...

    async def journal_admin(self, kind: str, integration_id: str,
                            payload: Mapping[str, Any]) -> None:
        """Journal an admin change of ``integration_id`` (source ``admin``); the payload
        names the integration. Raises as :meth:`append`."""
        ...


class IntegrationReadiness(Protocol):
    async def readiness_of(self, integ: Integration) -> tuple[str, str]:
        """``(readiness, detail)``: ``ready``, ``disabled``, or why its secret cannot be
        used (``invalid_secret_ref``, ``secret_not_found``)."""
        ...


class IngressView(Protocol):
    """The ingress as the integrations' admin sees it."""

    @property
    def active(self) -> Mapping[str, ActiveIntegration]:
        """The integrations in force with their providers, by id (replaced on each edit)."""
        ...

    def ingress_url_for(self, integration_id: str, *, local: bool = False) -> str:
        """Where senders post to ``integration_id``: the public URL when one is set, else
        (and always with ``local``) the listener's own address."""
        ...


class SubscriptionSwitch(Protocol):
    async def disable_subscription(self, subscription_id: str, reason: str) -> None:
        """Disable the subscription with ``reason`` and journal it; nothing when it is gone
        (a refused edit is logged, not raised)."""
        ...


class ConnectionsView(Protocol):
    @property
    def connections(self) -> ConnectionCap:
        """The public listener's connection cap (replaced when the listener starts: read
        it at each use)."""
        ...


class TokenUse(Protocol):
    def last_used(self, token_id: str) -> int | None:
        """Unix seconds of the token's last use, ``None`` if none is known."""
        ...


class ListenerAddress(Protocol):
    @property
    def kind(self) -> str:
        """``ingress`` or ``admin``."""
        ...

    @property
    def address(self) -> str: ...


class OpenFileBudget(Protocol):
    """The open-file limit against what the connection caps need."""

    @property
    def limit(self) -> int: ...

    @property
    def hard(self) -> int | None: ...

    @property
    def needed(self) -> int: ...

    @property
    def lowered(self) -> bool:
        """The limit could not hold the caps, so they were lowered."""
        ...


class DaemonRuntime(Protocol):
    """What ``daemon status`` says of this run; set while the daemon starts."""

    @property
    def started_at(self) -> float:
        """Unix seconds when it started (0.0 while starting)."""
        ...

    @property
    def listeners(self) -> Sequence[ListenerAddress]: ...

    @property
    def fd_budget(self) -> OpenFileBudget | None:
        """``None`` before the start has fitted the open-file limit."""
        ...

    @property
    def fd_warning(self) -> str:
        """Why the caps were lowered to fit the open-file limit ("" when they were not)."""
        ...

    async def processes(self) -> list[dict[str, Any]]:
        """The daemon's processes (this one, then each worker); refreshes the workers'
        figures that ``ingress_figures`` adds up."""
        ...

    def ingress_figures(self) -> dict[str, Any]:
        """Answers by reason, open connections, streams and pending rejections of the
        public listener, summed over the processes that serve it."""
        ...

    async def cluster_view(self) -> dict[str, Any] | None:
        """Cluster mode: the nodes, their heartbeats and the leases each holds, as this
        node reads them now; ``None`` on SQLite."""
        ...

    def journal_commits(self) -> int:
        """Journal commits (one fsync each) since start, summed over the processes."""
        ...


# -- one context per handler class ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusContext:
    """For ``AdminApi``: ``/v1/status`` and ``/v1/reload``."""

    reloader: RegistryReloader
    readiness: IntegrationReadiness
    runtime: DaemonRuntime
    listener: ConnectionsView
    time: Clock
    journal: Journal
    deliveries: DeliveryLog
    secrets: SecretStore
    ingress_stats: IngressStats
    rejections: RejectionLog
    settings: Settings
    state_dir: Path
    admin_socket: Path
    registry_path: Path
    journal_path: Path
    deliveries_location: str
    """The path of ``deliveries.db``, or on PostgreSQL the URI without its password."""


@dataclass(frozen=True, slots=True)
class WebhooksContext:
    """For ``WebhooksApi``: integrations (``/v1/webhooks``)."""

    editor: RegistryEditor
    appender: JournalAppender
    ingress: IngressView
    readiness: IntegrationReadiness
    secrets: SecretStore
    time: Clock


@dataclass(frozen=True, slots=True)
class SubscriptionsContext:
    """For ``SubscriptionsApi``: outbound subscriptions (``/v1/subscriptions``)."""

    editor: RegistryEditor
    appender: JournalAppender
    switch: SubscriptionSwitch
    dispatcher: Dispatcher
    deliveries: DeliveryLog
    secrets: SecretStore
    settings: Settings
    time: Clock


@dataclass(frozen=True, slots=True)
class DeliveriesContext:
    """For ``DeliveriesApi``: the delivery log (``/v1/deliveries``) and API tokens."""

    editor: RegistryEditor
    appender: JournalAppender
    deliveries: DeliveryLog
    dispatcher: Dispatcher
    secrets: SecretStore
    token_use: TokenUse
    time: Clock


@dataclass(frozen=True, slots=True)
class ReplayContext:
    """For ``ReplayApi``: past journal events delivered to a subscription."""

    registry_view: RegistryView
    journal: Journal
    deliveries: DeliveryLog
    dispatcher: Dispatcher
    time: Clock


@dataclass(frozen=True, slots=True)
class EventsContext:
    """For ``EventsApi``: the journal's routes, on the admin socket and (behind a token)
    on the public listener."""

    registry_view: RegistryView
    appender: JournalAppender
    journal: Journal
    stream_hub: StreamHub
    listener: ConnectionsView
    streams: MutableSet[asyncio.Task[Any]]
    """The open streams' tasks; the daemon cancels them when it stops."""
    metrics: Metrics
    settings: Settings
