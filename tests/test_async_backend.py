"""What only the asyncio backend can get wrong.

The shared contract (CAS, history, sidecar, terminal guard, listing...) runs against
both twins in test_backend.py. Here: the twins interoperate on one schema, many
coroutines share one pool, and a save cancelled while blocked in the server leaves
neither a half-written checkpoint nor a poisoned pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from snapstore import AsyncPostgresBackend, JsonCodec, PostgresBackend
from snapstore.sql_catalog import bind_schema
from tests.twins import advance, snap, with_tasks, without_timestamps

APP = "snapstore-async-test"


@pytest.fixture
async def abackend(dsn: str, fresh_schema: str) -> AsyncIterator[AsyncPostgresBackend[JsonCodec]]:
    async with await AsyncPostgresBackend[JsonCodec].connect(
        dsn, schema=fresh_schema, max_size=4, application_name=APP
    ) as backend:
        yield backend


async def test_sync_and_async_backends_share_one_schema(
    dsn: str, fresh_schema: str, abackend: AsyncPostgresBackend[JsonCodec]
) -> None:
    first = with_tasks()
    await abackend.save(first)
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema) as sync:
        assert sync.save(advance(first, input="from sync"), expected_version=1) == 2
        for read_sync, read_async in [
            (sync.load("wf-1"), await abackend.load("wf-1")),
            (sync.history("wf-1"), await abackend.history("wf-1")),
            (sync.list(), await abackend.list()),
            (sync.load_task_result("wf-1", "a"), await abackend.load_task_result("wf-1", "a")),
        ]:
            assert without_timestamps(read_sync) == without_timestamps(read_async)
    stored = await abackend.load("wf-1")
    assert stored is not None
    assert stored.snapshot.input == "from sync"


async def test_many_coroutines_share_a_small_pool(
    abackend: AsyncPostgresBackend[JsonCodec],
) -> None:
    """64 concurrent instance lifecycles through 4 connections, none mixed up."""

    async def lifecycle(n: int) -> int:
        s = snap(f"co-{n:02d}", input=n)
        version = await abackend.save(s)
        for step in range(3):
            version = await abackend.save(advance(s, input=[n, step]), expected_version=version)
        return version

    assert await asyncio.gather(*(lifecycle(n) for n in range(64))) == [4] * 64
    page = await abackend.list(limit=1000)
    assert [s.instance_id for s in page.items] == [f"co-{n:02d}" for n in range(64)]
    for n in (0, 31, 63):
        history = await abackend.history(f"co-{n:02d}")
        assert [h.snapshot.input for h in history] == [n, [n, 0], [n, 1], [n, 2]]


async def wait_until_blocked_on_a_lock(dsn: str) -> None:
    """Poll the server until one of our pool's statements waits on a row lock."""
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = %(app)s AND wait_event_type = 'Lock'"
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(3000):  # a bound so a broken setup fails instead of hanging
            cur = await conn.execute(query, {"app": APP})
            row = await cur.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the save never blocked on the row lock")


async def test_a_save_cancelled_while_blocked_leaves_a_consistent_store(
    dsn: str, fresh_schema: str, abackend: AsyncPostgresBackend[JsonCodec]
) -> None:
    first = with_tasks()
    await abackend.save(first)
    lock = bind_schema("SELECT 1 FROM @schema@.snapshots FOR UPDATE", fresh_schema).encode()
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await holder.execute(lock)  # row locked until this transaction ends
        save = asyncio.create_task(abackend.save(advance(first, input="late"), 1))
        await wait_until_blocked_on_a_lock(dsn)
        save.cancel()
        with pytest.raises(asyncio.CancelledError):
            await save
        await holder.rollback()

    # Whether or not the server finished the statement, it committed all or nothing.
    history = await abackend.history("wf-1")
    stored = await abackend.load("wf-1")
    assert stored is not None
    assert [h.version for h in history] == list(range(1, stored.version + 1))
    assert stored.snapshot == advance(first, input="late" if stored.version == 2 else None)
    # And the pool still works: every connection can run the next save.
    for _ in range(4):
        version = await abackend.save(advance(first, input=stored.version), stored.version)
        stored = await abackend.load("wf-1")
        assert stored is not None
        assert stored.version == version
