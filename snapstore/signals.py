"""Cancel/pause signals and buffered external events.

A signal row is a *pending* request: it exists only while no checkpoint has applied
it yet. When nobody drives an instance (no live claim), `cancel` and `pause` apply at
once through an ordinary checkpoint; when a worker holds a live lease, changing the
status under its feet would only make its next fenced save fail, so the request is
stored and the worker applies it at a safe point with `check_and_cancel` /
`check_and_pause`.

Events follow the same split: an instance parked `AtSignal` on that event name is
resumed at once by `send_event`; otherwise the event is buffered FIFO per (instance,
name) and the engine consumes it together with its next checkpoint (`consume_event`,
`park`) in one transaction, so an event is never lost and never applied twice.

Every write program first locks the instance's snapshot row (``lock_instance``), so
signal and event programs on one instance are serialised with each other and with
saves. All logic lives in the generator programs and pure functions below; the
backends' methods only run them, like those of `snapstore.programs`.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID, uuid4

import msgspec

from snapstore import checks, programs
from snapstore import rows as rw
from snapstore.codecs import Codec, open_value, seal_value
from snapstore.errors import (
    ConflictError,
    DecodeError,
    NotFoundError,
    TerminalStateError,
    UnknownCodecError,
    ValidationError,
)
from snapstore.limits import DEFAULT_LIMITS, Limits
from snapstore.model import (
    AtSignal,
    AtTask,
    Claim,
    TaskResult,
    TaskStatus,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.programs import AfterCommit, Context, Fetch, Pipeline, Program, Receipt, Step

log = logging.getLogger("snapstore.events")

DEFAULT_EVENT_PAGE: Final = 100


class SignalKind(enum.StrEnum):
    """What a signal asks of an instance."""

    CANCEL = "cancel"
    PAUSE = "pause"


class SignalOutcome(enum.StrEnum):
    """What `cancel`, `pause` and `unpause` did."""

    APPLIED = "applied"
    """The status changed now, through a new checkpoint."""
    PENDING = "pending"
    """A live claim holds the instance: the request waits for the claimant to apply it."""
    WITHDRAWN = "withdrawn"
    """`unpause` removed a pending pause that no worker had applied yet."""
    UNCHANGED = "unchanged"
    """The instance was already in the requested state; nothing was written."""


class EventOutcome(enum.StrEnum):
    """What `send_event` did with an event."""

    RESUMED = "resumed"
    """The instance was parked on this event name and advanced in a new checkpoint."""
    BUFFERED = "buffered"
    """The event waits, FIFO per name, for the engine to consume it."""


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    """A cancel or pause request: who asked (``requested_by``), why, and when."""

    instance_id: str
    kind: SignalKind
    reason: str | None = None
    created_at: datetime | None = None
    requested_by: str | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A buffered external event. ``id`` orders events and names one to `consume_event`."""

    id: int
    instance_id: str
    name: str
    payload: Any = None
    created_at: datetime | None = None


class ParkResult(msgspec.Struct, frozen=True, kw_only=True):
    """What `park` or `consume_event` saved: the checkpoint as given (``event`` None),
    or, when it waits AtSignal for an event already buffered, the checkpoint resumed
    with that event (``event``, consumed too): the engine continues from ``snapshot``."""

    version: int
    snapshot: WorkflowSnapshot
    event: Event | None = None


class _Target(msgspec.Struct, frozen=True):
    """The locked snapshot row of an instance a program is about to change."""

    instance_id: str
    version: int
    status: WorkflowStatus
    position_kind: str
    due: bool  # by the server's clock; for an AtSignal wait: its deadline has passed
    server_now: datetime  # the transaction's now(): when a request applied at once was made


APPLIED_STATUS: Final = {
    SignalKind.CANCEL: WorkflowStatus.CANCELLED,
    SignalKind.PAUSE: WorkflowStatus.PAUSED,
}


# --- pure functions: validation, parameters, row interpretation -------------------------


def signal_kind(kind: object) -> SignalKind:
    """``kind`` as a `SignalKind`; anything else is a `ValidationError` before any I/O."""
    try:
        return SignalKind(kind)  # type: ignore[arg-type]  # validated right here
    except (ValueError, TypeError):
        names = ", ".join(k.value for k in SignalKind)
        raise ValidationError(f"unknown signal kind {kind!r} (expected one of {names})") from None


