"""Bring a schema up to date.

Migrations run in one transaction under a per-schema advisory lock, so any
number of processes may connect at once; a fast read-only check skips the lock
when the schema is already current (runtime roles need no DDL rights then).
"""

from __future__ import annotations

import time
from typing import Any

from psycopg import AsyncConnection
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


async def migrate(conn: AsyncConnection[Any], schema: str) -> list[int]:
    """Bring ``schema`` up to date; return the versions applied now."""
    plan = MigrationPlan(schema)
    migrations = load_migrations()
    cur = conn.cursor(row_factory=tuple_row)  # whatever rows the connection is set to give
    await cur.execute(EXISTS_SQL, plan.exists_params)
    row = await cur.fetchone()
    if row and row[0]:
        await cur.execute(plan.applied)
        if not pending(applied_versions(await cur.fetchall()), migrations):
            return []
    async with conn.transaction():
        await cur.execute(LOCK_SQL, plan.lock_params)
        await cur.execute(plan.bootstrap)
        await cur.execute(plan.applied)
        todo = pending(applied_versions(await cur.fetchall()), migrations)
        took = []
        for m in todo:
            began = time.perf_counter()
            await cur.execute(plan.ddl(m))
            await cur.execute(plan.record, plan.record_params(m))
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
