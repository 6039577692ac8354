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

Layout: `state` holds everything that is not I/O (the queue, backoff, poll
cursor and the supervising program, as a generator of actions), `options` the
settings and the plan built from them, `listener_async` the listener that
performs the actions (the sync `listener` is generated from it) and `waiting`
the few primitives that differ between a thread and a task.
"""

from snapstore.wakeup.listener import WakeupListener
from snapstore.wakeup.listener_async import AsyncWakeupListener
from snapstore.wakeup.options import ListenerPlan, WakeupOptions
from snapstore.wakeup.state import (
    TIMER_GRACE,
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
    next_poll_in,
    supervise,
)

__all__ = [
    "TIMER_GRACE",
    "AsyncWakeupListener",
    "Backoff",
    "Connect",
    "Disconnect",
    "Listen",
    "ListenerPlan",
    "Poll",
    "PollCursor",
    "Sleep",
    "WakeupListener",
    "WakeupOptions",
    "WakeupQueue",
    "WakeupRegistry",
    "WakeupStats",
    "next_poll_in",
    "supervise",
]
