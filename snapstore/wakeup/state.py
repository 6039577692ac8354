"""The pure parts of wakeups: the bounded queue and its counters, the reconnect
backoff, the poll cursor and the supervising program. No I/O: the listener
(`snapstore.wakeup.listener_async` and its generated sync twin) performs the
actions `supervise` yields.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final, Protocol

import psycopg

log = logging.getLogger("snapstore.wakeup")

# A poll for a timer runs this long after it came due (never sooner after the last
# poll), so the server's now() has passed it and a run of timers cannot spin the loop.
TIMER_GRACE: Final = 0.005


@dataclass(frozen=True, kw_only=True)
class WakeupStats:
    """Counters of one listener, or summed over a backend's listeners.

    ``received`` counts every id offered to the queue, from NOTIFY (``notified``)
    or from the fallback poll (``polled``); each one ends up exactly once as
    ``delivered``, ``coalesced`` (already pending), ``dropped`` (queue full) or
    still ``pending``. ``polls`` counts poll queries, ``reconnects`` successful
    reconnections after a lost LISTEN connection, ``listen_failures`` connections on
    which a NOTIFY round trip never came back (LISTEN through a transaction pooler):
    those listeners live on the fallback poll alone.
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
    listen_failures: int = 0

    @property
    def drop_rate(self) -> float:
        """Share of received ids the queue could not hold (0.0 before any)."""
        return self.dropped / self.received if self.received else 0.0

    def __add__(self, other: WakeupStats) -> WakeupStats:
        return WakeupStats(
            **{name: getattr(self, name) + getattr(other, name) for name in COUNTERS}
        )


COUNTERS: Final = tuple(f.name for f in fields(WakeupStats))


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


class Counted(Protocol):
    """What the registry needs of a listener."""

    def stats(self) -> WakeupStats: ...


class WakeupRegistry:
    """A backend's listeners: live ones plus the final counts of closed ones.

    Closed listeners keep counting in ``total()`` so a benchmark can report
    drops after its workers stopped; their abandoned ids stay in ``pending``,
    which keeps ``received == delivered + coalesced + dropped + pending`` true
    for the sum as well.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[Counted] = set()
        self._retired = WakeupStats()

    def add(self, listener: Counted) -> None:
        with self._lock:
            self._live.add(listener)

    def retire(self, listener: Counted, final: WakeupStats) -> None:
        with self._lock:
            if listener in self._live:
                self._live.discard(listener)
                self._retired += final

    def live(self) -> list[Counted]:
        with self._lock:
            return list(self._live)

    def total(self) -> WakeupStats:
        with self._lock:
            live, total = list(self._live), self._retired
        for listener in live:
            total += listener.stats()
        return total