def signal_params(
    instance_id: str, kind: object, reason: object = None, requested_by: object = None
) -> rw.Params:
    return {
        "instance_id": checks.check_id("instance_id", instance_id),
        "kind": signal_kind(kind).value,
        "reason": checks.check_text("reason", reason, optional=True),
        "requested_by": checks.check_text("requested_by", requested_by, optional=True),
    }


def signal_filter_params(instance_id: str, kind: object | None) -> rw.Params:
    """Parameters of the statements where a NULL kind means every kind."""
    return {
        "instance_id": checks.check_id("instance_id", instance_id),
        "kind": None if kind is None else signal_kind(kind).value,
    }


def event_params(
    codec: Codec, instance_id: str, name: str, payload: Any, limits: Limits = DEFAULT_LIMITS
) -> rw.Params:
    """Validates and seals the payload up front, so an unencodable event writes nothing."""
    return {
        "instance_id": checks.check_id("instance_id", instance_id),
        "name": checks.check_id("event name", name),
        "payload": _sealed_payload(codec, payload, limits),
    }


def _sealed_payload(codec: Codec, payload: Any, limits: Limits) -> bytes:
    sealed = seal_value(codec, payload, "event payload", strict=limits.strict_values)
    limits.value(len(sealed), "event payload")
    return sealed


def peek_params(instance_id: str, name: str | None, limit: int) -> rw.Params:
    return {
        "instance_id": checks.check_id("instance_id", instance_id),
        "name": None if name is None else checks.check_id("event name", name),
        "limit": checks.check_limit(limit),
    }


def take_params(
    event_id: int, snapshot: WorkflowSnapshot, expected_version: int, claim: Claim | None
) -> rw.Params:
    """Checks the save that consumes the event too, before anything is read."""
    checks.check_version("event_id", event_id, minimum=1)
    checks.check_version("expected_version", expected_version, minimum=1)
    checks.check_save(snapshot, expected_version, claim)
    return {"event_id": event_id, "instance_id": snapshot.instance_id}


def interpret_target(instance_id: str, row: rw.Row | None) -> _Target:
    """The locked row; signals and events need an existing, non-terminal instance."""
    if row is None:
        raise NotFoundError(f"instance {instance_id!r} does not exist")
    status = WorkflowStatus(row[1])
    if status.is_terminal:
        raise TerminalStateError(instance_id, status.value)
    return _Target(instance_id, int(row[0]), status, row[2], bool(row[3]), row[4])


def _exists(instance_id: str, exists: bool) -> None:
    if not exists:
        raise NotFoundError(f"instance {instance_id!r} does not exist")


def interpret_signals(instance_id: str, rows: Sequence[rw.Row]) -> list[Signal]:
    _exists(instance_id, bool(rows and rows[0][0]))
    return [
        Signal(
            instance_id=instance_id,
            kind=SignalKind(kind),
            reason=reason,
            created_at=at,
            requested_by=by,
        )
        for _, kind, reason, at, by in rows
        if kind is not None
    ]


def _open_payload(instance_id: str, event_id: int, payload: bytes | None) -> Any:
    try:
        return None if payload is None else open_value(payload)
    except DecodeError as exc:
        raise exc.located(instance_id=instance_id, prefix=f"event {event_id}: ") from exc


def interpret_event(instance_id: str, row: rw.Row) -> Event:
    event_id, name, payload, created_at = row
    return Event(
        id=int(event_id),
        instance_id=instance_id,
        name=name,
        payload=_open_payload(instance_id, int(event_id), payload),
        created_at=created_at,
    )


def waits_for(snapshot: WorkflowSnapshot, name: str) -> bool:
    """Whether event ``name`` is what the instance waits for (so it resumes it)."""
    position = snapshot.position
    return (
        snapshot.status is WorkflowStatus.IN_PROGRESS
        and isinstance(position, AtSignal)
        and position.signal_name == name
    )


