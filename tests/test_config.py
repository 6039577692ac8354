"""Backend construction and options, against real PostgreSQL, for both twins.

What a misconfiguration must do is fail loudly and early: bad options raise
`ConfigurationError` before a connection is attempted (proved by pointing at a port
nothing listens on), and good ones must really reach the server (checked with SHOW).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from snapstore import (
    AsyncPostgresBackend,
    CborCodec,
    Codec,
    ConfigurationError,
    JsonCodec,
    MsgpackCodec,
    PostgresBackend,
)
from snapstore.config import plan_connect
from snapstore.errors import ServerError, UnavailableError
from snapstore.runner import IDLE_CHECK_AFTER
from snapstore.sql_catalog import bind_schema
from tests.twins import (
    ASYNC_BACKENDS,
    KINDS,
    SYNC_BACKENDS,
    Kind,
    Twin,
    advance,
    isolated_schema,
    open_store,
    opened,
    snap,
    with_tasks,
)

CODECS: list[type[Codec]] = [JsonCodec, MsgpackCodec, CborCodec]
# Nothing listens on port 1: any attempt to connect would fail with a pool timeout,
# not with ConfigurationError.
UNREACHABLE = "postgresql://snapstore@127.0.0.1:1/nowhere?connect_timeout=1"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    chosen: Kind = request.param
    return chosen


# --- codec specialisation ----------------------------------------------------------------


@pytest.mark.parametrize("base", [PostgresBackend, AsyncPostgresBackend])
def test_subscripting_with_a_codec_class_is_cached_and_a_real_subclass(base: Any) -> None:
    for codec_type in CODECS:
        special = base[codec_type]
        assert special is base[codec_type]
        assert issubclass(special, base)
        assert special is not base
        assert special.codec_type is codec_type
    assert base[JsonCodec] is not base[MsgpackCodec]
    assert not issubclass(PostgresBackend[JsonCodec], AsyncPostgresBackend)


@pytest.mark.parametrize("codec_type", CODECS, ids=lambda c: c.name)
async def test_connect_writes_every_blob_with_the_bracketed_codec(
    dsn: str, fresh_schema: str, kind: Kind, codec_type: type[Codec]
) -> None:
    async with opened(kind, dsn, schema=fresh_schema, codec_type=codec_type) as store:
        expected_class = (SYNC_BACKENDS if kind == "sync" else ASYNC_BACKENDS)[codec_type]
        assert type(store.backend) is expected_class
        assert isinstance(
            store.backend, PostgresBackend if kind == "sync" else AsyncPostgresBackend
        )
        assert type(store.codec) is codec_type
        first = snap(input={"bytes": "ok", "n": [1, 2]})
        await store.save(first)
        await store.save(advance(first, input=None), expected_version=1)
        loaded = await store.load("wf-1")
        assert loaded is not None
        assert loaded.codec == codec_type.name
        assert {h.codec for h in await store.history("wf-1")} == {codec_type.name}
        columns = await store.sql(
            "SELECT DISTINCT s.codec, h.codec FROM @schema@.snapshots s "
            "JOIN @schema@.history h USING (instance_id)"
        )
        assert columns == [(codec_type.name, codec_type.name)]


async def test_a_codec_that_was_never_registered_is_refused_before_connecting(
    kind: Kind,
) -> None:
    """Its blobs would carry an id this process cannot look up: unreadable at once."""

    class Unregistered(JsonCodec):
        codec_id = 220
        name = "unregistered-test"

    with pytest.raises(ConfigurationError, match="not registered"):
        await open_store(kind, UNREACHABLE, open_timeout=2, codec=Unregistered())


async def test_an_explicit_codec_instance_overrides_the_bracketed_class(
    dsn: str, fresh_schema: str, kind: Kind
) -> None:
    async with opened(kind, dsn, schema=fresh_schema, codec=CborCodec()) as store:
        assert store.codec.name == "cbor"
        await store.save(snap())
        loaded = await store.load("wf-1")
        assert loaded is not None
        assert loaded.codec == "cbor"


async def test_blobs_stay_readable_after_switching_the_write_codec(
    dsn: str, fresh_schema: str, kind: Kind
) -> None:
    """Decoding goes by the envelope's codec id, not by the reader's configured codec."""
    first = snap(input={"k": "v"})
    for version, codec_type in enumerate(CODECS):
        async with opened(kind, dsn, schema=fresh_schema, codec_type=codec_type) as store:
            await store.save(advance(first, input=version), expected_version=version or None)
    for codec_type in CODECS:
        async with opened(kind, dsn, schema=fresh_schema, codec_type=codec_type) as store:
            history = await store.history("wf-1")
            assert [(h.codec, h.snapshot.input) for h in history] == [
                ("json", 0),
                ("msgpack", 1),
                ("cbor", 2),
            ]
            loaded = await store.load("wf-1")
            assert loaded is not None
            assert (loaded.codec, loaded.version) == ("cbor", 3)


# --- schema names --------------------------------------------------------------------------

BAD_SCHEMAS = [
    "Bad",
    "1x",
    "a-b",
    'x"; drop schema public cascade; --',
    "pg_foo",
    "a" * 64,
    "",
]


@pytest.mark.parametrize("name", BAD_SCHEMAS, ids=repr)
async def test_bad_schema_names_are_rejected_before_connecting(kind: Kind, name: str) -> None:
    with pytest.raises(ConfigurationError):
        await open_store(kind, UNREACHABLE, schema=name, open_timeout=2)


@pytest.mark.parametrize("name", BAD_SCHEMAS, ids=repr)
def test_from_pool_rejects_bad_schema_names_before_using_the_pool(name: str) -> None:
    pool: ConnectionPool[Any] = ConnectionPool(UNREACHABLE, open=False)
    with pytest.raises(ConfigurationError):
        PostgresBackend[JsonCodec].from_pool(pool, schema=name)
    async_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(UNREACHABLE, open=False)
    with pytest.raises(ConfigurationError):
        AsyncPostgresBackend[JsonCodec](async_pool, schema=name)


def test_the_longest_legal_schema_name_works(dsn: str) -> None:
    name = ("t_" + uuid.uuid4().hex + "x" * 63)[:63]
    try:
        with PostgresBackend[JsonCodec].connect(dsn, schema=name) as backend:
            backend.save(snap())
            assert backend.list().items[0].instance_id == "wf-1"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP SCHEMA {} CASCADE").format(pgsql.Identifier(name)))


@pytest.fixture(scope="module")
def scratch_database(dsn: str) -> Iterator[str]:
    """A database of its own, so schemas with fixed names cannot collide with other runs."""
    name = f"snapstore_cfg_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP DATABASE {} WITH (FORCE)").format(pgsql.Identifier(name)))


@pytest.mark.parametrize("name", ["user", "select", "order", "_"])
async def test_schema_names_that_are_sql_keywords_work_because_they_are_quoted(
    scratch_database: str, kind: Kind, name: str
) -> None:
    async with opened(kind, scratch_database, schema=name) as store:
        await store.truncate_all()
        await store.save(snap())
        loaded = await store.load("wf-1")
        assert loaded is not None
        assert loaded.version == 1
        tables = await store.sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %(s)s",
            {"s": name},
        )
        assert {"snapshots", "history", "tasks", "migrations"} <= {t for (t,) in tables}


async def test_two_schemas_in_one_database_are_isolated(dsn: str, kind: Kind) -> None:
    with isolated_schema(dsn) as left_schema, isolated_schema(dsn) as right_schema:
        async with (
            opened(kind, dsn, schema=left_schema) as left,
            opened(kind, dsn, schema=right_schema) as right,
        ):
            await left.save(snap(input="left"))
            await right.save(snap(input="right"))
            await right.save(snap(input="right"), 1)
            left_loaded, right_loaded = await left.load("wf-1"), await right.load("wf-1")
            assert left_loaded is not None
            assert right_loaded is not None
            assert (left_loaded.snapshot.input, left_loaded.version) == ("left", 1)
            assert (right_loaded.snapshot.input, right_loaded.version) == ("right", 2)
            await left.truncate_all()
            assert await left.load("wf-1") is None
            assert [h.version for h in await right.history("wf-1")] == [1, 2]
            assert await right.delete("wf-1") is True
            assert await left.delete("wf-1") is False


# --- pool and connection options -----------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"min_size": -1},
        {"min_size": 5, "max_size": 2},
        {"min_size": 0, "max_size": 0},
        {"max_size": "10"},
        {"min_size": 1.5},
        {"statement_timeout": 0},
        {"statement_timeout": -1.0},
        {"statement_timeout": timedelta(0)},
        {"no_such_option": 1},
        {"statement_timeout": "1s"},
        {"statement_timeout": float("nan")},
        {"application_name": 5},
        {"prepare_threshold": "5"},
        {"run_migrations": "yes"},
        {"group_commit": 1},
    ],
    ids=repr,
)
async def test_bad_options_are_rejected_before_connecting(
    kind: Kind, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        await open_store(kind, UNREACHABLE, open_timeout=2, **options)


@pytest.mark.parametrize("value", [-1, 0, "2", float("inf")], ids=repr)
def test_a_bad_open_timeout_is_a_configuration_error(value: Any) -> None:
    with pytest.raises(ConfigurationError):
        plan_connect({"open_timeout": value})


async def show(store: Twin, setting: str) -> str:
    rows = await store.sql(pgsql.SQL("SHOW {}").format(pgsql.Identifier(setting)))
    return str(rows[0][0])


@pytest.mark.parametrize("limit", [0.25, timedelta(milliseconds=250)], ids=["float", "delta"])
async def test_statement_timeout_cancels_long_statements_on_pool_connections(
    dsn: str, fresh_schema: str, kind: Kind, limit: float | timedelta
) -> None:
    async with opened(
        kind, dsn, schema=fresh_schema, statement_timeout=limit, application_name="cfg-test"
    ) as store:
        assert await show(store, "statement_timeout") == "250ms"
        assert await show(store, "application_name") == "cfg-test"
        with pytest.raises(pgerrors.QueryCanceled):
            await store.sql("SELECT pg_sleep(20)")
        await store.save(snap())  # the connection went back to the pool in a usable state
        assert await store.count("snapshots") == 1


def test_a_statement_timeout_in_a_library_call_is_a_typed_server_error(
    dsn: str, fresh_schema: str
) -> None:
    """A save waiting for a row lock past statement_timeout: `ServerError` with the
    server's sqlstate (57014), not a raw psycopg error; nothing was written."""
    with PostgresBackend[JsonCodec].connect(
        dsn, schema=fresh_schema, statement_timeout=0.25
    ) as backend:
        assert backend.save(snap()) == 1
        lock = "SELECT 1 FROM @schema@.snapshots WHERE instance_id = 'wf-1' FOR UPDATE"
        with psycopg.connect(dsn) as admin:
            admin.execute(bind_schema(lock, fresh_schema).encode())
            with pytest.raises(ServerError) as refused:
                backend.save(advance(snap(), error="late"), 1)
        assert refused.value.sqlstate == "57014"
        assert [e.version for e in backend.history("wf-1")] == [1]


