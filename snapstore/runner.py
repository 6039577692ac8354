# Generated from snapstore/runner_async.py by snapstore/_async_to_sync.py: do not edit.
# Change the async source, then run `make sync`.
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

import logging
import time
import weakref
from collections.abc import Callable
from contextlib import nullcontext, suppress
from typing import Any, Final, TypeVar

from psycopg import Connection, Cursor, DatabaseError, OperationalError, RawCursor
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from snapstore import logs
from snapstore.errors import (
    CommitUnknownError,
    ServerError,
    SnapstoreError,
    UnavailableError,
)
from snapstore.programs import STREAM_ROWS, AfterCommit, Batch, Fetch, Pipeline, Program, Step
from snapstore.sql_catalog import Queries

R = TypeVar("R")

# A connection is used by one thread or task at a time, so its cursors are too.
_CURSORS: Final[weakref.WeakKeyDictionary[Connection[Any], dict[str, Cursor[Any]]]] = (
    weakref.WeakKeyDictionary()
)
# Connections whose last statement streamed its rows (`Fetch.FOLD`). libpq (17, 18) keeps
# that query's chunked-rows mode into a pipeline entered next, whose first result then
# comes in chunks psycopg refuses; any plain statement resets the mode.
_STREAMED: Final[weakref.WeakSet[Connection[Any]]] = weakref.WeakSet()
_RESET_STREAM_MODE: Final = Step("server_pid", None, Fetch.NONE, hot=True)  # any would do


def _kept_cursor(conn: Connection[Any], query: str) -> Cursor[Any]:
    """The cursor ``conn`` keeps for the hot statement ``query``: a cursor that always
    runs one statement keeps the dumpers and loaders it looked up."""
    kept = _CURSORS.get(conn)
    if kept is None:
        kept = _CURSORS[conn] = {}
    cur = kept.get(query)
    if cur is None:
        cur = kept[query] = RawCursor(conn, row_factory=tuple_row)
    return cur


IDLE_CHECK_AFTER: Final = 1.0
"""Seconds a pooled connection may sit idle and still be handed out unprobed."""
_LAST_USED: Final[weakref.WeakKeyDictionary[Connection[Any], float]] = weakref.WeakKeyDictionary()
_LOST_AT: Final = [0.0]
"""When this process last lost a connection under a call (monotonic): a server crash or
failover kills every connection at once, also those idle for less than
`IDLE_CHECK_AFTER`, so each last used before then is probed before it is handed out."""


def _skippable(conn: Connection[Any], step: Step, exc: DatabaseError) -> bool:
    """Whether a refused `Step.best_effort` statement may be skipped: outside a
    transaction (it took nothing else with it) and with the connection still up."""
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    return step.best_effort and idle and exc.sqlstate is not None and not conn.closed


def _fetched(cur: Cursor[Any], step: Step) -> Any:
    """A pipelined step's result: its rows (None for `Fetch.NONE`)."""
    return None if step.fetch is Fetch.NONE else cur.fetchall()


def check_connection(conn: Connection[Any]) -> None:
    """The pool's check before handing a connection out: one that has been idle for a
    while (long enough for a server restart to have killed it), or was last used before
    a connection was lost, is probed with an empty query, so a dead one is replaced
    instead of failing the call; a busy connection costs nothing."""
    last_used = _LAST_USED.get(conn, 0.0)
    if time.monotonic() - last_used > IDLE_CHECK_AFTER or last_used <= _LOST_AT[0]:
        ConnectionPool.check_connection(conn)


RETRY_LOG_EVERY: Final = 10.0
"""Seconds between two warnings of one pool that it cannot reconnect (during an outage
it tries about twice a second)."""
_LAST_SAID: Final[weakref.WeakKeyDictionary[Any, float]] = weakref.WeakKeyDictionary()


def _due_to_say(pool: Any) -> bool:
    now = time.monotonic()
    if now - _LAST_SAID.get(pool, -RETRY_LOG_EVERY) < RETRY_LOG_EVERY:
        return False
    _LAST_SAID[pool] = now
    return True


RECONNECT_EVERY: Final = 1.0
"""Seconds a pool keeps retrying a lost connection before it gives up (its
``reconnect_timeout``); `retry_while_waited` starts again at once while callers wait."""


