"""Database plumbing: one fresh schema per codec, backends, and server-side probes.

WAL position and blob sizes are read on a separate connection so that probing
never shares a transaction or a pool slot with the measured traffic.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from snapstore import CborCodec, JsonCodec, MsgpackCodec, PostgresBackend
from snapstore.codecs import Codec

CODECS: dict[str, type[Codec]] = {"json": JsonCodec, "msgpack": MsgpackCodec, "cbor": CborCodec}
SCHEMA_PREFIX = "bench_"


def schema_for(name: str, prefix: str = SCHEMA_PREFIX) -> str:
    """The schema a part of the run owns (``bench_json``, ``bench_ceiling``...); a
    distinct prefix lets two runs share one server without touching each other."""
    return f"{prefix}{name}"


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def fresh_schema(dsn: str, schema: str, codec: str = "json") -> None:
    """Drop ``schema`` and create it again, migrated and empty."""
    drop_schema(dsn, schema)
    open_backend(dsn, codec, schema, pool_size=2).close()


def open_backend(
    dsn: str, codec: str, schema: str, *, pool_size: int, group_commit: bool = False
) -> PostgresBackend[Any]:
    """A migrated backend writing ``codec``; ``group_commit`` only when asked (and offered)."""
    backend_type: Any = PostgresBackend[CODECS[codec]]  # type: ignore[valid-type]
    options: dict[str, Any] = {"group_commit": True} if group_commit else {}
    backend: PostgresBackend[Any] = backend_type.connect(
        dsn, schema=schema, min_size=2, max_size=pool_size, **options
    )
    return backend


def truncate_tables(dsn: str, schema: str) -> None:
    """Empty every table of ``schema`` but its migration record, in one statement."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename <> 'migrations'"
            " ORDER BY tablename",
            (schema,),
        ).fetchall()
        if tables:
            names = [sql.Identifier(schema, table) for (table,) in tables]
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(names)))


def analyze(dsn: str, schema: str) -> None:
    """Refresh the planner's statistics of ``schema``'s tables; this also makes every
    session re-plan the statements it prepared against them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (schema,)
        ).fetchall()
        for (table,) in tables:
            conn.execute(
                sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            )


def checkpoint(dsn: str) -> bool:
    """Start the next window right after a checkpoint, so that no window happens to contain
    one (at these write rates max_wal_size forces one about every minute) and every window
    pays the same full-page writes. False where the role may not (not superuser, no
    pg_checkpoint): the windows then take their chances."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def settle(dsn: str, schema: str) -> None:
    """Between warm-up and window: plans for the tables as they are, and a fresh checkpoint."""
    analyze(dsn, schema)
    checkpoint(dsn)


def wal_lsn(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def wal_bytes(dsn: str, start: str, end: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (end, start)
        ).fetchone()
    assert row is not None
    return int(row[0])


def blob_stats(dsn: str, schema: str) -> tuple[float | None, int]:
    """Mean size of ``history.data`` (the encoded snapshot blob) and the row count."""
    query = sql.SQL("SELECT avg(octet_length(data))::float8, count(*) FROM {}.history").format(
        sql.Identifier(schema)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return (None if row[0] is None else float(row[0])), int(row[1])
