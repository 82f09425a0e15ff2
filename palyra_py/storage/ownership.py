"""Who may own the files the daemon trusts: the state dir, ``webhooks.toml`` and ``file:``
secrets. A file another user owns can be changed by that user (chmod, rewrite, replace) at
any time, whatever its mode now is, so it is refused unless it belongs to the daemon's own
user or to root.

The expected uid is a parameter (default: the effective uid), so that the refusal can be
tested for real by a test running as root with files chowned to another uid.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_UID = 0


class ForeignOwner(ValueError):
    """The file is owned by a user other than the daemon's (and other than root); the
    message says whose it is and what to do."""


def _user_name(uid: int) -> str:
    try:
        import pwd
    except ImportError:  # pragma: no cover - not POSIX
        return f"uid {uid}"
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _chown_name(uid: int) -> str:
    name = _user_name(uid)
    return name.split(" ", 1)[0] if not name.startswith("uid ") else str(uid)


def expected_owner(uid: int | None = None) -> int | None:
    """``uid`` if given, else the process's effective uid; ``None`` where there are no
    uids (not POSIX: nothing is checked)."""
    if uid is not None:
        return uid
    geteuid = getattr(os, "geteuid", None)
    return None if geteuid is None else int(geteuid())


def check_owner(path: Path | str, owner_uid: int, *, what: str,
                expected_uid: int | None = None) -> None:
    """Raise ``ForeignOwner`` unless ``owner_uid`` (the ``st_uid`` of ``path``) is the
    expected uid (default: the effective uid) or root. ``what`` names the file in the
    message ("the state dir", "the registry", "the secret file")."""
    expected = expected_owner(expected_uid)
    if expected is None or owner_uid in (expected, ROOT_UID):
        return
    raise ForeignOwner(
        f"refusing {what} {path}: it is owned by {_user_name(owner_uid)}, not by the daemon's "
        f"user {_user_name(expected)} (nor root), so that user could change it at any time. "
        f"Give it to the daemon's user (as root: chown {_chown_name(expected)} {path}) or use "
        f"one of your own"
    )


def check_path_owner(path: Path, *, what: str, expected_uid: int | None = None) -> None:
    """``check_owner`` for the file at ``path`` as it is now (symlinks followed, as the
    daemon opens it). A missing file raises ``FileNotFoundError``."""
    check_owner(path, os.stat(path).st_uid, what=what, expected_uid=expected_uid)
