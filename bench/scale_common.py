"""Shared plumbing of the scale workloads (`bench.scale`): scratch schemas, bulk data, verdicts.

Large tables are built by SQL (``INSERT ... SELECT ... FROM generate_series``): a million
saves would take minutes and measure the save path instead of the table state. Every
cloned row copies ONE checkpoint that the public API wrote (`capture_blob`), so the rows
stay loadable whatever the library's encoder or statements become, and only the table
columns of ``sql/*.sql`` are assumed.

Verdicts are taken on medians of repeated windows, never on one window: the machine is
shared, and one window can land on someone else's burst.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from bench import db
from snapstore import PostgresBackend, WorkflowSnapshot

SIZES = ("tiny", "small", "default", "large")  # tiny: the smoke tests
MAX_SCHEMA_NAME = 19  # short names keep the library's statements under psycopg's parse cache
SCALE_TAG = "scale_"
CODEC = "json"
ROW_ID_DIGITS = 8
TERMINAL = ("Completed", "Failed", "Cancelled")

T = TypeVar("T")


def pick(size: str, by_size: Mapping[str, T]) -> T:
    """The figure of ``by_size`` for ``size``; unknown sizes fail loudly, not silently small."""
    if size not in by_size:
        raise ValueError(f"size must be one of {', '.join(by_size)} (got {size!r})")
    return by_size[size]


def scale_schema(prefix: str, name: str) -> str:
    """``<prefix>scale_<name>``, refused when 20 characters or more: the library's save
    statement embeds the schema name, and a long one pushes it past what psycopg caches
    parsed, which would slow every save for a reason that has nothing to do with scale."""
    schema = db.schema_for(SCALE_TAG + name, prefix)
    if len(schema) > MAX_SCHEMA_NAME:
        raise ValueError(f"schema name {schema!r} is too long (max {MAX_SCHEMA_NAME} chars)")
    return schema


@contextmanager
def scratch_schema(dsn: str, prefix: str, name: str) -> Iterator[str]:
    """A schema that exists only for one workload: dropped before (a crashed earlier run may
    have left it) and after, whatever happens in between."""
    schema = scale_schema(prefix, name)
    db.drop_schema(dsn, schema)
    try:
        yield schema
    finally:
        db.drop_schema(dsn, schema)


def query(template: str, schema: str) -> sql.Composed:
    """``template`` with ``{s}`` bound to the quoted schema (values stay bound parameters)."""
    return sql.SQL(template).format(s=sql.Identifier(schema))


def timed_execute(
    conn: psycopg.Connection[Any], statement: sql.Composed, params: Mapping[str, Any] | None = None
) -> float:
    """Run one statement and return its wall time in seconds (build steps are reported, so
    a statement that suddenly takes seconds shows up in the figures)."""
    began = time.perf_counter()
    conn.execute(statement, params)
    return time.perf_counter() - began


def vacuum_analyze(dsn: str, schema: str) -> float:
    """VACUUM ANALYZE every table of ``schema``; seconds taken.

    ANALYZE gives the planner the built table's real size. VACUUM sets the hint bits and the
    visibility map that a store in service has long had from autovacuum; without it the first
    windows would pay for writing hint bits into a million fresh rows.
    """
    began = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (schema,)
        ).fetchall()
        for (table,) in tables:
            conn.execute(
                sql.SQL("VACUUM (ANALYZE) {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            )
    return time.perf_counter() - began


@dataclass(frozen=True)
class Blob:
    """One checkpoint as the library stored it: the column values SQL copies into clones."""

    definition_hash: str
    current_task_id: str | None
    position_kind: str
    completed_task_count: int
    tags: list[str]
    codec: str
    data: bytes
    data_hash: bytes


def capture_blob(backend: PostgresBackend[Any], dsn: str, snapshot: WorkflowSnapshot) -> Blob:
    """Save ``snapshot`` once through the public API, read back its stored row values, and
    delete it again (so it is never dispatched or counted as part of the data set)."""
    backend.save(snapshot)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            query(
                "SELECT s.definition_hash, s.current_task_id, s.position_kind, "
                "s.completed_task_count, s.tags, h.codec, h.data, h.data_hash "
                "FROM {s}.snapshots AS s JOIN {s}.history AS h "
                "ON h.instance_id = s.instance_id AND h.version = s.version "
                "WHERE s.instance_id = %(id)s",
                backend.schema,
            ),
            {"id": snapshot.instance_id},
        ).fetchone()
    assert row is not None, "the saved template checkpoint is not readable by SQL"
    backend.delete(snapshot.instance_id)
    return Blob(
        definition_hash=row[0],
        current_task_id=row[1],
        position_kind=row[2],
        completed_task_count=int(row[3]),
        tags=list(row[4]),
        codec=row[5],
        data=bytes(row[6]),
        data_hash=bytes(row[7]),
    )


# Pseudo-random but deterministic spreads: every run builds the same table.
_SNAPSHOTS = """
INSERT INTO {s}.snapshots (instance_id, status, definition_hash, current_task_id,
    position_kind, completed_task_count, priority, tags, available_at, version, codec,
    data_hash, created_at, updated_at, completed_at)