def resumed_by_event(snapshot: WorkflowSnapshot, payload: Any) -> WorkflowSnapshot:
    """The checkpoint after the awaited event arrives: the parked task completes with the
    payload as its output and becomes the current task, so the engine continues from it."""
    position = snapshot.position
    if not isinstance(position, AtSignal):
        raise ValidationError("only a checkpoint positioned AtSignal can be resumed by an event")
    result = TaskResult(status=TaskStatus.COMPLETED, output=payload)
    return msgspec.structs.replace(
        snapshot,
        position=AtTask(task_id=position.task_id),
        task_results={**snapshot.task_results, position.task_id: result},
    )


def park_event_name(
    snapshot: WorkflowSnapshot, expected_version: int | None, claim: Claim | None
) -> str:
    """The event name a checkpoint handed to `park` waits for (its save checked)."""
    checks.check_save(snapshot, expected_version, claim)
    position = snapshot.position
    if snapshot.status is not WorkflowStatus.IN_PROGRESS or not isinstance(position, AtSignal):
        raise ValidationError("park needs an InProgress snapshot positioned AtSignal")
    return position.signal_name


# --- programs -----------------------------------------------------------------------------


# Programs whose name starts with "_" take arguments the public ones already checked.


def _lock(instance_id: str) -> Program[_Target]:
    row = yield Step("lock_instance", {"instance_id": instance_id})
    return interpret_target(instance_id, row)


def _claimed(target: _Target) -> Program[bool]:
    """Whether a live claim (a worker driving it) holds the instance; run after `_lock`."""
    (claimed,) = yield Step("live_claim", {"instance_id": target.instance_id})
    return bool(claimed)


def _load_locked(ctx: Context, target: _Target) -> Program[WorkflowSnapshot]:
    """The current checkpoint of the instance `_lock` locked (task outputs hydrated)."""
    stored = yield from programs.load(ctx, target.instance_id)
    if stored is None or stored.version != target.version:  # impossible while we hold the lock
        raise ConflictError(target.instance_id, target.version, stored.version if stored else None)
    return stored.snapshot


def _set_status(
    ctx: Context,
    target: _Target,
    status: WorkflowStatus,
    claim: Claim | None,
    receipt: Receipt,
    *,
    deliver: bool = False,
) -> Program[int]:
    """A checkpoint of the locked instance that changes only its status. It goes through
    `programs.save` (CAS on the locked version, fenced by ``claim``), so the new version,
    history row, completed_at and wakeup NOTIFY are exactly those of a normal save.

    Programs here make the save their last statement: the save records what it wrote in
    the process-wide task cache, and a later statement failing would roll the write back
    behind the cache's back."""
    snapshot = yield from _load_locked(ctx, target)
    changed = msgspec.structs.replace(snapshot, status=status)
    if deliver:  # see `_deliver_buffered`
        changed, _ = yield from _deliver_buffered(ctx, changed)
    return (yield from programs.save(ctx, changed, target.version, claim, receipt=receipt))


def _clear(instance_id: str, kind: SignalKind | None) -> Program[bool]:
    params = {"instance_id": instance_id, "kind": None if kind is None else kind.value}
    removed, exists = yield Pipeline(
        (Step("delete_signals", params, Fetch.ALL), Step("instance_exists", params, Fetch.ALL))
    )
    _exists(instance_id, bool(exists[0][0]))
    return bool(removed)


def _apply_signal(
    ctx: Context, target: _Target, signal: Signal, claim: Claim | None, receipt: Receipt
) -> Program[None]:
    """Checkpoint the status ``signal`` asks for, record who asked and why against that
    checkpoint (applied_signals), and drop what it settles: a cancel ends the instance,
    so no other request can still apply; a pause settles only the pause. The save comes
    last (see `_set_status`)."""
    kind = signal.kind
    yield from _clear(target.instance_id, None if kind is SignalKind.CANCEL else kind)
    if target.position_kind == "AtFork":  # a fork in progress ends here
        yield Step("close_branches", {"instance_id": target.instance_id}, Fetch.NONE)
    applied = {
        "instance_id": target.instance_id,
        "version": target.version + 1,
        "kind": kind.value,
        "reason": signal.reason,
        "requested_by": signal.requested_by,
        "requested_at": signal.created_at or target.server_now,
    }
    yield Step("record_applied_signal", applied, Fetch.NONE)
    yield from _set_status(ctx, target, APPLIED_STATUS[kind], claim, receipt)


