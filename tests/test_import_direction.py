"""The import direction of DESIGN.md ("Layout"), checked on the code's own imports.

leaves <- pure rules <- stores/config <- stages <- edges <- composition: a module imports
modules of its own layer or of a lower one only; the stages (inbound, outbound, stream)
never import one another (they meet only through the journal and the bus); pure rules
import no I/O; and no module takes part in an import circle, whether the import sits at
the top, inside a function or under ``TYPE_CHECKING``.

Every import of ``palyra_py`` is read with ``ast``, so nothing is run. A module's layer is
the entry of ``LAYERS`` with the longest prefix of its dotted name: a new module lands in
its package's layer without an edit here, and a new package fails until it is placed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "palyra_py"

LEAVES, PURE, STORES, STAGES, EDGES, COMPOSITION = range(6)
LAYER_NAMES = ("leaves", "pure rules", "stores/config", "stages", "edges", "composition")

LAYERS: dict[str, int] = {
    # Leaves: vocabulary and plumbing that import nothing of ours but other leaves.
    "palyra_py": LEAVES,  # the package itself: __version__
    "palyra_py.reasons": LEAVES,
    "palyra_py.redact": LEAVES,
    "palyra_py.paths": LEAVES,
    "palyra_py.logs": LEAVES,
    "palyra_py.metrics": LEAVES,
    "palyra_py.settings": LEAVES,
    "palyra_py.times": LEAVES,
    "palyra_py.ids": LEAVES,
    "palyra_py.storage": LEAVES,  # SQLite, writer-thread and file plumbing; no store logic
    # Pure rules: no I/O, no clock of their own.
    "palyra_py.events": PURE,
    "palyra_py.filters": PURE,
    "palyra_py.providers": PURE,
    "palyra_py.journal.chain": PURE,
    "palyra_py.journal.backend": PURE,
    "palyra_py.journal.records": PURE,
    "palyra_py.delivery.records": PURE,
    "palyra_py.delivery.attempts": PURE,
    "palyra_py.delivery.backend": PURE,
    "palyra_py.delivery.figures": PURE,
    "palyra_py.delivery.start": PURE,
    "palyra_py.bus.base": PURE,
    "palyra_py.inbound.envelope": PURE,
    "palyra_py.outbound.retry": PURE,
    "palyra_py.outbound.urls": PURE,
    "palyra_py.outbound.formats": PURE,
    "palyra_py.outbound.signing": PURE,
    "palyra_py.outbound.fair": PURE,
    "palyra_py.outbound.placeholders": PURE,
    "palyra_py.registry.positions": PURE,
    "palyra_py.registry.fields": PURE,
    "palyra_py.secrets.refs": PURE,
    "palyra_py.cluster.leases": PURE,
    # Stores and configuration.
    "palyra_py.journal": STORES,
    "palyra_py.delivery": STORES,
    "palyra_py.bus": STORES,
    "palyra_py.registry": STORES,
    "palyra_py.secrets": STORES,
    "palyra_py.cluster": STORES,  # nodes, heartbeats, delivery leases
    # Stages of the request path.
    "palyra_py.inbound": STAGES,
    "palyra_py.outbound": STAGES,
    "palyra_py.stream": STAGES,
    # Edges: what people and programs talk to.
    "palyra_py.admin": EDGES,
    "palyra_py.clients": EDGES,
    "palyra_py.client": EDGES,
    "palyra_py.cli": EDGES,
    # Composition: what builds and starts the daemon.
    "palyra_py.server": COMPOSITION,
    "palyra_py.testing": COMPOSITION,
    "palyra_py.__main__": COMPOSITION,
    "palyra_py.cli.daemon_cmd": COMPOSITION,  # `palyra daemon run` starts the daemon
    "palyra_py.cli.storage_cmd": COMPOSITION,  # `palyra storage copy` composes every store
    "palyra_py.cli.storage_views": COMPOSITION,  # and shows its report
}

STAGE_PACKAGES = ("palyra_py.inbound", "palyra_py.outbound", "palyra_py.stream")

IO_MODULES = frozenset({
    "sqlite3", "aiohttp", "asyncio", "socket", "subprocess", "threading", "tomlkit",
    "keyring", "psycopg", "asyncpg", "urllib.request", "http.client", "shutil",
})
"""What a pure rule module may not import: engines, the network, threads, processes."""

ALLOWED: dict[tuple[str, str], str] = {
    ("palyra_py.outbound.urls", "socket"):
        "inet_aton reads the legacy IPv4 spellings (127.1, 0177.0.0.1); it opens nothing",
}
"""Imports that look like a broken rule and are not, each with the reason."""

KNOWN: frozenset[tuple[str, str]] = frozenset()
"""Imports that break a rule today and are being removed: each must still exist (so the
list only shrinks), and nothing else may break one."""

LOOKUPS_ALLOWED = {
    "palyra_py.cli.app": "sub-commands load by name when run, so `palyra --help` stays light",
    "palyra_py.cli.quick": "the quick reads load their Typer twin by name only to check it",
    "palyra_py.cli.main": "`app` is loaded on first use, for the same start-up reason",
}
"""Modules that may load others by name (``importlib``, ``__import__``, a module
``__getattr__``): edges this test cannot read, so only the CLI's start-up has them."""


