"""Turning ``palyra subscriptions`` flags into API fields: ``--filter``, ``--header``,
``--env`` and ``--retry-schedule``. Every refusal is a usage error (exit code 2)."""

from __future__ import annotations

import re

from palyra_py.cli.session import usage_error
from palyra_py.filters import Scalar, parse_value

# RFC 9110 token characters: anything else in a header name would break the request.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parse_filters(values: list[str] | None) -> dict[str, Scalar] | None:
    """``--filter PATH=VALUE`` (repeatable) -> the API's ``filter`` object; all entries
    must match (AND). The daemon checks the path's characters and the limits."""
    if not values:
        return None
    table: dict[str, Scalar] = {}
    for item in values:
        path, sep, raw = item.partition("=")
        path = path.strip()
        if not sep:
            usage_error(f"{item!r} is not PATH=VALUE (e.g. data.kb=docs)", param="--filter")
        if not path or "" in path.split("."):
            usage_error(f"{item!r}: the path needs dot-separated names, e.g. data.kb",
                        param="--filter")
        if path in table:
            usage_error(f"{path!r} is given twice", param="--filter")
        try:
            table[path] = parse_value(raw)
        except ValueError as exc:
            usage_error(f"{path}: {exc}", param="--filter")
    return table


def parse_headers(values: list[str] | None) -> dict[str, str] | None:
    """``--header 'Name: value'`` (repeatable) -> the API's ``headers`` object. Names are
    compared case-insensitively for duplicates; line breaks are refused."""
    if not values:
        return None
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for item in values:
        name, sep, value = item.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.fullmatch(name):
            usage_error(f"{item[:60]!r} is not 'Name: value'", param="--header")
        if "\r" in value or "\n" in value:
            usage_error(f"the value of {name} has a line break", param="--header")
        if name.lower() in seen:
            usage_error(f"{name!r} is given twice", param="--header")
        seen.add(name.lower())
        headers[name] = value
    return headers


def parse_env(values: list[str] | None) -> dict[str, str] | None:
    """``--env NAME=VALUE`` (repeatable) -> the API's ``env`` object. The daemon checks
    names and values; here only the shape and duplicates."""
    if not values:
        return None
    env: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            usage_error(f"{item[:60]!r} is not NAME=VALUE", param="--env")
        if name in env:
            usage_error(f"{name!r} is given twice", param="--env")
        env[name] = value
    return env


def parse_retry_schedule(value: str | None) -> list[str] | None:
    """``0s,5s,5m,...`` -> the API's ``retry_schedule`` (the durations as written),
    checked with the daemon's own rules so a bad one fails before anything is sent."""
    if value is None:
        return None
    # Imported here: the CLI's start-up stays free of daemon modules.
    from palyra_py.outbound.retry import parse_schedule

    items = [part.strip() for part in value.split(",")]
    try:
        parse_schedule(items)
    except ValueError as exc:
        usage_error(str(exc), param="--retry-schedule")
    return items
