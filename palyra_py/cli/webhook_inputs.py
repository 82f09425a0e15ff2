"""Turning ``palyra webhooks`` flags into API fields: secret sources, lists, options,
durations and payload files. Every refusal is a usage error (exit code 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from palyra_py.cli.session import usage_error
from palyra_py.cli.timeparse import TimeParseError, parse_duration
from palyra_py.clients.admin import JsonObject


def duration_option(value: str | None, param: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except TimeParseError as exc:
        usage_error(str(exc), param=param)


def split_list(values: list[str] | None) -> list[str] | None:
    """Repeated options, each possibly comma-separated: ``-e push,issues -e ping``."""
    if not values:
        return None
    items = [part.strip() for value in values for part in value.split(",")]
    return [item for item in items if item]


def provider_options(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    options: dict[str, str] = {}
    for value in values:
        key, sep, option_value = value.partition("=")
        key = key.strip()
        if not sep or not key:
            usage_error(f"{value!r} is not KEY=VALUE", param="--option")
        if key in options:
            usage_error(f"{key!r} is given twice", param="--option")
        options[key] = option_value
    return options


def read_secret_line() -> str:
    """One line from stdin without its line ending (prompted without echo on a TTY);
    an empty secret is refused."""
    if sys.stdin.isatty():
        import getpass  # only here: it loads termios, which no other command needs

        line = getpass.getpass("Secret (input hidden): ", stream=sys.stderr)
    else:
        line = sys.stdin.readline()
    secret = line.removesuffix("\n").removesuffix("\r")
    if not secret:
        usage_error("read an empty secret from standard input", param="--secret-stdin")
    return secret


def secret_source(
    generate: bool, stdin: bool, ref: str | None, *, default_generate: bool
) -> JsonObject:
    """The API's ``secret`` object from the three mutually exclusive flags."""
    flags = (
        ("--generate-secret", generate),
        ("--secret-stdin", stdin),
        ("--secret-ref", ref is not None),
    )
    chosen = [name for name, given in flags if given]
    if len(chosen) > 1:
        usage_error(f"choose one secret source, not {' and '.join(chosen)}")
    if not chosen:
        if default_generate:
            return {"generate": True}
        usage_error(
            "a secret source is required: --generate-secret, --secret-stdin or --secret-ref REF"
        )
    if generate:
        return {"generate": True}
    if stdin:
        return {"value": read_secret_line()}
    if not ref:
        usage_error("the reference is empty", param="--secret-ref")
    return {"ref": ref}


def load_payload(path: Path | None) -> JsonObject | None:
    """The JSON object in ``path`` (``-`` is stdin), or None without ``--payload``."""
    if path is None:
        return None
    try:
        raw = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        payload = json.loads(raw)
    except OSError as exc:
        usage_error(f"cannot read {path}: {exc.strerror}", param="--payload")
    except ValueError as exc:
        usage_error(f"{path} is not valid JSON: {exc}", param="--payload")
    if not isinstance(payload, dict):
        usage_error(f"{path} must hold a JSON object", param="--payload")
    return payload


def response_fields(
    status: int | None, body: str | None, content_type: str | None,
    command: str | None, args: list[str] | None, timeout_s: float | None,
    current: JsonObject | None = None,
) -> JsonObject:
    """The API's ``response``, ``response_command`` and ``response_timeout_s`` from the
    ``--response-*`` flags; only what was given. A static part given is merged into
    ``current`` (the integration's response as it is, for ``update``)."""
    fields: JsonObject = {}
    static = {key: value for key, value in
              (("status", status), ("body", body), ("content_type", content_type))
              if value is not None}
    if static:
        base = current if isinstance(current, dict) else {}
        fields["response"] = {**base, **static}
    if args and command is None:
        usage_error("--response-arg needs --response-command", param="--response-arg")
    if command is not None:
        if not command.strip():
            usage_error("the program is empty", param="--response-command")
        fields["response_command"] = [command, *(args or [])]
    if timeout_s is not None:
        fields["response_timeout_s"] = timeout_s
    return fields