def retry_while_waited(pool: ConnectionPool[Any]) -> None:
    """The pool's ``reconnect_failed`` hook. psycopg_pool backs off exponentially, so
    after a 40 s outage its next attempt came some 20 s after the server was back.
    A round of attempts here gives up after `RECONNECT_EVERY` (it tries at its start and
    end), and while a caller is waiting the next round begins at once (``check`` grows
    the pool): about two attempts a second while anyone needs a connection, none while
    nobody does, and the next call tries at once."""
    waiting = 0 if pool.closed else pool.get_stats().get("requests_waiting", 0)
    if waiting and _due_to_say(pool):
        logs.pool.warning(
            "pool %s cannot reconnect to the server; trying again (%d calls waiting)",
            pool.name,
            waiting,
            extra={"pool": pool.name, "waiting": waiting},
        )
        with suppress(PoolClosed):  # closed meanwhile
            pool.check()


log = logging.getLogger("snapstore.pool")
_SERVER_PIDS: Final[weakref.WeakKeyDictionary[Connection[Any], int | None]] = (
    weakref.WeakKeyDictionary()
)
_SET_UP: Final[weakref.WeakSet[Connection[Any]]] = weakref.WeakSet()


def server_pid(conn: Connection[Any]) -> int | None:
    """The server process running ``conn``'s statements; None behind a pooler, where the
    process id a connection announces is the pooler's own."""
    return _SERVER_PIDS.get(conn, conn.info.backend_pid)


class ConnectionSetup:
    """The pool's ``configure`` hook, run once on each new connection.

    It compares the server's process id with the one the connection announced at
    startup. They differ behind PgBouncer, which answers the startup itself. Undeclared
    (``pooler=None``), that pooler may be a transaction pooler, which would let this
    client bind another client's prepared statement of the same name: that connection
    then prepares nothing, its process id is not trusted, and a warning says to declare
    the pooler. Behind a declared session pooler the server's id is the one to trust
    (one server process per client connection), and the ``statement_timeout`` PgBouncer
    refuses as a startup option is set for the session.
    """

    def __init__(
        self, queries: Queries, pool_name: str, *, pooler: str | None, timeout_ms: int | None
    ) -> None:
        self.queries = queries
        self.pool_name = pool_name
        self.pooler = pooler
        self.session_timeout_ms = timeout_ms if pooler == "session" else None
        self.found = False

    def __call__(self, conn: Connection[Any]) -> None:
        """Set up one new connection (a round trip for each thing to do). Run by an owned
        pool as its ``configure`` hook; for a borrowed pool the runner runs it on each
        connection's first use."""
        _SET_UP.add(conn)
        if self.pooler == "transaction":  # a server process id says nothing here
            _SERVER_PIDS[conn] = None
            return
        with conn.cursor(row_factory=tuple_row) as cur:
            if self.session_timeout_ms is not None:
                params = {"ms": str(self.session_timeout_ms), "local": False}
                cur.execute(self.queries["set_statement_timeout"], params, prepare=False)
            cur.execute(self.queries["server_pid"], prepare=False)
            row = cur.fetchone()
        if row is None or row[0] == conn.info.backend_pid:
            return
        if self.pooler == "session":
            _SERVER_PIDS[conn] = row[0]
        else:
            self._pooled(conn)

    def _pooled(self, conn: Connection[Any]) -> None:
        _SERVER_PIDS[conn] = None
        conn.prepare_threshold = None
        if not self.found:
            self.found = True
            log.warning(
                "pool %s: a connection pooler sits between this client and PostgreSQL; "
                "prepared statements are off for its connections. Say "
                'connect(..., pooler="transaction") or pooler="session" to choose.',
                self.pool_name,
                extra={"pool": self.pool_name},
            )


def reach(conninfo: str, kwargs: dict[str, Any]) -> None:
    """Connect once, or raise `UnavailableError` with the server's own reason (a pool
    would only time out, its cause in a log line)."""
    try:
        conn = Connection.connect(conninfo, **kwargs)
    except OperationalError as exc:
        raise UnavailableError(f"cannot connect: {exc}") from exc
    conn.close()