def store_signal(
    instance_id: str, kind: SignalKind | str, reason: str | None, requested_by: str | None
) -> Program[Signal]:
    params = signal_params(instance_id, kind, reason, requested_by)
    yield from _lock(instance_id)
    _, kind_, reason_, created_at, by = yield Step("put_signal", params)
    return Signal(
        instance_id=instance_id,
        kind=SignalKind(kind_),
        reason=reason_,
        created_at=created_at,
        requested_by=by,
    )


def _read_signals(params: rw.Params) -> Program[list[Signal]]:
    rows = yield Step("read_signals", params, Fetch.ALL)
    return interpret_signals(params["instance_id"], rows)


def read_signals(instance_id: str, kind: SignalKind | str | None) -> Program[list[Signal]]:
    return (yield from _read_signals(signal_filter_params(instance_id, kind)))


def _read_signal(instance_id: str, kind: SignalKind) -> Program[Signal | None]:
    signals = yield from _read_signals({"instance_id": instance_id, "kind": kind.value})
    return signals[0] if signals else None


def read_signal(instance_id: str, kind: SignalKind | str) -> Program[Signal | None]:
    checked = signal_kind(kind)
    return (yield from _read_signal(checks.check_id("instance_id", instance_id), checked))


def clear_signal(instance_id: str, kind: SignalKind | str | None) -> Program[bool]:
    checked = None if kind is None else signal_kind(kind)
    return (yield from _clear(checks.check_id("instance_id", instance_id), checked))


def request(
    ctx: Context,
    instance_id: str,
    kind: SignalKind,
    reason: str | None,
    requested_by: str | None,
    receipt: Receipt,
) -> Program[SignalOutcome]:
    """`cancel`/`pause`: apply now when no live claim holds the instance, else leave the
    request pending for the claimant. A Paused instance is driven by nobody even if a
    lease on it has not run out yet, so requests against it apply at once too."""
    params = signal_params(instance_id, kind, reason, requested_by)
    target = yield from _lock(instance_id)
    if target.status is APPLIED_STATUS[kind]:
        return SignalOutcome.UNCHANGED
    claimed = yield from _claimed(target)
    if claimed and target.status is not WorkflowStatus.PAUSED:
        yield Step("put_signal", params)  # an upsert: safe to send again
        return SignalOutcome.PENDING
    receipt.outcome = SignalOutcome.APPLIED
    signal = Signal(instance_id=instance_id, kind=kind, reason=reason, requested_by=requested_by)
    yield from _apply_signal(ctx, target, signal, None, receipt)
    return SignalOutcome.APPLIED


def unpause(ctx: Context, instance_id: str, receipt: Receipt) -> Program[SignalOutcome]:
    """Paused -> InProgress (the save NOTIFYs: the instance is dispatchable again), and
    any pause signal goes, so a worker cannot re-pause the instance from a stale request."""
    checks.check_id("instance_id", instance_id)
    target = yield from _lock(instance_id)
    withdrawn = yield from _clear(instance_id, SignalKind.PAUSE)
    if target.status is WorkflowStatus.PAUSED:
        receipt.outcome = SignalOutcome.APPLIED
        # An event sent while it was paused was buffered: parked on it, it resumes now
        # (if it came before the wait's deadline).
        status = WorkflowStatus.IN_PROGRESS
        yield from _set_status(ctx, target, status, None, receipt, deliver=True)
        return SignalOutcome.APPLIED
    return SignalOutcome.WITHDRAWN if withdrawn else SignalOutcome.UNCHANGED


def check_and_apply(
    ctx: Context,
    instance_id: str,
    kind: SignalKind | None,
    claim: Claim | None,
    receipt: Receipt,
) -> Program[Signal | None]:
    """Worker side: apply a pending ``kind`` signal (None: whichever is pending, a cancel
    before a pause) in a checkpoint fenced by ``claim`` and clear it; the applied signal
    (with its reason), or None if none was pending. If the lease is lost the save raises
    `ClaimLostError`, the transaction rolls back and the signal stays pending for
    whoever holds the instance next."""
    checks.check_id("instance_id", instance_id)
    checks.check_optional_claim(claim, instance_id)
    target = yield from _lock(instance_id)
    pending = {s.kind: s for s in (yield from read_signals(instance_id, None))}
    if (kind is None or kind in pending) and SignalKind.CANCEL in pending:
        kind = SignalKind.CANCEL  # cancel wins over a pause
    signal = pending.get(kind or SignalKind.PAUSE)
    if signal is not None:
        receipt.outcome = signal
        yield from _apply_signal(ctx, target, signal, claim, receipt)
    return signal


