"""Group commit and save_many: shared commits, per-item results, nothing lost."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable

import pytest
from psycopg import sql

from snapstore import (
    AsyncPostgresBackend,
    ConflictError,
    JsonCodec,
    MsgpackCodec,
    NotFoundError,
    PostgresBackend,
    TerminalStateError,
    ValidationError,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.model import SaveRequest
from tests.twins import at_step

THREADS = 12
STEPS = 15


def test_save_many_reports_each_item_and_commits_the_rest(
    backend: PostgresBackend[JsonCodec],
) -> None:
    backend.save(at_step("done", status=WorkflowStatus.COMPLETED))
    backend.save(at_step("old", 0))
    results = backend.save_many(
        [
            SaveRequest(at_step("a", 0)),
            SaveRequest(at_step("a", 1), 1),  # second round: depends on the first
            SaveRequest(at_step("old", 1), 7),  # stale
            SaveRequest(at_step("done", 1), 1),  # terminal
            SaveRequest(at_step("ghost", 0), 3),  # missing
            SaveRequest(at_step("bad", priority=0)),  # invalid, rejected before I/O
            SaveRequest(at_step("b", 0)),
        ]
    )
    assert [r.version for r in results] == [1, 2, None, None, None, None, 1]
    errors = [type(r.error) for r in results]
    assert errors[2:6] == [ConflictError, TerminalStateError, NotFoundError, ValidationError]
    assert results[0].ok
    assert not results[2].ok
    with pytest.raises(ConflictError):
        results[2].unwrap()
    assert [h.version for h in backend.history("a")] == [1, 2]
    assert backend.load("bad") is None
    stored = backend.load("a")
    assert stored is not None
    assert stored.snapshot == at_step("a", 1)


def test_save_many_is_one_transaction(backend: PostgresBackend[JsonCodec]) -> None:
    """All items share one commit: one transaction id across the history rows."""
    backend.save_many([SaveRequest(at_step(f"x{i}")) for i in range(20)])
    with backend.pool.connection() as conn:
        query = sql.SQL("SELECT count(DISTINCT xmin::text) FROM {}.history")
        row = conn.execute(query.format(sql.Identifier(backend.schema))).fetchone()
    assert row is not None
    assert row[0] == 1


def _run_threads(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _drive(b: PostgresBackend[MsgpackCodec], iid: str) -> None:
    version = b.save(at_step(iid, 0))
    for step in range(1, STEPS + 1):
        version = b.save(at_step(iid, step), expected_version=version)


def test_concurrent_saves_share_commits_and_lose_nothing(dsn: str, fresh_schema: str) -> None:
    with PostgresBackend[MsgpackCodec].connect(
        dsn, schema=fresh_schema, max_size=4, group_commit=True
    ) as b:
        _run_threads([functools.partial(_drive, b, f"w{i}") for i in range(THREADS)])
        for i in range(THREADS):
            stored = b.load(f"w{i}")
            assert stored is not None
            assert stored.snapshot == at_step(f"w{i}", STEPS)
            assert [h.version for h in b.history(f"w{i}")] == list(range(1, STEPS + 2))
        stats = b.group_commit_stats
        assert stats is not None
        assert stats.saves == THREADS * (STEPS + 1)
        assert stats.flushes <= stats.saves


def test_grouped_conflicts_are_reported_per_caller(dsn: str, fresh_schema: str) -> None:
    """Racing CAS writers through the committer: exactly one wins each version."""
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema, group_commit=True) as b:
        b.save(at_step("hot", 0))
        outcomes: list[str] = []
        lock = threading.Lock()

        def race() -> None:
            try:
                b.save(at_step("hot", 1), expected_version=1)
                result = "won"
            except ConflictError:
                result = "lost"
            with lock:
                outcomes.append(result)

        _run_threads([race] * 8)
        assert sorted(outcomes) == ["lost"] * 7 + ["won"]


async def test_async_group_commit(dsn: str, fresh_schema: str) -> None:
    async with await AsyncPostgresBackend[JsonCodec].connect(
        dsn, schema=fresh_schema, max_size=3, group_commit=True
    ) as b:

        async def drive(iid: str) -> None:
            version = await b.save(at_step(iid, 0))
            for step in range(1, STEPS + 1):
                version = await b.save(at_step(iid, step), expected_version=version)

        await asyncio.gather(*(drive(f"a{i}") for i in range(THREADS)))
        for i in range(THREADS):
            assert len(await b.history(f"a{i}")) == STEPS + 1
        results = await b.save_many([SaveRequest(at_step("a0", 99), 1)])
        assert isinstance(results[0].error, ConflictError)
        stats = b.group_commit_stats
        assert stats is not None
        assert stats.saves == THREADS * (STEPS + 1)


async def test_async_backends_group_commits_unless_told_not_to(dsn: str, fresh_schema: str) -> None:
    async with await AsyncPostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema) as b:
        assert b.group_commit_stats is not None
        assert await b.save(WorkflowSnapshot(instance_id="g", definition_hash="h")) == 1
    async with await AsyncPostgresBackend[JsonCodec].connect(
        dsn, schema=fresh_schema, group_commit=False
    ) as b:
        assert b.group_commit_stats is None
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema) as sync:
        assert sync.group_commit_stats is None  # threads: off unless asked for
