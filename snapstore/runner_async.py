"""The I/O shell that drives `snapstore.programs` programs.

A program yields `Step`s; the shell runs each on one pooled connection (inside
one transaction when asked) and sends the fetched rows back. `AfterCommit`
actions are held until the work has committed. Backend methods only build
programs and hand them to ``run``.

Each pooled connection keeps one cursor for the hot statements (`Step.hot`): a
cursor's adaptation context caches the dumpers and loaders it has looked up, and
a new one per save cost about 50 us of client CPU (binding some 30 array
parameters afresh). It is a raw cursor, fed the statements in `$n` form
(`sql_catalog.positional`): psycopg parses nothing, whatever their length. Every
cursor returns plain tuples, whatever row factory the connections of a borrowed
pool were given.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Final, TypeVar

from psycopg import AsyncConnection, AsyncCursor, AsyncRawCursor
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from snapstore.programs import STREAM_ROWS, AfterCommit, Batch, Fetch, Program
from snapstore.sql_catalog import Queries

R = TypeVar("R")

# A connection is used by one thread or task at a time, so its cursor is too.
_CURSORS: Final[weakref.WeakKeyDictionary[AsyncConnection[Any], AsyncCursor[Any]]] = (
    weakref.WeakKeyDictionary()
)


def _kept_cursor(conn: AsyncConnection[Any]) -> AsyncCursor[Any]:
    """The cursor ``conn`` keeps for hot statements."""
    cur = _CURSORS.get(conn)
    if cur is None:
        cur = _CURSORS[conn] = AsyncRawCursor(conn, row_factory=tuple_row)
    return cur


class AsyncRunner:
    """Runs programs on a pool's connections, with one schema's statements."""

    def __init__(self, pool: AsyncConnectionPool[Any], queries: Queries) -> None:
        self.pool = pool
        self.queries = queries

    async def run(self, program: Program[R], *, transaction: bool = False) -> R:
        """Drive ``program`` to its result on one pooled connection."""
        try:  # the program checks its arguments before its first step: before any I/O
            step = next(program)
        except StopIteration as done:  # nothing to ask the server
            finished: R = done.value
            return finished
        after: list[Callable[[], None]] = []
        async with (
            self.pool.connection() as conn,
            conn.transaction() if transaction else nullcontext(),
        ):
            try:
                while True:
                    if isinstance(step, AfterCommit):
                        after.append(step.action)
                        step = program.send(None)
                        continue
                    if step.hot:
                        statement = self.queries.positional(step.query)
                        cur: AsyncCursor[Any] = _kept_cursor(conn)
                        await cur.execute(statement.sql, statement.args(step.params))
                    else:
                        cur = conn.cursor(row_factory=tuple_row, binary=step.binary)
                        if step.fetch is Fetch.FOLD:
                            assert step.fold is not None
                            fold = step.fold()
                            query = self.queries[step.query]
                            async for row in cur.stream(query, step.params, size=STREAM_ROWS):
                                fold.add(row)
                        else:
                            await cur.execute(self.queries[step.query], step.params)
                    if step.fetch is Fetch.FOLD:
                        rows: Any = fold.result()
                    elif step.fetch is Fetch.ONE:
                        rows = await cur.fetchone()
                    elif step.fetch is Fetch.ALL:
                        rows = await cur.fetchall()
                    elif step.fetch is Fetch.ROWCOUNT:
                        rows = cur.rowcount
                    else:
                        rows = None
                    if not step.hot:  # free the server's result before rows are decoded
                        await cur.close()
                    step = program.send(rows)
            except StopIteration as done:
                result: R = done.value
        for action in after:
            action()
        return result

    async def run_batches(self, batch: Callable[[Any], Program[Batch]], start: Any) -> int:
        """Run one-transaction batches, each from where the last stopped, until one says
        it was the last; the total deleted."""
        total, resume = 0, start
        while True:
            done = await self.run(batch(resume), transaction=True)
            total += done.deleted
            if done.resume is None:
                return total
            resume = done.resume
