"""LISTEN/NOTIFY wakeups with a bounded, coalescing queue and a fallback poll.

A wakeup is a *hint* that an instance may be dispatchable, never a job: workers
still take work through claims, so a lost or duplicated wakeup costs latency,
not correctness. That is what lets the queue stay bounded (an id arriving when
it is full is dropped, and counted) and what makes the fallback poll the real
safety net: it runs every ``poll_interval`` whatever happens, and at once after
every (re)connect, so work announced while the queue was full or while the
connection was down is found again, and so are timers, which become due
without anybody sending a NOTIFY.

Each listener owns ONE dedicated connection, outside the pool: LISTEN state
belongs to a session, and a pooled connection would be reset or handed to
another caller.

Layout: everything that is not I/O is pure and shared by the two shells, the
same way `snapstore.operations` programs are shared by the runners:
`WakeupQueue` (pending ids, coalescing, counters), `Backoff` (reconnect delay
schedule), `ListenerPlan` (statements and connection parameters) and
`supervise` (the connect / poll / listen / back off loop, as a generator of
`Action`s). `WakeupListener` runs it on a thread, `AsyncWakeupListener` on an
asyncio task; they only perform the actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Final, Self, TypedDict, Unpack

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row

from snapstore.errors import ConfigurationError
from snapstore.queries import Queries, wakeup_channel
from snapstore.runner import AsyncRunner, SyncRunner

log = logging.getLogger(__name__)

POLL_QUERY: Final = "wakeup_poll"
NEXT_DUE_QUERY: Final = "next_dispatch_at"
# A poll for a timer runs this long after it came due (never sooner after the last
# poll), so the server's now() has passed it and a run of timers cannot spin the loop.
TIMER_GRACE: Final = 0.005
DEFAULT_APPLICATION_NAME: Final = "snapstore-wakeup"
# How often a blocked sync listener looks at its stop flag: psycopg's notifies()
# cannot be interrupted from another thread, so it waits in slices this long.
STOP_CHECK_INTERVAL: Final = 0.1
CLOSE_TIMEOUT: Final = 10.0
# Unless the conninfo says otherwise. A LISTEN connection is idle most of the time,
# so a silently dead peer (network partition, failover) would otherwise only be
# noticed by the next poll, which could then hang for the kernel's retransmission
# timeout (~15 min); and a reconnect attempt must not outlast `close()` by much.
CONNECTION_DEFAULTS: Final[dict[str, Any]] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


@dataclass(frozen=True, kw_only=True)
class WakeupStats:
    """Counters of one listener, or summed over a backend's listeners.

    ``received`` counts every id offered to the queue, from NOTIFY (``notified``)
    or from the fallback poll (``polled``); each one ends up exactly once as
    ``delivered``, ``coalesced`` (already pending), ``dropped`` (queue full) or
    still ``pending``. ``polls`` counts poll queries, ``reconnects`` successful
    reconnections after a lost LISTEN connection.
    """

    received: int = 0
    notified: int = 0
    polled: int = 0
    delivered: int = 0
    coalesced: int = 0
    dropped: int = 0
    pending: int = 0
    reconnects: int = 0
    polls: int = 0

    @property
    def drop_rate(self) -> float:
        """Share of received ids the queue could not hold (0.0 before any)."""
        return self.dropped / self.received if self.received else 0.0

    def __add__(self, other: WakeupStats) -> WakeupStats:
        return WakeupStats(
            **{name: getattr(self, name) + getattr(other, name) for name in COUNTERS}
        )


COUNTERS: Final = tuple(f.name for f in fields(WakeupStats))


class WakeupSettings(TypedDict, total=False):
    """Keyword arguments of ``backend.wakeups(...)``; see `WakeupOptions`."""

    maxsize: int
    poll_interval: float
    backoff_initial: float
    backoff_max: float
    application_name: str
    conninfo: str | None


@dataclass(frozen=True)
class WakeupOptions:
    """How a listener queues, polls and reconnects.

    ``poll_interval`` bounds how long a lost NOTIFY, or a timer saved less than one
    interval before it is due, can wait; known timers get a poll of their own.
    ``conninfo`` overrides the pool's connection string for the LISTEN
    connection: LISTEN does not work through a transaction-pooling proxy
    (PgBouncer), so the listener may need to reach the server directly.
    """

    maxsize: int = 10_000
    poll_interval: float = 1.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    application_name: str = DEFAULT_APPLICATION_NAME
    conninfo: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.maxsize, bool) or not isinstance(self.maxsize, int) or self.maxsize < 1:
            raise ConfigurationError(f"maxsize must be an int >= 1 (got {self.maxsize!r})")
        if not self.poll_interval > 0:
            raise ConfigurationError(
                f"poll_interval must be positive: the fallback poll is always on "
                f"(got {self.poll_interval!r})"
            )
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ConfigurationError(
                f"backoff must satisfy 0 < backoff_initial <= backoff_max "
                f"(got {self.backoff_initial!r}, {self.backoff_max!r})"
            )


class WakeupQueue:
    """Pending instance ids in arrival order, bounded, every outcome counted.

    An insertion-ordered dict is the set: a duplicate id while pending is
    coalesced (one wakeup is as good as two: the consumer looks at the current
    state anyway) and an id arriving when ``maxsize`` ids are pending is dropped
    rather than grown without bound; the fallback poll finds it again. Not
    thread-safe: each shell serialises access.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._pending: dict[str, None] = {}
        self._counts = dict.fromkeys(COUNTERS, 0)

    def __len__(self) -> int:
        return len(self._pending)

    def free(self) -> int:
        return self.maxsize - len(self._pending)

    def offer(self, instance_ids: Iterable[str], *, polled: bool) -> bool:
        """Queue ids from NOTIFY or from a poll; True if any was newly queued."""
        counts, added = self._counts, False
        for instance_id in instance_ids:
            counts["received"] += 1
            counts["polled" if polled else "notified"] += 1
            if instance_id in self._pending:
                counts["coalesced"] += 1
            elif len(self._pending) >= self.maxsize:
                counts["dropped"] += 1
            else:
                self._pending[instance_id] = None
                added = True
        return added

    def take(self, max_items: int | None = None) -> list[str]:
        """Remove and return up to ``max_items`` ids (all when None), oldest first."""
        batch = list(itertools.islice(self._pending, max_items))
        for instance_id in batch:
            del self._pending[instance_id]
        self._counts["delivered"] += len(batch)
        return batch

    def record(self, counter: str) -> None:
        """Count a poll or a reconnect."""
        self._counts[counter] += 1

    def stats(self) -> WakeupStats:
        return WakeupStats(**{**self._counts, "pending": len(self._pending)})


