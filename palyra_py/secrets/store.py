"""The keyring, and reading the secrets that references name.

The registry holds references (``keyring:NAME``, ``db:NAME``, ``env:VAR``, ``file:PATH``;
their grammar is in ``secrets.refs``), never secrets. ``db:`` secrets are read from the
node's copy of the shared table (``secrets.shared``: attached as :attr:`SecretStore.db` in
cluster mode), never from the database on the request path. :class:`SecretStore` turns
a reference into the secret, caches it in memory (so a keyring that becomes unreachable
later does not stop verification of integrations already in use), and stores new secrets
under service ``palyra``. No message raised here ever contains a secret.
"""

from __future__ import annotations

import base64
import os
import secrets as _random
import stat
import string
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import keyring
import keyring.core
from keyring.backend import KeyringBackend
from keyring.backends import chainer, fail, null
from keyring.errors import PasswordDeleteError

from palyra_py.providers import secret_format
from palyra_py.secrets.keyring_file import StateDirKeyring
from palyra_py.secrets.refs import SecretRefError, parse_secret_ref
from palyra_py.secrets.shared import (
    NO_SHARED_KEY_WARNING,
    DbSecretNotFound,
    DbSecrets,
    per_node_warning,
)
from palyra_py.storage.ownership import ForeignOwner, check_owner

KEYRING_SERVICE = "palyra"
MAX_SECRET_FILE_BYTES = 64 * 1024
SECRETS_FILE_NAME = "secrets.json"

Readiness = Literal["ready", "invalid_secret_ref", "secret_not_found"]

_ALNUM = string.ascii_letters + string.digits


class SecretNotFound(LookupError):
    """The reference is well formed but names nothing (no keyring entry, unset variable,
    missing file). The message names the reference, never a value."""


class SecretBackendError(SecretNotFound):
    """The keyring backend failed (locked, unreachable, refused a write). A subclass of
    :class:`SecretNotFound` so that callers treating "cannot resolve" alike need one
    ``except``; the message names the backend and the reference, never a value."""


def generate_secret(provider: str) -> str:
    """A strong random secret (32 random bytes of entropy or more) in the form the provider
    expects (``palyra_py.providers.secret_format``): ``whsec_<base64>`` for Standard
    Webhooks, ``whsec_`` + 32 letters and digits for Stripe, 64 hex characters for the
    others. ``provider`` is trimmed and lowercased; ``ValueError`` for an unknown one."""
    form = secret_format(provider.strip().lower())
    if form == "whsec":
        # Standard Webhooks: the key is the base64-decoded part (24..64 bytes accepted).
        return "whsec_" + base64.b64encode(_random.token_bytes(32)).decode("ascii")
    if form == "token":
        # Stripe's form: the whole string, prefix included, is the HMAC key.
        return "whsec_" + "".join(_random.choice(_ALNUM) for _ in range(32))
    return _random.token_hex(32)


def backend_label(backend: KeyringBackend) -> str:
    """A human name for a backend: its dotted class name, or the file backend's path."""
    if isinstance(backend, StateDirKeyring):
        return str(backend)
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def keyring_is_usable(backend: KeyringBackend) -> bool:
    """False for keyring's ``fail`` and ``null`` backends and for a chainer with nothing to
    chain: those cannot keep a secret."""
    if isinstance(backend, (fail.Keyring, null.Keyring)):
        return False
    if isinstance(backend, chainer.ChainerBackend):
        return len(backend.backends) >= 1
    return True


def choose_backend(state_dir: Path, env: Mapping[str, str]) -> tuple[KeyringBackend, str | None]:
    """The backend a :class:`SecretStore` uses and, when it is the file fallback, why.

    Order: a backend named by ``PYTHON_KEYRING_BACKEND`` in ``env``, else one set in
    keyring's own config file, else keyring's current backend (``keyring.get_keyring()``,
    which honours ``keyring.set_keyring``); the first that exists is used if it can keep a
    secret, otherwise ``<state_dir>/secrets.json``. An explicitly configured ``fail`` or
    ``null`` backend counts as "no keyring" rather than as a wish to lose secrets.
    """
    configured: KeyringBackend | None = None
    origin = ""
    name = env.get("PYTHON_KEYRING_BACKEND", "").strip()
    try:
        if name:
            origin = f"PYTHON_KEYRING_BACKEND={name}"
            configured = keyring.core.load_keyring(name)
        else:
            origin = "keyring's config file"
            configured = keyring.core.load_config()
    except Exception as exc:
        # keyring raises ImportError, AttributeError or RuntimeError (non-viable backend),
        # and third-party backends may raise anything while probing their environment.
        reason = f"the keyring named by {origin} cannot be loaded ({type(exc).__name__}: {exc})"
        return _file_backend(state_dir), reason
    if configured is not None:
        if keyring_is_usable(configured):
            return configured, None
        reason = f"{origin} names {backend_label(configured)}, which cannot keep secrets"
        return _file_backend(state_dir), reason
    current = keyring.get_keyring()
    if keyring_is_usable(current):
        return current, None
    return _file_backend(state_dir), f"no usable OS keyring ({backend_label(current)})"


