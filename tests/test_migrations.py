"""Schema migrations against real PostgreSQL: recorded, checksummed, idempotent, race-free.

Expectations are derived from the files in sql/ (`load_migrations`), so adding a
migration file does not require touching these tests.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from multiprocessing.synchronize import Barrier
from typing import Any

import psycopg
import pytest
from psycopg import sql

from snapstore import JsonCodec, MigrationError, PostgresBackend
from snapstore.migrations import LOCK_SQL, MigrationPlan, load_migrations, print_sql
from snapstore.sql_catalog import bind_schema, sql_dir
from tests.twins import KINDS, Kind, open_store, opened, snap

WORKERS = 8


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    chosen: Kind = request.param
    return chosen


def expected_rows() -> list[tuple[int, str, str]]:
    """(version, name, checksum) of every shipped migration, straight from the files."""
    rows = []
    for entry in sorted(sql_dir().iterdir(), key=lambda e: e.name):
        stem = entry.name.removesuffix(".sql")
        if entry.name.endswith(".sql") and stem[:4].isdigit():
            text = entry.read_text(encoding="utf-8")
            rows.append((int(stem[:4]), stem[5:], hashlib.sha256(text.encode()).hexdigest()))
    return rows


def all_versions() -> list[int]:
    return [m.version for m in load_migrations()]


def bound(query: str, fresh_schema: str) -> bytes:
    return bind_schema(query, fresh_schema).encode()


def recorded(dsn: str, fresh_schema: str) -> list[tuple[Any, ...]]:
    """The rows of the schema's migrations table, in version order."""
    query = bound(
        "SELECT version, name, checksum FROM @schema@.migrations ORDER BY 1", fresh_schema
    )
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def execute(dsn: str, query: bytes, params: dict[str, Any] | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query, params)


def test_migration_files_are_numbered_from_one_without_gaps() -> None:
    rows = expected_rows()
    assert rows, "no migration files found"
    assert [v for v, _, _ in rows] == list(range(1, len(rows) + 1))
    assert [(m.version, m.name, m.checksum) for m in load_migrations()] == rows


async def test_connect_applies_and_records_every_migration_once(
    dsn: str, fresh_schema: str, kind: Kind
) -> None:
    store = await open_store(kind, dsn, schema=fresh_schema, run_migrations=False)
    try:
        assert await store.migrate() == all_versions()
        assert recorded(dsn, fresh_schema) == expected_rows()
        before = await store.sql("SELECT version, applied_at, xmin::text FROM @schema@.migrations")
        assert await store.migrate() == []
    finally:
        await store.close()
    # Re-connecting to a current schema is a no-op: nothing is re-applied or rewritten.
    async with opened(kind, dsn, schema=fresh_schema) as again:
        assert await again.migrate() == []
        after = await again.sql("SELECT version, applied_at, xmin::text FROM @schema@.migrations")
        assert after == before
        await again.save(snap())


async def test_only_pending_migrations_are_applied(dsn: str, fresh_schema: str, kind: Kind) -> None:
    """A schema at version 1 (installed by an older release) gets only the later files."""
    plan = MigrationPlan(fresh_schema)
    first = load_migrations()[0]
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute(plan.bootstrap)
        conn.execute(plan.ddl(first))
        conn.execute(plan.record, plan.record_params(first))
    async with opened(kind, dsn, schema=fresh_schema, run_migrations=False) as store:
        assert await store.migrate() == all_versions()[1:]
    assert recorded(dsn, fresh_schema) == expected_rows()


@pytest.mark.parametrize("tamper", ["checksum", "future"])
async def test_a_schema_this_release_did_not_write_is_refused(
    dsn: str, fresh_schema: str, kind: Kind, tamper: str
) -> None:
    """An edited migration or a newer schema must stop start-up, not be half-trusted."""
    async with opened(kind, dsn, schema=fresh_schema):
        pass
    if tamper == "checksum":
        query = "UPDATE @schema@.migrations SET checksum = md5(checksum) WHERE version = 1"
        execute(dsn, bound(query, fresh_schema))
    else:
        future = {"version": len(all_versions()) + 1, "name": "future", "checksum": "0" * 64}
        execute(dsn, MigrationPlan(fresh_schema).record, future)
    before = recorded(dsn, fresh_schema)
    with pytest.raises(MigrationError, match="changed" if tamper == "checksum" else "unknown"):
        await open_store(kind, dsn, schema=fresh_schema)
    assert recorded(dsn, fresh_schema) == before


def test_print_sql_is_the_ddl_with_the_schema_bound(dsn: str, fresh_schema: str) -> None:
    text = print_sql(fresh_schema)
    assert "@schema@" not in text
    assert f'CREATE TABLE "{fresh_schema}".snapshots' in text
    for version, name, checksum in expected_rows():
        assert f"-- migration {version:04d}_{name} (sha256 {checksum})" in text


