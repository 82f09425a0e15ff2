"""The seams in front of storage hold: only the SQLite engine modules (and the shared
SQLite plumbing) import ``sqlite3``, only the PostgreSQL engine modules (and the shared
PostgreSQL plumbing) import the driver, ``asyncpg``, and rows from a query are read by
name, never by position. Read from the source with ``ast``, so that a new module cannot
slip past. (That the pure rules and the Protocols import no store module is
``test_import_direction``'s.)"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "palyra_py"

SQLITE_PLUMBING = "storage/sqlite.py"
"""Shared SQLite file and writer-thread plumbing, no store logic."""

POSTGRES_PLUMBING = "storage/postgres.py"
"""Shared PostgreSQL connections, error wording and migrations, no store logic."""

PURE_MODULES = (
    "events.py",
    "journal/backend.py",
    "journal/chain.py",
    "delivery/backend.py",
    "delivery/records.py",
    "delivery/attempts.py",
    "delivery/figures.py",
    "bus/base.py",
)
"""The spine's vocabulary, the Protocols and the rules both engines call: they hold rows
too."""

STORE_PACKAGES = ("journal", "delivery", "storage")


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def _imported(tree: ast.Module) -> set[str]:
    """Every module ``tree`` imports, at any depth (inside functions and
    ``TYPE_CHECKING`` too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _is_engine_module(name: str, engine: str = "sqlite") -> bool:
    """An engine module of a store: ``<store>/sqlite*.py`` (``<store>/postgres*.py``)."""
    folder, _, file = name.rpartition("/")
    stores = (("journal", "delivery", "bus", "secrets", "registry", "cluster", "storage")
              if engine == "postgres"
              else ("journal", "delivery"))
    return folder in stores and file.startswith(engine)


def _importers(driver: str) -> set[str]:
    return {
        name for name, tree in _modules()
        if any(module == driver or module.startswith(f"{driver}.")
               for module in _imported(tree))
    }


def test_only_engine_modules_import_sqlite3() -> None:
    importers = _importers("sqlite3")
    strays = sorted(name for name in importers
                    if name != SQLITE_PLUMBING and not _is_engine_module(name))
    assert strays == [], f"sqlite3 imported outside the SQLite engine modules: {strays}"
    # The engines are still where the rule looks for them.
    assert {SQLITE_PLUMBING, "journal/sqlite.py", "delivery/sqlite.py"} <= importers


def test_only_postgres_engine_modules_import_the_driver() -> None:
    importers = _importers("asyncpg")
    strays = sorted(name for name in importers
                    if name != POSTGRES_PLUMBING and not _is_engine_module(name, "postgres"))
    assert strays == [], f"asyncpg imported outside the PostgreSQL engine modules: {strays}"
    assert {POSTGRES_PLUMBING, "journal/postgres.py"} <= importers
    # One driver: the other is not imported anywhere.
    assert not _importers("psycopg") and not _importers("psycopg2")


def _positional_row_reads(tree: ast.Module) -> Iterator[int]:
    """Lines where a query result is indexed by a literal position: ``row[5]``,
    ``found[0]``, ``cursor.fetchone()[0]``."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Subscript):
            continue
        index = node.slice
        if not (isinstance(index, ast.Constant) and isinstance(index.value, int)):
            continue
        value = node.value
        # One row by its usual names (``rows[0]``, a list's first row, is not this).
        if isinstance(value, ast.Name) and (value.id in ("row", "found")
                                            or value.id.endswith("_row")):
            yield node.lineno
        elif (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
              and value.func.attr in ("fetchone", "fetchall", "fetchmany")):
            yield node.lineno


def test_store_modules_read_rows_by_name() -> None:
    offenders = [
        f"{name}:{line}"
        for name, tree in _modules()
        if name.split("/")[0] in STORE_PACKAGES or name in PURE_MODULES
        for line in _positional_row_reads(tree)
    ]
    assert offenders == [], f"rows read by position: {offenders}"
