"""Model-based test of the whole API: PostgreSQL and `MemoryStore` must agree.

Hypothesis drives both with the same random calls, across every part of the store:
saves (plain, fenced, stale), signals (cancel, pause, unpause, stored requests, the
worker-side checks), events (send, peek, consume, park, with and without deadlines),
claims and dispatch (claim, extend, release, find_available_tasks, claim_notified,
dispatchable_ids, next_dispatch_at, tags and priorities, timers), parallel branches,
fork, retention, and the reads. Each call must give the same result or the same typed
error. What only the server picks is compared by presence alone: its timestamps
(``updated_at``, lease expiries, request times), lease tokens and event ids. Times the
test chooses (timers, wait deadlines) are a day away, so neither store's clock can
land near them; leases last ten minutes, longer than any run.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from snapstore import (
    AtDelay,
    AtFork,
    AtSignal,
    AtTask,
    ConflictError,
    JsonCodec,
    MemoryStore,
    PostgresBackend,
    SnapstoreError,
    TaskResult,
    TerminalStateError,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.memory import MemoryBackend
from snapstore.model import TERMINAL_STATUSES
from snapstore.signals import Event

IDS = ["a", "é", "日本"]
INSTANCE_IDS = st.sampled_from(IDS)
WORKERS = st.sampled_from(["w1", "w2"])
NAMES = st.sampled_from(["go", "stop"])
TAGS = st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True).map(tuple)
WORKER_TAGS = st.none() | st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True)
TEXT = st.none() | st.sampled_from(["why", "ops", "ünï"])
PAYLOADS = (
    st.none()
    | st.integers(-5, 5)
    | st.sampled_from(["yes", "no"])
    | st.just({"k": [1]})
    | st.sampled_from([b"\x00raw", UUID(int=5), Decimal("2.50"), date(2024, 2, 29)])
)
TTL = 600.0
AGING = 3600.0
DAY = timedelta(days=1)
BRANCHES = st.lists(st.sampled_from(["b1", "b2", "b3"]), min_size=1, max_size=3, unique=True)


def far(when: str) -> datetime | None:
    """A time no clock in this test comes near: a day ago or a day ahead."""
    now = datetime.now(UTC).replace(microsecond=0)
    return {"none": None, "past": now - DAY, "future": now + DAY}[when]


WHEN = st.sampled_from(["none", "past", "future"])


@st.composite
def positions(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["task", "task", "signal", "delay", "fork"]))
    task = draw(st.sampled_from(["t1", "t2"]))
    if kind == "signal":
        return AtSignal(task, draw(NAMES), timeout_at=far(draw(WHEN)))
    if kind == "delay":
        wake = far(draw(st.sampled_from(["past", "future"])))
        assert wake is not None
        return AtDelay(task, wake_at=wake)
    if kind == "fork":
        return AtFork("fan", branches=tuple(draw(BRANCHES)))
    return AtTask(task)


@st.composite
def checkpoints(draw: st.DrawFn, instance_id: str) -> WorkflowSnapshot:
    results = draw(
        st.dictionaries(
            st.sampled_from(["t1", "t2", "b1"]),
            st.builds(TaskResult, output=PAYLOADS, attempts=st.integers(1, 3)),
            max_size=2,
        )
    )
    return WorkflowSnapshot(
        instance_id=instance_id,
        definition_hash="def",
        status=draw(st.sampled_from([WorkflowStatus.IN_PROGRESS] * 4 + [WorkflowStatus.PAUSED])),
        position=draw(positions()),
        task_results=results,
        priority=draw(st.sampled_from([1, 3, 3, 5])),  # ties make the queue order matter
        tags=draw(TAGS),
        input=draw(PAYLOADS),
    )


SERVER_TIMES = frozenset({"updated_at", "expires_at", "requested_at", "done_at"})


AGES = frozenset({"age_seconds", "oldest_due_seconds"})  # measured by each store's clock


def norm(value: Any, field: str = "") -> Any:
    """What both stores must agree on: server-chosen times, tokens and event ids are
    reduced to whether they are there."""
    if field in AGES and value is not None:
        return "age"
    if isinstance(value, datetime):
        return "time" if field in SERVER_TIMES or field in ("created_at", "") else value
    if isinstance(value, UUID):
        return "token"
    if isinstance(value, WorkflowSnapshot):
        return value  # the engine's own data: compared exactly
    if isinstance(value, msgspec.Struct):
        fields = msgspec.structs.asdict(value)
        if isinstance(value, Event):
            fields["id"] = "id"
        return (type(value).__name__, {k: norm(v, k) for k, v in fields.items()})
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
        return (type(value).__name__, {n: norm(getattr(value, n), n) for n in names})
    if isinstance(value, list | tuple):
        return [norm(v, field) for v in value]
    if isinstance(value, dict):
        return {k: norm(v, k) for k, v in value.items()}
    return value


def outcome(call: Callable[[], Any]) -> tuple[str, Any, Any]:
    try:
        result = call()
        return "ok", norm(result), result
    except ConflictError as exc:
        return "ConflictError", (exc.instance_id, exc.expected_version, exc.actual_version), None
    except TerminalStateError as exc:
        return "TerminalStateError", (exc.instance_id, exc.status), None
    except SnapstoreError as exc:
        return type(exc).__name__, None, None


def _call(name: str, args: tuple[Any, ...], store: Any, _: int) -> Any:
    """``store.<name>(*args)``: bound with `functools.partial`, an op for
    `WholeApiMatches.same` that a loop cannot change under it."""
    return getattr(store, name)(*args)


def _complete(held: list[Any], result: TaskResult, store: Any, side: int) -> Any:
    return store.complete_branch(held[side], result)


class WholeApiMatches(RuleBasedStateMachine):
    pg: ClassVar[PostgresBackend[JsonCodec]]

    def __init__(self) -> None:
        super().__init__()
        self.mem = MemoryBackend(store=MemoryStore(self.pg.codec))
        self.pg.truncate_all()
        # What each side handed out (tokens differ), by instance and by (instance, branch).
        self.claims: dict[str, list[Any]] = {}
        self.branch_claims: dict[tuple[str, str], list[Any]] = {}

    def same(self, op: Callable[[Any, int], Any]) -> tuple[str, Any, list[Any]]:
        """Run ``op(store, side)`` on both (side 0: memory, 1: PostgreSQL)."""
        mem = outcome(lambda: op(self.mem, 0))
        pg = outcome(lambda: op(self.pg, 1))
        assert pg[:2] == mem[:2]
        return mem[0], mem[1], [mem[2], pg[2]]

    def version(self, instance_id: str) -> int | None:
        stored = self.mem.load(instance_id)
        return None if stored is None else stored.version

    def claim_of(self, instance_id: str, side: int, use: bool = True) -> Any:
        held = self.claims.get(instance_id)
        return held[side] if use and held else None

    def keep_claims(self, kind: str, raw: list[Any]) -> None:
        if kind != "ok":
            return
        mem, pg = raw
        for m, p in zip(mem, pg, strict=True):
            self.claims[m.instance_id] = [m.claim, p.claim]

    # -- checkpoints -----------------------------------------------------------------------

    @initialize(data=st.data())
    def create_all(self, data: st.DataObject) -> None:
        """Every instance exists at first (deletes and purges remove some later)."""
        for instance_id in IDS:
            self.same(functools.partial(_call, "save", (data.draw(checkpoints(instance_id)),)))

    @rule(
        data=st.data(),
        instance_id=INSTANCE_IDS,
        expected=st.sampled_from(["cur", "cur", "old", "none"]),
        fenced=st.booleans(),
    )
    def save(self, data: st.DataObject, instance_id: str, expected: str, fenced: bool) -> None:
        snap = data.draw(checkpoints(instance_id))
        current = self.version(instance_id)
        version = {"cur": current, "old": (current or 2) - 1, "none": None}[expected]
        self.same(
            lambda s, side: s.save(snap, version, claim=self.claim_of(instance_id, side, fenced))
        )

    @rule(
        instance_id=INSTANCE_IDS,
        status=st.sampled_from(sorted(TERMINAL_STATUSES)),
        fenced=st.booleans(),
    )
    def finish(self, instance_id: str, status: WorkflowStatus, fenced: bool) -> None:
        stored = self.mem.load(instance_id)
        if stored is None:
            return
        done = msgspec.structs.replace(stored.snapshot, status=status, output="done")
        self.same(
            lambda s, side: s.save(
                done, stored.version, claim=self.claim_of(instance_id, side, fenced)
            )
        )

    @rule(instance_id=INSTANCE_IDS, fenced=st.booleans(), due=st.booleans())
    def step(self, instance_id: str, fenced: bool, due: bool) -> None:
        """The engine's usual save: the same checkpoint one step on (``due``: as a
        plain running task, priority 3, so queue order among such is by time)."""
        stored = self.mem.load(instance_id)
        if stored is None:
            return
        changes: dict[str, Any] = {"input": [stored.version]}
        if due:
            changes.update(status=WorkflowStatus.IN_PROGRESS, position=AtTask("t1"), priority=3)
        nxt = msgspec.structs.replace(stored.snapshot, **changes)
        claim = functools.partial(self.claim_of, instance_id, use=fenced)
        self.same(lambda s, side: s.save(nxt, stored.version, claim=claim(side)))

    @rule(order=st.permutations(IDS))
    def queue_order(self, order: list[str]) -> None:
        """Steps of instances that stay due keep their place: the queue is in the order
        they came due, not of their last save."""
        for instance_id in [*order, *reversed(order)]:
            self.step(instance_id, fenced=False, due=True)
        self.same(lambda s, _: s.dispatchable_ids(aging_interval=AGING))

    @rule(instance_id=INSTANCE_IDS)
    def reads(self, instance_id: str) -> None:
        self.same(lambda s, _: s.load(instance_id))
        self.same(lambda s, _: s.history(instance_id))
        self.same(lambda s, _: s.list())
        for task in ("t1", "t2", "b1", "b2"):
            self.same(functools.partial(_call, "load_task_result", (instance_id, task)))

    @rule(instance_id=INSTANCE_IDS)
    def delete(self, instance_id: str) -> None:
        self.same(lambda s, _: s.delete(instance_id))

    @rule(source=INSTANCE_IDS, copy=INSTANCE_IDS, back=st.integers(0, 3))
    def fork(self, source: str, copy: str, back: int) -> None:
        version = max(1, (self.version(source) or 1) - back)
        self.same(lambda s, _: s.fork(source, version, copy))

    # -- signals ---------------------------------------------------------------------------

    @rule(instance_id=INSTANCE_IDS, kind=st.sampled_from(["cancel", "pause"]), reason=TEXT, by=TEXT)
    def request(self, instance_id: str, kind: str, reason: str | None, by: str | None) -> None:
        self.same(lambda s, _: getattr(s, kind)(instance_id, reason, requested_by=by))

    @rule(instance_id=INSTANCE_IDS)
    def unpause(self, instance_id: str) -> None:
        self.same(lambda s, _: s.unpause(instance_id))

    @rule(instance_id=INSTANCE_IDS, kind=st.sampled_from(["cancel", "pause"]), reason=TEXT, by=TEXT)
    def store_signal(self, instance_id: str, kind: str, reason: str | None, by: str | None) -> None:
        self.same(lambda s, _: s.store_signal(instance_id, kind, reason, requested_by=by))

    @rule(instance_id=INSTANCE_IDS, kind=st.none() | st.sampled_from(["cancel", "pause"]))
    def clear_signal(self, instance_id: str, kind: str | None) -> None:
        self.same(lambda s, _: s.clear_signal(instance_id, kind))
        self.same(lambda s, _: s.get_signals(instance_id))

    @rule(
        instance_id=INSTANCE_IDS,
        check=st.sampled_from(["check_signals", "check_and_pause", "check_and_cancel"]),
        fenced=st.booleans(),
    )
    def check(self, instance_id: str, check: str, fenced: bool) -> None:
        self.same(
            lambda s, side: getattr(s, check)(instance_id, self.claim_of(instance_id, side, fenced))
        )

    @rule(
        instance_id=INSTANCE_IDS,
        check=st.sampled_from(["check_signals", "check_and_pause", "check_and_cancel"]),
        fenced=st.booleans(),
    )
    def both_pending(self, instance_id: str, check: str, fenced: bool) -> None:
        """A cancel and a pause both waiting: whichever check runs, the cancel wins."""
        self.store_signal(instance_id, "pause", "p", None)
        self.store_signal(instance_id, "cancel", "c", None)
        self.check(instance_id, check, fenced)
        self.same(lambda s, _: s.get_signals(instance_id))

    # -- events ----------------------------------------------------------------------------

    @rule(instance_id=INSTANCE_IDS, name=NAMES, payload=PAYLOADS)
    def send_event(self, instance_id: str, name: str, payload: Any) -> None:
        self.same(lambda s, _: s.send_event(instance_id, name, payload))

    @rule(instance_id=INSTANCE_IDS, name=st.none() | NAMES)
    def peek(self, instance_id: str, name: str | None) -> None:
        self.same(lambda s, _: s.peek_events(instance_id, name))

    @rule(data=st.data(), instance_id=INSTANCE_IDS, index=st.integers(0, 2), fenced=st.booleans())
    def consume_event(
        self, data: st.DataObject, instance_id: str, index: int, fenced: bool
    ) -> None:
        current = self.version(instance_id)
        if current is None:
            return
        snap = data.draw(checkpoints(instance_id))

        def consume(s: Any, side: int) -> Any:
            events = s.peek_events(instance_id)
            event_id = events[index].id if index < len(events) else 10**9
            return s.consume_event(
                event_id, snap, current, claim=self.claim_of(instance_id, side, fenced)
            )

        self.same(consume)

    @rule(
        instance_id=INSTANCE_IDS, name=NAMES, when=WHEN, fenced=st.booleans(), create=st.booleans()
    )
    def park(self, instance_id: str, name: str, when: str, fenced: bool, create: bool) -> None:
        current = None if create else self.version(instance_id)
        snap = WorkflowSnapshot(
            instance_id=instance_id,
            definition_hash="def",
            position=AtSignal("t1", name, timeout_at=far(when)),
        )
        self.same(
            lambda s, side: s.park(snap, current, claim=self.claim_of(instance_id, side, fenced))
        )

    @rule(instance_id=INSTANCE_IDS, name=NAMES, when=WHEN, send_first=st.booleans())
    def wait_for_event(self, instance_id: str, name: str, when: str, send_first: bool) -> None:
        """Park and send in either order: resumed at once, or by the buffered event."""
        if send_first:
            self.send_event(instance_id, name, "early")
        self.park(instance_id, name, when, fenced=False, create=False)
        if not send_first:
            self.send_event(instance_id, name, "late")

    # -- claims and dispatch ---------------------------------------------------------------

    @rule(instance_id=INSTANCE_IDS, worker=WORKERS)
    def claim(self, instance_id: str, worker: str) -> None:
        kind, _, raw = self.same(lambda s, _: s.claim(instance_id, worker, TTL))
        if kind == "ok" and raw[0] is not None:
            self.claims[instance_id] = raw

    @rule(instance_id=INSTANCE_IDS)
    def extend_and_release(self, instance_id: str) -> None:
        if instance_id not in self.claims:
            return
        self.same(lambda s, side: s.extend(self.claims[instance_id][side], TTL))
        self.same(lambda s, side: s.release(self.claims[instance_id][side]))

    @rule(worker=WORKERS, limit=st.integers(1, 3), tags=WORKER_TAGS)
    def dispatch(self, worker: str, limit: int, tags: list[str] | None) -> None:
        self.same(lambda s, _: s.dispatchable_ids(limit=limit, tags=tags, aging_interval=AGING))
        kind, _, raw = self.same(
            lambda s, _: s.find_available_tasks(
                worker, limit=limit, ttl=TTL, tags=tags, aging_interval=AGING
            )
        )
        self.keep_claims(kind, raw)

    @rule(ids=st.lists(INSTANCE_IDS, max_size=3, unique=True), worker=WORKERS)
    def claim_notified(self, ids: list[str], worker: str) -> None:
        kind, _, raw = self.same(
            lambda s, _: s.claim_notified(ids, worker, ttl=TTL, aging_interval=AGING)
        )
        self.keep_claims(kind, raw)

    @rule()
    def next_dispatch_at(self) -> None:
        self.same(lambda s, _: s.next_dispatch_at())

    # -- parallel branches -----------------------------------------------------------------

    @rule(instance_id=INSTANCE_IDS, branches=BRANCHES, fenced=st.booleans(), tags=TAGS)
    def start_branches(
        self, instance_id: str, branches: list[str], fenced: bool, tags: tuple[str, ...]
    ) -> None:
        current = self.version(instance_id)
        snap = WorkflowSnapshot(
            instance_id=instance_id,
            definition_hash="def",
            position=AtFork("fan", branches=tuple(branches)),
            tags=tags,
        )
        self.same(
            lambda s, side: s.start_branches(
                snap, current, claim=self.claim_of(instance_id, side, fenced)
            )
        )
        self.same(lambda s, _: s.branches(instance_id))

    @rule(worker=WORKERS, limit=st.integers(1, 3), tags=WORKER_TAGS)
    def find_branches(self, worker: str, limit: int, tags: list[str] | None) -> None:
        kind, _, raw = self.same(
            lambda s, _: s.find_available_branches(worker, limit=limit, ttl=TTL, tags=tags)
        )
        if kind == "ok":
            for m, p in zip(*raw, strict=True):
                self.branch_claims[(m.instance_id, m.branch_id)] = [m.claim, p.claim]

    @rule(data=st.data(), output=PAYLOADS, release=st.sampled_from([False, False, True]))
    def finish_branch(self, data: st.DataObject, output: Any, release: bool) -> None:
        if not self.branch_claims:
            return
        key = data.draw(st.sampled_from(sorted(self.branch_claims)))
        held = self.branch_claims[key]
        if release:
            self.same(lambda s, side: s.release_branch(held[side]))
        else:
            result = TaskResult(output=output)
            self.same(lambda s, side: s.complete_branch(held[side], result))
        self.same(lambda s, _: s.branches(key[0]))

    @rule(instance_id=INSTANCE_IDS, branches=BRANCHES, worker=WORKERS)
    def run_fork(self, instance_id: str, branches: list[str], worker: str) -> None:
        """A whole fork: started, every branch leased and finished, joined once."""
        self.start_branches(instance_id, branches, fenced=False, tags=())
        self.find_branches(worker, limit=3, tags=None)
        for key in sorted(k for k in self.branch_claims if k[0] == instance_id):
            held = self.branch_claims.pop(key)
            self.same(functools.partial(_complete, held, TaskResult(output=key[1])))
        self.same(lambda s, _: s.load(instance_id))

    # -- retention -------------------------------------------------------------------------

    @rule(keep_last=st.integers(1, 3), instance_id=st.none() | INSTANCE_IDS)
    def prune(self, keep_last: int, instance_id: str | None) -> None:
        self.same(lambda s, _: s.prune_history(keep_last=keep_last, instance_id=instance_id))

    @rule()
    def purge(self) -> None:
        self.same(lambda s, _: s.purge_terminal(older_than=0, dry_run=True))
        self.same(lambda s, _: s.purge_terminal(older_than=0))

    @rule(keep_last=st.integers(1, 3))
    def operator_views(self, keep_last: int) -> None:
        self.same(lambda s, _: s.stats())
        self.same(lambda s, _: s.stats(exact=False))  # small: exact too
        self.same(lambda s, _: s.check(older_than=0))
        self.same(lambda s, _: s.prune_history(keep_last=keep_last, dry_run=True))


def test_postgres_matches_the_memory_model_across_the_whole_api(
    pg: PostgresBackend[JsonCodec],
) -> None:
    class AgainstThisDatabase(WholeApiMatches):
        pass

    AgainstThisDatabase.pg = pg
    run_state_machine_as_test(
        AgainstThisDatabase,
        settings=settings(
            max_examples=150,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