async def test_without_a_statement_timeout_the_server_default_applies(
    dsn: str, fresh_schema: str, kind: Kind
) -> None:
    with psycopg.connect(dsn) as conn:
        default = conn.execute("SHOW statement_timeout").fetchone()
    async with opened(kind, dsn, schema=fresh_schema) as store:
        assert default is not None
        assert await show(store, "statement_timeout") == default[0]


async def test_closing_an_owned_backend_closes_its_pool(
    dsn: str, fresh_schema: str, kind: Kind
) -> None:
    store = await open_store(kind, dsn, schema=fresh_schema)
    assert not store.pool_closed
    await store.close()
    assert store.pool_closed


def test_sync_context_manager_closes_the_owned_pool(dsn: str, fresh_schema: str) -> None:
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema) as backend:
        backend.save(snap())
    assert backend.pool.closed


async def test_async_context_manager_closes_the_owned_pool(dsn: str, fresh_schema: str) -> None:
    async with await AsyncPostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema) as backend:
        await backend.save(snap())
    assert backend.pool.closed


def test_a_borrowed_sync_pool_is_left_open(dsn: str, fresh_schema: str) -> None:
    with ConnectionPool(dsn, kwargs={"autocommit": True}, min_size=1, max_size=2) as pool:
        with PostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema) as backend:
            backend.save(snap())
        assert not pool.closed
        backend.close()
        assert not pool.closed
        again = Twin(PostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema))
        assert again.backend.load("wf-1") is not None
        assert again.backend.migrate() == []


