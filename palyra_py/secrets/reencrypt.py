"""Key rotation for ``db:`` secrets: every row sealed under an older key is opened with the
key it names (``[secrets] previous_key_refs``) and sealed again under the current one
(``[secrets] key_ref``), one row at a time.

Each row is replaced only if it still holds what was read (a compare-and-set on its
nonce), so a secret rotated meanwhile is never overwritten with its old value: that row is
read again and done over. A row already under the current key is left alone, so a second
run changes nothing. No message here holds a key or a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from palyra_py.secrets.sealing import Keys, Sealed, UnsealError, seal, unseal
from palyra_py.secrets.shared import StoredSecret

__all__ = ["MAX_TRIES", "Reencrypted", "Rekeyable", "reencrypt_all"]

MAX_TRIES = 5
"""Times one row is tried when it keeps changing under the re-encryption."""


class Rekeyable(Protocol):
    async def load(self) -> tuple[int, list[StoredSecret]]: ...

    async def row(self, name: str) -> StoredSecret | None: ...

    async def replace(self, name: str, old: Sealed, new: Sealed) -> bool: ...


class Reencrypted(NamedTuple):
    """What one run did."""

    total: int
    reencrypted: int
    already_current: int
    failed: tuple[str, ...]
    """One reason per row left as it was (a key this node lacks, a damaged row)."""
    key_id: str
    """The current key's id: every row done is now under it."""


async def reencrypt_all(backend: Rekeyable, keys: Keys,
                        on_row: Callable[[str], None] | None = None) -> Reencrypted:
    """Re-encrypt every row not under ``keys.current``; ``on_row(name)`` after each row
    (a progress bar). Raises what the backend raises (``DbSecretsUnavailable``); the rows
    done before stay done."""
    _, rows = await backend.load()
    done = current = 0
    failed: list[str] = []
    for row in sorted(rows, key=lambda r: r.name):
        state = await _one(backend, keys, row)
        if state == "done":
            done += 1
        elif state == "current":
            current += 1
        elif state != "gone":
            failed.append(state)
        if on_row is not None:
            on_row(row.name)
    return Reencrypted(len(rows), done, current, tuple(failed), keys.current.key_id)


async def _one(backend: Rekeyable, keys: Keys, row: StoredSecret | None) -> str:
    """``done``, ``current``, ``gone`` (deleted meanwhile), or why it was left."""
    for _ in range(MAX_TRIES):
        if row is None:
            return "gone"
        if row.sealed.key_id == keys.current.key_id:
            return "current"
        try:
            secret = unseal(keys, row.name, row.sealed)
        except UnsealError as exc:
            return str(exc)
        if await backend.replace(row.name, row.sealed, seal(keys.current, row.name, secret)):
            return "done"
        row = await backend.row(row.name)
    name = row.name if row is not None else "?"
    return f"db:{name}: changed {MAX_TRIES} times while being re-encrypted; run again"
