"""The "no secret in plain sight" check that runs with the whole suite.

Every secret a test stores in a keyring (``MemoryKeyring``, or a daemon's 0600 file backend)
is remembered. Each test's state dir is scanned when the test ends (every file but the file
keyring itself), and every log event of the session and every CLI ``--json`` output the
end-to-end tests read are scanned when the session ends. A secret found anywhere fails the
run with where it was found (never the secret itself)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from palyra_py.testing import MemoryKeyring, short_state_dir

MIN_LEN = 8  # shorter test secrets ("s", "x") would match by chance
KEYRING_FILES = {"secrets.json", "secrets.json.lock"}


@dataclass
class LeakWatch:
    secrets: set[str] = field(default_factory=set)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    """(where, text) scanned at the end of the session."""

    def remember(self, secret: str) -> None:
        if len(secret) >= MIN_LEN:
            self.secrets.add(secret)

    def record(self, where: str, text: str) -> None:
        self.outputs.append((where, text))

    def found_in(self, data: bytes) -> list[str]:
        return [s for s in self.secrets if s.encode() in data]

    def scan_state_dir(self, state_dir: Path) -> list[str]:
        """Remember the file keyring's secrets, then look for every secret elsewhere."""
        keyring_file = state_dir / "secrets.json"
        if keyring_file.exists():
            try:
                stored = json.loads(keyring_file.read_text())
            except ValueError:
                stored = {}
            for entries in stored.values() if isinstance(stored, dict) else ():
                for value in entries.values() if isinstance(entries, dict) else ():
                    if isinstance(value, str):
                        self.remember(value)
        problems = []
        for path in sorted(p for p in state_dir.rglob("*") if p.is_file()):
            if path.name in KEYRING_FILES or path.is_socket():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            for secret in self.found_in(data):
                problems.append(f"{path.relative_to(state_dir)}: a secret of "
                                f"{len(secret)} chars")
        return problems

    def scan_outputs(self) -> list[str]:
        problems = []
        for where, text in self.outputs:
            if self.found_in(text.encode()):
                problems.append(where)
        return problems


WATCH = LeakWatch()


@contextlib.contextmanager
def checked_state_dir(prefix: str = "pt-") -> Iterator[Path]:
    """A fresh short state dir, scanned for every remembered secret and removed at the
    end (a secret found there fails the test)."""
    path = short_state_dir(prefix)
    yield path
    problems = WATCH.scan_state_dir(path)
    shutil.rmtree(path, ignore_errors=True)
    assert not problems, f"secrets found in the state dir: {problems}"


def install() -> None:
    """Make MemoryKeyring report what it stores (it is our own test helper)."""
    original = MemoryKeyring.set_password

    def remembering(self: MemoryKeyring, service: str, username: str, password: str) -> None:
        original(self, service, username, password)
        WATCH.remember(password)

    MemoryKeyring.set_password = remembering  # type: ignore[method-assign]