def _take_oldest(
    ctx: Context, instance_id: str, name: str, before: datetime | None = None
) -> Program[Event | None]:
    """Delete and return the oldest buffered event ``name`` (sent ``before``, if given);
    one that cannot be read is buried instead, and the next taken."""
    params = {"instance_id": instance_id, "name": name, "before": before}
    while True:
        row = yield Step("take_oldest_event", params)
        if row is None:
            return None
        try:
            return interpret_event(instance_id, row)
        except UnknownCodecError:  # readable by a process that has the codec
            raise
        except DecodeError as exc:
            yield from _bury(ctx, instance_id, row, exc, taken=True)


def _bury(
    ctx: Context, instance_id: str, row: rw.Row, error: DecodeError, *, taken: bool
) -> Program[None]:
    """Move an unreadable event to dead_events (``taken``: already deleted from events in
    this transaction), so it never blocks its instance; reported once committed."""
    event_id, name, payload, created_at = row
    params = {"instance_id": instance_id, "id": event_id}
    if not taken:
        yield Step("drop_event", params, Fetch.NONE)
    extra = {"name": name, "payload": payload, "created_at": created_at, "reason": str(error)}
    yield Step("bury_taken_event", {**params, **extra}, Fetch.NONE)
    yield AfterCommit(functools.partial(_report_buried, ctx.poison, instance_id, event_id, error))


def _report_buried(
    poison: programs.PoisonCounts, instance_id: str, event_id: int, error: DecodeError
) -> None:
    poison.count(events=1)
    log.warning(
        "event %s of instance %s cannot be read and was moved to dead_events: %s",
        event_id,
        instance_id,
        error,
        extra={"instance_id": instance_id, "event_id": event_id},
    )


def _waiting_for(ctx: Context, target: _Target, name: str) -> Program[WorkflowSnapshot | None]:
    """The locked instance's checkpoint if it waits for event ``name``, else None. The
    narrow row's status and position kind spare decoding the blob in the common case."""
    if target.status is not WorkflowStatus.IN_PROGRESS or target.position_kind != "AtSignal":
        return None
    if target.due:  # its deadline passed: a late event is buffered, the wait timed out
        return None
    snapshot = yield from _load_locked(ctx, target)
    return snapshot if waits_for(snapshot, name) else None


def send_event(
    ctx: Context, instance_id: str, name: str, payload: Any, receipt: Receipt
) -> Program[EventOutcome]:
    """Resume an instance parked on ``name`` at once, else buffer the event.

    Under the instance lock, so of concurrent senders exactly one resumes it and the
    rest buffer. If events of that name were already buffered (the engine parked without
    `park`), the oldest of them resumes the instance and this one queues behind: FIFO."""
    params = {**event_params(ctx.codec, instance_id, name, payload, ctx.limits), "token": uuid4()}
    target = yield from _lock(instance_id)
    parked = yield from _waiting_for(ctx, target, name)
    older = None if parked is None else (yield from _take_oldest(ctx, instance_id, name))
    if parked is None or older is not None:
        receipt.confirm = functools.partial(
            _event_buffered, instance_id, params["name"], params["token"]
        )
        receipt.outcome = EventOutcome.BUFFERED
        yield Step("push_event", params, Fetch.NONE)
    if parked is None:
        return EventOutcome.BUFFERED
    value = payload if older is None else older.payload
    receipt.outcome = EventOutcome.RESUMED
    resumed = resumed_by_event(parked, value)
    yield from programs.save(ctx, resumed, target.version, None, receipt=receipt)
    return EventOutcome.RESUMED


