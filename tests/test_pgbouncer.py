"""The store behind a real PgBouncer in transaction mode (``pooler="transaction"``): every
feature works, and the wakeup listener notices that LISTEN does not and keeps polling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from snapstore import (
    AtSignal,
    ConfigurationError,
    JsonCodec,
    PostgresBackend,
    SaveRequest,
    WorkflowStatus,
)
from snapstore.errors import ServerError
from snapstore.runner import server_pid
from snapstore.sql_catalog import bind_schema
from tests.pgbouncer import pgbouncer
from tests.twins import KINDS, Kind, Twin, advance, open_store, opened, snap, with_tasks


@pytest.fixture(scope="module")
def bouncer(dsn: str) -> Iterator[str]:
    with pgbouncer(dsn) as through:
        yield through


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    chosen: Kind = request.param
    return chosen


async def test_every_feature_works_behind_a_transaction_pooler(
    bouncer: str, fresh_schema: str, kind: Kind
) -> None:
    async with opened(
        kind, bouncer, schema=fresh_schema, pooler="transaction", max_size=4, group_commit=True
    ) as store:
        await scenario(store)


async def scenario(store: Twin) -> None:
    # saves, loads, history, group commit (concurrent saves share commits)
    first = with_tasks("a")
    assert await store.save(first) == 1
    versions = await asyncio.gather(*(store.save(snap(f"g{n}")) for n in range(8)))
    assert versions == [1] * 8
    assert await store.save(advance(first, error="two"), 1) == 2
    assert [e.version for e in await store.history("a")] == [1, 2]
    stored = await store.load("a")
    assert stored is not None
    assert stored.snapshot.error == "two"
    results = await store.save_many([SaveRequest(snap("m1")), SaveRequest(snap("m2"))])
    assert [r.version for r in results] == [1, 1]
    # claims and dispatch
    claim = await store.claim("a", "w1", 60)
    assert claim is not None
    assert (await store.extend(claim, 60)).expires_at >= claim.expires_at
    assert await store.release(claim)
    tasks = await store.find_available_tasks("w2", limit=3, ttl=60)
    assert len(tasks) == 3
    # signals and events
    assert (await store.cancel("m1", "done")).value == "applied"
    parked = snap("p", position=AtSignal(task_id="t", signal_name="go"))
    assert await store.save(parked) == 1
    assert (await store.send_event("p", "go", {"ok": True})).value == "resumed"
    assert (await store.pause("m2")).value == "applied"
    assert (await store.unpause("m2")).value == "applied"
    # retention
    assert await store.prune_history(keep_last=1) >= 1
    done = await store.load("m1")
    assert done is not None
    assert done.snapshot.status is WorkflowStatus.CANCELLED
    assert await store.purge_terminal(older_than=timedelta(0)) == 1


async def test_a_listener_behind_the_pooler_says_listen_fails_and_keeps_polling(
    bouncer: str, dsn: str, fresh_schema: str, kind: Kind
) -> None:
    async with opened(kind, bouncer, schema=fresh_schema, pooler="transaction") as store:
        behind = await store.wakeups(poll_interval=0.2)
        direct = await store.wakeups(poll_interval=3600, conninfo=dsn)
        try:
            assert behind.stats().listen_failures == 1
            assert direct.stats().listen_failures == 0
            await store.save(snap("due"))
            assert await behind.get(timeout=10) == ["due"]  # found by the fallback poll
            assert await direct.get(timeout=10) == ["due"]  # by NOTIFY: no poll ran since
        finally:
            await behind.close()
            await direct.close()


@pytest.mark.parametrize(
    "options",
    [{"prepare_threshold": 5}, {"pooler": "statement"}],
    ids=repr,
)
async def test_a_transaction_pooler_refuses_what_it_cannot_keep_safe(
    kind: Kind, options: dict[str, Any]
) -> None:
    options = {"pooler": "transaction", **options}
    with pytest.raises(ConfigurationError):
        await open_store(kind, "postgresql://nobody@127.0.0.1:1/nowhere", **options)


async def test_the_default_configuration_finds_the_pooler_and_prepares_nothing(
    bouncer: str, fresh_schema: str, kind: Kind, caplog: pytest.LogCaptureFixture
) -> None:
    """Undeclared, a transaction pooler would let this client bind another's prepared
    statement of the same name: the default notices the pooler and prepares nothing."""
    with caplog.at_level(logging.WARNING, logger="snapstore.pool"):
        # Two clients, each repeating statements past psycopg's prepare threshold.
        async with (
            opened(kind, bouncer, schema=fresh_schema, max_size=4) as store,
            opened(kind, bouncer, schema=fresh_schema, max_size=4) as other,
        ):
            for n in range(12):
                await store.save(snap(f"s{n}"))
                await other.save(snap(f"o{n}"))
                assert await store.load(f"o{n}") is not None
                assert await other.load(f"s{n}") is not None
            await scenario(store)
    assert any("connection pooler sits between" in r.getMessage() for r in caplog.records)


async def test_a_direct_connection_keeps_its_prepared_statements(
    dsn: str, fresh_schema: str, kind: Kind, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="snapstore.pool"):
        async with opened(kind, dsn, schema=fresh_schema, max_size=1) as store:
            for n in range(8):
                assert await store.save(snap(f"direct{n}")) == 1
            # One pooled connection: the statements it prepared are visible to it.
            [(prepared,)] = await store.sql("SELECT count(*) FROM pg_prepared_statements")
            assert prepared >= 1
    assert not [r for r in caplog.records if "pooler" in r.getMessage()]


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_statement_timeout_applies_behind_a_pooler_and_leaks_to_no_other_client(
    dsn: str, fresh_schema: str, kind: Kind, mode: str
) -> None:
    """PgBouncer refuses statement_timeout as a startup option: it is set per
    transaction (transaction pooler) or per session (session pooler) instead."""
    with pgbouncer(dsn, pool_mode=mode) as through:
        async with opened(
            kind, through, schema=fresh_schema, pooler=mode, statement_timeout=0.25, max_size=2
        ) as store:
            assert await store.save(snap()) == 1
            lock = "SELECT 1 FROM @schema@.snapshots WHERE instance_id = 'wf-1' FOR UPDATE"
            with psycopg.connect(dsn) as admin:
                admin.execute(bind_schema(lock, fresh_schema).encode())
                with pytest.raises(ServerError) as refused:
                    await store.save(advance(snap(), error="late"), 1)
            assert refused.value.sqlstate == "57014"
            assert [e.version for e in await store.history("wf-1")] == [1]
            with psycopg.connect(through, prepare_threshold=None) as other:
                shown = other.execute("SHOW statement_timeout").fetchone()
                assert shown is not None
                assert shown[0] != "250ms"


@pytest.mark.parametrize("borrowed", [False, True], ids=["owned", "borrowed"])
@pytest.mark.parametrize("pooler", [None, "session"])
def test_behind_a_session_pooler_the_server_process_is_known(
    dsn: str, fresh_schema: str, pooler: str | None, borrowed: bool
) -> None:
    """A lost save is waited for by its server process id: behind a declared session
    pooler that is the server's, not the id PgBouncer announced; undeclared, none. A
    borrowed pool's connections are checked at their first use by the store."""
    with pgbouncer(dsn, pool_mode="session") as through, contextlib.ExitStack() as stack:
        if borrowed:
            pool = stack.enter_context(
                ConnectionPool(through, kwargs={"autocommit": True}, min_size=1, max_size=1)
            )
            backend = PostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema, pooler=pooler)
        else:
            backend = stack.enter_context(
                PostgresBackend[JsonCodec].connect(
                    through, schema=fresh_schema, pooler=pooler, max_size=1
                )
            )
        backend.save(snap())
        with backend.pool.connection() as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            assert row[0] != conn.info.backend_pid  # PgBouncer's own id
            assert server_pid(conn) == (row[0] if pooler == "session" else None)
            if pooler is None:
                assert conn.prepare_threshold is None


def test_a_borrowed_pool_behind_an_undeclared_transaction_pooler_prepares_nothing(
    bouncer: str, fresh_schema: str
) -> None:
    with contextlib.ExitStack() as stack:
        stores = []
        for _ in range(2):
            pool = stack.enter_context(
                ConnectionPool(bouncer, kwargs={"autocommit": True}, min_size=1, max_size=2)
            )
            stores.append(PostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema))
        for n in range(12):
            for i, store in enumerate(stores):
                assert store.save(snap(f"b{i}-{n}")) == 1
                assert store.load(f"b{1 - i}-{n - 1}" if n else f"b{i}-{n}") is not None