async def test_a_borrowed_async_pool_is_left_open(dsn: str, fresh_schema: str) -> None:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, kwargs={"autocommit": True}, min_size=1, max_size=2, open=False
    )
    async with pool:
        backend = await AsyncPostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema)
        async with backend:
            await backend.save(snap())
        assert not pool.closed
        again = Twin(await AsyncPostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema))
        assert await again.load("wf-1") is not None
    assert pool.closed


# --- connections of a borrowed pool -------------------------------------------------------


def test_a_borrowed_pool_whose_connections_return_dicts_still_works(
    dsn: str, fresh_schema: str
) -> None:
    """The store reads rows by position; its cursors ask for tuples whatever the pool set."""
    kwargs = {"autocommit": True, "row_factory": dict_row}
    with ConnectionPool(dsn, kwargs=kwargs, min_size=1, max_size=1) as pool:
        backend = PostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema)
        first = with_tasks()
        assert backend.save(first) == 1
        assert backend.save(advance(first, error="retrying"), 1) == 2
        stored = backend.load("wf-1")
        assert stored is not None
        assert stored.version == 2
        assert [e.version for e in backend.history("wf-1")] == [1, 2]
        assert [s.instance_id for s in backend.list().items] == ["wf-1"]
        with backend.wakeups(poll_interval=3600) as wakeups:  # its connection: the pool's kwargs
            backend.save(snap("wf-2"))
            seen: set[str] = set()
            while "wf-2" not in seen:
                got = wakeups.get(timeout=10)
                assert got, f"no wakeup for wf-2 (saw {seen})"
                seen.update(got)


