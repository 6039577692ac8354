"""Shared fixtures: one real PostgreSQL per session (embedded unless SNAPSTORE_DSN is set)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

from snapstore import AsyncPostgresBackend, JsonCodec, PostgresBackend
from snapstore.testing import database_url

# Per-process, so concurrent runs against one shared server (SNAPSTORE_DSN) don't collide.
TEST_SCHEMA = f"snapstore_test_{os.getpid()}"


def _drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """The database URL every test talks to."""
    with database_url() as url:
        yield url


@pytest.fixture(scope="session")
def _session_backend(dsn: str) -> Iterator[PostgresBackend[JsonCodec]]:
    with PostgresBackend[JsonCodec].connect(dsn, schema=TEST_SCHEMA, max_size=20) as backend:
        yield backend
    _drop_schema(dsn, TEST_SCHEMA)


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


@pytest.fixture
def fresh_schema(dsn: str) -> Iterator[str]:
    """A unique schema name for tests that migrate or configure their own store (dropped after)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    _drop_schema(dsn, name)
