"""One awaitable facade over both PostgreSQL backends, so each scenario is written once.

The store tests are ``async def`` functions that take a `Store`. `SyncStore` calls the
blocking `PostgresBackend` inline (it is still the real sync code path, just driven from
a coroutine) and `AsyncStore` awaits `AsyncPostgresBackend`; a fixture parametrized over
`KINDS` runs every scenario against both, which is how the twins are held to the same
contract without copy-pasted test bodies.

`Store.sql` runs raw SQL through the backend's own pool (``@schema@`` bound like the
library's statements), so assertions look at exactly what the store committed.

Tests here use their own throwaway schemas (`isolated_schema`) rather than the shared
``snapstore_test`` one: several suites may run at once against one server, and a
``TRUNCATE`` from another suite must not land in the middle of a scenario.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Final, Literal

import msgspec
import psycopg
from psycopg import sql as pgsql

from snapstore import (
    AsyncPostgresBackend,
    CborCodec,
    Codec,
    JsonCodec,
    MsgpackCodec,
    PostgresBackend,
)
from snapstore.model import (
    AtTask,
    HistoryEntry,
    Page,
    SnapshotSummary,
    StoredSnapshot,
    TaskResult,
    TaskStatus,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.queries import bind_schema, quote_schema

Kind = Literal["sync", "async"]
KINDS: Final[tuple[Kind, ...]] = ("sync", "async")
CHILD_TABLES: Final = ("history", "tasks", "signals", "events", "claims")
ALL_TABLES: Final = ("snapshots", *CHILD_TABLES)

SYNC_BACKENDS: Final[dict[type[Codec], type[PostgresBackend[Any]]]] = {
    JsonCodec: PostgresBackend[JsonCodec],
    MsgpackCodec: PostgresBackend[MsgpackCodec],
    CborCodec: PostgresBackend[CborCodec],
}
ASYNC_BACKENDS: Final[dict[type[Codec], type[AsyncPostgresBackend[Any]]]] = {
    JsonCodec: AsyncPostgresBackend[JsonCodec],
    MsgpackCodec: AsyncPostgresBackend[MsgpackCodec],
    CborCodec: AsyncPostgresBackend[CborCodec],
}


def new_schema_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE".encode())


@contextlib.contextmanager
def isolated_schema(dsn: str) -> Iterator[str]:
    """A unique schema name, dropped (with everything in it) afterwards."""
    schema = new_schema_name()
    try:
        yield schema
    finally:
        drop_schema(dsn, schema)


def snap(instance_id: str = "wf-1", **fields: Any) -> WorkflowSnapshot:
    """A valid snapshot with only the fields a scenario cares about spelled out."""
    fields.setdefault("definition_hash", "def-1")
    return WorkflowSnapshot(instance_id=instance_id, **fields)


def with_tasks(instance_id: str = "wf-1", **fields: Any) -> WorkflowSnapshot:
    """A snapshot carrying two finished tasks, one with an output and one without."""
    fields.setdefault("position", AtTask("c"))
    return snap(
        instance_id,
        task_results={
            "a": TaskResult(output={"rows": [1, 2, 3], "marker": "SIDECAR-ONLY"}, worker_id="w1"),
            "b": TaskResult(status=TaskStatus.FAILED, error="boom", attempts=3),
        },
        **fields,
    )


def advance(snapshot: WorkflowSnapshot, **changes: Any) -> WorkflowSnapshot:
    """The next checkpoint of ``snapshot`` (snapshots are frozen)."""
    return msgspec.structs.replace(snapshot, **changes)


def without_timestamps(value: Any) -> Any:
    """``value`` with the server-assigned ``updated_at``/``created_at`` cleared.

    Those are ``now()`` of the committing transaction, so two stores never agree on
    them; everything else a store returns must match exactly.
    """
    if isinstance(value, StoredSnapshot | SnapshotSummary):
        return msgspec.structs.replace(value, updated_at=None)
    if isinstance(value, HistoryEntry):
        return msgspec.structs.replace(value, created_at=None)
    if isinstance(value, Page):
        return msgspec.structs.replace(value, items=[without_timestamps(i) for i in value.items])
    if isinstance(value, list):
        return [without_timestamps(v) for v in value]
    return value


class Store(abc.ABC):
    """The backend API as coroutines, plus raw SQL on the backend's pool."""

    kind: Kind
    schema: str
    codec: Codec
    backend: Any

    @abc.abstractmethod
    async def save(self, snapshot: WorkflowSnapshot, expected_version: int | None = None) -> int:
        """`save`."""

    @abc.abstractmethod
    async def load(self, instance_id: str) -> StoredSnapshot | None:
        """`load`."""

    @abc.abstractmethod
    async def load_task_result(self, instance_id: str, task_id: str) -> TaskResult | None:
        """`load_task_result`."""

    @abc.abstractmethod
    async def delete(self, instance_id: str) -> bool:
        """`delete`."""

    @abc.abstractmethod
    async def list(
        self,
        status: Iterable[WorkflowStatus] | WorkflowStatus | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """`list`."""

    @abc.abstractmethod
    async def history(
        self, instance_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> builtins.list[HistoryEntry]:
        """`history`."""

    @abc.abstractmethod
    async def truncate_all(self) -> None:
        """`truncate_all`."""

    @abc.abstractmethod
    async def migrate(self) -> builtins.list[int]:
        """`migrate`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """`close`."""

    @abc.abstractmethod
    async def sql(
        self, query: str | pgsql.Composed, params: dict[str, Any] | None = None
    ) -> builtins.list[tuple[Any, ...]]:
        """Run one statement on a pooled connection; all rows (none for DDL/DML)."""

    @property
    def pool_closed(self) -> bool:
        closed: bool = self.backend.pool.closed
        return closed

    def _bind(self, query: str | pgsql.Composed) -> bytes | pgsql.Composed:
        return bind_schema(query, self.schema).encode() if isinstance(query, str) else query

    def table(self, name: str) -> pgsql.Composed:
        """``schema.name`` as a composed identifier (table names never pass through f-strings)."""
        return pgsql.SQL("{}.{}").format(pgsql.Identifier(self.schema), pgsql.Identifier(name))

    async def scalar(
        self, query: str | pgsql.Composed, params: dict[str, Any] | None = None
    ) -> Any:
        rows = await self.sql(query, params)
        assert len(rows) == 1, rows
        return rows[0][0]

    async def count(self, table: str, instance_id: str | None = None) -> int:
        """Rows of ``table`` (for one instance when given)."""
        query = pgsql.SQL(
            "SELECT count(*) FROM {} WHERE %(iid)s::text IS NULL OR instance_id = %(iid)s"
        ).format(self.table(table))
        return int(await self.scalar(query, {"iid": instance_id}))

    async def rows(self, table: str) -> builtins.list[tuple[Any, ...]]:
        """Every row of ``table``, in a stable order, all columns."""
        query = pgsql.SQL("SELECT * FROM {} t ORDER BY t::text").format(self.table(table))
        return await self.sql(query)

    async def row_counts(self, instance_id: str | None = None) -> dict[str, int]:
        return {t: await self.count(t, instance_id) for t in ALL_TABLES}


class SyncStore(Store):
    kind: Kind = "sync"
    backend: PostgresBackend[Any]

    def __init__(self, backend: PostgresBackend[Any]) -> None:
        self.backend = backend
        self.schema = backend.schema
        self.codec = backend.codec

    async def save(self, snapshot: WorkflowSnapshot, expected_version: int | None = None) -> int:
        return self.backend.save(snapshot, expected_version)

    async def load(self, instance_id: str) -> StoredSnapshot | None:
        return self.backend.load(instance_id)

    async def load_task_result(self, instance_id: str, task_id: str) -> TaskResult | None:
        return self.backend.load_task_result(instance_id, task_id)

    async def delete(self, instance_id: str) -> bool:
        return self.backend.delete(instance_id)

    async def list(
        self,
        status: Iterable[WorkflowStatus] | WorkflowStatus | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        return self.backend.list(status, limit=limit, cursor=cursor)

    async def history(
        self, instance_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> builtins.list[HistoryEntry]:
        return self.backend.history(instance_id, after_version=after_version, limit=limit)

    async def truncate_all(self) -> None:
        self.backend.truncate_all()

    async def migrate(self) -> builtins.list[int]:
        return self.backend.migrate()

    async def close(self) -> None:
        self.backend.close()

    async def sql(
        self, query: str | pgsql.Composed, params: dict[str, Any] | None = None
    ) -> builtins.list[tuple[Any, ...]]:
        with self.backend.pool.connection() as conn:
            cur = conn.execute(self._bind(query), params)
            return cur.fetchall() if cur.description else []


class AsyncStore(Store):
    kind: Kind = "async"
    backend: AsyncPostgresBackend[Any]

    def __init__(self, backend: AsyncPostgresBackend[Any]) -> None:
        self.backend = backend
        self.schema = backend.schema
        self.codec = backend.codec

    async def save(self, snapshot: WorkflowSnapshot, expected_version: int | None = None) -> int:
        return await self.backend.save(snapshot, expected_version)

    async def load(self, instance_id: str) -> StoredSnapshot | None:
        return await self.backend.load(instance_id)

    async def load_task_result(self, instance_id: str, task_id: str) -> TaskResult | None:
        return await self.backend.load_task_result(instance_id, task_id)

    async def delete(self, instance_id: str) -> bool:
        return await self.backend.delete(instance_id)

    async def list(
        self,
        status: Iterable[WorkflowStatus] | WorkflowStatus | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        return await self.backend.list(status, limit=limit, cursor=cursor)

    async def history(
        self, instance_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> builtins.list[HistoryEntry]:
        return await self.backend.history(instance_id, after_version=after_version, limit=limit)

    async def truncate_all(self) -> None:
        await self.backend.truncate_all()

    async def migrate(self) -> builtins.list[int]:
        return await self.backend.migrate()

    async def close(self) -> None:
        await self.backend.close()

    async def sql(
        self, query: str | pgsql.Composed, params: dict[str, Any] | None = None
    ) -> builtins.list[tuple[Any, ...]]:
        async with self.backend.pool.connection() as conn:
            cur = await conn.execute(self._bind(query), params)
            return await cur.fetchall() if cur.description else []


async def open_store(
    kind: Kind, dsn: str, *, codec_type: type[Codec] = JsonCodec, **options: Any
) -> Store:
    """``Backend[codec_type].connect(dsn, **options)`` for either twin, wrapped."""
    if kind == "sync":
        return SyncStore(SYNC_BACKENDS[codec_type].connect(dsn, **options))
    return AsyncStore(await ASYNC_BACKENDS[codec_type].connect(dsn, **options))


@contextlib.asynccontextmanager
async def opened(
    kind: Kind, dsn: str, *, codec_type: type[Codec] = JsonCodec, **options: Any
) -> AsyncIterator[Store]:
    """`open_store` that closes the store on exit."""
    store = await open_store(kind, dsn, codec_type=codec_type, **options)
    try:
        yield store
    finally:
        await store.close()
