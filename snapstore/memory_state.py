"""The in-memory reference model of the whole store, in plain Python.

`MemoryStore` is what the SQL of `snapstore/sql/` means, written out a second way:
the property tests drive it and PostgreSQL with the same calls and demand the same
results, so a divergence points at the SQL or at this model. It shares only the pure
layer with the PostgreSQL backend (argument checks, encoding, row interpretation), so
what it returns is built exactly as PostgreSQL's answers are.

Time comes from an injectable ``clock`` (`ManualClock` for tests that expire leases or
fire timers on demand). Each operation runs under one lock and is all or nothing: the
instances it touched are restored if it raises, as a rolled-back transaction would.
Not modelled: wakeups (LISTEN/NOTIFY needs a server) and unreadable stored data (this
store holds only what it wrote itself).
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import json
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import msgspec

from snapstore import branches as br
from snapstore import checks, programs
from snapstore import claims as cl
from snapstore import operations as ops
from snapstore import retention as rt
from snapstore import rows as rw
from snapstore import signals as sg
from snapstore.branches import BranchClaim, BranchDone, BranchState, ClaimedBranch
from snapstore.claims import ClaimedTask, DispatchQuery
from snapstore.codecs import Codec, JsonCodec, codec_instance
from snapstore.codecs.snapshot import encode_output
from snapstore.errors import NotFoundError, SnapstoreError, ValidationError
from snapstore.limits import Limits
from snapstore.model import (
    AppliedSignal,
    AtSignal,
    Claim,
    HistoryEntry,
    Page,
    SaveRequest,
    SaveResult,
    SnapshotSummary,
    StoredSnapshot,
    TaskResult,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.operations import Problem, StoreStats
from snapstore.signals import Event, EventOutcome, ParkResult, Signal, SignalKind, SignalOutcome

Clock = Callable[[], datetime]


class ManualClock:
    """A clock that moves only when told (`advance`): leases expire, timers and signal
    deadlines come due exactly when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start if start is not None else datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move on by ``seconds`` (and/or timedelta keywords); the new time."""
        self.now += timedelta(seconds=seconds, **delta)
        return self.now


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Version:
    version: int
    status: WorkflowStatus
    current_task_id: str | None
    codec: str
    blob: bytes
    data_hash: bytes
    created_at: datetime
    pruned: bool = False


@dataclass
class _Lease:
    worker_id: str
    token: UUID
    expires_at: datetime
    task_id: str | None


@dataclass
class _Event:
    id: int
    name: str
    payload: bytes
    created_at: datetime


@dataclass
class _Branch:
    branch_id: str
    fork_version: int
    created_at: datetime
    worker_id: str | None = None
    token: UUID | None = None
    expires_at: datetime | None = None
    done_at: datetime | None = None


@dataclass
class _Instance:
    summary: SnapshotSummary
    created_at: datetime
    available_at: datetime
    completed_at: datetime | None = None
    history: list[_Version] = field(default_factory=builtins.list)
    tasks: dict[str, rw.TaskRow] = field(default_factory=dict)
    signals: dict[SignalKind, Signal] = field(default_factory=dict)
    applied: dict[int, AppliedSignal] = field(default_factory=dict)
    events: list[_Event] = field(default_factory=builtins.list)
    lease: _Lease | None = None
    branches: dict[str, _Branch] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.summary.version

    @property
    def status(self) -> WorkflowStatus:
        return self.summary.status


class MemoryStore:
    """The whole store API, in memory (see the module docstring); the backends
    `MemoryBackend` and `AsyncMemoryBackend` are thin shells around one of these."""

    def __init__(
        self,
        codec: Codec | None = None,
        *,
        clock: Clock | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.clock: Clock = clock or system_clock
        chosen = codec if codec is not None else codec_instance(JsonCodec)
        self.ctx = programs.Context(chosen, "memory", limits=limits or Limits())
        self._lock = threading.RLock()
        self._instances: dict[str, _Instance] = {}
        self._event_ids = 0
        self._backup: dict[str, _Instance | None] | None = None
        self._now: datetime | None = None

    @property
    def codec(self) -> Codec:
        """The codec new blobs are written with; blobs of every registered codec are read
        (set it to switch, as a backend connected with another codec would)."""
        return self.ctx.codec

    @codec.setter
    def codec(self, codec: Codec) -> None:
        self.ctx = dataclasses.replace(self.ctx, codec=codec)

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        """One transaction: one ``now`` for all of it, undone as a whole if it raises."""
        with self._lock:
            self._backup, self._now = {}, self.clock()
            try:
                yield
            except BaseException:
                for iid, before in self._backup.items():
                    if before is None:
                        self._instances.pop(iid, None)
                    else:
                        self._instances[iid] = before
                raise
            finally:
                self._backup, self._now = None, None

    @property
    def now(self) -> datetime:
        return self._now if self._now is not None else self.clock()

    def _touch(self, instance_id: str) -> _Instance | None:
        """The instance about to be changed (its state before is kept for a rollback)."""
        current = self._instances.get(instance_id)
        if self._backup is not None and instance_id not in self._backup:
            self._backup[instance_id] = copy.deepcopy(current)
        return current

    def _target(self, instance_id: str) -> _Instance:
        """What ``lock_instance`` + `signals.interpret_target` require: exists, not done."""
        current = self._touch(instance_id)
        row = None
        if current is not None:
            row = (current.version, current.status.value, "", False, self.now)
        sg.interpret_target(instance_id, row)
        assert current is not None
        return current

    # -- checkpoints -----------------------------------------------------------------------

    def save(
        self, snapshot: WorkflowSnapshot, expected_version: int | None, claim: Claim | None
    ) -> int:
        item = programs.prepare(self.ctx, snapshot, expected_version, claim)
        with self._atomic():
            return self._apply(item)

    def save_many(self, requests: Sequence[SaveRequest]) -> builtins.list[SaveResult]:
        prepared, rejected = programs.prepare_many(self.ctx, requests)
        results = iter(prepared)
        saved: builtins.list[SaveResult] = []
        with self._atomic():
            for index in range(len(requests)):
                if index in rejected:
                    continue
                item = next(results)
                try:
                    saved.append(SaveResult(item.instance_id, self._apply(item)))
                except SnapstoreError as exc:  # refused: reported in its result
                    saved.append(SaveResult(item.instance_id, None, exc))
        return programs.merge_results(len(requests), rejected, saved)

    def _save(
        self,
        snapshot: WorkflowSnapshot,
        expected_version: int | None,
        claim: Claim | None,
        *,
        parked: bool = False,
        checked: bool = True,
    ) -> int:
        """A save inside an operation (``checked``: by the caller's boundary already)."""
        item = programs.prepare(self.ctx, snapshot, expected_version, claim, checked=checked)
        if parked:
            item = msgspec.structs.replace(item, available_at=rw.PARKED_UNTIL)
        return self._apply(item)

    def _apply(self, item: rw.PreparedSave) -> int:
        """``save_snapshots`` for one item: CAS, fence, terminal guard, history, tasks."""
        iid, now = item.instance_id, self.now
        current = self._touch(iid)
        failure = self._refusal(item, current)
        if failure is not None:
            raise rw.save_failure(item, failure)
        if current is None:
            available = item.available_at or now
            current = self._instances[iid] = _Instance(
                summary=_summary(item, 0, now), created_at=now, available_at=available
            )
        elif item.available_at is not None:
            current.available_at = item.available_at
        elif current.status is WorkflowStatus.IN_PROGRESS:
            current.available_at = min(current.available_at, now)
        else:
            current.available_at = now
        version = current.version + 1
        old = current.summary
        current.summary = msgspec.structs.replace(
            _summary(item, version, now),
            forked_from=old.forked_from,
            forked_from_version=old.forked_from_version,
        )
        status = WorkflowStatus(item.status)
        current.completed_at = now if status.is_terminal else None
        current.history.append(
            _Version(
                version,
                status,
                item.current_task_id,
                item.codec,
                item.data,
                item.data_hash,
                now,
            )
        )
        for task_id, row in zip(item.task_ids, item.task_rows, strict=True):
            current.tasks[task_id] = row
        if status.is_terminal:
            current.lease = None
        return version

    def _refusal(self, item: rw.PreparedSave, current: _Instance | None) -> rw.Row | None:
        """The ``current_states`` row of a save the store refuses, or None if it goes."""
        if current is None:
            return None if item.expected_version is None else (None, None, False)
        live = self._lease_live(current, item.claim_token)
        row = (current.version, current.status.value, live)
        if item.expected_version is None or current.status.is_terminal:
            return row
        if item.expected_version != current.version:
            return row
        if item.claim_token is not None and not live:
            return row
        return None

    def _lease_live(self, current: _Instance, token: UUID | None) -> bool:
        lease = current.lease
        return (
            token is not None
            and lease is not None
            and lease.token == token
            and lease.expires_at > self.now
        )

    def load(self, instance_id: str) -> StoredSnapshot | None:
        rw.id_params(instance_id)
        with self._lock:
            current = self._instances.get(instance_id)
            return None if current is None else self._stored(current)

    def _stored(self, current: _Instance) -> StoredSnapshot:
        last = current.history[-1]
        outputs = {t: row[-1] for t, row in current.tasks.items() if row[-1] is not None}
        loaded = rw.Loaded(
            [(last.version, last.blob)], current.summary.updated_at, outputs, current.created_at
        )
        stored = rw.interpret_load(current.summary.instance_id, loaded)
        assert stored is not None
        return stored

    def load_task_result(self, instance_id: str, task_id: str) -> TaskResult | None:
        rw.task_params(instance_id, task_id)
        with self._lock:
            current = self._instances.get(instance_id)
            row = None if current is None else current.tasks.get(task_id)
        return rw.interpret_task_result(instance_id, task_id, row)

    def fork(self, source_id: str, version: int, instance_id: str) -> int:
        checks.check_id("source_id", source_id)
        checks.check_id("instance_id", instance_id)
        checks.check_version("version", version, minimum=1)
        with self._atomic():
            entries = self._history(source_id, version - 1, 1)
            entry = entries[0] if entries else None
            if entry is None or entry.version != version:
                raise NotFoundError(f"instance {source_id!r} has no version {version} in history")
            source = self._instances[source_id]
            rows = [(t, *source.tasks[t]) for t in entry.snapshot.task_results if t in source.tasks]
            snapshot = rw.forked_snapshot(entry.snapshot, instance_id, rows)
            saved = self._save(snapshot, None, None)
            created = self._instances[instance_id]
            created.summary = msgspec.structs.replace(
                created.summary, forked_from=source_id, forked_from_version=version
            )
            return saved

    def delete(self, instance_id: str) -> bool:
        rw.id_params(instance_id)
        with self._lock:
            return self._instances.pop(instance_id, None) is not None

    def list(
        self,
        status: Iterable[WorkflowStatus] | WorkflowStatus | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        params = rw.list_params(status, limit, cursor)
        wanted, after = params["statuses"], params["after"]
        with self._lock:
            chosen = sorted(
                (_utf8(iid), inst.summary)
                for iid, inst in self._instances.items()
                if (wanted is None or inst.summary.status.value in wanted)
                and (after is None or _utf8(iid) > _utf8(after))
            )
        return rw.interpret_list([_summary_row(s) for _, s in chosen[: params["limit"]]], limit)

    def history(
        self, instance_id: str, after_version: int, limit: int | None, skip_corrupt: bool
    ) -> builtins.list[HistoryEntry]:
        rw.history_params(instance_id, after_version, limit)
        checks.check_flag("skip_corrupt", skip_corrupt)
        with self._lock:
            return self._history(instance_id, after_version, limit)

    def _history(
        self, instance_id: str, after_version: int, limit: int | None
    ) -> builtins.list[HistoryEntry]:
        current = self._instances.get(instance_id)
        if current is None:
            return []
        chosen = [h for h in current.history if h.version > after_version and not h.pruned]
        rows = [
            (
                instance_id,
                h.version,
                h.status.value,
                h.current_task_id,
                h.codec,
                h.blob,
                h.created_at,
                False,
                *_applied_row(current.applied.get(h.version)),
            )
            for h in chosen[:limit]
        ]
        return rw.interpret_history(rows)

    def truncate_all(self) -> None:
        with self._lock:
            self._instances.clear()

    # -- signals ---------------------------------------------------------------------------

    def store_signal(
        self, instance_id: str, kind: SignalKind | str, reason: str | None, requested_by: str | None
    ) -> Signal:
        params = sg.signal_params(instance_id, kind, reason, requested_by)
        with self._atomic():
            return self._put_signal(self._target(instance_id), params)

    def _put_signal(self, current: _Instance, params: rw.Params) -> Signal:
        """``put_signal``: a repeated request keeps the first one's reason and requester
        unless the first gave neither."""
        kind = SignalKind(params["kind"])
        old = current.signals.get(kind)
        if old is None:
            signal = Signal(
                instance_id=current.summary.instance_id,
                kind=kind,
                reason=params["reason"],
                created_at=self.now,
                requested_by=params["requested_by"],
            )
        elif old.reason is None and old.requested_by is None:
            signal = msgspec.structs.replace(
                old, reason=params["reason"], requested_by=params["requested_by"]
            )
        else:
            signal = old
        current.signals[kind] = signal
        return signal

    def get_signals(self, instance_id: str, kind: SignalKind | str | None) -> builtins.list[Signal]:
        params = sg.signal_filter_params(instance_id, kind)
        with self._lock:
            current = self._instances.get(instance_id)
            if current is None:
                raise NotFoundError(f"instance {instance_id!r} does not exist")
            return [
                s
                for k, s in sorted(current.signals.items())
                if params["kind"] is None or k.value == params["kind"]
            ]

    def get_signal(self, instance_id: str, kind: SignalKind | str) -> Signal | None:
        checked = sg.signal_kind(kind)
        checks.check_id("instance_id", instance_id)
        found = self.get_signals(instance_id, checked)
        return found[0] if found else None

    def clear_signal(self, instance_id: str, kind: SignalKind | str | None) -> bool:
        checked = None if kind is None else sg.signal_kind(kind)
        checks.check_id("instance_id", instance_id)
        with self._atomic():
            return self._clear(instance_id, checked)

    def _clear(self, instance_id: str, kind: SignalKind | None) -> bool:
        current = self._touch(instance_id)
        if current is None:
            raise NotFoundError(f"instance {instance_id!r} does not exist")
        gone = [k for k in current.signals if kind is None or k is kind]
        for k in gone:
            del current.signals[k]
        return bool(gone)

    def request(
        self, instance_id: str, kind: SignalKind, reason: str | None, requested_by: str | None
    ) -> SignalOutcome:
        params = sg.signal_params(instance_id, kind, reason, requested_by)
        with self._atomic():
            current = self._target(instance_id)
            if current.status is sg.APPLIED_STATUS[kind]:
                return SignalOutcome.UNCHANGED
            if self._claimed(current) and current.status is not WorkflowStatus.PAUSED:
                self._put_signal(current, params)
                return SignalOutcome.PENDING
            signal = Signal(
                instance_id=instance_id, kind=kind, reason=reason, requested_by=requested_by
            )
            self._apply_signal(current, signal, None)
            return SignalOutcome.APPLIED

    def _claimed(self, current: _Instance) -> bool:
        """``live_claim``: a live instance lease (branch leases do not count)."""
        return current.lease is not None and current.lease.expires_at > self.now

    def _apply_signal(self, current: _Instance, signal: Signal, claim: Claim | None) -> None:
        kind = signal.kind
        self._clear(current.summary.instance_id, None if kind is SignalKind.CANCEL else kind)
        if current.summary.position_kind == "AtFork":
            current.branches = {}  # a fork in progress ends here
        current.applied[current.version + 1] = AppliedSignal(
            kind=kind.value,
            reason=signal.reason,
            requested_by=signal.requested_by,
            requested_at=signal.created_at or self.now,
        )
        self._set_status(current, sg.APPLIED_STATUS[kind], claim)

    def _set_status(
        self,
        current: _Instance,
        status: WorkflowStatus,
        claim: Claim | None,
        *,
        deliver: bool = False,
    ) -> int:
        changed = msgspec.structs.replace(self._stored(current).snapshot, status=status)
        if deliver:
            changed, _ = self._deliver_buffered(changed)
        return self._save(changed, current.version, claim)

    def unpause(self, instance_id: str) -> SignalOutcome:
        checks.check_id("instance_id", instance_id)
        with self._atomic():
            current = self._target(instance_id)
            withdrawn = self._clear(instance_id, SignalKind.PAUSE)
            if current.status is WorkflowStatus.PAUSED:
                self._set_status(current, WorkflowStatus.IN_PROGRESS, None, deliver=True)
                return SignalOutcome.APPLIED
            return SignalOutcome.WITHDRAWN if withdrawn else SignalOutcome.UNCHANGED

    def check_and_apply(
        self, instance_id: str, kind: SignalKind | None, claim: Claim | None
    ) -> Signal | None:
        checks.check_id("instance_id", instance_id)
        checks.check_optional_claim(claim, instance_id)
        with self._atomic():
            current = self._target(instance_id)
            pending = dict(current.signals)
            if (kind is None or kind in pending) and SignalKind.CANCEL in pending:
                kind = SignalKind.CANCEL
            signal = pending.get(kind or SignalKind.PAUSE)
            if signal is not None:
                self._apply_signal(current, signal, claim)
            return signal

    # -- events ----------------------------------------------------------------------------

    def send_event(self, instance_id: str, name: str, payload: Any) -> EventOutcome:
        params = sg.event_params(self.codec, instance_id, name, payload, self.ctx.limits)
        with self._atomic():
            current = self._target(instance_id)
            parked = self._waiting_for(current, name)
            older = None if parked is None else self._take_oldest(current, name, None)
            if parked is None or older is not None:
                self._event_ids += 1
                current.events.append(_Event(self._event_ids, name, params["payload"], self.now))
            if parked is None:
                return EventOutcome.BUFFERED
            value = payload if older is None else older.payload
            self._save(sg.resumed_by_event(parked, value), current.version, None)
            return EventOutcome.RESUMED

    def _waiting_for(self, current: _Instance, name: str) -> WorkflowSnapshot | None:
        if current.status is not WorkflowStatus.IN_PROGRESS:
            return None
        if current.summary.position_kind != "AtSignal" or current.available_at <= self.now:
            return None
        snapshot = self._stored(current).snapshot
        return snapshot if sg.waits_for(snapshot, name) else None

    def _take_oldest(self, current: _Instance, name: str, before: datetime | None) -> Event | None:
        for event in current.events:
            if event.name == name and (before is None or event.created_at < before):
                current.events.remove(event)
                return self._event(current, event)
        return None

    def _event(self, current: _Instance, event: _Event) -> Event:
        row = (event.id, event.name, event.payload, event.created_at)
        return sg.interpret_event(current.summary.instance_id, row)

    def peek_events(self, instance_id: str, name: str | None, limit: int) -> builtins.list[Event]:
        params = sg.peek_params(instance_id, name, limit)
        with self._lock:
            current = self._instances.get(instance_id)
            if current is None:
                raise NotFoundError(f"instance {instance_id!r} does not exist")
            chosen = [e for e in current.events if name is None or e.name == name]
            return [self._event(current, e) for e in chosen[: params["limit"]]]

    def consume_event(
        self,
        event_id: int,
        snapshot: WorkflowSnapshot,
        expected_version: int,
        claim: Claim | None,
    ) -> ParkResult:
        sg.take_params(event_id, snapshot, expected_version, claim)
        iid = snapshot.instance_id
        with self._atomic():
            current = self._touch(iid)
            events = [] if current is None else current.events
            found = next((e for e in events if e.id == event_id), None)
            if found is None:
                raise NotFoundError(
                    f"event {event_id} of instance {iid!r} is not buffered"
                    " (already consumed, or never sent to this instance)"
                )
            if any(e.name == found.name and e.id < found.id for e in events):
                raise ValidationError(
                    f"event {event_id} is not the oldest buffered event of its name"
                )
            events.remove(found)
            snapshot, event = self._deliver_buffered(snapshot)
            version = self._save(snapshot, expected_version, claim, checked=event is None)
            return ParkResult(version=version, snapshot=snapshot, event=event)

    def _deliver_buffered(
        self, snapshot: WorkflowSnapshot
    ) -> tuple[WorkflowSnapshot, Event | None]:
        """A checkpoint about to wait for an event already buffered (sent before the
        wait's deadline) is resumed with the oldest such event at once."""
        position = snapshot.position
        current = self._touch(snapshot.instance_id)
        if current is None or snapshot.status is not WorkflowStatus.IN_PROGRESS:
            return snapshot, None
        if not isinstance(position, AtSignal):
            return snapshot, None
        event = self._take_oldest(current, position.signal_name, position.timeout_at)
        if event is None:
            return snapshot, None
        return sg.resumed_by_event(snapshot, event.payload), event

    def park(
        self, snapshot: WorkflowSnapshot, expected_version: int | None, claim: Claim | None
    ) -> ParkResult:
        sg.park_event_name(snapshot, expected_version, claim)
        with self._atomic():
            snapshot, event = self._deliver_buffered(snapshot)
            version = self._save(snapshot, expected_version, claim, checked=event is None)
            return ParkResult(version=version, snapshot=snapshot, event=event)

    # -- claims and dispatch ---------------------------------------------------------------

    def claim(self, instance_id: str, worker_id: str, ttl: cl.Seconds) -> Claim | None:
        params = cl.claim_params(instance_id, worker_id, ttl)
        with self._atomic():
            current = self._touch(instance_id)
            if current is None:
                raise NotFoundError(f"instance {instance_id!r} does not exist")
            lease = current.lease
            token = None
            if not current.status.is_terminal and (
                lease is None or lease.expires_at <= self.now or lease.worker_id == worker_id
            ):
                token = self._lease(current, worker_id, params["ttl"], uuid4()).token
            row = (current.status.value, current.summary.current_task_id, token, None)
            found = cl.interpret_claim(instance_id, worker_id, row)
            if found is None or current.lease is None:
                return found
            return msgspec.structs.replace(found, expires_at=current.lease.expires_at)

    def _lease(self, current: _Instance, worker_id: str, ttl: timedelta, token: UUID) -> _Lease:
        current.lease = _Lease(worker_id, token, self.now + ttl, current.summary.current_task_id)
        return current.lease

    def extend(self, claim: Claim, ttl: cl.Seconds) -> Claim:
        params = {**cl.token_params(claim), "ttl": checks.check_seconds(ttl, "ttl")}
        with self._atomic():
            current = self._touch(claim.instance_id)
            lease = None if current is None else current.lease
            row = None
            if lease is not None and lease.token == claim.token and lease.expires_at > self.now:
                lease.expires_at = self.now + params["ttl"]
                row = (lease.expires_at,)
            return cl.renewed(claim, row)

    def release(self, claim: Claim) -> bool:
        cl.token_params(claim)
        with self._atomic():
            current = self._touch(claim.instance_id)
            if current is None or current.lease is None or current.lease.token != claim.token:
                return False
            current.lease = None
            if current.status is WorkflowStatus.IN_PROGRESS and current.available_at <= self.now:
                current.available_at = self.now
            return True

    def dispatch(self, query: DispatchQuery) -> builtins.list[ClaimedTask]:
        if query.empty:
            return []
        with self._atomic():
            picked = self._dispatchable(query)
            token = uuid4()
            tasks = []
            for current in picked:
                if not query.lease:
                    continue
                lease = self._lease(current, query.worker_id, query.ttl, token)
                claim = Claim(
                    instance_id=current.summary.instance_id,
                    worker_id=query.worker_id,
                    token=token,
                    expires_at=lease.expires_at,
                    task_id=lease.task_id,
                )
                tasks.append(ClaimedTask(claim, _stored=self._stored(current)))
            return tasks

    def dispatchable_ids(self, query: DispatchQuery) -> builtins.list[str]:
        with self._atomic():
            return [c.summary.instance_id for c in self._dispatchable(query)]

    def _dispatchable(self, query: DispatchQuery) -> builtins.list[_Instance]:
        """The ``dispatch`` predicate and order: InProgress, due, no live lease, tags a
        subset of the worker's; effective priority (aging), longest due, id."""
        now, aging = self.now, query.aging_interval.total_seconds()
        wanted = None if query.instance_ids is None else set(query.instance_ids)
        tags = None if query.tags is None else set(query.tags)
        found = []
        for iid, current in self._instances.items():
            if wanted is not None and iid not in wanted:
                continue
            if current.status is not WorkflowStatus.IN_PROGRESS or current.available_at > now:
                continue
            if tags is not None and not set(current.summary.tags) <= tags:
                continue
            if current.lease is not None and current.lease.expires_at > now:
                continue
            waited = (now - current.available_at).total_seconds()
            effective = current.summary.priority - math.floor(waited / aging)
            found.append((effective, current.available_at, _utf8(iid), current))
        found.sort(key=lambda f: f[:3])
        chosen = [f[3] for f in found[: query.limit]]
        for current in chosen:
            self._touch(current.summary.instance_id)
        return chosen

    def next_dispatch_at(self) -> datetime | None:
        with self._lock:
            now = self.now
            times = [
                c.available_at
                for c in self._instances.values()
                if c.status is WorkflowStatus.IN_PROGRESS and now < c.available_at < rw.PARKED_UNTIL
            ]
            times += [
                c.lease.expires_at
                for c in self._instances.values()
                if c.lease is not None
                and c.lease.expires_at > now
                and c.status is WorkflowStatus.IN_PROGRESS
            ]
            return min(times, default=None)

    # -- parallel branches -----------------------------------------------------------------

    def start_branches(
        self, snapshot: WorkflowSnapshot, expected_version: int | None, claim: Claim | None
    ) -> int:
        checks.check_save(snapshot, expected_version, claim)
        branch_ids = br.fork_branches(snapshot)
        with self._atomic():
            if expected_version is not None:
                self._target(snapshot.instance_id)
            version = self._save(snapshot, expected_version, claim, parked=True)
            current = self._instances[snapshot.instance_id]
            current.branches = {b: _Branch(b, version, self.now) for b in branch_ids}
            lease = current.lease
            if claim is not None and lease is not None and lease.token == claim.token:
                current.lease = None  # handed over with the branches
            return version

    def dispatch_branches(self, query: br.BranchQuery) -> builtins.list[ClaimedBranch]:
        with self._atomic():
            now = self.now
            tags = None if query.tags is None else set(query.tags)
            open_ = []
            for iid, current in self._instances.items():
                if current.status is not WorkflowStatus.IN_PROGRESS:
                    continue
                if tags is not None and not set(current.summary.tags) <= tags:
                    continue
                for b in current.branches.values():
                    if b.fork_version != current.version or b.done_at is not None:
                        continue
                    if b.expires_at is not None and b.expires_at > now:
                        continue
                    open_.append((b.created_at, _utf8(iid), _utf8(b.branch_id), current, b))
            open_.sort(key=lambda o: o[:3])
            token = uuid4()
            out = []
            for *_, current, b in open_[: query.limit]:
                self._touch(current.summary.instance_id)
                b.worker_id, b.token, b.expires_at = query.worker_id, token, now + query.ttl
                claim = BranchClaim(
                    instance_id=current.summary.instance_id,
                    branch_id=b.branch_id,
                    worker_id=query.worker_id,
                    token=token,
                    expires_at=b.expires_at,
                    fork_version=b.fork_version,
                )
                out.append(ClaimedBranch(claim, _stored=self._stored(current)))
            return out

    def _branch(self, claim: BranchClaim, *, live: bool) -> _Branch | None:
        current = self._touch(claim.instance_id)
        b = None if current is None else current.branches.get(claim.branch_id)
        if b is None or b.token != claim.token or b.done_at is not None:
            return None
        if live and (b.expires_at is None or b.expires_at <= self.now):
            return None
        return b

    def extend_branch(self, claim: BranchClaim, ttl: cl.Seconds) -> BranchClaim:
        claim = br.check_branch_claim(claim)
        age = checks.check_seconds(ttl, "ttl")
        with self._atomic():
            b = self._branch(claim, live=True)
            current = self._instances.get(claim.instance_id)
            current_fork = (
                current is not None
                and current.version == claim.fork_version
                and current.status is WorkflowStatus.IN_PROGRESS
            )
            if b is None or not current_fork:
                raise br.lost_branch(claim, "lease expired, taken over or finished")
            b.expires_at = self.now + age
            return msgspec.structs.replace(claim, expires_at=b.expires_at)

    def release_branch(self, claim: BranchClaim) -> bool:
        claim = br.check_branch_claim(claim)
        with self._atomic():
            b = self._branch(claim, live=False)
            if b is None:
                return False
            b.worker_id = b.token = b.expires_at = None
            return True

    def complete_branch(self, claim: BranchClaim, result: TaskResult) -> BranchDone:
        claim = br.check_branch_claim(claim)
        result = br.check_branch_result(claim.branch_id, result)
        output = encode_output(self.codec, result.output, strict=self.ctx.limits.strict_values)
        if output is not None:
            self.ctx.limits.value(len(output), f"output of branch {claim.branch_id!r}")
        iid, version = claim.instance_id, claim.fork_version
        with self._atomic():
            try:
                current = self._target(iid)
            except SnapstoreError as exc:
                raise br.lost_branch(claim, str(exc)) from exc
            if current.version != version:
                detail = f"the fork (version {version}) is no longer current"
                raise br.lost_branch(claim, detail)
            mine = [x for x in current.branches.values() if x.fork_version == version]
            others = [x for x in mine if x.done_at is None and x.branch_id != claim.branch_id]
            stored_bytes = len(current.history[-1].blob) + sum(
                len(row[-1]) for t, row in current.tasks.items() if t != claim.branch_id and row[-1]
            )
            self.ctx.limits.checkpoint(stored_bytes + len(output or b""), iid)
            join = None
            if not others:
                fork = self._stored(current).snapshot
                rows = [(b, *current.tasks[b]) for b in br.siblings(claim, fork)]
                join = br.join_of(claim, fork, result, rows)
                programs.prepare(self.ctx, join, version, None)  # refused before any write
            b = self._branch(claim, live=True)
            if b is None or b.fork_version != version:
                raise br.lost_branch(claim, "lease expired, taken over or finished")
            b.done_at = self.now
            current.tasks[claim.branch_id] = rw.task_row(result, output)
            if join is None:
                return BranchDone(joined=False, version=version)
            return BranchDone(joined=True, version=self._save(join, version, None))

    def branch_states(self, instance_id: str) -> builtins.list[BranchState]:
        rw.id_params(instance_id)
        with self._lock:
            current = self._instances.get(instance_id)
            if current is None:
                return []
            now = self.now
            return [
                BranchState(
                    branch_id=b.branch_id,
                    worker_id=b.worker_id,
                    leased=b.expires_at is not None and b.expires_at > now,
                    done_at=b.done_at,
                )
                for _, b in sorted(current.branches.items(), key=lambda kv: _utf8(kv[0]))
                if b.fork_version == current.version
            ]

    # -- retention -------------------------------------------------------------------------

    def prune_history(
        self,
        keep_last: int,
        older_than: cl.Seconds | None,
        instance_id: str | None,
        batch_size: int,
        dry_run: bool = False,
    ) -> int:
        rt.prune_batches(instance_id, keep_last, older_than, batch_size)  # checks
        age = (
            None
            if older_than is None
            else checks.check_seconds(older_than, "older_than", zero=True)
        )
        with self._atomic():
            now, count = self.now, 0
            for iid, current in self._instances.items():
                if instance_id is not None and iid != instance_id:
                    continue
                for h in current.history:
                    old = h.version <= current.version - keep_last
                    if old and not h.pruned and (age is None or h.created_at < now - age):
                        count += 1
                        if not dry_run:
                            self._touch(iid)
                            h.pruned = True
            return count

    def purge_terminal(self, older_than: cl.Seconds, batch_size: int, dry_run: bool = False) -> int:
        rt.purge_batches(older_than, batch_size)  # checks
        age = checks.check_seconds(older_than, "older_than", zero=True)
        with self._atomic():
            now = self.now
            gone = [
                iid
                for iid, c in self._instances.items()
                if c.status.is_terminal
                and c.completed_at is not None
                and c.completed_at < now - age
            ]
            for iid in [] if dry_run else gone:
                del self._instances[iid]
            return len(gone)

    # -- operators -------------------------------------------------------------------------

    def _due(self) -> builtins.list[_Instance]:
        now = self.now
        return [
            c
            for c in self._instances.values()
            if c.status is WorkflowStatus.IN_PROGRESS
            and c.available_at <= now
            and not (c.lease is not None and c.lease.expires_at > now)
        ]

    def stats(self) -> StoreStats:
        with self._atomic():
            now, every = self.now, builtins.list(self._instances.values())
            due = self._due()
            leases = [c.lease for c in every if c.lease is not None]
            by_status: dict[str, int] = {}
            for c in every:
                by_status[c.status.value] = by_status.get(c.status.value, 0) + 1
            return StoreStats(
                instances=dict(sorted(by_status.items())),
                due=len(due),
                oldest_due_seconds=(
                    (now - min(c.available_at for c in due)).total_seconds() if due else None
                ),
                live_leases=sum(1 for x in leases if x.expires_at > now),
                expired_leases=sum(1 for x in leases if x.expires_at <= now),
                buffered_events=sum(len(c.events) for c in every),
                events_not_parked=sum(len(c.events) for c in every if not _parked(c)),
                dead_events=0,  # this store holds only what it wrote: nothing unreadable
                open_branches=sum(
                    1
                    for c in every
                    for b in c.branches.values()
                    if b.done_at is None and b.fork_version == c.version
                ),
            )

    def check(self, older_than: cl.Seconds) -> builtins.list[Problem]:
        age = checks.check_seconds(older_than, "older_than", zero=True)
        with self._atomic():
            now, limit = self.now, ops.CHECK_SAMPLE
            ordered = sorted(self._instances.items(), key=lambda kv: _utf8(kv[0]))
            stuck = sorted(
                (c.available_at, _utf8(c.summary.instance_id), c)
                for c in self._due()
                if c.available_at <= now - age
            )
            problems = [
                ops.problem("stuck", c.summary.instance_id, _age(now, at))
                for at, _, c in stuck[:limit]
            ]
            expired = sorted(
                (c.lease.expires_at, _utf8(iid), iid)
                for iid, c in ordered
                if c.lease is not None
                and c.lease.expires_at <= now - age
                and not c.status.is_terminal
            )
            problems += [
                ops.problem("expired_lease", iid, _age(now, at)) for at, _, iid in expired[:limit]
            ]
            stray = sorted(
                (e.created_at, e.id, iid, e.name)
                for iid, c in ordered
                if not _parked(c)
                for e in c.events
                if e.created_at <= now - age
            )
            problems += [
                ops.problem("stray_event", iid, _age(now, at), name)
                for at, _, iid, name in stray[:limit]
            ]
            return problems


_APPLIED_STATUS = {
    SignalKind.CANCEL: WorkflowStatus.CANCELLED,
    SignalKind.PAUSE: WorkflowStatus.PAUSED,
}


def _age(now: datetime, since: datetime) -> float:
    return (now - since).total_seconds()


def _parked(current: _Instance) -> bool:
    """Waiting for an event (what ``position_kind = 'AtSignal'`` says in SQL)."""
    return (
        current.status is WorkflowStatus.IN_PROGRESS and current.summary.position_kind == "AtSignal"
    )


def _utf8(text: str) -> bytes:
    """PostgreSQL orders these columns (COLLATE "C") by their UTF-8 bytes."""
    return text.encode()


def _applied_row(applied: AppliedSignal | None) -> tuple[Any, ...]:
    if applied is None:
        return (None, None, None, None)
    return (applied.kind, applied.reason, applied.requested_by, applied.requested_at)


def _summary(item: rw.PreparedSave, version: int, now: datetime) -> SnapshotSummary:
    return SnapshotSummary(
        instance_id=item.instance_id,
        status=WorkflowStatus(item.status),
        definition_hash=item.definition_hash,
        current_task_id=item.current_task_id,
        position_kind=item.position_kind,
        completed_task_count=item.completed_task_count,
        priority=item.priority,
        tags=tuple(json.loads(item.tags)),
        version=version,
        codec=item.codec,
        error=item.error,
        updated_at=now,
    )


def _summary_row(s: SnapshotSummary) -> tuple[object, ...]:
    return (
        s.instance_id,
        s.status.value,
        s.definition_hash,
        s.current_task_id,
        s.position_kind,
        s.completed_task_count,
        s.priority,
        builtins.list(s.tags),
        s.version,
        s.codec,
        s.error,
        s.updated_at,
        s.forked_from,
        s.forked_from_version,
    )
