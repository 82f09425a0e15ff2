"""Sealing ``db:`` secrets: AES-256-GCM under the key ``[secrets] key_ref`` names, from
``cryptography`` (never a home-made cipher).

Each write takes a fresh random 96-bit nonce; the secret's name is the associated data, so
a row copied or moved to another name does not open. A sealed secret carries the
``key_id`` of its key: a short fingerprint (an HMAC of a fixed label under the key), never
the key, so a node can tell which of its keys opens a row and say which one it lacks.

No I/O, no clock. No message raised here holds a key, a plaintext or a ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "KeyFormatError",
    "Keys",
    "Sealed",
    "SealingKey",
    "UnsealError",
    "key_id",
    "parse_key",
    "seal",
    "unseal",
]

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_HEX = 16
_KEY_ID_LABEL = b"palyra db secrets key id v1"
_HEX = re.compile(r"[0-9A-Fa-f]{64}")


class KeyFormatError(ValueError):
    """The text is not a 32-byte key in hex or base64. The message never quotes it."""


class UnsealError(ValueError):
    """A sealed secret does not open: no key of this node has its ``key_id``, or it was
    altered (ciphertext, nonce) or moved to another name. Names the secret and the key id,
    never a value."""


class SealingKey(NamedTuple):
    key_id: str
    key: bytes

    def __repr__(self) -> str:  # the key never appears in a repr, a log or a traceback
        return f"SealingKey(key_id={self.key_id!r})"


class Sealed(NamedTuple):
    """What the table keeps of one secret."""

    key_id: str
    nonce: bytes
    ciphertext: bytes
    """The AES-GCM output: the encrypted secret followed by its 16-byte tag."""


class Keys(NamedTuple):
    """The key new writes use, and the older keys still accepted for reading."""

    current: SealingKey
    previous: tuple[SealingKey, ...] = ()

    def by_id(self, wanted: str) -> SealingKey | None:
        for candidate in (self.current, *self.previous):
            if candidate.key_id == wanted:
                return candidate
        return None

    @classmethod
    def of(cls, current: bytes, previous: Iterable[bytes] = ()) -> Keys:
        first = SealingKey(key_id(current), current)
        older = tuple(SealingKey(key_id(k), k) for k in previous)
        return cls(first, tuple(k for k in older if k.key_id != first.key_id))


def parse_key(text: str) -> bytes:
    """A key from its text: 64 hex digits, or base64 (standard or URL-safe, padding
    optional) of exactly 32 bytes; surrounding whitespace is ignored. ``KeyFormatError``
    otherwise, without the text."""
    value = text.strip()
    if _HEX.fullmatch(value):
        return bytes.fromhex(value)
    padded = value + "=" * (-len(value) % 4)
    try:
        if "-" in value or "_" in value:
            raw = base64.urlsafe_b64decode(padded.encode("ascii"))
        else:
            raw = base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise KeyFormatError(
            "is neither 64 hex digits nor base64 (make one with: openssl rand -base64 32)"
        ) from None
    if len(raw) != KEY_BYTES:
        raise KeyFormatError(
            f"decodes to {len(raw)} bytes, not {KEY_BYTES} (make one with: openssl rand"
            " -base64 32)")
    return raw


def key_id(key: bytes) -> str:
    """The key's fingerprint: 16 hex digits of HMAC-SHA256(key, a fixed label)."""
    if len(key) != KEY_BYTES:
        raise KeyFormatError(f"a key must be {KEY_BYTES} bytes")
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:KEY_ID_HEX]


def seal(key: SealingKey, name: str, secret: str, *, nonce: bytes | None = None) -> Sealed:
    """``secret`` sealed under ``key`` for ``name`` (the associated data). ``nonce`` is for
    known-answer tests only; by default a fresh random one."""
    if not secret:
        raise ValueError("refusing to seal an empty secret")
    used = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(used) != NONCE_BYTES:
        raise ValueError(f"a nonce must be {NONCE_BYTES} bytes")
    box = AESGCM(key.key).encrypt(used, secret.encode("utf-8"), name.encode("utf-8"))
    return Sealed(key.key_id, used, box)


def unseal(keys: Keys, name: str, sealed: Sealed) -> str:
    """The secret ``sealed`` holds for ``name``; ``UnsealError`` when it does not open."""
    key = keys.by_id(sealed.key_id)
    if key is None:
        raise UnsealError(
            f"db:{name}: sealed with key {sealed.key_id}, which this node does not have (set"
            " it as [secrets] key_ref or add it to [secrets] previous_key_refs)")
    if len(sealed.nonce) != NONCE_BYTES:
        raise UnsealError(f"db:{name}: the stored nonce is not {NONCE_BYTES} bytes (damaged)")
    try:
        plain = AESGCM(key.key).decrypt(sealed.nonce, sealed.ciphertext, name.encode("utf-8"))
    except InvalidTag:
        raise UnsealError(
            f"db:{name}: does not open under key {sealed.key_id}: the row was altered or"
            " belongs to another name") from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsealError(f"db:{name}: opened, but is not UTF-8 text") from None
