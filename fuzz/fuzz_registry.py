"""Fuzz ``parse_registry`` with arbitrary text: the only exception allowed is
``RegistryError``, and what parses must be JSON-ready through the records' ``to_dict``
(``[[webhooks]]``, ``[[subscriptions]]`` and ``[[tokens]]`` alike), keyed by its own id.

Input: the bytes, decoded as UTF-8 (invalid sequences replaced), are the registry text.

Run with atheris (``pip install atheris``)::

    python fuzz/fuzz_registry.py fuzz/corpus/registry

Without atheris, the same command replays the given files (or every file of the given
directories) once each, which is how the tests use the seed corpus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the shared harness sits here
    sys.path.append(str(Path(__file__).resolve().parent))

from _harness import run

from palyra_py.registry.document import parse_registry
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.tokens import MAX_SCOPES, Principal, parse_scope

PATH = Path("/fuzz/webhooks.toml")


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        registry = parse_registry(text, PATH)
    except RegistryError as exc:
        # Every error names the file, and a position, when it has one, is 1-based.
        assert str(exc).startswith(str(PATH)), str(exc)
        assert exc.line is None or (exc.line >= 1 and (exc.col or 1) >= 1)
        return
    for integration_id, integration in registry.integrations.items():
        assert integration.integration_id == integration_id
        json.dumps(integration.to_dict())
    for subscription_id, subscription in registry.subscriptions.items():
        assert subscription.subscription_id == subscription_id
        json.dumps(subscription.to_dict(), allow_nan=False)
    for token_id, token in registry.tokens.items():
        assert token.token_id == token_id
        shown = token.to_dict()
        assert "secret_ref" not in shown  # never where the token is kept
        json.dumps(shown)
        # Scopes come out normalised, bounded and understood; no scopes is a legacy token.
        assert shown["legacy"] is (token.scopes is None)
        if token.scopes is not None:
            assert 1 <= len(token.scopes) <= MAX_SCOPES
            assert all(parse_scope(scope) == scope for scope in token.scopes)
            principal = Principal.of(token)
            principal.can_publish("entry.created")
            assert principal.read_scope() is not None


def main(argv: list[str]) -> None:
    run(argv, test_one_input, instrument=("palyra_py", "tomlkit"))


if __name__ == "__main__":
    main(sys.argv)
