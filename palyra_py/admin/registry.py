"""Admin API: the registry as a whole document, for git-ops. ``GET /v1/registry`` gives
the TOML text as stored (with its version in cluster mode); ``POST /v1/registry/import``
checks a whole document, says what it adds, removes and changes, and (unless
``dry_run``) stores it in one step and puts it in force on every node."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from palyra_py.admin.context import JournalAppender
from palyra_py.admin.errors import invalid, read_json_object
from palyra_py.registry.source import ImportOutcome, RegistryDocument, Snapshot
from palyra_py.times import format_rfc3339


class RegistryDocuments(Protocol):
    @property
    def kind(self) -> str:
        """``file`` (``webhooks.toml``) or ``postgres`` (cluster mode)."""
        ...

    @property
    def path(self) -> Path: ...

    async def document(self) -> Snapshot:
        """The document as stored now; ``ApiError`` 503 ``registry_unavailable``."""
        ...

    async def import_document(self, text: str, *, dry_run: bool,
                              expected_version: int | None) -> ImportOutcome:
        """Check, compare and (unless ``dry_run``) store ``text`` and put it in force;
        ``ApiError`` 422 ``registry_invalid``, 409 ``registry_conflict``, 503."""
        ...


def describe(document: RegistryDocument) -> dict[str, Any]:
    return {"version": document.version,
            "updated_at": (None if document.updated_at is None
                           else format_rfc3339(document.updated_at, timespec="auto")),
            "updated_by": document.updated_by}


class RegistryApi:
    def __init__(self, documents: RegistryDocuments, appender: JournalAppender) -> None:
        self.documents = documents
        self.appender = appender

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/registry", self.show),
                web.post("/v1/registry/import", self.import_document)]

    async def show(self, request: web.Request) -> web.Response:
        snapshot = await self.documents.document()
        return web.json_response({
            "document": snapshot.document.text, "source": self.documents.kind,
            "path": str(self.documents.path), **describe(snapshot.document),
            "counts": {"integrations": len(snapshot.registry.integrations),
                       "subscriptions": len(snapshot.registry.subscriptions),
                       "tokens": len(snapshot.registry.tokens)},
        })

    async def import_document(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        unknown = set(body) - {"document", "dry_run", "expected_version"}
        if unknown:
            raise invalid(f"unknown fields: {', '.join(sorted(unknown))}", sorted(unknown)[0])
        text = body.get("document")
        if not isinstance(text, str):
            raise invalid("document must be the registry's TOML text", "document")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise invalid("dry_run must be true or false", "dry_run")
        expected = body.get("expected_version")
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)
                                     or expected < 1):
            raise invalid("expected_version must be a version number (1 or more)",
                          "expected_version")
        outcome = await self.documents.import_document(text, dry_run=dry_run,
                                                       expected_version=expected)
        status = "dry_run" if dry_run else "imported" if outcome.applied else "unchanged"
        if status == "imported":
            await self.appender.append(
                # A daemon type: never delivered to a catch-all subscription, and no
                # publisher may forge it (POST /v1/events refuses the prefix).
                kind="daemon.registry_imported", source="admin",
                event_type="daemon.registry_imported",
                payload={"version": outcome.document.version,
                         "previous_version": outcome.previous.version,
                         "changes": {kind: {what: len(ids) for what, ids in lists.items()}
                                     for kind, lists in outcome.changes.items()}})
        return web.json_response({
            "status": status, "dry_run": dry_run, "changes": outcome.changes,
            "previous_version": outcome.previous.version, **describe(outcome.document),
        })
