"""Daemon settings: built-in defaults < ``<state>/palyra.toml`` < ``PALYRA_<SECTION>_<KEY>``
environment variables < ``daemon run`` flags. Every effective value remembers its source so
``palyra daemon status`` can say where it came from."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from palyra_py.storage.dsn import dsn_problem, redact_dsn

Source = Literal["default", "file", "env", "flag"]


@dataclass(frozen=True, slots=True)
class SettingSpec:
    section: str
    key: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    shown: Callable[[Any], Any] | None = None
    """How ``daemon status`` shows the value (a DSN without its password), if not as is."""


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("daemon", "listen", str, "127.0.0.1:8787", "HOST:PORT of the public ingress"),
    SettingSpec("daemon", "tls_cert", str, "", "PEM certificate for the ingress (with tls_key)"),
    SettingSpec("daemon", "tls_key", str, "", "PEM private key for the ingress"),
    SettingSpec("daemon", "public_url", str, "", "Base URL providers use (shown as ingress_url)"),
    SettingSpec(
        "daemon", "log_level", str, "info", "Log level",
        choices=("debug", "info", "warning", "error"),
    ),
    SettingSpec("daemon", "log_format", str, "console", "Log format", choices=("console", "json")),
    SettingSpec(
        "daemon", "workers", str, "auto",
        "Ingress worker processes: N, or auto (one per core this process may run on; 1 on a"
        " 1-core box); 1 = one process for everything",
    ),
    SettingSpec(
        "daemon", "worker_ack_timeout_s", float, 10.0,
        "Longest wait for each ingress worker to take an admin edit before the edit returns;"
        " a worker that does not answer in time is replaced", minimum=0.5,
    ),
    SettingSpec(
        "journal", "retention_days", float, 30.0, "Drop events older than this (0 = keep)",
        minimum=0,
    ),
    SettingSpec(
        "journal", "retention_max_bytes", int, 0, "Drop oldest events above this size (0 = off)",
        minimum=0,
    ),
    SettingSpec(
        "journal", "retention_interval_s", float, 3600.0, "How often retention runs", minimum=1
    ),
    SettingSpec("journal", "batch_max", int, 512, "Most appends in one group commit", minimum=1),
    SettingSpec(
        "journal", "start_check_s", float, 10.0,
        "Longest PRAGMA quick_check of the journal at start (0 = skip)", minimum=0,
    ),
    SettingSpec(
        "ingress", "body_timeout_s", float, 30.0, "Longest time to read one request body",
        minimum=0.1,
    ),
    SettingSpec(
        "ingress", "retry_after_s", int, 60, "Retry-After sent with 503 answers", minimum=1
    ),
    SettingSpec(
        "ingress", "rejection_window_s", float, 10.0,
        "Rejections are journaled as one aggregate per integration and reason per window",
        minimum=0.1,
    ),
    SettingSpec(
        "ingress", "idle_timeout_s", float, 60.0,
        "Close a connection with no request in progress (idle, or its head still arriving)",
        minimum=1,
    ),
    SettingSpec(
        "ingress", "max_connections", int, 1024,
        "Most open ingress connections; past it, 503 too_many_connections and close",
        minimum=1,
    ),
    SettingSpec("ingress", "max_headers", int, 100, "Most request headers accepted", minimum=8),
    SettingSpec(
        "ingress", "max_header_bytes", int, 8190, "Longest request header line", minimum=256
    ),
    SettingSpec(
        "ingress", "max_head_bytes", int, 64 * 1024,
        "Largest request head (request line and headers); past it, 431 head_too_large and close",
        minimum=1024,
    ),
    SettingSpec(
        "ingress", "max_connections_per_source", int, 128,
        "Most ingress connections from one address (IPv6: one /64); past it, 503"
        " too_many_source_connections for that address only",
        minimum=1,
    ),
    SettingSpec(
        "ingress", "trusted_proxies", str, "",
        "Comma-separated CIDRs of load balancers whose X-Forwarded-For names the sender"
        " (for allowed_sources and rejection samples); empty: the connected address",
    ),
    SettingSpec(
        "stream", "max_clients", int, 2000,
        "Most live stream clients (SSE and WebSocket together) at once", minimum=1
    ),
    SettingSpec(
        "stream", "max_per_token", int, 16,
        "Most live streams one token may have open; past it, 429 too_many_streams_for_token",
        minimum=1,
    ),
    SettingSpec(
        "stream", "max_patterns", int, 16,
        "Most type patterns one stream may give (at most 64); past it, 400 too_many_patterns",
        minimum=1,
    ),
    SettingSpec(
        "stream", "buffer_events", int, 1000,
        "Events buffered per stream client; a client further behind is sent stream.overflow",
        minimum=10,
    ),
    SettingSpec(
        "metrics", "public", bool, False,
        "Serve GET /metrics without a token (else a token with the metrics or admin scope)",
    ),
    SettingSpec(
        "delivery", "allow_private_networks", bool, False,
        "Allow deliveries to loopback and private addresses (cloud metadata stays blocked)",
    ),
    SettingSpec(
        "delivery", "allow_cidrs", str, "",
        "Comma-separated CIDRs deliveries may reach even though they are internal",
    ),
    SettingSpec(
        "delivery", "https_only", bool, False, "Refuse subscription URLs that are not https"
    ),
    SettingSpec(
        "delivery", "disable_after_s", float, 5 * 86400.0,
        "Disable a subscription that has failed without a success for this long", minimum=60,
    ),
    SettingSpec(
        "delivery", "max_subscriptions_per_owner", int, 0,
        "Subscriptions one owner may have (0: no limit; the registry holds at most 1024)",
        minimum=0,
    ),
    SettingSpec(
        "delivery", "max_in_flight_total", int, 256,
        "Most delivery attempts at once, shared fairly between subscriptions and owners",
        minimum=1,
    ),
    SettingSpec(
        "admin", "max_body_bytes", int, 1024 * 1024, "Largest admin API request body", minimum=1024
    ),
    SettingSpec(
        "storage", "backend", str, "sqlite",
        "Storage engine: sqlite (embedded files in the state dir) or postgres (one PostgreSQL"
        " that several nodes may share; needs dsn or dsn_ref)",
        choices=("sqlite", "postgres"),
    ),
    SettingSpec(
        "storage", "dsn", str, "",
        "PostgreSQL URI (postgresql://USER:PASSWORD@HOST:PORT/DATABASE); shown and logged"
        " without its password. It holds one: prefer dsn_ref",
        shown=redact_dsn,
    ),
    SettingSpec(
        "storage", "dsn_ref", str, "",
        "Secret reference (env:VAR, file:PATH or keyring:NAME) whose value is the PostgreSQL"
        " URI; instead of dsn",
    ),
    SettingSpec(
        "secrets", "key_ref", str, "",
        "With backend = postgres: env:VAR or file:PATH holding the 32-byte key (base64 or"
        " hex) that seals db: secrets with AES-GCM; the same on every node",
    ),
    SettingSpec(
        "secrets", "previous_key_refs", str, "",
        "Comma-separated env:/file: refs of older keys still accepted for reading db:"
        " secrets (key rotation: palyra secrets reencrypt)",
    ),
    SettingSpec(
        "email", "host", str, "",
        "SMTP server of the email destination (empty: subscriptions with email are refused)",
    ),
    SettingSpec(
        "email", "port", int, 0,
        "SMTP port (0: 587 with starttls, 465 with tls, 25 with none)", minimum=0,
    ),
    SettingSpec(
        "email", "security", str, "starttls",
        "starttls (upgrade, refused if the server cannot), tls (implicit TLS) or none"
        " (plain text: only for a relay on loopback or in tests)",
        choices=("starttls", "tls", "none"),
    ),
    SettingSpec("email", "username", str, "", "SMTP AUTH user (empty: no AUTH)"),
    SettingSpec(
        "email", "password_ref", str, "",
        "Secret reference (env:VAR, file:PATH, keyring:NAME or db:NAME) holding the SMTP"
        " password; never logged",
    ),
    SettingSpec("email", "from", str, "", "The From address of every message (required"
                " with host)"),
    SettingSpec(
        "email", "ca_file", str, "",
        "PEM file of the CA certificates to trust for the SMTP server instead of the"
        " system's (a relay with a private CA)",
    ),
    SettingSpec(
        "email", "timeout_s", float, 30.0, "Longest wait for each SMTP reply", minimum=1.0,
    ),
    SettingSpec(
        "cluster", "node_id", str, "",
        "With backend = postgres: this node's name in the cluster (letters, digits, . _ -);"
        " empty: one generated at the first start and kept in <state-dir>/node_id",
    ),
    SettingSpec(
        "cluster", "lease_s", float, 10.0,
        "With backend = postgres: how long a node's delivery lease on a subscription lasts"
        " without a renewal; a dead node's subscriptions are taken over within it",
        minimum=1.0,
    ),
    SettingSpec(
        "cluster", "heartbeat_s", float, 2.0,
        "With backend = postgres: how often a node renews its heartbeat and leases (at most"
        " lease_s / 3)", minimum=0.1,
    ),
)

_BY_NAME = {(s.section, s.key): s for s in SPECS}


class SettingsError(ValueError):
    """A setting with a bad value; the message names the setting and where it came from."""


@dataclass(frozen=True, slots=True)
class Setting:
    section: str
    key: str
    value: Any
    source: Source


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    values: Mapping[tuple[str, str], Setting] = field(default_factory=dict)

    def get(self, section: str, key: str) -> Any:
        return self.values[(section, key)].value

    def table(self) -> list[dict[str, Any]]:
        """Every value as it may be shown (a DSN without its password) and its source."""
        rows: list[dict[str, Any]] = []
        for s in self.values.values():
            spec = _BY_NAME.get((s.section, s.key))
            value = spec.shown(s.value) if spec is not None and spec.shown and s.value else (
                s.value)
            rows.append({"section": s.section, "key": s.key, "value": value,
                         "source": s.source})
        return rows


def _coerce(spec: SettingSpec, raw: Any, origin: str) -> Any:
    name = f"{spec.section}.{spec.key}"
    try:
        if spec.kind is bool:
            if isinstance(raw, bool):
                value: Any = raw
            elif str(raw).strip().lower() in ("1", "true", "yes", "on"):
                value = True
            elif str(raw).strip().lower() in ("0", "false", "no", "off"):
                value = False
            else:
                raise ValueError
        elif spec.kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = int(raw)
        elif spec.kind is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        else:
            if not isinstance(raw, str):
                raise ValueError
            value = raw
    except (TypeError, ValueError):
        raise SettingsError(
            f"{name} (from {origin}): expected {spec.kind.__name__}, got {raw!r}"
        ) from None
    if spec.choices and value not in spec.choices:
        raise SettingsError(
            f"{name} (from {origin}): must be one of {', '.join(spec.choices)}, got {value!r}"
        )
    if spec.minimum is not None and value < spec.minimum:
        raise SettingsError(f"{name} (from {origin}): must be at least {spec.minimum}, got {value}")
    return value


def load_settings(
    state_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[tuple[str, str], Any] | None = None,
) -> Settings:
    """Merge the four layers. A flag whose value is ``None`` is "not given"."""
    env = os.environ if env is None else env
    file_path = state_dir / "palyra.toml"
    file_values: dict[str, Any] = {}
    if file_path.exists():
        try:
            file_values = tomllib.loads(file_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{file_path}: {exc}") from None
        for section, body in file_values.items():
            if not isinstance(body, dict):
                raise SettingsError(f"{file_path}: [{section}] must be a table")
            for key in body:
                if (section, key) not in _BY_NAME:
                    known = ", ".join(f"{s.section}.{s.key}" for s in SPECS)
                    raise SettingsError(
                        f"{file_path}: unknown setting {section}.{key} (known: {known})"
                    )
    values: dict[tuple[str, str], Setting] = {}
    for spec in SPECS:
        name = (spec.section, spec.key)
        value, source = spec.default, "default"
        section_values = file_values.get(spec.section, {})
        if spec.key in section_values:
            value = _coerce(spec, section_values[spec.key], str(file_path))
            source = "file"
        env_name = f"PALYRA_{spec.section}_{spec.key}".upper()
        if env.get(env_name, "") != "":
            value = _coerce(spec, env[env_name], f"${env_name}")
            source = "env"
        if flags and flags.get(name) is not None:
            value = _coerce(spec, flags[name], "the command line")
            source = "flag"
        values[name] = Setting(spec.section, spec.key, value, source)  # type: ignore[arg-type]
    parse_workers(values[("daemon", "workers")].value)
    check_storage(values)
    check_cluster(values)
    check_email(values)
    check_cidr_lists(values)
    return Settings(state_dir=state_dir, values=values)


CIDR_LISTS = (("delivery", "allow_cidrs"), ("ingress", "trusted_proxies"))


def check_cidr_lists(values: Mapping[tuple[str, str], Setting]) -> None:
    """Every comma-separated item of ``CIDR_LISTS`` is a CIDR or an address: a typo
    stops the start with the setting named, not a traceback."""
    for name in CIDR_LISTS:
        setting = values[name]
        for part in str(setting.value).split(","):
            cidr = part.strip()
            if not cidr:
                continue
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise SettingsError(
                    f"{name[0]}.{name[1]} (from {_origin(setting)}): {cidr[:64]!r} is not a"
                    " CIDR such as 10.0.0.0/8 or an address") from None


def check_storage(values: Mapping[tuple[str, str], Setting]) -> None:
    """``storage.backend = "postgres"`` needs exactly one of ``storage.dsn`` and
    ``storage.dsn_ref``; a DSN given must be a ``postgresql://`` URI. Raises
    ``SettingsError``, never quoting a DSN. (A ``dsn_ref``'s form is checked where it is
    read: ``secrets.dsn``.)"""
    dsn, ref = values[("storage", "dsn")], values[("storage", "dsn_ref")]
    if dsn.value:
        problem = dsn_problem(dsn.value)
        if problem is not None:
            raise SettingsError(f"storage.dsn (from {_origin(dsn)}) {problem} (value not shown)")
    if values[("storage", "backend")].value != "postgres":
        return
    if dsn.value and ref.value:
        raise SettingsError(
            f"storage.dsn (from {_origin(dsn)}) and storage.dsn_ref (from {_origin(ref)}):"
            " give one of them, not both")
    if not dsn.value and not ref.value:
        raise SettingsError(
            'storage.backend = "postgres" needs storage.dsn or storage.dsn_ref'
            " (environment PALYRA_STORAGE_DSN or PALYRA_STORAGE_DSN_REF)")


NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_email(values: Mapping[tuple[str, str], Setting]) -> None:
    """With ``email.host`` set, ``email.from`` is an address and ``password_ref`` (when
    given) a secret reference, never a password."""
    if not values[("email", "host")].value:
        return
    sender = values[("email", "from")].value
    if not re.fullmatch(r"[^@\s<>,]+@[^@\s<>,]+", sender):
        raise SettingsError(f"email.from (from {_origin(values[('email', 'from')])}): must be"
                            f" an address such as palyra@example.com, got {sender!r}")
    ref = values[("email", "password_ref")]
    if ref.value and not str(ref.value).startswith(("env:", "file:", "keyring:", "db:")):
        raise SettingsError(f"email.password_ref (from {_origin(ref)}): must be a secret"
                            " reference (env:VAR, file:PATH, keyring:NAME, db:NAME), not the"
                            " password itself")


def node_id_problem(node_id: str) -> str | None:
    """Why ``node_id`` cannot name a cluster node, else ``None``."""
    if NODE_ID_PATTERN.fullmatch(node_id) is None:
        return ("must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter"
                " or digit")
    return None


def check_cluster(values: Mapping[tuple[str, str], Setting]) -> None:
    """``cluster.node_id`` (when given) is a valid name; ``cluster.heartbeat_s`` is at
    most a third of ``cluster.lease_s``, so that two heartbeats in a row may fail before a
    node stops trusting its leases (at 0.8 x ``lease_s``). Raises ``SettingsError``."""
    node_id = values[("cluster", "node_id")]
    if node_id.value:
        problem = node_id_problem(node_id.value)
        if problem is not None:
            raise SettingsError(f"cluster.node_id (from {_origin(node_id)}) {problem},"
                                f" got {node_id.value!r}")
    lease, beat = values[("cluster", "lease_s")], values[("cluster", "heartbeat_s")]
    if beat.value * 3 > lease.value:
        raise SettingsError(
            f"cluster.heartbeat_s (from {_origin(beat)}) must be at most a third of"
            f" cluster.lease_s (from {_origin(lease)}): got {beat.value} and {lease.value}")


def storage_location(settings: Settings) -> str:
    """Where the stores are, fit to show: ``sqlite`` (the state dir), or ``postgres`` and
    the URI without its password (or the reference that holds it)."""
    if settings.get("storage", "backend") != "postgres":
        return "sqlite"
    ref = settings.get("storage", "dsn_ref")
    return f"postgres {ref}" if ref else f"postgres {redact_dsn(settings.get('storage', 'dsn'))}"


def _origin(setting: Setting) -> str:
    if setting.source == "env":
        return f"${'PALYRA_' + setting.section.upper() + '_' + setting.key.upper()}"
    return {"file": "palyra.toml", "flag": "the command line"}.get(setting.source, "default")


MAX_WORKERS = 64


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or ``taskset``'s
    limit), else every core of the machine; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        return max(1, os.cpu_count() or 1)


def parse_workers(value: str) -> int:
    """``daemon.workers`` as a count: ``"auto"`` is one per usable core
    (:func:`usable_cores`, at most ``MAX_WORKERS``), so 1 (one process) on a 1-core box;
    else a whole number from 1 to ``MAX_WORKERS``. Raises ``SettingsError``."""
    text = value.strip().lower()
    if text == "auto":
        return min(MAX_WORKERS, usable_cores())
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise SettingsError(
            f"daemon.workers: expected a number from 1 to {MAX_WORKERS} or auto, got {value!r}")
    return int(text)


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8787"`` / ``"[::1]:8787"`` / ``":8787"`` -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(f"daemon.listen: expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (an explicit ":PORT" asks for all)
    return host, int(port_text)