def test_print_sql_applied_by_hand_is_a_current_schema(dsn: str, fresh_schema: str) -> None:
    """Reviewed-and-applied DDL must leave a schema the library accepts as is."""
    execute(dsn, print_sql(fresh_schema).encode())
    assert recorded(dsn, fresh_schema) == expected_rows()
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema) as backend:
        assert backend.migrate() == []
        assert backend.save(snap()) == 1


def test_a_migration_waits_for_the_advisory_lock(dsn: str, fresh_schema: str) -> None:
    """While another session holds the schema's lock, a migrator creates nothing."""
    plan = MigrationPlan(fresh_schema)
    results: list[list[int]] = []
    with psycopg.connect(dsn) as holder:
        holder.execute(LOCK_SQL, plan.lock_params)  # held until this transaction ends
        with PostgresBackend[JsonCodec].connect(
            dsn, schema=fresh_schema, run_migrations=False
        ) as b:
            thread = threading.Thread(target=lambda: results.append(b.migrate()))
            thread.start()
            while not _advisory_waiter(dsn):  # wait until the migrator queues on the lock
                thread.join(0.02)
            assert thread.is_alive()
            assert results == []
            exists = holder.execute(b"SELECT to_regclass(%(table)s)", plan.exists_params)
            assert exists.fetchone() == (None,)
            holder.commit()  # releases the lock
            thread.join()
    assert results == [all_versions()]


def _advisory_waiter(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
    return row is not None and row[0] > 0


def _connect_and_migrate(
    dsn: str, fresh_schema: str, barrier: Barrier, results: multiprocessing.Queue[Any], n: int
) -> None:
    """One process: open a pool, wait for all the others, then migrate and save."""
    try:
        with PostgresBackend[JsonCodec].connect(
            dsn, schema=fresh_schema, run_migrations=False
        ) as b:
            barrier.wait(timeout=60)
            applied = b.migrate()
            b.save(snap(f"proc-{n}"))
        results.put((n, applied, None))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put((n, None, repr(exc)))


@pytest.mark.slow
def test_eight_processes_migrating_a_fresh_schema_at_once_apply_it_exactly_once(
    dsn: str, fresh_schema: str
) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results: multiprocessing.Queue[Any] = ctx.Queue()
    procs = [
        ctx.Process(target=_connect_and_migrate, args=(dsn, fresh_schema, barrier, results, n))
        for n in range(WORKERS)
    ]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [error for _, _, error in outcomes] == [None] * WORKERS
    applied = sorted(tuple(a) for _, a, _ in outcomes)
    assert applied == [()] * (WORKERS - 1) + [tuple(all_versions())]
    assert recorded(dsn, fresh_schema) == expected_rows()
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema) as backend:
        assert sorted(s.instance_id for s in backend.list().items) == sorted(
            f"proc-{n}" for n in range(WORKERS)
        )


def test_a_store_with_data_takes_the_single_key_migration(dsn: str, fresh_schema: str) -> None:
    """Migration 0010 on a store in use (events buffered, a lease held, a signal stored):
    every row survives, the tables are keyed and collated as a distributed planner needs
    them, and the store goes on saving, dispatching and consuming."""
    plan = MigrationPlan(fresh_schema)
    before = [m for m in load_migrations() if m.version < 10]
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute(plan.bootstrap)
        for m in before:
            conn.execute(plan.ddl(m))
            conn.execute(plan.record, plan.record_params(m))
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema = sql.Identifier(fresh_schema)
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.snapshots (instance_id, status, definition_hash, position_kind,"
                " version, codec, data_hash) VALUES ('old', 'InProgress', 'h', 'AtTask', 1,"
                " 'json', '\\x00')"
            ).format(schema)
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.events (instance_id, name, payload) VALUES ('old', 'e', '\\x00')"
            ).format(schema)
        )
        conn.execute(
            sql.SQL("INSERT INTO {}.signals (instance_id, kind) VALUES ('old', 'pause')").format(
                schema
            )
        )
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema) as store:
        assert store.migrate() == []  # applied by connect
        with psycopg.connect(dsn) as conn:
            keys = conn.execute(
                "SELECT c.relname, pg_get_constraintdef(k.oid) FROM pg_constraint k"
                " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = %s AND k.contype = 'p'",
                (fresh_schema,),
            ).fetchall()
            collations = conn.execute(
                "SELECT table_name, collation_name FROM information_schema.columns"
                " WHERE table_schema = %s AND column_name = 'instance_id'",
                (fresh_schema,),
            ).fetchall()
            counts = conn.execute(
                sql.SQL(
                    "SELECT (SELECT count(*) FROM {0}.events), (SELECT count(*) FROM {0}.signals)"
                ).format(schema)
            ).fetchone()
        assert all(
            "instance_id" in definition for table, definition in keys if table != "migrations"
        )
        assert {c for _, c in collations} == {"C"}
        assert counts == (1, 1)
        assert store.save(snap("new")) == 1
