"""The registry and secrets packages import in one direction: no module of theirs is on an
import cycle, none reaches another module by a lookup at run time, and the shared field
checks load no editing or HTTP code.

Read from the source with ``ast`` (nothing is imported to find the graph), over the whole
``palyra_py`` package, so that a cycle through a module outside the two packages counts as
well. Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "palyra_py"
CHECKED = ("palyra_py.registry", "palyra_py.secrets")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def sources() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except what sits under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and is_type_checking(child):
            yield from (node for other in child.orelse for node in runtime_nodes(other))
            continue
        yield child
        yield from runtime_nodes(child)


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``palyra_py`` modules that ``name`` imports when it runs: ``from a.b import c``
    counts as ``a.b.c`` when that is a module, else as ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    out.add(target)
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


@cache
def import_graph() -> dict[str, set[str]]:
    modules = sources()
    known = set(modules)
    return {name: imported(name, path, known) for name, path in modules.items()}


def cycle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A shortest chain of imports from ``start`` back to itself, or ``None``."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        current = queue.pop(0)
        for target in sorted(graph.get(current, ())):
            if target == start:
                return [*paths[current], start]
            if target not in paths:
                paths[target] = [*paths[current], target]
                queue.append(target)
    return None


def checked_modules() -> list[str]:
    return [name for name in sources() if name.startswith(CHECKED)]


def test_the_graph_sees_the_registry_modules_and_their_imports() -> None:
    graph = import_graph()
    assert "palyra_py.registry.fields" in graph["palyra_py.registry.integrations"]
    assert "palyra_py.registry.document" in graph["palyra_py.registry.file"]
    # Under TYPE_CHECKING only: no edge.
    assert "palyra_py.journal.journal" not in graph["palyra_py.registry.tokens"]


@pytest.mark.parametrize("name", checked_modules())
def test_no_module_is_on_an_import_cycle(name: str) -> None:
    assert cycle_through(name, import_graph()) is None


def test_a_cycle_is_found_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycle_through("a", graph) == ["a", "b", "c", "a"]
    assert cycle_through("d", graph) is None


@pytest.mark.parametrize("name", checked_modules())
def test_imports_are_written_at_the_top_and_never_looked_up(name: str) -> None:
    """No ``importlib``, no ``__import__``, no module ``__getattr__``, no import inside a
    function or class: each would hide an edge of the graph above."""
    tree = ast.parse(sources()[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not inner, f"{name}: an import inside {node.name}, line {inner[0].lineno}"
        if isinstance(node, ast.Import):
            assert all(alias.name != "importlib" for alias in node.names), name
        if isinstance(node, ast.ImportFrom):
            assert node.module != "importlib", name
        if isinstance(node, ast.Name):
            assert node.id != "__import__", name
    top = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert "__getattr__" not in top, name


def test_the_shared_field_checks_load_no_editing_keyring_or_http_code() -> None:
    code = (
        "import sys\n"
        "import palyra_py.registry.fields\n"
        "heavy = ('tomlkit', 'aiohttp', 'keyring', 'palyra_py.registry.edit')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"
