"""The synchronous PostgreSQL backend: a thin I/O shell over `snapstore.operations`."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, Unpack

from psycopg_pool import ConnectionPool

from snapstore import operations as ops
from snapstore import statements as st
from snapstore.claims import ClaimsMixin
from snapstore.codecs import Codec
from snapstore.config import CodecBound, ConnectOptions, plan_connect
from snapstore.group_commit import GroupCommitStats, GroupCommitter
from snapstore.migrate import migrate
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
from snapstore.retention import RetentionMixin
from snapstore.signals import SignalsMixin
from snapstore.wakeup import WakeupMixin

C = TypeVar("C", bound=Codec)


class PostgresBackend(
    SignalsMixin, ClaimsMixin, WakeupMixin, RetentionMixin, CodecBound, Generic[C]
):
    """A durable snapshot store on PostgreSQL.

    Build one with ``PostgresBackend[JsonCodec].connect(url)`` (the codec in the
    brackets writes every new blob; blobs from any registered codec are read),
    or wrap a pool you own with `from_pool`. Thread-safe: share one per process.
    """

    def __init__(
        self,
        pool: ConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        codec: Codec | None = None,
        owns_pool: bool = False,
        group_commit: bool | None = None,
    ) -> None:
        self._init_common(schema, codec)
        self._pool = pool
        self._owns_pool = owns_pool
        # Off unless asked for: handing a save to another thread costs a thread wake-up,
        # which outweighs the shared commit until many threads save at once.
        self._committer = GroupCommitter(self._flush) if group_commit else None

    @classmethod
    def connect(cls, conninfo: str, **options: Unpack[ConnectOptions]) -> Self:
        """Open an owned pool to ``conninfo`` and migrate the schema (unless told not to).

        Options (all keyword): ``schema`` (default "snapstore"), ``min_size``/``max_size``
        (pool), ``statement_timeout`` (seconds or timedelta), ``application_name``,
        ``prepare_threshold``, ``codec`` (instance overriding the bracketed class),
        ``run_migrations``, ``open_timeout``, ``group_commit``.
        """
        plan = plan_connect(options)
        backend = cls(ConnectionPool(conninfo, **plan.pool_kwargs), **plan.backend_kwargs)
        try:
            backend._pool.open(wait=True, timeout=plan.open_timeout)
            if plan.run_migrations:
                backend.migrate()
        except BaseException:
            backend.close()
            raise
        return backend

    @classmethod
    def from_pool(
        cls,
        pool: ConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        codec: Codec | None = None,
        run_migrations: bool = True,
        group_commit: bool | None = None,
    ) -> Self:
        """Use a pool the caller owns (and closes). Its connections should be autocommit."""
        backend = cls(pool, schema=schema, codec=codec, group_commit=group_commit)
        if run_migrations:
            backend.migrate()
        return backend

    @property
    def pool(self) -> ConnectionPool[Any]:
        return self._pool

    def close(self) -> None:
        """Stop this backend's wakeup listeners, then close the pool if this backend
        opened it; a borrowed pool is left alone."""
        self.close_wakeups()
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def migrate(self) -> builtins.list[int]:
        """Apply pending migrations; return the versions applied."""
        with self._pool.connection() as conn:
            return migrate(conn, self.schema)

    def save(
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
            return self._run(ops.save(self.ctx, snapshot, expected_version, claim))
        item = ops.prepare(self.ctx, snapshot, expected_version, claim)
        return (self._committer.submit(item)).unwrap()

    def save_many(self, requests: Sequence[SaveRequest]) -> builtins.list[SaveResult]:
        """Save many checkpoints in one commit; one `SaveResult` per request, in order.

        A failed item (conflict, terminal, invalid...) is reported in its result and
        does not stop the others.
        """
        prepared, rejected = ops.prepare_many(self.ctx, requests)
        saved = self._flush(prepared) if prepared else []
        return ops.merge_results(len(requests), rejected, saved)

    def _flush(self, items: builtins.list[st.PreparedSave]) -> builtins.list[SaveResult]:
        """One commit of prepared saves (a group-commit batch or a `save_many`); a
        deadlock with a concurrent batch is retried."""
        transaction = ops.needs_transaction(items)
        for attempt in range(1, ops.MAX_BATCH_ATTEMPTS + 1):
            try:
                return self._run(ops.save_batch(self.ctx, items), transaction=transaction)
            except ops.RETRYABLE_ERRORS:
                if attempt == ops.MAX_BATCH_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    @property
    def group_commit_stats(self) -> GroupCommitStats | None:
        """Batching figures when group commit is on."""
        return None if self._committer is None else self._committer.stats

    def load(self, instance_id: str) -> StoredSnapshot | None:
        """The latest checkpoint with task outputs hydrated, or None."""
        return self._run(ops.load(instance_id))

    def load_task_result(self, instance_id: str, task_id: str) -> TaskResult | None:
        """One task's stored result (with output), or None."""
        return self._run(ops.load_task_result(instance_id, task_id))

    def delete(self, instance_id: str) -> bool:
        """Remove an instance and every row that belongs to it; False if absent."""
        return self._run(ops.delete(instance_id, self.ctx))

    def list(
        self,
        status: Iterable[WorkflowStatus] | WorkflowStatus | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Instances ordered by id, without decoding blobs; follow ``next_cursor``."""
        return self._run(ops.list_snapshots(status, limit, cursor))

    def history(
        self, instance_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> builtins.list[HistoryEntry]:
        """Checkpoints in version order (task outputs are not part of history blobs)."""
        return self._run(ops.history(instance_id, after_version, limit))

    def truncate_all(self) -> None:
        """Empty every table of the schema. For tests."""
        self._run(ops.truncate_all(self.ctx))