_REACHED: Final[
    weakref.WeakKeyDictionary[ConnectionPool[Any], tuple[float, UnavailableError | None]]
] = weakref.WeakKeyDictionary()


def explain_timeout(pool: ConnectionPool[Any], exc: PoolTimeout) -> None:
    """Tell "cannot connect" from "pool exhausted": after a checkout timeout, try one
    connection of our own (bounded by ``connect_timeout``, at most once a second per
    pool, so a crowd of timed-out callers cannot storm a struggling server) and, if the
    server refuses it, raise `UnavailableError` with the server's reason."""
    if not isinstance(pool.conninfo, str) or not isinstance(pool.kwargs, dict):
        return  # computed per connection: no one conninfo to try
    now = time.monotonic()
    seen = _REACHED.get(pool)
    if seen is None or now - seen[0] > 1.0:
        _REACHED[pool] = (now, None)  # callers timing out meanwhile do not probe too
        kwargs = {"connect_timeout": 5, **pool.kwargs}
        try:
            reach(pool.conninfo, kwargs)
            seen = (now, None)
        except UnavailableError as unreachable:
            seen = (now, unreachable)
        _REACHED[pool] = seen
    if seen[1] is not None:
        raise UnavailableError(f"{seen[1]} (and {exc})") from exc


def typed_error(
    exc: DatabaseError,
    pool: ConnectionPool[Any],
    conn: Connection[Any] | None,
    sent: bool,
    pids: list[int | None],
) -> SnapstoreError:
    """The snapstore error for a psycopg one: no connection to be had, or one lost
    (`UnavailableError`, or `CommitUnknownError` once a write was ``sent``), else the
    server refusing a statement (`ServerError`)."""
    if isinstance(exc, PoolTimeout):
        return UnavailableError(f"{exc} (pool {pool.name}, max_size {pool.max_size})")
    if isinstance(exc, PoolClosed | TooManyRequests):
        return UnavailableError(f"{exc} (pool {pool.name})")
    if isinstance(exc, OperationalError) and (conn is None or conn.broken or conn.closed):
        _LOST_AT[0] = time.monotonic()
        if sent:
            pid = pids[0] if pids else None
            return CommitUnknownError(f"connection lost during a write: {exc}", backend_pid=pid)
        return UnavailableError(f"connection lost: {exc}", connection_lost=True)
    return ServerError(str(exc), sqlstate=exc.sqlstate)


