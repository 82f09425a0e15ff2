"""Fuzz ``parse_registry`` with arbitrary text: the only exception allowed is
``RegistryError``, and what parses must be JSON-ready through ``Integration.to_dict``.

Input: the bytes, decoded as UTF-8 (invalid sequences replaced), are the registry text.

Run with atheris (``pip install atheris``)::

    python fuzz/fuzz_registry.py fuzz/corpus/registry

Without atheris, the same command replays the given files (or every file of the given
directories) once each, which is how the tests use the seed corpus.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from palyra_py.registry import RegistryError, parse_registry

atheris: Any
try:  # atheris is optional: the file must import (and replay seeds) without it.
    import atheris  # type: ignore[import-untyped, import-not-found, no-redef, unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    atheris = None

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


def _files(paths: list[str]) -> Iterator[Path]:
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file())
        else:
            yield path


def main(argv: list[str]) -> None:
    if atheris is None:
        for path in _files(argv[1:]):
            test_one_input(path.read_bytes())
        return
    atheris.instrument_all()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
