"""How workers find work: through the store (claims + wakeups) or in-process.

The store-backed dispatcher is the real thing (find_available_tasks, fenced
saves, release, LISTEN/NOTIFY). The in-process one is the fallback used while
those APIs are missing, and the deliberate choice for the pure save-path
workloads, where dispatch statements would only dilute the saves/s figure.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench import api
from snapstore import WorkflowSnapshot

IDLE_WAIT = 0.02  # seconds a worker waits for a wakeup before polling the store again


@dataclass
class Job:
    """One instance handed to a worker. ``snapshot=None`` means: load it first."""

    instance_id: str
    version: int
    snapshot: WorkflowSnapshot | None
    claim: Any = None


class Dispatcher(Protocol):
    mode: str

    def submit(self, job: Job, ready_at: float) -> None:
        """Make ``job`` runnable at monotonic time ``ready_at`` (store-backed: no-op)."""

    def take(self, worker_id: str, limit: int) -> list[Job]:
        """Up to ``limit`` runnable jobs; may block briefly when there are none."""

    def finish(self, job: Job) -> None:
        """The worker is done with ``job`` for now (release its claim)."""

    def wakeup_stats(self) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


@dataclass(order=True)
class _Entry:
    ready_at: float
    seq: int
    job: Job = field(compare=False)


class InProcessDispatcher:
    """A timer-aware queue shared by the worker threads of one run."""

    mode = "in-process"

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()

    def submit(self, job: Job, ready_at: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, _Entry(ready_at, next(self._seq), job))
            self._cond.notify()

    def take(self, worker_id: str, limit: int) -> list[Job]:
        with self._cond:
            now = time.monotonic()
            if not self._heap or self._heap[0].ready_at > now:
                wait = IDLE_WAIT if not self._heap else min(IDLE_WAIT, self._heap[0].ready_at - now)
                self._cond.wait(max(wait, 0.0))
                now = time.monotonic()
            jobs: list[Job] = []
            while self._heap and self._heap[0].ready_at <= now and len(jobs) < limit:
                jobs.append(heapq.heappop(self._heap).job)
            return jobs

    def finish(self, job: Job) -> None:
        pass

    def wakeup_stats(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        pass


class StoreDispatcher:
    """Claims through the store; idle workers wait on the wakeup listener.

    With wakeups, a worker takes a batch of ids from the listener and leases
    them with ``claim_notified`` (the listener's own fallback poll finds timers
    that came due and anything a full queue dropped). Without wakeups it polls
    ``find_available_tasks``. One listener per run: the design allows one LISTEN
    connection per process.
    """

    def __init__(
        self, backend: Any, *, ttl: float, use_wakeups: bool, poll_interval: float, on_error: Any
    ) -> None:
        self._backend = backend
        self._ttl = ttl
        self._on_error = on_error
        self._listener = api.open_wakeups(backend, poll_interval) if use_wakeups else None
        self.mode = "claims+wakeups" if self._listener is not None else "claims+poll"

    def _bad(self, exc: BaseException, claim: Any) -> None:
        self._on_error(exc)
        api.release(self._backend, claim)

    def submit(self, job: Job, ready_at: float) -> None:
        pass  # the committed row is the dispatch: available_at, plus a NOTIFY when due

    def take(self, worker_id: str, limit: int) -> list[Job]:
        if self._listener is not None:
            ids = api.wakeup_batch(self._listener, IDLE_WAIT, limit)
            found = (
                api.claim_notified(self._backend, ids, worker_id, ttl=self._ttl, on_error=self._bad)
                if ids
                else []
            )
        else:
            found = api.find_available(
                self._backend, worker_id, limit=limit, ttl=self._ttl, on_error=self._bad
            )
            if not found:
                time.sleep(IDLE_WAIT)
        return [Job(c.instance_id, s.version, s.snapshot, c) for c, s in found]

    def finish(self, job: Job) -> None:
        api.release(self._backend, job.claim)

    def wakeup_stats(self) -> dict[str, Any] | None:
        return None if self._listener is None else api.wakeup_counters(self._listener)

    def close(self) -> None:
        if self._listener is not None:
            api.close_wakeups(self._listener)
