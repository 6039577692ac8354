"""Read replicas: reads that tolerate lag served by hot standbys, and when the primary
answers them instead. Shared by both backends (no I/O here: the backends' ``_read``
runs the same program on a replica's pool or on the primary's).

A backend given replicas (``connect(..., replicas=[...])``) sends `load`, `history`,
`list` and `load_task_result` to one of them, round robin; everything else (saves,
claims, dispatch, signals, events, LISTEN, migrations, stats) goes to the primary. The
primary answers a read instead, and its answer (or error) is the caller's, when:

* the caller says so (``replica=False``);
* the replica's answer is older than the caller's ``min_version`` (read-your-writes:
  the version a save returned), or lacks the instance;
* the replica failed the read: no connection within
  `snapstore.config.REPLICA_CHECKOUT_TIMEOUT`, the connection lost, or the server
  refused the statement (a recovery conflict, a migration not replayed yet...);
* every replica is marked down: one that cannot hand out a connection is skipped for
  `RETRY_AFTER` seconds, so a dead replica costs one slow read now and then, not
  every read.

A replica that cannot be reached does not fail ``connect``: its pool opens without
waiting and is marked down (logged) once it gives up connecting; reads go to the
primary until it serves again. What happened is counted in the backend's `counts`:
``replica_reads`` (served by a replica) and ``replica_fallbacks_<reason>`` (behind,
unavailable, refused, down).
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Final, Generic, TypeVar

from snapstore import checks, logs, programs
from snapstore import rows as rw
from snapstore.errors import ServerError, UnavailableError
from snapstore.model import HistoryEntry, StoredSnapshot, TaskResult
from snapstore.programs import OperationalCounts, Program, Step

T = TypeVar("T")

RETRY_AFTER: Final = 5.0
"""Seconds a replica that could not hand out a connection is left alone before a read
tries it again (its pool keeps reconnecting meanwhile when asked)."""
LOG_EVERY: Final = 10.0
"""Seconds between two warnings of one replica that it refused reads."""


def check_min_version(min_version: object) -> int | None:
    """None (any version will do) or a version >= 1."""
    return (
        None if min_version is None else checks.check_version("min_version", min_version, minimum=1)
    )


def version_reached(version: int | None, floor: int | None) -> bool:
    """Whether a replica at ``version`` (None: it lacks the instance) serves a caller
    needing ``floor`` (None: any answer will do)."""
    return floor is None or (version is not None and version >= floor)


def load_reached(stored: StoredSnapshot | None, floor: int | None) -> bool:
    """Whether a replica's `load` answer will do for a caller needing ``floor``."""
    return version_reached(None if stored is None else stored.version, floor)


def history_reached(entries: Sequence[HistoryEntry], floor: int | None, limit: int | None) -> bool:
    """Whether a replica's `history` answer will do: it shows version ``floor`` or
    later, or is a full page (history is append-only, so a full page of earlier
    versions is the page the primary would return too)."""
    if floor is None or (limit is not None and len(entries) >= limit):
        return True
    return version_reached(entries[-1].version if entries else None, floor)


def task_result_at(instance_id: str, task_id: str) -> Program[tuple[int | None, TaskResult | None]]:
    """The instance's version, then the task's result: read in that order (each
    statement sees what the one before saw or later), a result from a replica at that
    version or later belongs to a checkpoint at least that recent."""
    rw.task_params(instance_id, task_id)  # checked before any I/O
    row = yield Step("instance_version", {"instance_id": instance_id})
    version = None if row is None else int(row[0])
    result = yield from programs.load_task_result(instance_id, task_id)
    return version, result


class Replica(Generic[T]):
    """One replica: its pool, what runs reads on it (a runner), and whether it is worth
    asking now."""

    def __init__(self, name: str, pool: Any, runner: T, *, schema: str) -> None:
        self.name = name
        self.pool = pool
        self.runner = runner
        self.extra = {"pool": name, "schema": schema}  # of its log records
        self.down_until = 0.0  # time.monotonic(); skipped until then
        self.down = False  # marked down and not served a read since
        self.said = -LOG_EVERY
        self._lock = threading.Lock()
        _MEMBERS[pool] = weakref.ref(self)

    def mark_down(self, reason: str) -> None:
        """Skip this replica for `RETRY_AFTER` seconds (said once per outage)."""
        with self._lock:
            self.down_until = time.monotonic() + RETRY_AFTER
            first, self.down = not self.down, True
        if first:
            logs.pool.warning(
                "replica %s unavailable, reads go to the primary: %s",
                self.name,
                reason,
                extra=self.extra,
            )

    def mark_up(self) -> None:
        """It answered a read (said once after an outage)."""
        with self._lock:
            back, self.down = self.down, False
        if back:
            logs.pool.info("replica %s serves reads again", self.name, extra=self.extra)


_MEMBERS: Final[weakref.WeakKeyDictionary[Any, weakref.ref[Replica[Any]]]] = (
    weakref.WeakKeyDictionary()
)


def unreachable(pool: Any) -> None:
    """An owned replica pool's ``reconnect_failed`` hook: it could not connect for a
    while (at ``connect``, or since the replica went away), so reads skip it."""
    ref = _MEMBERS.get(pool)
    member = None if ref is None else ref()
    if member is not None:
        member.mark_down("cannot connect")


class Replicas(Generic[T]):
    """A backend's replicas: which one a read goes to, and what became of it."""

    def __init__(self, members: Sequence[Replica[T]], counts: OperationalCounts) -> None:
        self.members = tuple(members)
        self.counts = counts
        self._turn = itertools.count()

    def __bool__(self) -> bool:
        return bool(self.members)

    def pick(self, allowed: bool) -> Replica[T] | None:
        """The replica to ask next (round robin over those not marked down), or None:
        the primary answers (none allowed, none configured, or all down)."""
        if not allowed or not self.members:
            return None
        now, start, n = time.monotonic(), next(self._turn), len(self.members)
        for k in range(n):
            member = self.members[(start + k) % n]
            if member.down_until <= now:
                return member
        self.counts.count("replica_fallbacks_down")
        return None

    def served(self, member: Replica[T]) -> None:
        """``member`` answered a read."""
        self.counts.count("replica_reads")
        if member.down:
            member.mark_up()

    def behind(self, member: Replica[T]) -> None:
        """``member``'s answer was older than the caller needed: the primary answers."""
        self.counts.count("replica_fallbacks_behind")

    def failed(self, member: Replica[T], error: UnavailableError | ServerError) -> None:
        """``member`` failed a read: the primary answers it. One that could not hand out
        a connection is marked down; a lost connection or a refused statement (a
        recovery conflict) is not, as the next read may well succeed."""
        if isinstance(error, UnavailableError):
            self.counts.count("replica_fallbacks_unavailable")
            if not error.connection_lost:
                member.mark_down(str(error))
                return
        else:
            self.counts.count("replica_fallbacks_refused")
        now = time.monotonic()
        if now - member.said >= LOG_EVERY:
            member.said = now
            logs.pool.warning(
                "replica %s failed a read, the primary answered it: %s",
                member.name,
                error,
                extra=member.extra,
            )


__all__ = [
    "RETRY_AFTER",
    "Replica",
    "Replicas",
    "check_min_version",
    "history_reached",
    "load_reached",
    "task_result_at",
    "unreachable",
    "version_reached",
]
