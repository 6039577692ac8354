"""The two I/O shells that drive `snapstore.operations` programs.

A program yields `Step`s; the shell runs each on one pooled connection (inside
one transaction when asked) and sends the fetched rows back. `AfterCommit`
actions are held until the work has committed. Feature mixins
(signals, claims...) only build programs and call ``_run``.

Each pooled connection keeps one cursor for the hot statements (`Step.hot`): a
cursor's adaptation context caches the dumpers and loaders it has looked up, and
a new one per save cost about 50 us of client CPU (binding some 30 array
parameters afresh). It is a raw cursor, fed the statements in `$n` form
(`queries.positional`): psycopg parses nothing, whatever their length. Every
cursor returns plain tuples, whatever row factory the connections of a borrowed
pool were given.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Final, TypeVar

from psycopg import AsyncConnection, AsyncCursor, AsyncRawCursor, Connection, Cursor, RawCursor
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from snapstore.operations import STREAM_ROWS, AfterCommit, Batch, Context, Fetch, Program
from snapstore.queries import Queries

R = TypeVar("R")
ConnT = TypeVar("ConnT")
CurT = TypeVar("CurT")

# A connection is used by one thread or task at a time, so its cursor is too.
_CURSORS: Final[weakref.WeakKeyDictionary[Connection[Any], Cursor[Any]]] = (
    weakref.WeakKeyDictionary()
)
_ASYNC_CURSORS: Final[weakref.WeakKeyDictionary[AsyncConnection[Any], AsyncCursor[Any]]] = (
    weakref.WeakKeyDictionary()
)


def _kept_cursor(
    kept: weakref.WeakKeyDictionary[ConnT, CurT], conn: ConnT, new: Callable[[ConnT], CurT]
) -> CurT:
    """The cursor ``conn`` keeps for hot statements."""
    cur = kept.get(conn)
    if cur is None:
        cur = kept[conn] = new(conn)
    return cur


def _raw_cursor(conn: Connection[Any]) -> Cursor[Any]:
    return RawCursor(conn, row_factory=tuple_row)


def _async_raw_cursor(conn: AsyncConnection[Any]) -> AsyncCursor[Any]:
    return AsyncRawCursor(conn, row_factory=tuple_row)


class SyncRunner:
    """Base of `PostgresBackend` and its feature mixins."""

    _pool: ConnectionPool[Any]
    queries: Queries
    ctx: Context

    def _run(self, program: Program[R], *, transaction: bool = False) -> R:
        after: list[Callable[[], None]] = []
        with self._pool.connection() as conn, conn.transaction() if transaction else nullcontext():
            try:
                step = next(program)
                while True:
                    if isinstance(step, AfterCommit):
                        after.append(step.action)
                        step = program.send(None)
                        continue
                    if step.hot:
                        statement = self.queries.positional(step.query)
                        cur: Cursor[Any] = _kept_cursor(_CURSORS, conn, _raw_cursor)
                        cur.execute(statement.sql, statement.args(step.params))
                    else:
                        cur = conn.cursor(row_factory=tuple_row, binary=step.binary)
                        if step.fetch is Fetch.FOLD:
                            assert step.fold is not None
                            fold = step.fold()
                            query = self.queries[step.query]
                            for row in cur.stream(query, step.params, size=STREAM_ROWS):
                                fold.add(row)
                        else:
                            cur.execute(self.queries[step.query], step.params)
                    if step.fetch is Fetch.FOLD:
                        rows: Any = fold.result()
                    elif step.fetch is Fetch.ONE:
                        rows = cur.fetchone()
                    elif step.fetch is Fetch.ALL:
                        rows = cur.fetchall()
                    elif step.fetch is Fetch.ROWCOUNT:
                        rows = cur.rowcount
                    else:
                        rows = None
                    if not step.hot:  # free the server's result before rows are decoded
                        cur.close()
                    step = program.send(rows)
            except StopIteration as done:
                result: R = done.value
        for action in after:
            action()
        return result

    def _run_batches(self, batch: Callable[[Any], Program[Batch]], start: Any) -> int:
        """Run one-transaction batches, each from where the last stopped, until one says
        it was the last; the total deleted."""
        total, resume = 0, start
        while True:
            done = self._run(batch(resume), transaction=True)
            total += done.deleted
            if done.resume is None:
                return total
            resume = done.resume


class AsyncRunner:
    """Base of `AsyncPostgresBackend` and its feature mixins."""

    _pool: AsyncConnectionPool[Any]
    queries: Queries
    ctx: Context

    async def _run(self, program: Program[R], *, transaction: bool = False) -> R:
        after: list[Callable[[], None]] = []
        async with (
            self._pool.connection() as conn,
            conn.transaction() if transaction else nullcontext(),
        ):
            try:
                step = next(program)
                while True:
                    if isinstance(step, AfterCommit):
                        after.append(step.action)
                        step = program.send(None)
                        continue
                    if step.hot:
                        statement = self.queries.positional(step.query)
                        cur: AsyncCursor[Any] = _kept_cursor(
                            _ASYNC_CURSORS, conn, _async_raw_cursor
                        )
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

    async def _run_batches(self, batch: Callable[[Any], Program[Batch]], start: Any) -> int:
        total, resume = 0, start
        while True:
            done = await self._run(batch(resume), transaction=True)
            total += done.deleted
            if done.resume is None:
                return total
            resume = done.resume
