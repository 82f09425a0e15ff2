"""A node's id: ``[cluster] node_id`` when set, else one generated at the first start and
kept in the state dir (``node_id``), so that a restart is the same node."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path

from palyra_py.settings import node_id_problem

__all__ = ["NODE_ID_FILE", "node_id_for"]

NODE_ID_FILE = "node_id"


def _generated() -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    host = host.strip("._-")[:40] or "node"
    return f"{host}-{secrets.token_hex(4)}"


def node_id_for(state_dir: Path, configured: str) -> str:
    """``configured`` if given (validated by the settings), else the id kept in
    ``<state_dir>/node_id``, made on first use (host name and 8 random hex digits). A
    kept file that does not hold a valid id is replaced (and the old one kept aside)."""
    if configured:
        return configured
    path = state_dir / NODE_ID_FILE
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_text(encoding="utf-8").strip()
        if node_id_problem(kept) is None:
            return kept
        path.rename(path.with_name(f"{NODE_ID_FILE}.invalid"))
    made = _generated()
    tmp = path.with_name(f".{NODE_ID_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(made + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return made