class Backoff:
    """Reconnect delays: exponential from ``initial``, capped at ``maximum``, jittered.

    Equal jitter: half of each nominal delay is kept, so a server that keeps
    failing is not hammered by listeners whose random delay came out near zero;
    the other half is random, so listeners cut off together (a server restart)
    do not all come back in the same instant.
    """

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._attempt = 0

    def nominal(self, attempt: int) -> float:
        """The delay before jitter of the ``attempt``-th consecutive retry (from 0)."""
        return min(self.maximum, self.initial * 2.0 ** min(attempt, 62))

    def next_delay(self) -> float:
        half = self.nominal(self._attempt) / 2
        self._attempt += 1
        return half + self._rng.uniform(0.0, half)

    def reset(self) -> None:
        """Called once connected: the next failure starts from ``initial`` again."""
        self._attempt = 0


@dataclass(frozen=True)
class ListenerPlan:
    """What a listener runs, built once: channel, LISTEN and poll statements."""

    channel: str
    listen: sql.Composed
    poll: bytes
    next_due: bytes
    application_name: str

    @classmethod
    def build(cls, queries: Queries, application_name: str) -> ListenerPlan:
        channel = wakeup_channel(queries.schema)
        return cls(
            channel=channel,
            # The channel contains ':' and must match pg_notify's text argument
            # byte for byte, so it is always a quoted identifier.
            listen=sql.SQL("LISTEN {}").format(sql.Identifier(channel)),
            poll=queries[POLL_QUERY],
            next_due=queries[NEXT_DUE_QUERY],
            application_name=application_name,
        )

    def connect_kwargs(self, conninfo: str, pool_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The pool's connection kwargs, adapted to a LISTEN connection.

        Autocommit, because a LISTEN issued inside a transaction only takes
        effect at its commit; a name of its own, so it can be told apart in
        pg_stat_activity; tuple rows, whatever row factory the pool's connections
        use; `CONNECTION_DEFAULTS` unless the caller chose otherwise.
        """
        given = conninfo_to_dict(conninfo)
        kwargs = {
            **pool_kwargs,
            "autocommit": True,
            "application_name": self.application_name,
            "row_factory": tuple_row,
        }
        for key, value in CONNECTION_DEFAULTS.items():
            if key not in given and key not in kwargs:
                kwargs[key] = value
        return kwargs


class PollCursor:
    """Where the next fallback poll resumes in the due set, wrapping at its end.

    Polling always from the start would offer the same oldest ids again and
    again whenever consumers take them without claiming them (they route on
    tags, or are busy), and the ids behind them would never come back.
    """

    def __init__(self) -> None:
        self._after: tuple[datetime, str] | None = None

    def params(self, limit: int) -> dict[str, Any]:
        after_at, after_id = self._after or (None, None)
        return {"limit": limit, "after_at": after_at, "after_id": after_id}

    def advance(self, rows: Sequence[Any], limit: int) -> None:
        """A short page reached the end of the due set: start over next time."""
        self._after = (rows[-1][1], rows[-1][0]) if rows and len(rows) >= limit else None


# --- the supervising program: what to do next, as data --------------------------------


@dataclass(frozen=True)
class Connect:
    """Open the LISTEN connection (closing any previous one) and LISTEN."""

    reconnect: bool


@dataclass(frozen=True)
class Poll:
    """Run the fallback poll and queue what it finds. The shell sends back how many
    seconds until something else comes due by the clock (a timer, a retry, a lease
    running out), or None if nothing will."""


@dataclass(frozen=True)
class Listen:
    """Queue notifications as they arrive, for up to ``timeout`` seconds."""

    timeout: float


@dataclass(frozen=True)
class Disconnect:
    """Drop the (broken) connection quietly."""


@dataclass(frozen=True)
class Sleep:
    """Wait before reconnecting."""

    delay: float


Action = Connect | Poll | Listen | Disconnect | Sleep


def next_poll_in(poll_interval: float, due_in: float | None) -> float:
    """Seconds until the next poll: the interval, or just after the next timer."""
    if due_in is None:
        return poll_interval
    return min(poll_interval, max(due_in, 0.0) + TIMER_GRACE)


def supervise(
    poll_interval: float, backoff: Backoff, clock: Callable[[], float] = time.monotonic
) -> Generator[Action, float | None, None]:
    """The listener's life as a sequence of actions, shared by both shells.

    The shell sends the result of an action that succeeded (see `Poll`; None
    for the others) and throws the `psycopg.Error` of one that failed; any such
    error means the connection can no longer be trusted, so the program backs
    off and reconnects. A poll runs right after every connect: that is the
    catch-up for whatever was announced while nobody listened. No NOTIFY says
    that a timer came due, so the next poll comes then if that is sooner than
    ``poll_interval``.
    """
    reconnect = False
    while True:
        try:
            yield Connect(reconnect)
            backoff.reset()
            while True:
                due_in: float | None = yield Poll()
                deadline = clock() + next_poll_in(poll_interval, due_in)
                while (left := deadline - clock()) > 0:
                    yield Listen(left)
        except psycopg.Error as exc:
            log.warning("wakeup listener lost its connection (%s); reconnecting", exc)
            reconnect = True
        yield Disconnect()
        yield Sleep(backoff.next_delay())


# --- shells ------------------------------------------------------------------------------


class WakeupRegistry:
    """A backend's listeners: live ones plus the final counts of closed ones.

    Closed listeners keep counting in ``total()`` so a benchmark can report
    drops after its workers stopped; their abandoned ids stay in ``pending``,
    which keeps ``received == delivered + coalesced + dropped + pending`` true
    for the sum as well.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[_ListenerBase] = set()
        self._retired = WakeupStats()

    def add(self, listener: _ListenerBase) -> None:
        with self._lock:
            self._live.add(listener)

    def retire(self, listener: _ListenerBase, final: WakeupStats) -> None:
        with self._lock:
            if listener in self._live:
                self._live.discard(listener)
                self._retired += final

    def live(self) -> list[_ListenerBase]:
        with self._lock:
            return list(self._live)

    def total(self) -> WakeupStats:
        with self._lock:
            live, total = list(self._live), self._retired
        for listener in live:
            total += listener.stats()
        return total


def _resolve(value: Any) -> Any:
    """A pool's conninfo/kwargs may be a callable (rotating credentials)."""
    return value() if callable(value) else value


async def _aresolve(value: Any) -> Any:
    value = _resolve(value)
    return await value if inspect.isawaitable(value) else value


class _ListenerBase:
    """State and bookkeeping common to both shells; no I/O here.

    ``_guard`` serialises access to the queue: a condition variable for the
    thread shell, a no-op for the asyncio shell (one event loop, and no await
    while it is held).
    """

    _guard: contextlib.AbstractContextManager[Any]

    def __init__(
        self,
        plan: ListenerPlan,
        options: WakeupOptions,
        conninfo: Any,
        pool_kwargs: Any,
        registry: WakeupRegistry | None,
    ) -> None:
        self.options = options
        self._plan = plan
        self._conninfo_source = options.conninfo if options.conninfo is not None else conninfo
        self._kwargs_source = pool_kwargs
        self._queue = WakeupQueue(options.maxsize)
        self._cursor = PollCursor()
        self._program = supervise(
            options.poll_interval, Backoff(options.backoff_initial, options.backoff_max)
        )
        self._registry = registry
        self._backend_pid: int | None = None
        self._closed = False

    @property
    def channel(self) -> str:
        return self._plan.channel

    @property
    def backend_pid(self) -> int | None:
        """PID of the LISTEN connection's server process; None while disconnected."""
        return self._backend_pid

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> WakeupStats:
        with self._guard:
            return self._queue.stats()

    def _wake_consumers(self) -> None:
        """Called with the guard held after ids were queued or the listener closed."""
        raise NotImplementedError

    def _offer(self, instance_ids: Iterable[str], *, polled: bool) -> None:
        with self._guard:
            if self._queue.offer(instance_ids, polled=polled):
                self._wake_consumers()

    def _on_notify(self, notify: psycopg.Notify) -> None:
        if notify.channel == self._plan.channel and notify.payload:
            self._offer((notify.payload,), polled=False)

    def _poll_params(self) -> dict[str, Any] | None:
        """Parameters of the next poll, or None when the queue is full (nothing
        found could be queued; the next poll after consumers drained catches up)."""
        with self._guard:
            free = self._queue.free()
        return self._cursor.params(free) if free > 0 else None

    def _polled(self, params: dict[str, Any], rows: Sequence[Any]) -> None:
        self._cursor.advance(rows, params["limit"])
        with self._guard:
            self._queue.record("polls")
        self._offer((row[0] for row in rows), polled=True)

    @staticmethod
    def _due_in(row: Sequence[Any] | None) -> float | None:
        """Seconds from the server's now() to the next due time, if any."""
        if row is None or row[0] is None:
            return None
        next_at: datetime = row[0]
        server_now: datetime = row[1]
        return (next_at - server_now).total_seconds()

    def _connected(self, pid: int, *, reconnect: bool) -> None:
        self._backend_pid = pid
        if reconnect:
            with self._guard:
                self._queue.record("reconnects")
            log.info("wakeup listener on %s reconnected", self._plan.channel)

    def _take(self, max_items: int | None) -> list[str]:
        if max_items is not None and max_items < 1:
            raise ConfigurationError("max_items must be None or >= 1")
        return self._queue.take(max_items)

    def _finish(self) -> None:
        """Mark closed, release waiting consumers and hand the counts to the backend."""
        with self._guard:
            self._closed = True
            self._wake_consumers()
        if self._registry is not None:
            self._registry.retire(self, self.stats())


class WakeupListener(_ListenerBase):
    """Wakeups for a sync backend, from a background thread. Use as a context manager.

    ``get(timeout)`` returns a batch of instance ids (``[]`` on timeout or once
    closed). Created by ``backend.wakeups(...)``: by the time it returns, LISTEN
    is active and the first poll has queued the work that was already due.
    """

    def __init__(
        self,
        plan: ListenerPlan,
        options: WakeupOptions,
        conninfo: Any,
        pool_kwargs: Any,
        registry: WakeupRegistry | None = None,
    ) -> None:
        super().__init__(plan, options, conninfo, pool_kwargs, registry)
        self._cond = threading.Condition()
        self._guard = self._cond
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(
            target=self._drive, name=f"snapstore-wakeup:{plan.channel}", daemon=True
        )
        try:
            action = next(self._program)
            while not isinstance(action, Listen):  # first connect and poll: errors to the caller
                action = self._program.send(self._execute(action))
        except BaseException:
            self._program.close()
            self._disconnect()
            self._closed = True
            raise
        self._first = action
        if registry is not None:
            registry.add(self)
        self._thread.start()

    def get(self, timeout: float | None = None, *, max_items: int | None = None) -> list[str]:
        """Wait up to ``timeout`` seconds (forever if None) for ids; a batch, oldest first."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._queue) > 0 or self._closed, timeout)
            return self._take(max_items)

    def close(self) -> None:
        """Stop the thread and close the connection. Idempotent."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(CLOSE_TIMEOUT)
            if self._thread.is_alive():
                log.warning("wakeup listener thread did not stop within %ss", CLOSE_TIMEOUT)
        if not self._closed:
            self._finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _wake_consumers(self) -> None:
        self._cond.notify_all()

    def _drive(self) -> None:
        action: Action = self._first
        try:
            while not self._stopping.is_set():
                try:
                    result = self._execute(action)
                except psycopg.Error as exc:
                    action = self._program.throw(exc)
                else:
                    action = self._program.send(result)
        except Exception:
            log.exception("wakeup listener on %s failed; it is closed", self._plan.channel)
        finally:
            self._program.close()
            self._disconnect()
            self._finish()

    def _execute(self, action: Action) -> float | None:
        match action:
            case Connect(reconnect):
                self._connect(reconnect=reconnect)
            case Poll():
                return self._poll()
            case Listen(timeout):
                self._listen(timeout)
            case Disconnect():
                self._disconnect()
            case Sleep(delay):
                self._stopping.wait(delay)
        return None

    def _connect(self, *, reconnect: bool) -> None:
        self._disconnect()
        conninfo = _resolve(self._conninfo_source)
        kwargs = self._plan.connect_kwargs(conninfo, _resolve(self._kwargs_source) or {})
        conn = psycopg.Connection.connect(conninfo, **kwargs)
        try:
            conn.execute(self._plan.listen)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._connected(conn.info.backend_pid, reconnect=reconnect)

    def _poll(self) -> float | None:
        assert self._conn is not None
        params = self._poll_params()
        if params is not None:
            self._polled(params, self._conn.execute(self._plan.poll, params).fetchall())
        return self._due_in(self._conn.execute(self._plan.next_due).fetchone())

    def _listen(self, timeout: float) -> None:
        assert self._conn is not None
        deadline = time.monotonic() + timeout
        while not self._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            for notify in self._conn.notifies(timeout=min(left, STOP_CHECK_INTERVAL)):
                self._on_notify(notify)

    def _disconnect(self) -> None:
        conn, self._conn, self._backend_pid = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class AsyncWakeupListener(_ListenerBase):
    """The asyncio twin of `WakeupListener`, driven by a task. ``async with`` it.

    Created by ``await abackend.wakeups(...)``; ``await get(timeout)``.
    """

    def __init__(
        self,
        plan: ListenerPlan,
        options: WakeupOptions,
        conninfo: Any,
        pool_kwargs: Any,
        registry: WakeupRegistry | None = None,
    ) -> None:
        super().__init__(plan, options, conninfo, pool_kwargs, registry)
        self._guard = contextlib.nullcontext()
        self._ready = asyncio.Event()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        plan: ListenerPlan,
        options: WakeupOptions,
        conninfo: Any,
        pool_kwargs: Any,
        registry: WakeupRegistry | None = None,
    ) -> AsyncWakeupListener:
        """Connect, LISTEN and poll once (errors go to the caller), then run in a task."""
        self = cls(plan, options, conninfo, pool_kwargs, registry)
        try:
            action = next(self._program)
            while not isinstance(action, Listen):
                action = self._program.send(await self._execute(action))
        except BaseException:
            self._program.close()
            await self._disconnect()
            self._closed = True
            raise
        if registry is not None:
            registry.add(self)
        self._task = asyncio.create_task(self._drive(action), name=f"wakeup:{plan.channel}")
        return self

    async def get(self, timeout: float | None = None, *, max_items: int | None = None) -> list[str]:
        """Wait up to ``timeout`` seconds (forever if None) for ids; a batch, oldest first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self._queue and not self._closed:
                    self._ready.clear()
                    await self._ready.wait()
        return self._take(max_items)

    async def close(self) -> None:
        """Cancel the task and close the connection. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if not self._closed:
            await self._disconnect()
            self._finish()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _wake_consumers(self) -> None:
        self._ready.set()

    async def _drive(self, action: Action) -> None:
        try:
            while True:
                try:
                    result = await self._execute(action)
                except psycopg.Error as exc:
                    action = self._program.throw(exc)
                else:
                    action = self._program.send(result)
        except Exception:
            log.exception("wakeup listener on %s failed; it is closed", self._plan.channel)
        finally:
            self._program.close()
            await self._disconnect()
            self._finish()

    async def _execute(self, action: Action) -> float | None:
        match action:
            case Connect(reconnect):
                await self._connect(reconnect=reconnect)
            case Poll():
                return await self._poll()
            case Listen(timeout):
                await self._listen(timeout)
            case Disconnect():
                await self._disconnect()
            case Sleep(delay):
                await asyncio.sleep(delay)
        return None

    async def _connect(self, *, reconnect: bool) -> None:
        await self._disconnect()
        conninfo = await _aresolve(self._conninfo_source)
        kwargs = self._plan.connect_kwargs(conninfo, await _aresolve(self._kwargs_source) or {})
        conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
        try:
            await conn.execute(self._plan.listen)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._connected(conn.info.backend_pid, reconnect=reconnect)

    async def _poll(self) -> float | None:
        assert self._conn is not None
        params = self._poll_params()
        if params is not None:
            cur = await self._conn.execute(self._plan.poll, params)
            self._polled(params, await cur.fetchall())
        cur = await self._conn.execute(self._plan.next_due)
        return self._due_in(await cur.fetchone())

    async def _listen(self, timeout: float) -> None:
        assert self._conn is not None
        async for notify in self._conn.notifies(timeout=timeout):
            self._on_notify(notify)

    async def _disconnect(self) -> None:
        conn, self._conn, self._backend_pid = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


