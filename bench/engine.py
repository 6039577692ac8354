"""Drives workflow workloads through snapstore's public API and measures them.

Every run is closed-loop: workers keep a bounded number of workflows in
flight, creating a new one whenever there is room, so the store (not the
harness) sets the pace. Rates are "events inside the window / window".
"""

from __future__ import annotations

import itertools
import queue
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench import api, db
from bench.dispatch import Dispatcher, InProcessDispatcher, Job, StoreDispatcher
from bench.stats import Recorder, summarize_ms
from bench.workflows import (
    DEFINITIONS,
    SIGNAL_NAME,
    Definition,
    Outcome,
    Shape,
    branch_result,
)
from snapstore import AtDelay, AtSignal, PostgresBackend, WorkflowSnapshot, WorkflowStatus
from snapstore.model import SaveRequest

SAVE_WORKLOADS = ("saves", "save_many", "group_commit")
FLOW_WORKLOADS = ("linear", "fanout", "fanout_parallel", "signal", "timer")
ALL_WORKLOADS = SAVE_WORKLOADS + FLOW_WORKLOADS
CLAIM_TTL = 30.0
JOIN_TIMEOUT = 10.0
# Workflows in flight per worker. The save-path runs keep a backlog so no worker ever
# idles (saves/s is their point); claim-dispatched runs keep one per worker so pickup
# latency measures dispatch, not a queue the harness built itself (in a saturated
# closed loop, latency = in-flight / throughput); parked runs need room for sleepers.
IN_FLIGHT_PER_WORKER = {
    "saves": 4,
    "group_commit": 4,
    "linear": 1,
    "signal": 2,
    "timer": 8,
}
SIGNAL_PRODUCERS_PER_WORKER = 0.25  # threads calling send_event, the "external system"
ERROR_PAUSE = 0.05  # after an unexpected error, so a broken dependency cannot spin a core


@dataclass(frozen=True)
class RunSpec:
    """One measured run: a workload, a codec, how long and how wide."""

    workload: str
    codec: str
    duration: float
    concurrency: int
    shape: Shape = field(default_factory=Shape)
    batch: int = 10
    group_threads: int = 32
    poll_interval: float = 0.1  # the wakeup listener's fallback poll: bounds timer lateness
    wakeups: bool = True  # False: flow workers poll find_available_tasks even if wakeups exist
    warmup: float = 1.0  # unmeasured seconds before the window (see `run`)


class PickupClock:
    """Time from "dispatchable" to "claimed", tolerant of the claim racing the record.

    The committing thread learns the row is dispatchable only after the commit
    returns, and another worker may have claimed it by then; such a pickup is
    recorded as zero wait instead of being lost.
    """

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._lock = threading.Lock()
        self._ready: dict[str, float] = {}
        self._early: set[str] = set()

    def ready(self, instance_id: str, at: float) -> None:
        with self._lock:
            if instance_id in self._early:
                self._early.discard(instance_id)
                self._recorder.picked_up(0.0)
            else:
                self._ready[instance_id] = at

    def claimed(self, instance_id: str, at: float) -> None:
        with self._lock:
            since = self._ready.pop(instance_id, None)
            if since is None:
                self._early.add(instance_id)
            else:
                self._recorder.picked_up(at - since)


FANOUT_WORKLOADS = ("fanout", "fanout_parallel")


