"""Fixtures for testing an engine against snapstore (a pytest plugin, loaded by the
``pytest11`` entry point once snapstore is installed).

* ``snapstore_dsn``: a PostgreSQL URL for the session: ``SNAPSTORE_DSN`` if set, else
  an embedded server (the ``embedded`` extra) started on first use and removed after.
* ``snapstore_backend``: a `PostgresBackend` on a schema of its own, migrated, dropped
  after the test; ``snapstore_async_backend`` the same for asyncio (with pytest-asyncio).
* ``snapstore_memory``: a `MemoryBackend` whose time is ``snapstore_clock``
  (`ManualClock`: advance it to expire leases or fire timers).
* ``snapstore_codec``: the codec class the backends write with (JsonCodec); override
  it in a conftest to test another.

Every fixture name starts with ``snapstore_``, so none shadows a project's own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from snapstore.backend import PostgresBackend
from snapstore.backend_async import AsyncPostgresBackend
from snapstore.codecs import Codec, JsonCodec, codec_instance
from snapstore.memory import MemoryBackend
from snapstore.memory_state import ManualClock
from snapstore.testing import database_url


@pytest.fixture(scope="session")
def snapstore_dsn() -> Iterator[str]:
    """The PostgreSQL every snapstore fixture of the session uses."""
    with database_url() as url:
        yield url


@pytest.fixture
def snapstore_codec() -> type[Codec]:
    """The codec the backends write new blobs with."""
    return JsonCodec


@pytest.fixture
def snapstore_schema(snapstore_dsn: str) -> Iterator[str]:
    """A schema name of the test's own; the schema is dropped after the test."""
    name = f"snapstore_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(snapstore_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def snapstore_backend(
    snapstore_dsn: str, snapstore_schema: str, snapstore_codec: type[Codec]
) -> Iterator[PostgresBackend[Any]]:
    """A migrated sync backend on a fresh schema."""
    with PostgresBackend[snapstore_codec].connect(  # type: ignore[valid-type]
        snapstore_dsn, schema=snapstore_schema, max_size=4
    ) as backend:
        yield backend


@pytest.fixture
def snapstore_clock() -> ManualClock:
    """The time of ``snapstore_memory``: it moves only when advanced."""
    return ManualClock()


@pytest.fixture
def snapstore_memory(snapstore_clock: ManualClock, snapstore_codec: type[Codec]) -> MemoryBackend:
    """An in-memory store with the same API and results as the PostgreSQL backends."""
    return MemoryBackend(codec_instance(snapstore_codec), clock=snapstore_clock)


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the async fixture needs pytest-asyncio
    pass
else:

    @pytest_asyncio.fixture
    async def snapstore_async_backend(
        snapstore_dsn: str, snapstore_schema: str, snapstore_codec: type[Codec]
    ) -> AsyncIterator[AsyncPostgresBackend[Any]]:
        """A migrated asyncio backend on a fresh schema."""
        backend = await AsyncPostgresBackend[snapstore_codec].connect(  # type: ignore[valid-type]
            snapstore_dsn, schema=snapstore_schema, max_size=4
        )
        async with backend:
            yield backend
