"""The fallback keyring: a 0600 JSON file in the state dir, written with ``atomic_files``.

The fallback exists for machines with no usable OS keyring (headless servers, containers):
secrets then sit in ``<state_dir>/secrets.json``, readable by the daemon's user only. That is
no weaker than the state dir itself, which already holds the journal.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import KeyringError, PasswordDeleteError

from palyra_py.storage.files import exclusive_lock, write_atomic

FILE_FORMAT_VERSION = 1


class StateDirKeyring(KeyringBackend):
    """A keyring backend storing ``{service: {username: password}}`` in one JSON file.

    Every read goes to the file, so a second instance (or process) sees what another one
    stored; writes are serialised by a lock file next to it and replace the file atomically
    (mode 0600). keyring never selects this backend by itself: it needs a path, and keyring's
    detection only builds backends that take no arguments.
    """

    # Low: a plaintext file is the last resort, chosen explicitly by SecretStore.
    priority = 0.1

    def __init__(self, path: Path) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # keyring leaves it unannotated
        self.path = Path(path)
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return f"palyra file backend ({self.path})"

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KeyringError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            # Never quote the content: it is made of secrets.
            raise KeyringError(f"{self.path} is not valid JSON; restore it or remove it") from None
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or not all(
            isinstance(users, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in users.items())
            for users in entries.values()
        ):
            raise KeyringError(f"{self.path} is not a palyra secrets file")
        return entries

    def _write(self, entries: dict[str, dict[str, str]]) -> None:
        payload = {"version": FILE_FORMAT_VERSION, "entries": entries}
        write_atomic(self.path, json.dumps(payload, indent=2, sort_keys=True).encode() + b"\n")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock, exclusive_lock(self.path.with_name(self.path.name + ".lock")):
            yield

    def get_password(self, service: str, username: str) -> str | None:
        return self._read().get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        with self._locked():
            entries = self._read()
            entries.setdefault(service, {})[username] = password
            self._write(entries)

    def delete_password(self, service: str, username: str) -> None:
        with self._locked():
            entries = self._read()
            users = entries.get(service, {})
            if username not in users:
                raise PasswordDeleteError(f"no entry {username!r} for service {service!r}")
            del users[username]
            if not users:
                del entries[service]
            self._write(entries)
