"""Secret references: ``keyring:NAME``, ``db:NAME``, ``env:VAR``, ``file:PATH``, and what
makes one well formed. ``db:`` secrets live in the shared PostgreSQL, sealed with AES-GCM
(``secrets.sealing``): every node reads the same ones.

The registry holds references, never secrets; :class:`palyra_py.secrets.store.SecretStore`
reads what a reference names. This module only reads the text of a reference (no keyring,
no I/O beyond expanding ``~``), so the registry's field checks can use it. No message raised
here repeats a value that may be a secret.
"""

from __future__ import annotations

import os
import re

_KEYRING_NAME = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ALLOWED_FORMS = "keyring:NAME, env:VAR or file:/absolute/path (db:NAME with PostgreSQL)"


class SecretRefError(ValueError):
    """The reference is not of a known form."""


def parse_secret_ref(ref: str) -> tuple[str, str]:
    """``"keyring:gh"`` -> ``("keyring", "gh")``; raise ``SecretRefError``.

    ``keyring:NAME`` and ``db:NAME``: NAME is 1 to 128 of ``A-Z a-z 0-9 . _ : / -``.
    ``env:VAR``: a shell variable name. ``file:PATH``: an absolute path, or one starting
    with ``~`` (expanded here, so the second element is always absolute). The rejected
    value is never quoted when its form is unknown: a secret pasted in place of a
    reference must not be echoed.
    """
    if not isinstance(ref, str):
        raise SecretRefError(f"a secret reference must be a string ({_ALLOWED_FORMS})")
    kind, sep, value = ref.partition(":")
    if not sep or kind not in ("keyring", "db", "env", "file"):
        raise SecretRefError(
            f"unknown secret reference form; use {_ALLOWED_FORMS} (value not shown)"
        )
    if kind in ("keyring", "db"):
        if not _KEYRING_NAME.fullmatch(value):
            raise SecretRefError(
                f"{kind}:NAME needs a NAME of 1 to 128 characters from A-Z a-z 0-9 . _ : / -"
                f" (allowed forms: {_ALLOWED_FORMS})"
            )
        return kind, value
    if kind == "env":
        if not _ENV_VAR.fullmatch(value):
            raise SecretRefError(
                "env:VAR needs a variable name of letters, digits and '_', not starting with a"
                f" digit (allowed forms: {_ALLOWED_FORMS})"
            )
        return kind, value
    path = os.path.expanduser(value) if value.startswith("~") else value
    if not value or "\x00" in value or not os.path.isabs(path):
        raise SecretRefError(
            f"file:PATH needs an absolute path or one starting with ~ (allowed forms:"
            f" {_ALLOWED_FORMS})"
        )
    return kind, os.path.normpath(path)