def _file_backend(state_dir: Path) -> StateDirKeyring:
    return StateDirKeyring(Path(state_dir) / SECRETS_FILE_NAME)


class SecretStore:
    """Resolves and stores secrets. Thread-safe.

    Resolved secrets are cached in memory until :meth:`forget_cached` (the daemon calls it
    on reload); :meth:`store` and :meth:`delete` keep the cache in step.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        backend: KeyringBackend | None = None,
        expected_uid: int | None = None,
    ) -> None:
        """``expected_uid``: who must own ``file:`` secrets (or root); default the
        effective uid."""
        self._expected_uid = expected_uid
        self._env: Mapping[str, str] = env if env is not None else os.environ
        self._fallback_reason: str | None = None
        if backend is None:
            backend, self._fallback_reason = choose_backend(Path(state_dir), self._env)
        self._backend = backend
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self.db: DbSecrets | None = None
        """The ``db:`` secrets (cluster mode with ``[secrets] key_ref``), else ``None``."""
        self.cluster = False
        """Whether several nodes may share the registry (``[storage] backend = postgres``):
        then a ``keyring:`` secret gets a readiness warning."""

    @property
    def new_secret_kind(self) -> Literal["db", "keyring"]:
        """Where the daemon stores a secret it generates or is given: ``db`` when the
        ``db:`` secrets are attached, else the keyring."""
        return "db" if self.db is not None else "keyring"

    def new_secrets_warning(self) -> str | None:
        """In cluster mode without ``db:`` secrets (no ``[secrets] key_ref``): the warning
        that the secrets the daemon stores are per node; else ``None``."""
        return NO_SHARED_KEY_WARNING if self.cluster and self.db is None else None

    def per_node_warning(self, ref: str | None) -> str | None:
        """In cluster mode, the warning for a ``keyring:`` reference (it resolves on this
        node only); else ``None``."""
        return per_node_warning(ref) if self.cluster else None

    @property
    def backend(self) -> KeyringBackend:
        return self._backend

    @property
    def backend_name(self) -> str:
        """``keyring.backends.SecretService.Keyring``, ``palyra file backend (<path>)``, ..."""
        return backend_label(self._backend)

    @property
    def is_fallback(self) -> bool:
        """Whether secrets go to the state dir's ``secrets.json`` instead of an OS keyring."""
        return isinstance(self._backend, StateDirKeyring)

    @property
    def fallback_reason(self) -> str | None:
        """Why the file backend was chosen (for a start-up warning), else ``None``."""
        return self._fallback_reason

    def resolve(self, ref: str) -> str:
        """The secret ``ref`` names. Raise ``SecretRefError`` for a malformed reference,
        ``SecretNotFound`` (or its subclass ``SecretBackendError``) when it cannot be read."""
        kind, value = parse_secret_ref(ref)
        if kind == "db":
            return self._from_db(value)
        key = f"{kind}:{value}"
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        if kind == "keyring":
            secret = self._from_keyring(value)
        elif kind == "env":
            secret = self._from_env(value)
        else:
            secret = _read_secret_file(value, self._expected_uid)
        with self._lock:
            self._cache[key] = secret
        return secret

    def readiness(self, ref: str | None) -> tuple[Readiness, str]:
        """``(state, detail)`` for an integration's ``secret_ref``; resolving may fill the
        cache. The detail is fit for a CLI table and never holds the secret."""
        if ref is None:
            return "invalid_secret_ref", "no secret_ref set"
        try:
            self.resolve(ref)
        except SecretRefError as exc:
            return "invalid_secret_ref", str(exc)
        except SecretNotFound as exc:
            return "secret_not_found", str(exc)
        return "ready", f"{ref} resolves"

    def store(self, name: str, secret: str) -> str:
        """Save ``secret`` in the keyring under ``name``; return ``"keyring:NAME"``."""
        _, name = parse_secret_ref(f"keyring:{name}")
        if not isinstance(secret, str) or not secret:
            raise ValueError("refusing to store an empty secret")
        try:
            self._backend.set_password(KEYRING_SERVICE, name, secret)
        except Exception as exc:
            raise SecretBackendError(
                f"cannot store keyring:{name} in {self.backend_name} ({type(exc).__name__})"
            ) from exc
        with self._lock:
            self._cache[f"keyring:{name}"] = secret
        return f"keyring:{name}"

    def delete(self, name: str) -> None:
        """Remove the keyring entry ``name``; an absent entry is not an error."""
        _, name = parse_secret_ref(f"keyring:{name}")
        with self._lock:
            self._cache.pop(f"keyring:{name}", None)
        try:
            self._backend.delete_password(KEYRING_SERVICE, name)
        except PasswordDeleteError:
            pass
        except Exception as exc:
            raise SecretBackendError(
                f"cannot delete keyring:{name} from {self.backend_name} ({type(exc).__name__})"
            ) from exc

    def forget_cached(self, ref: str | None = None) -> None:
        """Drop one cached secret (``ref``), or all of them."""
        with self._lock:
            if ref is None:
                self._cache.clear()
                return
            try:
                kind, value = parse_secret_ref(ref)
            except SecretRefError:
                return
            self._cache.pop(f"{kind}:{value}", None)

    def _from_keyring(self, name: str) -> str:
        ref = f"keyring:{name}"
        try:
            secret = self._backend.get_password(KEYRING_SERVICE, name)
        except Exception as exc:
            raise SecretBackendError(
                f"{ref}: the keyring {self.backend_name} failed ({type(exc).__name__}: {exc})"
            ) from exc
        if not secret:
            raise SecretNotFound(
                f"{ref}: no entry {name!r} in keyring service {KEYRING_SERVICE!r}"
                f" ({self.backend_name})"
            )
        return str(secret)

    def _from_db(self, name: str) -> str:
        """From the node's copy of the shared table (kept fresh by its poll, so never
        cached here as well)."""
        if self.db is None:
            raise SecretNotFound(
                f"db:{name}: db: secrets need [storage] backend = \"postgres\" and [secrets]"
                " key_ref")
        try:
            return self.db.get(name)
        except DbSecretNotFound as exc:
            raise SecretNotFound(str(exc)) from None

    def _from_env(self, var: str) -> str:
        secret = self._env.get(var)
        if secret is None:
            raise SecretNotFound(f"env:{var}: environment variable {var} is not set")
        if not secret:
            raise SecretNotFound(f"env:{var}: environment variable {var} is empty")
        return secret


