"""Redaction of secret-looking values: pure, deep, bounded."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from palyra_py.redact import MAX_DEPTH, REDACTED, SECRET_KEY_PARTS, TOO_DEEP, is_secret_key, redact


def test_nested_secrets_are_redacted_and_the_rest_kept() -> None:
    value = {
        "user": "ann",
        "Authorization": "Bearer abc",
        "config": {"API_KEY": "k", "url": "https://x", "retries": 3, "enabled": True},
        "items": [{"client_secret": "s", "id": 1}, {"id": 2}, "plain", None],
        "pair": ({"session_id": "x"}, 1.5),
        "X-Api-Key": "header style",
        "Private-Key": {"pem": "..."},
    }
    original = copy.deepcopy(value)
    clean, changed = redact(value)
    assert changed
    assert clean == {
        "user": "ann",
        "Authorization": REDACTED,
        "config": {"API_KEY": REDACTED, "url": "https://x", "retries": 3, "enabled": True},
        "items": [{"client_secret": REDACTED, "id": 1}, {"id": 2}, "plain", None],
        "pair": ({"session_id": REDACTED}, 1.5),
        "X-Api-Key": REDACTED,
        "Private-Key": REDACTED,
    }
    assert value == original  # the input is never modified
    assert clean["config"] is not value["config"]


def test_nothing_to_redact() -> None:
    value = {"a": [1, {"b": "token-looking value, harmless key"}], "n": None}
    clean, changed = redact(value)
    assert (clean, changed) == (value, False)
    assert clean is not value and clean["a"] is not value["a"]
    assert redact("Bearer abc") == ("Bearer abc", False)  # only keys are judged


def test_every_listed_key_part_matches_case_insensitively() -> None:
    for part in SECRET_KEY_PARTS:
        assert is_secret_key(part.upper())
        assert is_secret_key(f"my_{part}_here")
        assert redact({part.title(): {"deep": 1}}) == ({part.title(): REDACTED}, True)
    for harmless in ("user", "id", "name", "payload", "tok", 42):
        assert not is_secret_key(harmless)


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"k": value}
    return value


def test_depth_is_bounded() -> None:
    assert redact(nested(MAX_DEPTH)) == (nested(MAX_DEPTH), False)
    clean, changed = redact(nested(MAX_DEPTH + 5))
    assert changed
    node = clean
    for _ in range(MAX_DEPTH):
        node = node["k"]
    assert node == TOO_DEEP
    deep_list: Any = "leaf"
    for _ in range(10_000):  # far beyond Python's recursion limit: still fine
        deep_list = [deep_list]
    clean, changed = redact(deep_list)
    assert changed


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["a", "id", "Token", "x-secret", "cookies", "name"]) | st.text(max_size=6),
        children,
        max_size=4,
    ),
    max_leaves=30,
)


def no_unredacted_secret(value: Any) -> bool:
    if isinstance(value, dict):
        return all(
            (v == REDACTED if is_secret_key(k) else no_unredacted_secret(v))
            for k, v in value.items()
        )
    if isinstance(value, list):
        return all(no_unredacted_secret(v) for v in value)
    return True


@given(json_values)
def test_redaction_properties(value: Any) -> None:
    original = copy.deepcopy(value)
    clean, changed = redact(value)
    assert value == original
    assert no_unredacted_secret(clean)
    assert (clean != value) == changed
    assert redact(clean)[0] == clean  # idempotent