SELECT %(prefix)s || lpad(i::text, %(digits)s, '0'), %(status)s, %(definition_hash)s,
    %(current_task_id)s, %(position_kind)s, %(completed_task_count)s,
    CASE WHEN %(mixed_priority)s THEN 1 + mod(i * 7919, 5) ELSE 3 END, %(tags)s, d.at,
    %(versions)s, %(codec)s, %(data_hash)s, d.at, d.at, CASE WHEN %(terminal)s THEN d.at END
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
CROSS JOIN LATERAL (
    SELECT now() - %(age)s::interval
        - make_interval(secs => mod(i * 104729, %(spread_ms)s + 1) / 1000.0) AS at) AS d
"""

_HISTORY = """
INSERT INTO {s}.history (instance_id, version, status, current_task_id, codec, data,
    data_hash, created_at)
SELECT %(prefix)s || lpad(i::text, %(digits)s, '0'), v,
    CASE WHEN v = %(versions)s THEN %(status)s ELSE 'InProgress' END, %(current_task_id)s,
    %(codec)s, %(data)s, %(data_hash)s,
    now() - %(age)s::interval - make_interval(mins => (%(versions)s - v)::integer)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
CROSS JOIN generate_series(%(history_from)s::bigint, %(versions)s::bigint) AS v
"""


@dataclass(frozen=True)
class Clones:
    """A run of instances cloned from one `Blob`: ids ``<prefix><first..last>``."""

    prefix: str
    first: int
    count: int
    status: str = "InProgress"
    versions: int = 1  # the current version of each clone
    history_versions: int = 1  # how many of the latest versions get a history row (0: none)
    mixed_priority: bool = True  # priorities 1-5; False: all 3
    due_spread: timedelta = timedelta(hours=1)  # available_at spread over this much past
    age: timedelta = timedelta(0)  # and shifted back by this much (completed_at too)

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    def instance_id(self, n: int) -> str:
        return f"{self.prefix}{n:0{ROW_ID_DIGITS}d}"


_SECONDARY_INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index AS i
JOIN pg_class AS t ON t.oid = i.indrelid
JOIN pg_namespace AS n ON n.oid = t.relnamespace
WHERE n.nspname = %s AND t.relname = %s
  AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)
ORDER BY 1
"""