def _read_secret_file(path: str, expected_uid: int | None = None) -> str:
    """The file's content without one trailing newline; refused when it is not a regular
    file, is over 64 KiB, or (POSIX) is readable or writable by group or others, or owned
    by a user other than ``expected_uid`` (default: the effective uid) and root."""
    ref = f"file:{path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise SecretNotFound(f"{ref}: no such file") from None
    except OSError as exc:
        raise SecretNotFound(f"{ref}: cannot open ({exc.strerror})") from None
    try:
        # fstat the descriptor we read from, so the checks and the read see the same file.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretNotFound(f"{ref}: not a regular file")
        if info.st_size > MAX_SECRET_FILE_BYTES:
            raise SecretNotFound(f"{ref}: larger than {MAX_SECRET_FILE_BYTES} bytes")
        if os.name == "posix" and info.st_mode & 0o077:
            raise SecretNotFound(
                f"{ref}: refusing a secret file that group or others can access (mode"
                f" {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        try:
            check_owner(path, info.st_uid, what="the secret file", expected_uid=expected_uid)
        except ForeignOwner as exc:
            raise SecretNotFound(f"{ref}: {exc}") from None
        raw = b""
        try:
            # Read one byte past the limit so that a file that grew after fstat is refused.
            while len(raw) <= MAX_SECRET_FILE_BYTES:
                chunk = os.read(fd, MAX_SECRET_FILE_BYTES + 1 - len(raw))
                if not chunk:
                    break
                raw += chunk
        except OSError as exc:
            raise SecretNotFound(f"{ref}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise SecretNotFound(f"{ref}: larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretNotFound(f"{ref}: not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise SecretNotFound(f"{ref}: the file is empty")
    return text
