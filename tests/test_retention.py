"""Retention: pruning keeps what it must, purging removes everything of an instance."""

from __future__ import annotations

from datetime import timedelta

import pytest
from psycopg import sql

from snapstore import (
    AsyncPostgresBackend,
    JsonCodec,
    PostgresBackend,
    ValidationError,
    WorkflowSnapshot,
    WorkflowStatus,
)
from tests.twins import at_step


def checkpoint(
    iid: str, step: int, status: WorkflowStatus = WorkflowStatus.IN_PROGRESS
) -> WorkflowSnapshot:
    return at_step(iid, step, status=status)


def advance(b: PostgresBackend[JsonCodec], iid: str, steps: int) -> int:
    version = b.save(checkpoint(iid, 0))
    for step in range(1, steps):
        version = b.save(checkpoint(iid, step), expected_version=version)
    return version


def test_prune_keeps_last_n_and_the_current_checkpoint(backend: PostgresBackend[JsonCodec]) -> None:
    for iid in ("a", "b"):
        advance(backend, iid, 10)
    assert backend.prune_history(keep_last=3, batch_size=4) == 14  # 7 each, several batches
    assert [h.version for h in backend.history("a")] == [8, 9, 10]
    stored = backend.load("a")
    assert stored is not None
    assert stored.snapshot == checkpoint("a", 9)
    assert backend.prune_history(keep_last=1, instance_id="b") == 2
    assert [h.version for h in backend.history("b")] == [10]
    assert [h.version for h in backend.history("a")] == [8, 9, 10]


def test_prune_respects_age(backend: PostgresBackend[JsonCodec]) -> None:
    advance(backend, "a", 5)
    assert backend.prune_history(older_than=timedelta(hours=1)) == 0
    assert len(backend.history("a")) == 5


def test_purge_removes_only_old_terminal_instances(backend: PostgresBackend[JsonCodec]) -> None:
    for i in range(5):
        version = advance(backend, f"done{i}", 3)
        backend.save(checkpoint(f"done{i}", 3, WorkflowStatus.COMPLETED), expected_version=version)
    advance(backend, "live", 3)
    assert backend.purge_terminal(older_than=timedelta(hours=1)) == 0
    with backend.pool.connection() as conn:  # age the finished ones
        conn.execute(
            sql.SQL("UPDATE {}.snapshots SET completed_at = now() - interval '2 days'").format(
                sql.Identifier(backend.schema)
            )
        )
    assert backend.purge_terminal(older_than=timedelta(days=1), batch_size=2) == 5
    assert [s.instance_id for s in backend.list().items] == ["live"]
    assert backend.history("done0") == []
    assert backend.load_task_result("done0", "t0") is None
    assert backend.load("live") is not None


def test_bad_arguments(backend: PostgresBackend[JsonCodec]) -> None:
    with pytest.raises(ValidationError):
        backend.prune_history(keep_last=0)
    with pytest.raises(ValidationError):
        backend.purge_terminal(older_than=timedelta(0), batch_size=0)


async def test_async_retention(abackend: AsyncPostgresBackend[JsonCodec]) -> None:
    version = await abackend.save(checkpoint("x", 0))
    for step in range(1, 4):
        version = await abackend.save(checkpoint("x", step), expected_version=version)
    assert await abackend.prune_history(keep_last=2) == 2
    assert [h.version for h in await abackend.history("x")] == [3, 4]
    assert await abackend.purge_terminal(older_than=timedelta(0)) == 0