@cache
def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _ours(name: str) -> str | None:
    """The module of ours that an imported dotted name lives in, or None."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def imports_of(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(our modules, other top-level names) that ``module`` imports anywhere in its text."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    ours: set[str] = set()
    others: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the module pkg.sub; `from pkg import name`,
            # the module that defines name.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules()
                     else node.module for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "palyra_py":
                target = _ours(name)
                if target is not None and target != module:
                    ours.add(target)
            else:
                others.add(name)
    return frozenset(ours), frozenset(others)


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def stage_of(module: str) -> str | None:
    return next((p for p in STAGE_PACKAGES if module.startswith(p + ".")), None)


def violations() -> Iterator[tuple[str, str, str]]:
    for module in modules():
        ours, others = imports_of(module)
        for target in sorted(ours):
            if layer_of(target) > layer_of(module):
                yield module, target, (f"{LAYER_NAMES[layer_of(module)]} imports "
                                       f"{LAYER_NAMES[layer_of(target)]}")
            elif stage_of(module) and stage_of(target) and stage_of(module) != stage_of(target):
                yield module, target, "a stage imports another stage"
        if layer_of(module) == PURE:
            for name in sorted(others):
                if (module, name) in ALLOWED:
                    continue
                if any(name == io or name.startswith(io + ".") for io in IO_MODULES):
                    yield module, name, "a pure rule imports I/O"


def circles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(imports_of(node)[0]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                group.append(item)
                if item == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(modules()):
        if module not in index:
            visit(module)
    return groups


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in modules()
                if not any(m == p or m.startswith(p + ".") for p in LAYERS if p != "palyra_py")
                and m != "palyra_py"]
    assert not unplaced, f"place these in LAYERS: {unplaced}"


def test_imports_run_from_composition_down_to_the_leaves() -> None:
    found = {(module, target): why for module, target, why in violations()}
    new = {pair: why for pair, why in found.items() if pair not in KNOWN}
    assert not new, "\n".join(f"{m} -> {t}: {why}" for (m, t), why in sorted(new.items()))
    gone = KNOWN - set(found)
    assert not gone, f"no longer broken, take them out of KNOWN: {sorted(gone)}"


def test_no_import_circles() -> None:
    assert circles() == []


def lookups(module: str) -> list[str]:
    """Where ``module`` loads a module by name or answers for missing attributes."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    found = [f"line {node.lineno}: {name}" for node in ast.walk(tree)
             for name in [node.attr if isinstance(node, ast.Attribute)
                          else node.id if isinstance(node, ast.Name) else None]
             if name in ("import_module", "__import__")]
    found += [f"line {node.lineno}: module __getattr__" for node in tree.body
              if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"]
    return found


def test_no_module_is_loaded_by_name_outside_the_cli_start_up() -> None:
    """A lookup by name is an import edge nobody can read (and a way round a circle)."""
    found = {m: lookups(m) for m in modules() if m not in LOOKUPS_ALLOWED}
    assert {m: where for m, where in found.items() if where} == {}
    assert all(lookups(m) for m in LOOKUPS_ALLOWED), "an allowed lookup went: drop it"


def test_the_rules_are_read_from_the_code() -> None:
    """The checks see what they claim to: a known top-level, function-level and from-import."""
    assert "palyra_py.cli.daemon_cmd" in modules()
    assert "palyra_py.server.daemon" in imports_of("palyra_py.cli.daemon_cmd")[0]
    assert layer_of("palyra_py.outbound.dispatcher") == STAGES
    assert layer_of("palyra_py.outbound.retry") == PURE
    assert stage_of("palyra_py.stream.hub") == "palyra_py.stream"
