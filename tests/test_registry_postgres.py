"""The registry in PostgreSQL (``registry.engines`` over ``registry.postgres``) on a real
server (tests/pg.py), two sources standing for two nodes: the first node seeds the
database once, concurrent edits from both are all applied (comments kept), an import is
checked before anything is written and honours ``expected_version``, the history keeps
the last 100 versions with who wrote them, and a lost server is ``RegistryUnavailable``
until it is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from palyra_py.registry.apply import NEW_REGISTRY_TEXT
from palyra_py.registry.engines import HISTORY_KEPT, DbRegistry
from palyra_py.registry.integrations import add_integration, update_integration
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.postgres import PostgresRegistry, postgres_registry
from palyra_py.registry.source import RegistryConflict, RegistryUnavailable
from tests.pg import PgServer

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SEED = """# the team's registry: reviewed in git
version = 1

# GitHub, for CI
[[webhooks]]
integration_id = "gh"
provider = "github"
secret_ref = "env:GH_SECRET"
"""


@pytest.fixture
def dsn(pg_server: PgServer) -> str:
    return pg_server.new_database("registry")


@pytest.fixture
async def nodes(dsn: str, tmp_path: Path) -> AsyncIterator[tuple[DbRegistry, DbRegistry]]:
    a = postgres_registry(lambda: dsn, tmp_path / "a.toml")
    b = postgres_registry(lambda: dsn, tmp_path / "b.toml")
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def add(integration_id: str):  # type: ignore[no-untyped-def]
    return lambda doc: add_integration(
        doc, {"integration_id": integration_id, "provider": "github",
              "secret_ref": f"env:S_{integration_id.upper().replace('-', '_')}"}, NOW)


async def test_the_first_node_seeds_the_database_once_and_the_others_read_it(
    nodes: tuple[DbRegistry, DbRegistry],
) -> None:
    a, b = nodes
    seeded = await asyncio.gather(a.start(lambda: SEED, by="node-a"),
                                  b.start(lambda: NEW_REGISTRY_TEXT, by="node-b"))
    assert sorted(seeded) == [False, True]
    snap_a, snap_b = await a.load(), await b.load()
    assert snap_a.document == snap_b.document
    assert snap_a.document.version == 1
    winner = SEED if seeded[0] else NEW_REGISTRY_TEXT
    assert snap_a.document.text == winner
    assert await a.start(lambda: SEED, by="node-a") is False  # never again


async def test_concurrent_edits_from_two_nodes_are_all_applied_and_comments_kept(
    nodes: tuple[DbRegistry, DbRegistry],
) -> None:
    a, b = nodes
    await a.start(lambda: SEED, by="node-a")
    edits = [(a if n % 2 else b).edit(add(f"hook-{n}"), by=f"node-{n % 2}")
             for n in range(60)]
    results = await asyncio.gather(*edits, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    snap = await b.load()
    assert set(snap.registry.integrations) == {"gh", *(f"hook-{n}" for n in range(60))}
    assert snap.document.version == 61  # one version per edit, none lost
    assert snap.document.text.startswith(SEED)  # comments and layout kept
    assert a.conflicts + b.conflicts > 0  # they did race, and the retries won


async def test_an_edit_that_does_not_validate_or_names_a_gone_record_writes_nothing(
    nodes: tuple[DbRegistry, DbRegistry],
) -> None:
    a, b = nodes
    await a.start(lambda: SEED, by="node-a")
    with pytest.raises(RegistryError) as caught:
        await b.edit(add("gh"), by="node-b")
    assert caught.value.field == "integration_id"
    with pytest.raises(KeyError):
        await b.edit(lambda doc: update_integration(doc, "nope", {"enabled": False}, NOW),
                     by="node-b")
    assert (await a.load()).document.version == 1


async def test_an_import_is_checked_first_and_honours_the_expected_version(
    nodes: tuple[DbRegistry, DbRegistry],
) -> None:
    a, b = nodes
    await a.start(lambda: SEED, by="node-a")
    broken = SEED + '\n[[webhooks]]\nintegration_id = "x"\nprovider = "nope"\n'
    with pytest.raises(RegistryError) as caught:
        await b.replace(broken, by="node-b")
    assert caught.value.line is not None  # it points into the given text
    assert (await a.load()).document.version == 1
    new_text = SEED.replace('"env:GH_SECRET"', '"env:GH_SECRET_2"')
    with pytest.raises(RegistryConflict):
        await b.replace(new_text, by="node-b", expected_version=7)
    snap = await b.replace(new_text, by="node-b", expected_version=1)
    assert snap.document.version == 2
    assert snap.document.updated_by == "node-b"
    assert snap.registry.integrations["gh"].secret_ref == "env:GH_SECRET_2"
    assert (await a.load()).document.text == new_text
    same = await a.replace(new_text, by="node-a")  # the same text: no new version
    assert same.document.version == 2


async def test_the_history_keeps_the_last_100_versions_with_who_wrote_them(
    dsn: str, nodes: tuple[DbRegistry, DbRegistry],
) -> None:
    a, _ = nodes
    await a.start(lambda: SEED, by="node-a")
    for n in range(HISTORY_KEPT + 5):
        await a.edit(add(f"h-{n}"), by=f"node-a edit {n}")
    backend = PostgresRegistry(lambda: dsn)
    try:
        history = await backend.history()
    finally:
        await backend.close()
    assert len(history) == HISTORY_KEPT
    assert history[0] == (HISTORY_KEPT + 6, "edit", f"node-a edit {HISTORY_KEPT + 4}")
    assert history[-1][0] == 7  # versions 1 (the seed) to 6 are gone


async def test_a_lost_server_is_unavailable_until_it_is_back(
    pg_server: PgServer, dsn: str, nodes: tuple[DbRegistry, DbRegistry],
) -> None:
    a, _ = nodes
    await a.start(lambda: SEED, by="node-a")
    database = dsn.split("/")[3].split("?")[0]
    assert pg_server.terminate_backends(database) >= 1
    # A cut connection is found by the edit's read, which is tried again on a new one.
    snap = await a.edit(add("after-cut"), by="node-a")
    assert "after-cut" in snap.registry.integrations
    pg_server.stop()
    try:
        with pytest.raises(RegistryUnavailable) as caught:
            await a.edit(add("down"), by="node-a")
        assert "PostgreSQL unreachable" in str(caught.value)
        assert dsn not in str(caught.value)
        with pytest.raises(RegistryUnavailable):
            await a.version()
    finally:
        pg_server.start()
    assert "down" not in (await a.load()).registry.integrations
