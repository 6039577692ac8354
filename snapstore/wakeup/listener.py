# Generated from snapstore/wakeup/listener_async.py by snapstore/_async_to_sync.py: do not edit.
# Change the async source, then run `make sync`.
"""The wakeup listener: one dedicated LISTEN connection, driven in the background.

It performs the actions of `supervise` (connect, poll, listen, back off) and
queues what NOTIFY and the polls bring; consumers take batches with ``get``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg import Connection

from snapstore.errors import ConfigurationError, UnavailableError
from snapstore.wakeup.options import PROBE_TIMEOUT, ListenerPlan
from snapstore.wakeup.state import (
    Action,
    Backoff,
    Connect,
    Disconnect,
    Listen,
    Poll,
    PollCursor,
    Sleep,
    WakeupQueue,
    WakeupRegistry,
    WakeupStats,
    log,
    supervise,
)
from snapstore.wakeup.waiting import (
    STOP_CHECK_INTERVAL,
    Mailbox,
    Worker,
    resolve,
)


class WakeupListener:
    """Wakeups for threads, from a background thread. ``with`` it.

    Made by ``backend.wakeups(...)``: by the time that returns, LISTEN is
    active and the first poll has queued the work that was already due.
    ``get(timeout)`` returns a batch of instance ids (``[]`` on timeout or
    once closed).
    """

    def __init__(
        self, plan: ListenerPlan, conninfo: Any, pool_kwargs: Any, registry: WakeupRegistry
    ) -> None:
        """State only: `start` connects and runs it (``backend.wakeups`` calls both)."""
        self.plan = plan
        self._conninfo_source = plan.conninfo if plan.conninfo is not None else conninfo
        self._kwargs_source = pool_kwargs
        self._queue = WakeupQueue(plan.maxsize)
        self._cursor = PollCursor()
        self._program = supervise(
            plan.poll_interval, Backoff(plan.backoff_initial, plan.backoff_max)
        )
        self._registry = registry
        self._mailbox = Mailbox()
        self._worker = Worker(self._drive, name=f"snapstore-wakeup:{plan.channel}")
        self._conn: Connection[Any] | None = None
        self._backend_pid: int | None = None
        self._first: Action | None = None
        self._closed = False

    @classmethod
    def start(
        cls, plan: ListenerPlan, conninfo: Any, pool_kwargs: Any, registry: WakeupRegistry
    ) -> Self:
        """Connect, LISTEN and poll once (errors go to the caller), then run in the
        background."""
        self = cls(plan, conninfo, pool_kwargs, registry)
        try:
            action = next(self._program)
            while not isinstance(action, Listen):
                action = self._program.send(self._execute(action))
        except BaseException as exc:
            self._program.close()
            self._disconnect()
            self._closed = True
            if isinstance(exc, psycopg.Error):
                raise UnavailableError(f"wakeup listener cannot start: {exc}") from exc
            raise
        self._first = action
        registry.add(self)
        self._worker.start()
        return self

    @property
    def channel(self) -> str:
        """The NOTIFY channel of the backend's schema."""
        return self.plan.channel

    @property
    def backend_pid(self) -> int | None:
        """PID of the LISTEN connection's server process; None while disconnected."""
        return self._backend_pid

    @property
    def closed(self) -> bool:
        """Whether the listener has stopped (closed, or failed for good)."""
        return self._closed

    def stats(self) -> WakeupStats:
        """This listener's counters (see `WakeupStats`)."""
        with self._mailbox.guard:
            return self._queue.stats()

    def get(self, timeout: float | None = None, *, max_items: int | None = None) -> list[str]:
        """Wait up to ``timeout`` seconds (forever if None) for ids; a batch, oldest first."""
        if max_items is not None and (
            isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1
        ):
            raise ConfigurationError("max_items must be None or an int >= 1")
        return self._mailbox.wait(
            lambda: len(self._queue) > 0 or self._closed,
            lambda: self._queue.take(max_items),
            timeout,
        )

    def close(self) -> None:
        """Stop the background work and close the connection. Idempotent."""
        self._worker.stop()
        if not self._closed:
            if not self._worker.running:  # else the stuck loop still uses the connection
                self._disconnect()
            self._finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- the background loop ---------------------------------------------------------------

    def _drive(self) -> None:
        action = self._first
        assert action is not None
        try:
            while not self._worker.stopping:
                try:
                    result = self._execute(action)
                except psycopg.Error as exc:
                    action = self._program.throw(exc)
                else:
                    action = self._program.send(result)
        except Exception:
            log.exception("wakeup listener on %s failed; it is closed", self.plan.channel)
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
                self._worker.sleep(delay)
        return None

    def _connect(self, *, reconnect: bool) -> None:
        self._disconnect()
        conninfo = resolve(self._conninfo_source)
        kwargs = self.plan.connect_kwargs(conninfo, resolve(self._kwargs_source) or {})
        conn = Connection.connect(conninfo, **kwargs)
        try:
            conn.execute(self.plan.listen)
            heard = self._round_trip(conn, conninfo, kwargs)
        except BaseException:
            conn.close()
            raise
        if not heard:
            with self._mailbox.guard:
                self._queue.record("listen_failures")
            log.warning(
                "wakeup listener on %s never heard its own NOTIFY: LISTEN does not work on"
                " this connection (a transaction pooler?); it relies on the fallback poll"
                " every %ss. Give wakeups(conninfo=...) a direct connection.",
                self.plan.channel,
                self.plan.poll_interval,
            )
        self._conn = conn
        self._backend_pid = conn.info.backend_pid
        if reconnect:
            with self._mailbox.guard:
                self._queue.record("reconnects")
            log.info("wakeup listener on %s reconnected", self.plan.channel)

    def _round_trip(self, conn: Connection[Any], conninfo: str, kwargs: dict[str, Any]) -> bool:
        """Whether a NOTIFY sent now from another connection comes back on ``conn``
        within `PROBE_TIMEOUT` (real wakeups arriving meanwhile are queued, not lost).
        From another one: behind a transaction pooler a NOTIFY sent on the listener's
        own connection may run on the very server connection that did LISTEN, and come
        back, while everyone else's never would."""
        try:
            sender = Connection.connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:  # LISTEN itself worked: carry on with it
            log.warning("wakeup listener on %s could not verify LISTEN: %s", self.plan.channel, exc)
            return True
        try:
            sender.execute(self.plan.probe)
        finally:
            sender.close()
        notifies = conn.notifies(timeout=PROBE_TIMEOUT)
        with contextlib.closing(notifies):  # let go of the connection at once
            for notify in notifies:
                if notify.channel != self.plan.channel:
                    continue
                if not notify.payload:
                    return True
                self._offer((notify.payload,), polled=False)
        return False

    def _poll(self) -> float | None:
        """Queue what is due (unless the queue is full: nothing found could be queued,
        and the next poll after consumers drained catches up); seconds until the next
        due time, by the server's clock."""
        assert self._conn is not None
        with self._mailbox.guard:
            free = self._queue.free()
        if free > 0:
            params = self._cursor.params(free)
            cur = self._conn.execute(self.plan.poll, params)
            rows = cur.fetchall()
            self._cursor.advance(rows, free)
            with self._mailbox.guard:
                self._queue.record("polls")
            self._offer((row[0] for row in rows), polled=True)
        cur = self._conn.execute(self.plan.next_due)
        return _due_in(cur.fetchone())

    def _listen(self, timeout: float) -> None:
        assert self._conn is not None
        deadline = time.monotonic() + timeout
        while not self._worker.stopping and (left := deadline - time.monotonic()) > 0:
            for notify in self._conn.notifies(timeout=min(left, STOP_CHECK_INTERVAL)):
                if notify.channel == self.plan.channel and notify.payload:
                    self._offer((notify.payload,), polled=False)

    def _disconnect(self) -> None:
        conn, self._conn, self._backend_pid = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _offer(self, instance_ids: Iterable[str], *, polled: bool) -> None:
        with self._mailbox.guard:
            if self._queue.offer(instance_ids, polled=polled):
                self._mailbox.wake()

    def _finish(self) -> None:
        """Mark closed, release waiting consumers and hand the counts to the backend."""
        with self._mailbox.guard:
            self._closed = True
            self._mailbox.wake()
        self._registry.retire(self, self.stats())


def _due_in(row: Sequence[Any] | None) -> float | None:
    """Seconds from the server's now() to the next due time, if any."""
    if row is None or row[0] is None:
        return None
    next_at: datetime = row[0]
    server_now: datetime = row[1]
    return (next_at - server_now).total_seconds()