async def test_a_borrowed_async_pool_whose_connections_return_dicts_still_works(
    dsn: str, fresh_schema: str
) -> None:
    kwargs = {"autocommit": True, "row_factory": dict_row}
    async with AsyncConnectionPool(dsn, kwargs=kwargs, min_size=1, max_size=1) as pool:
        backend = await AsyncPostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema)
        assert await backend.save(with_tasks()) == 1
        assert await backend.save(with_tasks(), 1) == 2
        stored = await backend.load("wf-1")
        assert stored is not None
        assert stored.version == 2


def test_a_save_on_a_killed_pooled_connection_is_resolved_and_sent_again(
    dsn: str, fresh_schema: str
) -> None:
    """The save that ran on the dead connection of a borrowed pool (no check callback)
    lost its connection; the store finds on a fresh one that it did not commit and sends
    it once more, so the caller gets its version and nothing is lost or written twice.
    The pool replaced the connection (and with it the cursor the store kept on it)."""
    with ConnectionPool(dsn, kwargs={"autocommit": True}, min_size=1, max_size=1) as pool:
        backend = PostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema)
        assert backend.save(snap()) == 1
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (_backend_pid(backend),))
        assert backend.save(advance(snap(), error="after the kill"), 1) == 2
        stored = backend.load("wf-1")
        assert stored is not None
        assert stored.snapshot.error == "after the kill"
        assert [e.version for e in backend.history("wf-1")] == [1, 2]
        assert backend.save(advance(snap(), error="next"), 2) == 3


def _backend_pid(backend: PostgresBackend[JsonCodec]) -> int:
    with backend.pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])


def test_a_lost_connection_during_a_read_is_unavailable(dsn: str, fresh_schema: str) -> None:
    with ConnectionPool(dsn, kwargs={"autocommit": True}, min_size=1, max_size=1) as pool:
        backend = PostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema)
        backend.save(snap())
        pid = _backend_pid(backend)
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(UnavailableError, match="connection lost"):
            backend.load("wf-1")
        assert backend.load("wf-1") is not None  # the pool replaced it


def test_an_owned_pool_checks_connections_before_use(dsn: str, fresh_schema: str) -> None:
    """A connection killed while idle (past `IDLE_CHECK_AFTER`, as after a server
    restart) is replaced at checkout: no call fails on it."""
    with PostgresBackend[JsonCodec].connect(
        dsn, schema=fresh_schema, min_size=1, max_size=1
    ) as backend:
        backend.save(snap())
        pid = _backend_pid(backend)
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(IDLE_CHECK_AFTER + 0.2)  # idle long enough to be probed, not a timing
        assert backend.save(advance(snap(), error="after the kill"), 1) == 2


async def test_a_missing_database_fails_fast_with_the_servers_reason(dsn: str, kind: Kind) -> None:
    missing = make_conninfo(dsn, dbname=f"missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(UnavailableError, match="does not exist"):
        await open_store(kind, missing)


async def test_an_exhausted_pool_is_unavailable_within_the_checkout_timeout(
    dsn: str, fresh_schema: str, kind: Kind
) -> None:
    async with opened(
        kind, dsn, schema=fresh_schema, min_size=1, max_size=1, checkout_timeout=0.5
    ) as store:
        pool = store.target.pool
        if kind == "sync":
            held = await asyncio.to_thread(pool.getconn)
        else:
            held = await pool.getconn()
        try:
            with pytest.raises(UnavailableError, match="max_size 1"):
                await store.load("wf-1")
        finally:
            if kind == "sync":
                await asyncio.to_thread(pool.putconn, held)
            else:
                await pool.putconn(held)
