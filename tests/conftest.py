"""Shared fixtures: one real PostgreSQL per session (embedded unless SNAPSTORE_DSN is set)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from snapstore import AsyncPostgresBackend, JsonCodec, PostgresBackend
from snapstore.testing import database_url
from tests.twins import KINDS, Kind, Twin, drop_schema, isolated_schema, open_store

# Per-process, so concurrent runs against one shared server (SNAPSTORE_DSN) don't collide.
TEST_SCHEMA = f"snapstore_test_{os.getpid()}"


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """The database URL every test talks to."""
    with database_url() as url:
        yield url


@pytest.fixture(scope="session")
def _session_backend(dsn: str) -> Iterator[PostgresBackend[JsonCodec]]:
    with PostgresBackend[JsonCodec].connect(dsn, schema=TEST_SCHEMA, max_size=20) as backend:
        yield backend
    drop_schema(dsn, TEST_SCHEMA)


@pytest.fixture
def backend(_session_backend: PostgresBackend[JsonCodec]) -> PostgresBackend[JsonCodec]:
    """A migrated JSON backend on an empty schema."""
    _session_backend.truncate_all()
    return _session_backend


@pytest.fixture
async def abackend(dsn: str) -> AsyncIterator[AsyncPostgresBackend[JsonCodec]]:
    """An async JSON backend on the same (emptied) schema."""
    async with await AsyncPostgresBackend[JsonCodec].connect(dsn, schema=TEST_SCHEMA) as b:
        await b.truncate_all()
        yield b


@pytest.fixture(scope="module")
def schema(dsn: str) -> Iterator[str]:
    """A schema of the test module's own (dropped after): the server may be shared, and
    a TRUNCATE from elsewhere must not land in the middle of a scenario."""
    with isolated_schema(dsn) as name:
        yield name


@pytest.fixture
def fresh_schema(dsn: str) -> Iterator[str]:
    """A unique schema name for tests that migrate or configure their own store (dropped after)."""
    with isolated_schema(dsn) as name:
        yield name


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, dsn: str, schema: str) -> AsyncIterator[Twin]:
    """An emptied store on the module's schema, once per backend twin."""
    kind: Kind = request.param
    opened = await open_store(kind, dsn, schema=schema)
    await opened.truncate_all()
    yield opened
    await opened.close()


@pytest.fixture(scope="module")
def pg(dsn: str) -> Iterator[PostgresBackend[JsonCodec]]:
    """A JSON backend on a schema of the module's own, for the model-based tests."""
    with (
        isolated_schema(dsn) as name,
        PostgresBackend[JsonCodec].connect(dsn, schema=name) as backend,
    ):
        yield backend