# --- backend mixins ------------------------------------------------------------------------


class _WakeupHost:
    """What both backend mixins share: the plan and the per-backend registry."""

    queries: Queries
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def _wakeup_registry(self) -> WakeupRegistry:
        # Lazily created: the backends' __init__ knows nothing of feature mixins.
        with self._registry_lock:
            found: WakeupRegistry | None = self.__dict__.get("_wakeups")
            if found is None:
                found = self.__dict__["_wakeups"] = WakeupRegistry()
            return found

    def _wakeup_setup(self, settings: WakeupSettings) -> tuple[WakeupOptions, ListenerPlan]:
        options = WakeupOptions(**settings)
        return options, ListenerPlan.build(self.queries, options.application_name)

    def wakeup_stats(self) -> WakeupStats:
        """Counters summed over every listener this backend created, open or closed."""
        return self._wakeup_registry().total()


class WakeupMixin(_WakeupHost, SyncRunner):
    """LISTEN/NOTIFY wakeups with a bounded, coalescing queue and a fallback poll. (sync)"""

    def wakeups(self, **settings: Unpack[WakeupSettings]) -> WakeupListener:
        """Start a listener for this schema's wakeups (see `WakeupOptions` for settings).

        It uses one connection of its own, made from the pool's conninfo and
        kwargs (or ``conninfo=``); close it, or use it as a context manager.
        """
        options, plan = self._wakeup_setup(settings)
        return WakeupListener(
            plan, options, self._pool.conninfo, self._pool.kwargs, self._wakeup_registry()
        )

    def close_wakeups(self) -> None:
        """Close every listener of this backend that is still open (e.g. at shutdown)."""
        for listener in self._wakeup_registry().live():
            if isinstance(listener, WakeupListener):
                listener.close()


class AsyncWakeupMixin(_WakeupHost, AsyncRunner):
    """LISTEN/NOTIFY wakeups with a bounded, coalescing queue and a fallback poll. (async)"""

    async def wakeups(self, **settings: Unpack[WakeupSettings]) -> AsyncWakeupListener:
        """Start a listener task for this schema's wakeups (see `WakeupOptions`)."""
        options, plan = self._wakeup_setup(settings)
        return await AsyncWakeupListener.start(
            plan, options, self._pool.conninfo, self._pool.kwargs, self._wakeup_registry()
        )

    async def close_wakeups(self) -> None:
        """Close every listener of this backend that is still open (e.g. at shutdown)."""
        for listener in self._wakeup_registry().live():
            if isinstance(listener, AsyncWakeupListener):
                await listener.close()


__all__ = [
    "AsyncWakeupListener",
    "Backoff",
    "ListenerPlan",
    "PollCursor",
    "WakeupListener",
    "WakeupOptions",
    "WakeupQueue",
    "WakeupSettings",
    "WakeupStats",
    "supervise",
]
