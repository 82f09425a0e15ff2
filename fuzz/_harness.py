"""What every fuzz target shares: atheris when it is installed, seed replay when it is not.

A target calls ``run(sys.argv, test_one_input, instrument=(...))``. With atheris, only the
functions of the named module prefixes are instrumented (``palyra_py`` and the parsers it
leans on): ``atheris.instrument_all()`` would instrument every loaded function, which takes
40-90 s before the first input, most of a bounded CI run.
"""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

atheris: Any
try:  # atheris is optional: every target must import (and replay seeds) without it.
    import atheris  # type: ignore[import-untyped, import-not-found, no-redef, unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    atheris = None


def seed_files(paths: Sequence[str]) -> Iterator[Path]:
    """The given files, and every file of the given directories (sorted), in order."""
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file())
        else:
            yield path


def instrument_modules(prefixes: Sequence[str]) -> int:
    """Instrument, for coverage feedback, every loaded Python function whose module is one of
    ``prefixes`` or inside it; return how many were instrumented."""
    wanted = tuple(prefixes)

    def chosen(module: object) -> bool:
        return isinstance(module, str) and any(
            module == p or module.startswith(p + ".") for p in wanted
        )

    functions = [
        obj for obj in gc.get_objects()
        if isinstance(obj, types.FunctionType) and chosen(getattr(obj, "__module__", None))
    ]
    for function in functions:
        atheris.instrument_func(function)
    return len(functions)


def run(
    argv: list[str],
    test_one_input: Callable[[bytes], None],
    instrument: Sequence[str] = ("palyra_py",),
) -> None:
    """Fuzz ``test_one_input`` with atheris (``argv`` are libFuzzer's arguments), or, without
    atheris, call it once on each file named in ``argv[1:]`` (directories: each file)."""
    seeds = list(seed_files([a for a in argv[1:] if not a.startswith("-")]))
    if atheris is None:
        for path in seeds:
            test_one_input(path.read_bytes())
        return
    # One uninstrumented replay first loads what the code under test imports lazily
    # (jsonschema, the registry's record modules...): only functions loaded by then get
    # instrumented. A failing input is left for libFuzzer, which runs them all again and
    # reports a crash properly (saved input, -minimize_crash...).
    for path in seeds:
        try:
            test_one_input(path.read_bytes())
        except Exception:
            continue
    count = instrument_modules(instrument)
    print(f"INFO: instrumented {count} functions of {', '.join(instrument)}", file=sys.stderr)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
