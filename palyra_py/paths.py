"""Where palyra keeps its files: the state directory and the names inside it.

Shared by the CLI and the daemon, so it imports only the standard library and, when no
directory is given, platformdirs (the CLI must start without loading the daemon's
dependencies).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

STATE_DIR_ENV = "PALYRA_STATE_DIR"
APP_NAME = "palyra"

SOCKET_FILE = "palyra.sock"
REGISTRY_FILE = "webhooks.toml"
JOURNAL_FILE = "journal.db"
SETTINGS_FILE = "palyra.toml"

# sun_path holds 108 bytes on Linux and 104 on the BSDs and macOS, NUL included.
MAX_SOCKET_PATH_BYTES = 103 if sys.platform == "darwin" or "bsd" in sys.platform else 107


class SocketPathTooLong(ValueError):
    """The admin socket path does not fit in ``sockaddr_un``; the message suggests a fix."""

    def __init__(self, path: Path) -> None:
        size = len(os.fsencode(path))
        super().__init__(
            f"the admin socket path {path} is {size} bytes long, but Unix sockets allow at "
            f"most {MAX_SOCKET_PATH_BYTES}; choose a shorter --state-dir "
            f"(or {STATE_DIR_ENV}), for example ~/.palyra"
        )
        self.path = path


def resolve_state_dir(flag: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """The state directory: ``flag`` if given, else ``$PALYRA_STATE_DIR`` if set and not
    empty, else the platform's user data directory for "palyra".

    ``~`` is expanded and the result is absolute. Nothing is created on disk.
    """
    environ = os.environ if env is None else env
    if flag is not None:
        chosen = flag
    elif environ.get(STATE_DIR_ENV):
        chosen = Path(environ[STATE_DIR_ENV])
    else:
        import platformdirs  # only here: a few ms of start-up that --state-dir never needs

        chosen = platformdirs.user_data_path(APP_NAME)
    return Path(os.path.abspath(chosen.expanduser()))


def socket_path(state_dir: Path) -> Path:
    """``<state_dir>/palyra.sock``; raise ``SocketPathTooLong`` if it cannot be bound."""
    path = state_dir / SOCKET_FILE
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise SocketPathTooLong(path)
    return path
