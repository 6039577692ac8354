"""Shared fixtures: one real PostgreSQL per session (embedded unless SNAPSTORE_DSN is set)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from snapstore import AsyncPostgresBackend, JsonCodec, PostgresBackend
from snapstore.testing import database_url

TEST_SCHEMA = "snapstore_test"


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """The database URL every test talks to."""
    with database_url() as url:
        yield url


@pytest.fixture(scope="session")
def _session_backend(dsn: str) -> Iterator[PostgresBackend[JsonCodec]]:
    with PostgresBackend[JsonCodec].connect(dsn, schema=TEST_SCHEMA, max_size=20) as backend:
        yield backend


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
def fresh_schema() -> str:
    """A unique schema name for tests that migrate or configure their own store."""
    return f"t_{uuid.uuid4().hex[:12]}"
