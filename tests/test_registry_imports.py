"""The registry's shared field checks are light: importing them loads no editing, keyring
or HTTP code (the CLI validates with them). The import direction and the absence of
circles and lookups are kept for the whole package by ``tests/test_import_direction.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
