"""The sealing of ``db:`` secrets (AES-256-GCM, ``cryptography``) and the key's text: a
secret opens only under its key, for its name, untouched; every refusal is clear and
holds neither the key nor the secret."""

from __future__ import annotations

import base64
import os

import pytest

from palyra_py.secrets.sealing import (
    KeyFormatError,
    Keys,
    Sealed,
    UnsealError,
    key_id,
    parse_key,
    seal,
    unseal,
)

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
SECRET = "whsec_the-secret-under-test-0001"


def keys(*raw: bytes) -> Keys:
    return Keys.of(raw[0], raw[1:])


def assert_clean(message: str) -> None:
    assert SECRET not in message and KEY.hex() not in message
    assert base64.b64encode(KEY).decode() not in message


def test_a_sealed_secret_opens_under_its_key_for_its_name() -> None:
    sealed = seal(keys(KEY).current, "webhook:gh", SECRET)
    assert sealed.key_id == key_id(KEY) and len(sealed.nonce) == 12
    assert SECRET.encode() not in sealed.ciphertext
    assert unseal(keys(KEY), "webhook:gh", sealed) == SECRET


def test_each_write_takes_a_fresh_nonce() -> None:
    first, second = (seal(keys(KEY).current, "n", SECRET) for _ in range(2))
    assert first.nonce != second.nonce and first.ciphertext != second.ciphertext


def test_known_answer_against_the_library_with_a_given_nonce() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = bytes(12)
    sealed = seal(keys(KEY).current, "n", "abc", nonce=nonce)
    assert sealed.ciphertext == AESGCM(KEY).encrypt(nonce, b"abc", b"n")


@pytest.mark.parametrize("damage", ["ciphertext", "tag", "nonce", "name", "key_id"])
def test_a_tampered_or_moved_row_does_not_open(damage: str) -> None:
    sealed = seal(keys(KEY).current, "webhook:gh", SECRET)
    name = "webhook:gh"
    if damage == "ciphertext":
        sealed = sealed._replace(ciphertext=bytes([sealed.ciphertext[0] ^ 1])
                                 + sealed.ciphertext[1:])
    elif damage == "tag":
        sealed = sealed._replace(ciphertext=sealed.ciphertext[:-1]
                                 + bytes([sealed.ciphertext[-1] ^ 0x80]))
    elif damage == "nonce":
        sealed = sealed._replace(nonce=bytes([sealed.nonce[0] ^ 1]) + sealed.nonce[1:])
    elif damage == "name":
        name = "webhook:other"  # the row copied to another name
    else:
        sealed = sealed._replace(key_id=key_id(OTHER))  # labelled as under another key
    with pytest.raises(UnsealError) as caught:
        unseal(keys(KEY, OTHER), name, sealed)
    message = str(caught.value)
    assert message.startswith(f"db:{name}: ")
    assert "altered or belongs to another name" in message
    assert_clean(message)


def test_a_wrong_key_names_the_key_id_it_needs() -> None:
    sealed = seal(keys(KEY).current, "n", SECRET)
    with pytest.raises(UnsealError) as caught:
        unseal(keys(OTHER), "n", sealed)
    assert key_id(KEY) in str(caught.value) and "previous_key_refs" in str(caught.value)
    assert_clean(str(caught.value))


def test_a_previous_key_still_opens_old_rows() -> None:
    old = seal(keys(KEY).current, "n", SECRET)
    assert unseal(keys(OTHER, KEY), "n", old) == SECRET


def test_a_short_nonce_is_refused_clearly() -> None:
    sealed = seal(keys(KEY).current, "n", SECRET)
    with pytest.raises(UnsealError, match="nonce"):
        unseal(keys(KEY), "n", Sealed(sealed.key_id, sealed.nonce[:8], sealed.ciphertext))


@pytest.mark.parametrize("text", [
    KEY.hex(), KEY.hex().upper(), f"  {KEY.hex()}\n",
    base64.b64encode(KEY).decode(), base64.b64encode(KEY).decode().rstrip("="),
    base64.urlsafe_b64encode(b"\xfb" * 32).decode(),
])
def test_a_key_is_read_from_hex_or_base64(text: str) -> None:
    raw = parse_key(text)
    assert len(raw) == 32
    if "fb" not in text and "-" not in text and "_" not in text:
        assert raw == KEY


@pytest.mark.parametrize("text", [
    "", "not a key at all", KEY.hex()[:-2], base64.b64encode(KEY[:16]).decode(),
    base64.b64encode(KEY + b"x").decode(), "é" * 44,
])
def test_a_bad_key_is_refused_without_its_text(text: str) -> None:
    with pytest.raises(KeyFormatError) as caught:
        parse_key(text)
    message = str(caught.value)
    assert "openssl rand -base64 32" in message
    assert not text.strip() or text.strip() not in message


def test_the_key_id_is_a_fingerprint_not_the_key() -> None:
    assert key_id(KEY) == key_id(bytes(KEY)) != key_id(OTHER)
    assert len(key_id(KEY)) == 16 and key_id(KEY) not in KEY.hex()
    assert repr(keys(KEY).current) == f"SealingKey(key_id={key_id(KEY)!r})"
    random_key = os.urandom(32)
    assert random_key.hex() not in repr(Keys.of(random_key))
