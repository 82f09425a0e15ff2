"""What the admin API's registry records (integrations, subscriptions) share: the id in the
URL path, field checks, registry errors as API errors, and applying a registry edit."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from aiohttp import web

from palyra_py.admin.context import RegistryChange, RegistryEditor
from palyra_py.admin.errors import ApiError, invalid, not_found
from palyra_py.registry.fields import normalize_id
from palyra_py.registry.positions import RegistryError


def registry_error(exc: RegistryError) -> ApiError:
    """A ``RegistryError`` as the API answers it: 409 for an id already taken, 422 for a
    registry file that would not load (with its location), else 400 naming the field."""
    extra: dict[str, Any] = {}
    if exc.field:
        extra["field"] = exc.field
    if exc.line is not None and exc.location:
        extra["location"] = exc.location
    status, code = (422, "registry_invalid") if exc.line is not None else (400, "invalid_request")
    if "already exists" in exc.message:
        status, code = 409, "conflict"
    return ApiError(status, code, str(exc) if exc.line is not None else exc.message, **extra)


def path_id(request: web.Request, known: Collection[str], *, noun: str, field: str) -> str:
    """The normalised ``{id}`` of the URL; 404 ``no <noun> ...`` when it is not a valid id or
    not one of ``known``."""
    raw = request.match_info["id"]
    try:
        record_id = normalize_id(raw, field=field)
    except RegistryError:
        raise not_found(f"no {noun} {raw[:64]!r}") from None
    if record_id not in known:
        raise not_found(f"no {noun} {record_id!r}")
    return record_id


def refuse_fields(unknown: Collection[str], message: str) -> None:
    """400 ``<message>: a, b`` (naming the first as the field) when ``unknown`` is not empty."""
    if unknown:
        raise invalid(f"{message}: {', '.join(sorted(unknown))}", sorted(unknown)[0])


def validated(
    validate: Callable[[dict[str, Any]], dict[str, Any]], fields: dict[str, Any]
) -> dict[str, Any]:
    """``validate(fields)``, a ``RegistryError`` answered as :func:`registry_error`."""
    try:
        return validate(fields)
    except RegistryError as exc:
        raise registry_error(exc) from None


async def edit_registry(editor: RegistryEditor, change: RegistryChange, *, noun: str) -> None:
    """Apply ``change`` to the registry document through its only writer; a
    ``RegistryError`` answered as :func:`registry_error`, a ``KeyError`` (the record is
    gone) as 404 ``no <noun> ...``."""
    try:
        await editor.edit_registry(change)
    except RegistryError as exc:
        raise registry_error(exc) from None
    except KeyError as exc:
        raise not_found(f"no {noun} {exc.args[0]!r}") from None
