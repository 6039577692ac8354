"""The one adapter over both twins (`Twin`), the one snapshot helper (`snap`) and the
one way to get a schema of one's own (`isolated_schema`), so each scenario is written
once and runs against the sync and the async backend.

The store tests are ``async def`` functions that take a `Twin`; a fixture parametrized
over `KINDS` runs every scenario against both, which is how the twins are held to the
same contract without copy-pasted test bodies.

Tests here use their own throwaway schemas (`isolated_schema`) rather than the shared
``snapstore_test`` one: several suites may run at once against one server, and a
``TRUNCATE`` from another suite must not land in the middle of a scenario.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final, Literal

import msgspec
import psycopg
from psycopg import sql as pgsql

from snapstore import (
    AsyncPostgresBackend,
    AsyncWakeupListener,
    CborCodec,
    Codec,
    JsonCodec,
    MsgpackCodec,
    PostgresBackend,
    WakeupListener,
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
)
from snapstore.sql_catalog import bind_schema, quote_schema

Kind = Literal["sync", "async"]
KINDS: Final[tuple[Kind, ...]] = ("sync", "async")
CHILD_TABLES: Final = (
    "history",
    "tasks",
    "signals",
    "events",
    "claims",
    "dead_events",
    "applied_signals",
    "branches",
)
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


def at_step(instance_id: str, step: int = 0, **fields: Any) -> WorkflowSnapshot:
    """The checkpoint of a linear workflow about to run task ``t<step>``, with the
    results (output ``i``) of the ``step`` tasks before it."""
    return snap(
        instance_id,
        position=AtTask(f"t{step}"),
        task_results={f"t{i}": TaskResult(output=i) for i in range(step)},
        **fields,
    )


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


ASYNC_FLAVOUR: Final[dict[type, type]] = {
    PostgresBackend: AsyncPostgresBackend,
    AsyncPostgresBackend: AsyncPostgresBackend,
    WakeupListener: AsyncWakeupListener,
    AsyncWakeupListener: AsyncWakeupListener,
}


def _flavour(target: object) -> type:
    for cls in type(target).__mro__:
        if cls in ASYNC_FLAVOUR:
            return ASYNC_FLAVOUR[cls]
    raise TypeError(f"no twin for {type(target).__name__}")


class Twin:
    """A backend or a wakeup listener of either flavour, seen through the async API.

    What is a coroutine on the async class is awaitable here on both: the async object
    is awaited, the sync one runs in a thread (``asyncio.to_thread``), so scenarios that
    gather several calls really run them at once, and a blocking ``get`` never stalls
    the event loop. Plain methods and attributes pass through. A listener returned by
    ``wakeups`` comes back as a `Twin` too. ``sql`` runs raw SQL on the backend's pool
    (``@schema@`` bound like the library's statements), so assertions see exactly what
    the store committed.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        async_target = isinstance(target, AsyncPostgresBackend | AsyncWakeupListener)
        self.kind: Kind = "async" if async_target else "sync"

    @property
    def backend(self) -> Any:
        """The wrapped object (a backend, for the SQL helpers)."""
        return self.target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.target, name)
        if not callable(value) or not inspect.iscoroutinefunction(
            getattr(_flavour(self.target), name, None)
        ):
            return value
        if self.kind == "async":

            async def call(*args: Any, **kwargs: Any) -> Any:
                return _wrapped(await value(*args, **kwargs))

        else:

            async def call(*args: Any, **kwargs: Any) -> Any:
                return _wrapped(await asyncio.to_thread(value, *args, **kwargs))

        return call

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``await twin.<name>(...)``, for subclasses that give a method other defaults."""
        return await self.__getattr__(name)(*args, **kwargs)

    @property
    def schema(self) -> str:
        schema: str = self.target.schema
        return schema

    @property
    def pool_closed(self) -> bool:
        closed: bool = self.target.pool.closed
        return closed

    async def sql(
        self, query: str | pgsql.Composed, params: dict[str, Any] | None = None
    ) -> builtins.list[tuple[Any, ...]]:
        """Run one statement on a pooled connection; all rows (none for DDL/DML)."""
        bound = bind_schema(query, self.schema).encode() if isinstance(query, str) else query
        pool = self.target.pool
        if self.kind == "async":
            async with pool.connection() as conn:
                cur = await conn.execute(bound, params)
                return await cur.fetchall() if cur.description else []

        def run() -> builtins.list[tuple[Any, ...]]:
            with pool.connection() as conn:
                cur = conn.execute(bound, params)
                return cur.fetchall() if cur.description else []

        return await asyncio.to_thread(run)

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


def _wrapped(result: Any) -> Any:
    return Twin(result) if isinstance(result, WakeupListener | AsyncWakeupListener) else result


async def open_store(
    kind: Kind, dsn: str, *, codec_type: type[Codec] = JsonCodec, **options: Any
) -> Twin:
    """``Backend[codec_type].connect(dsn, **options)`` for either twin, wrapped."""
    if kind == "sync":
        backend = await asyncio.to_thread(SYNC_BACKENDS[codec_type].connect, dsn, **options)
        return Twin(backend)
    return Twin(await ASYNC_BACKENDS[codec_type].connect(dsn, **options))


@contextlib.asynccontextmanager
async def opened(
    kind: Kind, dsn: str, *, codec_type: type[Codec] = JsonCodec, **options: Any
) -> AsyncIterator[Twin]:
    """`open_store` that closes the store on exit."""
    store = await open_store(kind, dsn, codec_type=codec_type, **options)
    try:
        yield store
    finally:
        await store.close()
