# Generated from snapstore/migrate_async.py by snapstore/_async_to_sync.py: do not edit.
# Change the async source, then run `make sync`.
"""Bring a schema up to date.

Migrations run in one transaction under a per-schema advisory lock, so any
number of processes may connect at once; a fast read-only check skips the lock
when the schema is already current (runtime roles need no DDL rights then).
"""

from __future__ import annotations

import time
from typing import Any

from psycopg import Connection
from psycopg.rows import tuple_row

from snapstore import logs
from snapstore.migrations import (
    EXISTS_SQL,
    LOCK_SQL,
    MigrationPlan,
    applied_versions,
    load_migrations,
    pending,
)


def migrate(conn: Connection[Any], schema: str) -> list[int]:
    """Bring ``schema`` up to date; return the versions applied now."""
    plan = MigrationPlan(schema)
    migrations = load_migrations()
    cur = conn.cursor(row_factory=tuple_row)  # whatever rows the connection is set to give
    cur.execute(EXISTS_SQL, plan.exists_params)
    row = cur.fetchone()
    if row and row[0]:
        cur.execute(plan.applied)
        if not pending(applied_versions(cur.fetchall()), migrations):
            return []
    with conn.transaction():
        cur.execute(LOCK_SQL, plan.lock_params)
        cur.execute(plan.bootstrap)
        cur.execute(plan.applied)
        todo = pending(applied_versions(cur.fetchall()), migrations)
        took = []
        for m in todo:
            began = time.perf_counter()
            cur.execute(plan.ddl(m))
            cur.execute(plan.record, plan.record_params(m))
            took.append(round((time.perf_counter() - began) * 1000, 1))
    for m, ms in zip(todo, took, strict=True):  # said once committed
        logs.migrations.info(
            "schema %s: migration %04d_%s applied in %.1f ms",
            schema,
            m.version,
            m.name,
            ms,
            extra={"schema": schema, "version": m.version, "duration_ms": ms},
        )
    return [m.version for m in todo]
