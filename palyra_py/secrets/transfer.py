"""Moving an installation's keyring secrets into the ``db:`` secrets (``palyra storage
copy``): each ``keyring:NAME`` the registry names is read from this node's keyring (the
OS keyring or the state dir's ``secrets.json``) and sealed under ``[secrets] key_ref`` as
``db:NAME``, which every node reads. The keyring entries stay as they were (the embedded
installation keeps working until it is switched). ``env:`` and ``file:`` references are
left alone: they are the operator's to deploy on every node.

A secret already in the table with the same value is left as it is, so a resumed copy
writes only what is missing. No message here holds a secret or a key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from palyra_py.secrets.refs import parse_secret_ref
from palyra_py.secrets.sealing import Keys, Sealed, UnsealError, seal, unseal
from palyra_py.secrets.shared import DbSecretsUnavailable, StoredSecret
from palyra_py.storage.copying import CopyDone, CopyUnreachable

__all__ = ["SecretsCopier", "SecretsTarget"]


class SecretsTarget(Protocol):
    async def row(self, name: str) -> StoredSecret | None: ...

    async def put(self, name: str, sealed: Sealed) -> None: ...

    async def close(self) -> None: ...


class SecretsCopier:
    """The secrets' ``Copier``. ``moved`` maps each reference copied to its ``db:`` one
    (the registry's copier rewrites the registry with it)."""

    store = "secrets"
    unit = "secrets"

    def __init__(self, refs: Sequence[str], resolve: Callable[[str], str], keys: Keys | None,
                 target: SecretsTarget) -> None:
        """``refs``: the ``keyring:`` references to move; ``resolve`` reads one
        (``SecretStore.resolve``); ``keys`` ``None``: no ``[secrets] key_ref``, nothing
        can be sealed."""
        self._refs = list(refs)
        self._resolve = resolve
        self._keys = keys
        self._target = target
        self.moved: dict[str, str] = {}

    async def total(self) -> int:
        return len(self._refs) if self._keys is not None else 0

    async def copy(self, advance: Callable[[int], None]) -> CopyDone:
        keys = self._keys
        if keys is None:
            note = () if not self._refs else (
                f"{len(self._refs)} keyring secrets not copied: set [secrets] key_ref (or"
                " --key-ref) to seal them as db: secrets; until then they verify on this"
                " node only",)
            return CopyDone(self.store, 0, 0, note)
        copied = already = 0
        notes: list[str] = []
        for ref in self._refs:
            _, name = parse_secret_ref(ref)
            try:
                secret = self._resolve(ref)
            except LookupError as exc:  # SecretNotFound: names the ref, never a value
                notes.append(f"{exc}: left as {ref}")
                advance(1)
                continue
            try:
                if await self._same(name, secret, keys):
                    already += 1
                else:
                    await self._target.put(name, seal(keys.current, name, secret))
                    copied += 1
            except DbSecretsUnavailable as exc:
                raise CopyUnreachable(str(exc)) from None
            self.moved[ref] = f"db:{name}"
            advance(1)
        return CopyDone(self.store, copied, already, tuple(notes))

    async def close(self) -> None:
        await self._target.close()

    async def _same(self, name: str, secret: str, keys: Keys) -> bool:
        row = await self._target.row(name)
        if row is None:
            return False
        try:
            return unseal(keys, name, row.sealed) == secret
        except UnsealError:
            return False