def _in_flight(spec: RunSpec, width: int) -> int:
    """How many workflows a run keeps started. Both fan-out modes keep as many
    branches as workers (width / branches forks): sequentially, most workers then wait
    while one runs a fork's branches; in parallel, every worker can take one."""
    if spec.workload in FANOUT_WORKLOADS:
        return max(1, width // max(1, spec.shape.branches))
    return width * IN_FLIGHT_PER_WORKER.get(spec.workload, 1)


class BranchClock:
    """How many of a fork's branches ran at once: the branches' summed busy time over
    the span from the first one's start to the last one's end (1.0: one after another;
    the branch count: all together), recorded when the workflow finishes."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._lock = threading.Lock()
        self._spans: dict[str, tuple[float, float, float]] = {}

    def ran(self, instance_id: str, start: float, end: float) -> None:
        with self._lock:
            first, last, busy = self._spans.get(instance_id, (start, end, 0.0))
            self._spans[instance_id] = (min(first, start), max(last, end), busy + end - start)

    def finished(self, instance_id: str) -> None:
        with self._lock:
            span = self._spans.pop(instance_id, None)
        if span is not None and span[1] > span[0]:
            self._recorder.fanned(span[2] / (span[1] - span[0]))


class InFlight:
    """Bounds the workflows started but not finished (parked ones included)."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    def try_enter(self) -> bool:
        return self._slots.acquire(blocking=False)

    def leave(self) -> None:
        self._slots.release()


def _parked_on_signal(snap: WorkflowSnapshot) -> bool:
    return snap.status is WorkflowStatus.IN_PROGRESS and isinstance(snap.position, AtSignal)


def _monotonic_of(wall: datetime) -> float:
    return time.monotonic() + (wall - datetime.now(UTC)).total_seconds()


class Workload:
    """The worker side of one run: create, claim, advance, park, resume, complete."""

    def __init__(
        self,
        spec: RunSpec,
        backend: PostgresBackend[Any],
        definition: Definition,
        dispatcher: Dispatcher,
        recorder: Recorder,
        *,
        use_signals: bool,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.definition = definition
        self.dispatcher = dispatcher
        self.rec = recorder
        self.pickup = PickupClock(recorder)
        self.branch_clock = BranchClock(recorder)
        self.parallel = spec.workload == "fanout_parallel"
        self.use_signals = use_signals
        self.width = spec.group_threads if spec.workload == "group_commit" else spec.concurrency
        self.flight = InFlight(_in_flight(spec, self.width))
        self.stop = threading.Event()
        self.started: dict[str, float] = {}
        self.signals: queue.Queue[Job] = queue.Queue()
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]

    def new_id(self) -> str:
        return f"{self.definition.name}-{self._prefix}-{next(self._ids)}"

    # -- worker side -------------------------------------------------------
    def create(self) -> None:
        instance_id = self.new_id()
        snapshot = self.definition.create(instance_id)
        self.started[instance_id] = time.monotonic()
        try:
            version = self.backend.save(snapshot, None)
        except Exception as exc:
            self.rec.error(exc)
            self.flight.leave()
            return
        self.rec.saved()
        now = time.monotonic()
        self.pickup.ready(instance_id, now)
        self.dispatcher.submit(Job(instance_id, version, snapshot), now)

    def drive(self, job: Job) -> None:
        """Advance ``job`` until it parks or completes; one CAS save per step.

        The lease is released afterwards, except after a terminal save: that one
        drops the lease in its own statement, and a release would only cost a
        round trip (on an older store the lease simply expires; a finished
        instance is never dispatched again either way).
        """
        self.pickup.claimed(job.instance_id, time.monotonic())
        done = False
        try:
            snap, version = self._current(job)
            if job.claim is not None and _parked_on_signal(snap):
                # Dispatch handed out an instance that still waits for its event.
                self.rec.note("claimed_while_parked")
                return
            while True:
                self._work(job.instance_id, snap)
                nxt, outcome = self.definition.step(snap)
                if outcome is Outcome.PARK and self.use_signals and _parked_on_signal(nxt):
                    version, nxt, resumed = api.park(self.backend, nxt, version, job.claim)
                    outcome = Outcome.CONTINUE if resumed else outcome
                elif outcome is Outcome.FORK:  # the lease goes with the branches
                    self.backend.start_branches(nxt, version, claim=job.claim)
                    self.rec.saved()
                    done = True  # nothing to release
                    break
                else:
                    version = self.backend.save(nxt, version, claim=job.claim)
                self.rec.saved()
                snap = nxt
                if outcome is Outcome.DONE:
                    done = True
                    self._complete(job.instance_id)
                    break
                if outcome is Outcome.PARK:
                    self._park(Job(job.instance_id, version, snap))
                    break
        except Exception as exc:
            self.rec.error(exc)
            self.started.pop(job.instance_id, None)
            self.flight.leave()
        finally:
            if not done:
                self.dispatcher.finish(job)

    def _work(self, instance_id: str, snap: WorkflowSnapshot) -> None:
        """The task's own work (simulated), timed for the branch concurrency figure."""
        seconds = self.definition.work(snap)
        if seconds:
            start = time.monotonic()
            time.sleep(seconds)
            self.branch_clock.ran(instance_id, start, time.monotonic())

    def run_branch(self, worker_id: str) -> bool:
        """Lease one open branch, do its work and record its result; False if none."""
        got = self.backend.find_available_branches(worker_id, limit=1, ttl=CLAIM_TTL)
        if not got:
            return False
        (branch,) = got
        start = time.monotonic()
        time.sleep(self.spec.shape.branch_work.total_seconds())
        self.branch_clock.ran(branch.instance_id, start, time.monotonic())
        done = self.backend.complete_branch(branch.claim, branch_result(branch.branch_id))
        self.rec.saved()
        if done.joined:
            self.pickup.ready(branch.instance_id, time.monotonic())
        return True

    def _current(self, job: Job) -> tuple[WorkflowSnapshot, int]:
        if job.snapshot is not None:
            return job.snapshot, job.version
        stored = self.backend.load(job.instance_id)
        if stored is None:
            raise LookupError(f"{job.instance_id} vanished")
        return stored.snapshot, stored.version

    def _complete(self, instance_id: str) -> None:
        self.branch_clock.finished(instance_id)
        started = self.started.pop(instance_id, None)
        if started is not None:
            self.rec.completed(time.monotonic() - started)
        self.flight.leave()

    def _park(self, job: Job) -> None:
        assert job.snapshot is not None
        position = job.snapshot.position
        if isinstance(position, AtDelay):
            due = _monotonic_of(position.wake_at)
            self.pickup.ready(job.instance_id, due)
            self.dispatcher.submit(job, due)
        elif isinstance(position, AtSignal):
            self.signals.put(job)

    def worker(self, worker_id: str) -> None:
        while not self.stop.is_set():
            try:
                if self.flight.try_enter():
                    self.create()
                if self.parallel and self.run_branch(worker_id):
                    continue
                for job in self.dispatcher.take(worker_id, 1):
                    self.drive(job)
            except Exception as exc:  # a failing dispatch call: count it, keep the worker
                self.rec.error(exc)
                time.sleep(ERROR_PAUSE)

    # -- producer side -----------------------------------------------------
    def signal_producer(self) -> None:
        """Sends the event each parked instance waits for (the "external system")."""
        while not self.stop.is_set():
            try:
                job = self.signals.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                if self.use_signals:
                    outcome = api.send_event(
                        self.backend, job.instance_id, SIGNAL_NAME, {"approved": True}
                    )
                    self.rec.note(f"send_event_{outcome.lower()}")
                    job = Job(job.instance_id, job.version, None)  # the store advanced it
            except Exception as exc:
                self.rec.error(exc)
                continue
            now = time.monotonic()
            self.pickup.ready(job.instance_id, now)
            self.dispatcher.submit(job, now)

    def batch_worker(self, worker_id: str) -> None:
        """Drives ``batch`` workflows in lockstep; each step is one `save_many` commit."""
        while not self.stop.is_set():
            begun = time.monotonic()
            current: list[tuple[WorkflowSnapshot, int | None, Outcome]] = [
                (self.definition.create(self.new_id()), None, Outcome.CONTINUE)
                for _ in range(self.spec.batch)
            ]
            while current and not self.stop.is_set():
                try:
                    results = self.backend.save_many([SaveRequest(s, v) for s, v, _ in current])
                except Exception as exc:  # the whole commit failed: count it, start afresh
                    self.rec.error(exc)
                    break
                nxt: list[tuple[WorkflowSnapshot, int | None, Outcome]] = []
                for (snap, _, outcome), result in zip(current, results, strict=True):
                    if result.error is not None:
                        self.rec.error(result.error)
                        continue
                    self.rec.saved()
                    if outcome is Outcome.DONE:
                        self.rec.completed(time.monotonic() - begun)
                        continue
                    step_snap, step_outcome = self.definition.step(snap)
                    nxt.append((step_snap, result.version, step_outcome))
                current = nxt


def _run_threads(targets: list[tuple[str, Callable[[], None]]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, name=name, daemon=True) for name, fn in targets]
    for t in threads:
        t.start()
    return threads


@dataclass
class Outcomes:
    """Everything measured in one run, before it is turned into a report row."""

    spec: RunSpec
    mode: str
    recorder: Recorder
    wal_bytes: int
    blob_mean: float | None
    wakeups: dict[str, Any] | None
    group_commit: dict[str, Any] | None
    threads: int

    def as_dict(self) -> dict[str, Any]:
        rec = self.recorder
        window = rec.window
        drops = None
        if self.wakeups is not None:
            drops = {
                "dropped": self.wakeups.get("dropped"),
                "drop_rate": self.wakeups.get("drop_rate"),
                "counters": self.wakeups,
            }
        mode = self.mode
        if self.group_commit is not None and self.spec.workload == "group_commit":
            mode += f" (mean batch {self.group_commit['mean_batch']})"
        return {
            "workload": self.spec.workload,
            "codec": self.spec.codec,
            "mode": mode,
            "threads": self.threads,
            "window_s": round(window, 3),
            "saves": rec.saves,
            "saves_per_s": round(rec.saves / window, 1),
            "workflows": rec.workflows,
            "workflows_per_s": round(rec.workflows / window, 1),
            "workflow_latency_ms": summarize_ms(rec.workflow_latency),
            "pickup_latency_ms": summarize_ms(rec.pickup_latency),
            "branch_concurrency": (
                round(statistics.median(rec.branch_concurrency), 2)
                if rec.branch_concurrency
                else None
            ),
            "wakeups": drops,
            "blob_bytes_mean": None if self.blob_mean is None else round(self.blob_mean, 1),
            "wal_bytes_per_save": round(self.wal_bytes / rec.saves, 1) if rec.saves else None,
            "group_commit": self.group_commit,
            "errors": dict(rec.errors),
            "notes": dict(rec.notes),
            "first_errors": dict(rec.first_error),
        }


def _dispatcher_for(
    spec: RunSpec, backend: Any, caps: api.Capabilities, recorder: Recorder
) -> Dispatcher:
    # Signals through store dispatch need send_event: nothing else resumes a parked row.
    if (
        spec.workload in FLOW_WORKLOADS
        and caps.claims
        and (spec.workload != "signal" or caps.signals)
    ):
        return StoreDispatcher(
            backend,
            ttl=CLAIM_TTL,
            use_wakeups=caps.wakeups and spec.wakeups,
            poll_interval=spec.poll_interval,
            on_error=recorder.error,
        )
    return InProcessDispatcher()


def run(
    spec: RunSpec,
    dsn: str,
    backend: PostgresBackend[Any],
    caps: api.Capabilities,
    recorder: Recorder | None = None,
) -> Outcomes:
    """Run one workload for ``spec.duration`` seconds on an emptied schema.

    The window opens after ``spec.warmup`` seconds of the same load, an ANALYZE and
    a CHECKPOINT (`db.settle`): the emptied tables would otherwise keep the plans
    PostgreSQL cached while they were tiny (sequential scans, which get slower as
    the run fills them), a state a store in service leaves within autovacuum's
    first minute; and without the checkpoint, whichever window a WAL-triggered
    checkpoint happened to fall into would be the slow one.
    """
    backend.truncate_all()
    definition = DEFINITIONS["linear" if spec.workload in SAVE_WORKLOADS else spec.workload](
        spec.shape
    )
    recorder = recorder or Recorder()
    dispatcher = _dispatcher_for(spec, backend, caps, recorder)
    load = Workload(spec, backend, definition, dispatcher, recorder, use_signals=caps.signals)
    width = load.width
    body = load.batch_worker if spec.workload == "save_many" else load.worker
    targets = [(f"w{i}", _bound(body, f"w{i}")) for i in range(width)]
    if spec.workload == "signal":
        producers = max(1, round(width * SIGNAL_PRODUCERS_PER_WORKER))
        targets += [(f"signals{i}", load.signal_producer) for i in range(producers)]
    mode = dispatcher.mode
    if spec.workload == "signal":
        mode += "+send_event" if caps.signals else "+in-process-events"
    if spec.workload == "fanout_parallel":
        mode += "+branches"
    if spec.workload == "save_many":
        mode = "save_many"
    elif spec.workload == "group_commit":
        mode = "group_commit"
    threads = _run_threads(targets)
    time.sleep(spec.warmup)
    db.settle(dsn, backend.schema)
    start_lsn = db.wal_lsn(dsn)
    recorder.start()
    time.sleep(spec.duration)
    recorder.stop()
    end_lsn = db.wal_lsn(dsn)
    load.stop.set()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    wakeups = dispatcher.wakeup_stats()
    dispatcher.close()
    blob_mean, _rows = db.blob_stats(dsn, backend.schema)
    # Left full of dead rows, the tables would be autovacuumed during a later window.
    backend.truncate_all()
    return Outcomes(
        spec=spec,
        mode=mode,
        recorder=recorder,
        wal_bytes=db.wal_bytes(dsn, start_lsn, end_lsn),
        blob_mean=blob_mean,
        wakeups=wakeups,
        group_commit=api.group_commit_stats(backend),
        threads=width,
    )


def _bound(fn: Callable[[str], None], arg: str) -> Callable[[], None]:
    return lambda: fn(arg)
