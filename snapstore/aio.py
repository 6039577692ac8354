"""The asyncio PostgreSQL backend: the async twin of `snapstore.backend`."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, Unpack

from psycopg_pool import AsyncConnectionPool

from snapstore import operations as ops
from snapstore import statements as st
from snapstore.claims import AsyncClaimsMixin
from snapstore.codecs import Codec
from snapstore.config import CodecBound, ConnectOptions, plan_connect
from snapstore.group_commit import AsyncGroupCommitter, GroupCommitStats
from snapstore.migrate import amigrate
from snapstore.model import (
    Claim,
    HistoryEntry,
    Page,
    SaveRequest,
    SaveResult,
    StoredSnapshot,
    TaskResult,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.queries import DEFAULT_SCHEMA
from snapstore.retention import AsyncRetentionMixin
from snapstore.signals import AsyncSignalsMixin
from snapstore.wakeup import AsyncWakeupMixin

C = TypeVar("C", bound=Codec)


class AsyncPostgresBackend(
    AsyncSignalsMixin,
    AsyncClaimsMixin,
    AsyncWakeupMixin,
    AsyncRetentionMixin,
    CodecBound,
    Generic[C],
):
    """The asyncio twin of `PostgresBackend`: same operations, same SQL.

    ``await AsyncPostgresBackend[JsonCodec].connect(url)``; share one per event loop.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        codec: Codec | None = None,
        owns_pool: bool = False,
        group_commit: bool | None = None,
    ) -> None:
        self._init_common(schema, codec)
        self._pool = pool
        self._owns_pool = owns_pool
        # On unless turned off: with many coroutines on a few connections, saves that share
        # commits outpace one commit each (same contract; see README "Semantics").
        grouped = True if group_commit is None else group_commit
        self._committer = AsyncGroupCommitter(self._flush) if grouped else None

    @classmethod
    async def connect(cls, conninfo: str, **options: Unpack[ConnectOptions]) -> Self:
        """Open an owned pool to ``conninfo`` and migrate the schema (unless told not to).

        Options (all keyword): ``schema`` (default "snapstore"), ``min_size``/``max_size``
        (pool), ``statement_timeout`` (seconds or timedelta), ``application_name``,
        ``prepare_threshold``, ``codec`` (instance overriding the bracketed class),
        ``run_migrations``, ``open_timeout``, ``group_commit`` (default on for asyncio).
        """
        plan = plan_connect(options)
        backend = cls(AsyncConnectionPool(conninfo, **plan.pool_kwargs), **plan.backend_kwargs)
        try:
            await backend._pool.open(wait=True, timeout=plan.open_timeout)
            if plan.run_migrations:
                await backend.migrate()
        except BaseException:
            await backend.close()
            raise
        return backend

    @classmethod
    async def from_pool(
        cls,
        pool: AsyncConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        codec: Codec | None = None,
        run_migrations: bool = True,
        group_commit: bool | None = None,
    ) -> Self:
        """Use a pool the caller owns (and closes). Its connections should be autocommit."""
        backend = cls(pool, schema=schema, codec=codec, group_commit=group_commit)
        if run_migrations:
            await backend.migrate()
        return backend

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self._pool

    async def close(self) -> None:
        """Stop this backend's wakeup listeners, then close the pool if this backend
        opened it; a borrowed pool is left alone."""
        await self.close_wakeups()
        if self._owns_pool:
            await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def migrate(self) -> builtins.list[int]:
        """Apply pending migrations; return the versions applied."""
        async with self._pool.connection() as conn:
            return await amigrate(conn, self.schema)

    async def save(
        self,
        snapshot: WorkflowSnapshot,
        expected_version: int | None = None,
        *,
        claim: Claim | None = None,
    ) -> int:
        """Write a checkpoint and return its new version.

        ``expected_version=None`` creates the instance (`ConflictError` if it
        exists); otherwise the stored version must equal it. The snapshot row,
        its history row and its task rows commit together or not at all. With
        ``claim``, the write is fenced: it is refused (`ClaimLostError`) once the
        lease has expired or been taken over. With ``group_commit`` on, concurrent
        saves share one commit; the contract is unchanged.
        """
        if self._committer is None:
            return await self._run(ops.save(self.ctx, snapshot, expected_version, claim))
        item = ops.prepare(self.ctx, snapshot, expected_version, claim)
        return (await self._committer.submit(item)).unwrap()

    async def save_many(self, requests: Sequence[SaveRequest]) -> builtins.list[SaveResult]:
        """Save many checkpoints in one commit; one `SaveResult` per request, in order.

        A failed item (conflict, terminal, invalid...) is reported in its result and
        does not stop the others.
        """
        prepared, rejected = ops.prepare_many(self.ctx, requests)
        saved = await self._flush(prepared) if prepared else []
        return ops.merge_results(len(requests), rejected, saved)

    async def _flush(self, items: builtins.list[st.PreparedSave]) -> builtins.list[SaveResult]:
        """One commit of prepared saves (a group-commit batch or a `save_many`); a
        deadlock with a concurrent batch is retried."""
        transaction = ops.needs_transaction(items)
        for attempt in range(1, ops.MAX_BATCH_ATTEMPTS + 1):
            try:
                return await self._run(ops.save_batch(self.ctx, items), transaction=transaction)
            except ops.RETRYABLE_ERRORS:
                if attempt == ops.MAX_BATCH_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    @property
    def group_commit_stats(self) -> GroupCommitStats | None:
        """Batching figures when group commit is on."""
        return None if self._committer is None else self._committer.stats

    async def load(self, instance_id: str) -> StoredSnapshot | None:
        """The latest checkpoint with task outputs hydrated, or None."""
        return await self._run(ops.load(instance_id))

    async def load_task_result(self, instance_id: str, task_id: str) -> TaskResult | None:
        """One task's stored result (with output), or None."""
        return await self._run(ops.load_task_result(instance_id, task_id))

    async def delete(self, instance_id: str) -> bool:
        """Remove an instance and every row that belongs to it; False if absent."""
        return await self._run(ops.delete(instance_id, self.ctx))

    async def list(
        self,
        status: Iterable[WorkflowStatus] | WorkflowStatus | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Instances ordered by id, without decoding blobs; follow ``next_cursor``."""
        return await self._run(ops.list_snapshots(status, limit, cursor))

    async def history(
        self, instance_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> builtins.list[HistoryEntry]:
        """Checkpoints in version order (task outputs are not part of history blobs)."""
        return await self._run(ops.history(instance_id, after_version, limit))

    async def truncate_all(self) -> None:
        """Empty every table of the schema. For tests."""
        await self._run(ops.truncate_all(self.ctx))
