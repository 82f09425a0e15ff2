"""Durable, private file replacement and an inter-process lock, for the small state files
that people and the daemon both touch (the registry, the fallback keyring).

What a caller may rely on:

- ``write_atomic(path, data)``: a crash at any point leaves either the old file or the new
  one, never a mix. The data goes to a temporary file in the same directory (so the rename
  never crosses file systems), which is fsync'd, renamed over ``path``, and then the
  directory is fsync'd so the rename itself survives a power cut. The result is mode 0600
  whatever the old file's mode or the umask; a failed write leaves no temporary file.
- ``exclusive_lock(lock_path)``: ``flock(LOCK_EX)`` on a 0600 lock file for the ``with``
  body. It excludes other processes and other ``with`` blocks in this process (each opens
  the file anew), and the kernel drops it if the holder dies, so a crash never leaves a
  stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold ``flock(LOCK_EX)`` on ``lock_path`` (created 0600) for the ``with`` body.

    ``flock`` locks belong to the open file description, so two opens in the same process
    exclude each other too; the lock is released by the kernel if the holder dies.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    A temporary file in the same directory (mode 0600) is written, flushed and fsync'd, then
    renamed over ``path``, and the directory is fsync'd so the rename itself is durable. The
    result is mode 0600 whatever the old file's mode was.
    """
    directory = path.parent
    # mkstemp creates the file 0600 whatever the umask.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so that renames and creations inside it survive a power cut."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