@contextmanager
def secondary_indexes_rebuilt(dsn: str, schema: str, table: str) -> Iterator[None]:
    """Drop ``table``'s plain indexes for a bulk load and recreate them from their own
    definitions afterwards (``pg_get_indexdef``, whatever the migrations made them): one
    sorted build per index is several times faster than a million random insertions, and
    the table ends up with exactly the indexes the library declared."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        indexes = conn.execute(_SECONDARY_INDEXES, (schema, table)).fetchall()
        for name, _definition in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
    try:
        yield
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _name, definition in indexes:
                conn.execute(sql.SQL(definition))


def insert_clones(
    conn: psycopg.Connection[Any], schema: str, blob: Blob, clones: Clones
) -> dict[str, float]:
    """Insert ``clones`` (snapshots rows, and history rows for the latest
    ``history_versions`` versions) in one committed transaction; seconds per table.

    A history row is what makes a clone loadable: load and dispatch join the snapshots row to
    history on (instance_id, version). Rows nobody loads (finished instances in a dispatch
    backlog) can go without, which keeps the build fast.
    """
    params: dict[str, Any] = {
        "prefix": clones.prefix,
        "digits": ROW_ID_DIGITS,
        "status": clones.status,
        "definition_hash": blob.definition_hash,
        "current_task_id": blob.current_task_id,
        "position_kind": blob.position_kind,
        "completed_task_count": blob.completed_task_count,
        "mixed_priority": clones.mixed_priority,
        "tags": blob.tags,
        "versions": clones.versions,
        "codec": blob.codec,
        "data": blob.data,
        "data_hash": blob.data_hash,
        "terminal": clones.status in TERMINAL,
        "first": clones.first,
        "last": clones.last,
        "age": clones.age,
        "spread_ms": max(int(clones.due_spread.total_seconds() * 1000), 0),
        "history_from": clones.versions - clones.history_versions + 1,
    }
    seconds: dict[str, float] = {}
    with conn.transaction():  # a half-built table is never seen
        seconds["snapshots_s"] = timed_execute(conn, query(_SNAPSHOTS, schema), params)
        if clones.history_versions > 0:
            seconds["history_s"] = timed_execute(conn, query(_HISTORY, schema), params)
    return {k: round(v, 2) for k, v in seconds.items()}


def bulk_load(dsn: str, schema: str, blob: Blob, runs: Sequence[Clones]) -> dict[str, float]:
    """Build a large data set: every run of clones inserted with the snapshots table's
    secondary indexes dropped and rebuilt, then VACUUM ANALYZE; seconds per step."""
    began = time.perf_counter()
    seconds: dict[str, float] = {}
    with secondary_indexes_rebuilt(dsn, schema, "snapshots"):
        with psycopg.connect(dsn, autocommit=True) as conn:
            for run in runs:
                for key, value in insert_clones(conn, schema, blob, run).items():
                    seconds[key] = round(seconds.get(key, 0.0) + value, 2)
        seconds["rows_s"] = round(time.perf_counter() - began, 2)
    seconds["indexes_s"] = round(time.perf_counter() - began - seconds["rows_s"], 2)
    seconds["vacuum_analyze_s"] = round(vacuum_analyze(dsn, schema), 2)
    seconds["total_s"] = round(time.perf_counter() - began, 2)
    return seconds


def count_rows(dsn: str, schema: str, table: str, where: str = "true") -> int:
    """Exact row count (``where`` is a fixed SQL predicate of the caller's, never data)."""
    statement = sql.SQL("SELECT count(*) FROM {}.{} WHERE {}").format(
        sql.Identifier(schema), sql.Identifier(table), sql.SQL(where)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(statement).fetchone()
    assert row is not None
    return int(row[0])


class Counter:
    """Events counted by many workers without a lock: each worker owns one slot and only
    adds to it, so a reader summing the slots sees a monotonic total."""

    def __init__(self, slots: int) -> None:
        self.slots = [0] * slots

    def add(self, slot: int, n: int = 1) -> None:
        self.slots[slot] += n

    def total(self) -> int:
        return sum(self.slots)


def rate_windows(
    read: Callable[[], int],
    windows: int,
    seconds: float,
    until: Callable[[], bool] | None = None,
) -> list[float]:
    """Events per second over consecutive windows of ``seconds``, from a monotonic counter.

    At most ``windows`` windows; with ``until``, stop early once it returns True (the
    last, partial window is dropped: its length depends on when the other side ended).
    """
    rates: list[float] = []
    last, began = read(), time.perf_counter()
    while len(rates) < windows:
        deadline = began + seconds
        while time.perf_counter() < deadline:
            if until is not None and until():
                return rates
            time.sleep(min(0.02, max(deadline - time.perf_counter(), 0.0)))
        now_count, now = read(), time.perf_counter()
        rates.append((now_count - last) / (now - began))
        last, began = now_count, now
    return rates


def threaded_windows(
    worker: Callable[[int, threading.Event], None],
    threads: int,
    read: Callable[[], int],
    *,
    warmup: float,
    settle: Callable[[], None],
    windows: int,
    seconds: float,
) -> list[float]:
    """`rate_windows` of ``read`` while ``threads`` threads run ``worker(slot, stop)``: a
    warm-up, then ``settle`` (plans and a checkpoint for the tables as the warm-up left
    them), then the windows; the threads are stopped and joined whatever happens, so no
    worker outlives the backend it saves through."""
    stop = threading.Event()
    pool = [threading.Thread(target=worker, args=(i, stop), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    try:
        time.sleep(warmup)
        settle()
        return rate_windows(read, windows, seconds)
    finally:
        stop.set()
        for t in pool:
            t.join(30)


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return round(value / reference, 3)


def figure(
    value: float | None, unit: str, target: str | None = None, reference: Any = None
) -> dict[str, Any]:
    """One reported number with what it is held against, side by side."""
    out: dict[str, Any] = {"value": rounded(value, 3), "unit": unit}
    if target is not None:
        out["target"] = target
    if reference is not None:
        out["reference"] = reference
    return out


def check(
    name: str, passed: bool | None, value: float | None, target: str, detail: str
) -> dict[str, Any]:
    """A verdict in the shape `bench.acceptance` reports (a missing figure is a FAIL)."""
    return {
        "name": name,
        "passed": bool(passed) if value is not None else False,
        "value": rounded(value, 3),
        "target": target,
        "detail": detail if value is not None else f"not measured: {detail}",
    }


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


class WalProbe:
    """The server's WAL position read on a connection of its own, so probing never shares a
    transaction (or a pool slot) with the traffic it measures; kept open, so it can be read
    after every save at the cost of one round trip."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True)

    def position(self) -> int:
        row = self._conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self._conn.close()
