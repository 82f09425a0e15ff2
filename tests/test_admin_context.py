"""The admin handlers stand on their context, not on the daemon: no admin module loads the
server package, in a fresh interpreter or for the type checker, and none dodges that rule
with an import hidden in a function, ``importlib`` or a module ``__getattr__``."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import palyra_py.admin

ADMIN_DIR = Path(palyra_py.admin.__file__).parent
ADMIN_MODULES = sorted(
    f"palyra_py.admin.{info.name}" for info in pkgutil.iter_modules([str(ADMIN_DIR)])
)

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("palyra_py."))))
"""


def test_the_admin_package_has_the_handler_modules() -> None:
    # Guards the parametrisation below against finding nothing.
    assert {"palyra_py.admin.context", "palyra_py.admin.status", "palyra_py.admin.events",
            "palyra_py.admin.webhooks", "palyra_py.admin.subscriptions",
            "palyra_py.admin.deliveries", "palyra_py.admin.records",
            "palyra_py.admin.secrets"} <= set(ADMIN_MODULES)


@pytest.mark.parametrize("module", ADMIN_MODULES)
def test_importing_an_admin_module_loads_no_server_module(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, module],
                          capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    assert module in loaded
    assert "palyra_py.server.daemon" not in loaded
    assert [m for m in loaded if m == "palyra_py.server" or m.startswith("palyra_py.server.")
            ] == []


def imported_names(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return names


@pytest.mark.parametrize("module", ADMIN_MODULES)
def test_an_admin_module_names_no_server_module_even_for_the_type_checker(
    module: str,
) -> None:
    path = ADMIN_DIR / f"{module.rsplit('.', 1)[1]}.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    names = imported_names(tree)
    assert [n for n in names if n == "palyra_py.server" or n.startswith("palyra_py.server.")
            ] == []
    assert "importlib" not in names
    assert "__getattr__" not in {node.name for node in tree.body
                                 if isinstance(node, ast.FunctionDef)}
    hidden = [
        (func.name, inner.lineno)
        for func in ast.walk(tree) if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(func) if isinstance(inner, ast.Import | ast.ImportFrom)
    ]
    assert hidden == []