class Runner:
    """Runs programs on a pool's connections, with one schema's statements."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        queries: Queries,
        *,
        local_timeout_ms: int | None = None,
        setup: ConnectionSetup | None = None,
        slow_statement: float | None = logs.SLOW_STATEMENT,
    ) -> None:
        self.pool = pool
        self.queries = queries
        self.setup = setup
        self.slow_statement = slow_statement  # seconds; None: never logged
        # Behind a transaction pooler statement_timeout is set per transaction, so
        # every call runs in one (two more round trips).
        self.local_timeout = (
            None if local_timeout_ms is None else {"ms": str(local_timeout_ms), "local": True}
        )

    def run(self, program: Program[R], *, transaction: bool = False, writes: bool = True) -> R:
        """Drive ``program`` to its result on one pooled connection.

        A connection that cannot be had, or is lost, is an `UnavailableError`, unless
        a statement of a program that ``writes`` had already been sent: then the
        outcome is a `CommitUnknownError`.
        """
        try:  # the program checks its arguments before its first step: before any I/O
            step = next(program)
        except StopIteration as done:  # nothing to ask the server
            finished: R = done.value
            return finished
        holder: list[Connection[Any]] = []
        pids: list[int | None] = []
        try:
            return self._drive(program, step, transaction, holder, pids)
        except PoolTimeout as exc:
            explain_timeout(self.pool, exc)
            raise typed_error(exc, self.pool, None, False, pids) from exc
        except DatabaseError as exc:
            conn = holder[0] if holder else None
            raise typed_error(exc, self.pool, conn, writes and conn is not None, pids) from exc

    def _drive(
        self,
        program: Program[R],
        step: Any,
        transaction: bool,
        holder: list[Connection[Any]],
        pids: list[int | None],
    ) -> R:
        after: list[Callable[[], None]] = []
        local = self.local_timeout
        with (
            self.pool.connection() as conn,
            conn.transaction() if transaction or local else nullcontext(),
        ):
            holder.append(conn)
            if self.setup is not None and conn not in _SET_UP:  # a borrowed pool's
                self.setup(conn)
            pids.append(server_pid(conn))
            if local is not None:
                conn.execute(self.queries["set_statement_timeout"], local, prepare=False)
            try:
                while True:
                    if isinstance(step, AfterCommit):
                        after.append(step.action)
                        step = program.send(None)
                        continue
                    if isinstance(step, Pipeline):
                        began = time.perf_counter()
                        results = self._pipeline(conn, step)
                        named = "+".join(s.query for s in step.steps)
                        self._timed(named, time.perf_counter() - began)
                        step = program.send(results)
                        continue
                    began = time.perf_counter()
                    try:
                        rows = self._step(conn, step)
                    except DatabaseError as exc:
                        if not _skippable(conn, step, exc):
                            raise
                        logs.store.warning(
                            "%s failed, skipped: %s",
                            step.query,
                            exc,
                            extra={"statement": step.query, "schema": self.queries.schema},
                        )
                        rows = None
                    self._timed(step.query, time.perf_counter() - began)
                    step = program.send(rows)
            except StopIteration as done:
                result: R = done.value
            finally:  # idle from now on (see check_connection)
                _LAST_USED[conn] = time.monotonic()
        for action in after:
            action()
        return result

    def _step(self, conn: Connection[Any], step: Step) -> Any:
        """Run one statement; what ``step.fetch`` asks for."""
        _STREAMED.discard(conn)
        if step.hot:
            cur: Cursor[Any] = _kept_cursor(conn, step.query)
            self._send(cur, step)
        else:
            cur = conn.cursor(row_factory=tuple_row, binary=step.binary)
            if step.fetch is Fetch.FOLD:
                assert step.fold is not None
                fold = step.fold()
                query = self.queries[step.query]
                for row in cur.stream(query, step.params, size=STREAM_ROWS):
                    fold.add(row)
                _STREAMED.add(conn)
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
        return rows

    def _pipeline(self, conn: Connection[Any], pipeline: Pipeline) -> list[Any]:
        """Send every statement of ``pipeline``, then read the results (one round trip),
        each on the cursor kept for it (a fresh one for a statement whose rows are wanted
        that came earlier in the pipeline too)."""
        if conn in _STREAMED:
            _STREAMED.discard(conn)
            self._step(conn, _RESET_STREAM_MODE)
        cursors: list[Cursor[Any]] = []
        try:
            with conn.pipeline():
                for step in pipeline.steps:
                    cur = _kept_cursor(conn, step.query)
                    if step.fetch is not Fetch.NONE and cur in cursors:  # its rows are wanted
                        cur = RawCursor(conn, row_factory=tuple_row)
                    self._send(cur, step)
                    cursors.append(cur)
        except OperationalError as exc:
            # Not the server's answer but libpq's (e.g. the server went away while the
            # pipeline was ending): the connection's state is unknown, it is lost.
            if exc.sqlstate is None and not conn.closed:
                conn.close()
            raise
        return [_fetched(cur, step) for cur, step in zip(cursors, pipeline.steps, strict=True)]

    def _send(self, cur: Cursor[Any], step: Step) -> None:
        statement = self.queries.positional(step.query)
        cur.execute(statement.sql, statement.args(step.params))

    def _timed(self, query: str, seconds: float) -> None:
        if self.slow_statement is not None and seconds >= self.slow_statement:
            ms = round(seconds * 1000, 1)
            logs.store.warning(
                "slow statement %s: %.1f ms (schema %s)",
                query,
                ms,
                self.queries.schema,
                extra={"statement": query, "duration_ms": ms, "schema": self.queries.schema},
            )

    def run_batches(self, batch: Callable[[Any], Program[Batch]], start: Any) -> int:
        """Run one-transaction batches, each from where the last stopped, until one says
        it was the last; the total deleted."""
        total, resume = 0, start
        while True:
            try:
                done = self.run(batch(resume), transaction=True)
            except CommitUnknownError:  # deleting what is gone again deletes nothing
                done = self.run(batch(resume), transaction=True)
            total += done.deleted
            if done.resume is None:
                return total
            resume = done.resume