def _event_buffered(instance_id: str, name: str, token: UUID) -> Program[bool]:
    """Whether the event a lost `send_event` buffered is there (by its token)."""
    params = {"instance_id": instance_id, "name": name, "token": token}
    (found,) = yield Step("event_sent", params)
    return bool(found)


def peek_events(
    ctx: Context, instance_id: str, name: str | None, limit: int
) -> Program[list[Event]]:
    """Buffered events, oldest first. One that cannot be read is buried (it would make
    every later event of its name unconsumable) and the events read again."""
    params = peek_params(instance_id, name, limit)
    while True:
        rows = yield Step("read_events", params, Fetch.ALL)
        _exists(instance_id, bool(rows and rows[0][0]))
        events: list[Event] = []
        buried = False
        for row in rows:
            if row[1] is None:
                continue
            try:
                events.append(interpret_event(instance_id, row[1:]))
            except UnknownCodecError:
                raise
            except DecodeError as exc:
                yield from _bury(ctx, instance_id, row[1:], exc, taken=False)
                buried = True
        if not buried:
            return events


def consume_event(
    ctx: Context,
    event_id: int,
    snapshot: WorkflowSnapshot,
    expected_version: int,
    claim: Claim | None,
    receipt: Receipt,
) -> Program[ParkResult]:
    """Delete event ``event_id`` and save ``snapshot`` in one transaction. A failed save
    raises its typed error and rolls the delete back, so the event stays buffered. A
    ``snapshot`` waiting for an event already buffered is resumed with it at once, as
    `park` does: the result says so."""
    params = take_params(event_id, snapshot, expected_version, claim)
    # Locked first, as in `park`: an event sent meanwhile waits, then sees the new state.
    yield Step("lock_instance", {"instance_id": snapshot.instance_id})
    if (yield Step("take_event", params)) is None:
        if (yield Step("event_state", params)) is None:
            raise NotFoundError(
                f"event {event_id} of instance {snapshot.instance_id!r} is not buffered"
                " (already consumed, or never sent to this instance)"
            )
        raise ValidationError(f"event {event_id} is not the oldest buffered event of its name")
    snapshot, event = yield from _deliver_buffered(ctx, snapshot)
    receipt.outcome = ParkResult(version=expected_version + 1, snapshot=snapshot, event=event)
    version = yield from programs.save(
        ctx, snapshot, expected_version, claim, checked=event is None, receipt=receipt
    )
    return ParkResult(version=version, snapshot=snapshot, event=event)


def _deliver_buffered(
    ctx: Context, snapshot: WorkflowSnapshot
) -> Program[tuple[WorkflowSnapshot, Event | None]]:
    """A checkpoint about to be saved InProgress AtSignal(name) while an event of that
    name is already buffered would wait for ever (no send comes again): it is resumed
    with the oldest such event at once, in the same transaction (instance locked)."""
    position = snapshot.position
    if snapshot.status is not WorkflowStatus.IN_PROGRESS or not isinstance(position, AtSignal):
        return snapshot, None
    # Only an event that came before the wait's deadline (server times both) answers it.
    before = position.timeout_at
    event = yield from _take_oldest(ctx, snapshot.instance_id, position.signal_name, before)
    if event is None:
        return snapshot, None
    return resumed_by_event(snapshot, event.payload), event


def park(
    ctx: Context,
    snapshot: WorkflowSnapshot,
    expected_version: int | None,
    claim: Claim | None,
    receipt: Receipt,
) -> Program[ParkResult]:
    """Save an AtSignal checkpoint unless a matching event is already buffered; then
    consume the oldest one and save the resumed checkpoint instead.

    Checking `peek_events` and then saving the parked checkpoint separately can lose an
    event sent in between (buffered because the instance was not yet parked); holding
    the instance lock across the check and the save closes that window."""
    park_event_name(snapshot, expected_version, claim)
    yield Step("lock_instance", {"instance_id": snapshot.instance_id})
    snapshot, event = yield from _deliver_buffered(ctx, snapshot)  # resumed: checked by save
    receipt.outcome = ParkResult(
        version=(expected_version or 0) + 1, snapshot=snapshot, event=event
    )
    version = yield from programs.save(
        ctx, snapshot, expected_version, claim, checked=event is None, receipt=receipt
    )
    return ParkResult(version=version, snapshot=snapshot, event=event)
