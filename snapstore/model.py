"""The workflow snapshot data model.

Everything here is a `msgspec.Struct`: cheap to build, validated on decode, and
convertible to builtins for the JSON and CBOR codecs. Positions form a tagged
union (tag field ``kind``) so the envelope stays self-describing in every codec.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import msgspec


class WorkflowStatus(enum.StrEnum):
    """Lifecycle of one workflow instance."""

    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    PAUSED = "Paused"

    @property
    def is_terminal(self) -> bool:
        """Terminal instances are never written again (no resurrection)."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED}
)


class TaskStatus(enum.StrEnum):
    """Outcome of one task execution recorded in a snapshot."""

    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"


class NotStarted(msgspec.Struct, frozen=True, tag_field="kind", tag="NotStarted"):
    """The instance exists but no task has run yet."""


class AtTask(msgspec.Struct, frozen=True, tag_field="kind", tag="AtTask"):
    """Ready to run (or running) ``task_id``."""

    task_id: str


class AtDelay(msgspec.Struct, frozen=True, tag_field="kind", tag="AtDelay"):
    """Sleeping until ``wake_at`` before continuing with ``task_id``."""

    task_id: str
    wake_at: datetime


class AtSignal(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="kind", tag="AtSignal"):
    """Parked until an external event named ``signal_name`` arrives, or, with a
    ``timeout_at`` (timezone-aware), until then: past it the instance is dispatchable
    again, still AtSignal (the worker tells by `timed_out`, or `ClaimedTask.timed_out`),
    and an event that comes later is buffered, never applied to this wait."""

    task_id: str
    signal_name: str
    timeout_at: datetime | None = None

    def timed_out(self, now: datetime | None = None) -> bool:
        """Whether the wait had a deadline and it has passed (by ``now``, default the
        client's clock; dispatch decides by the server's)."""
        moment = datetime.now(UTC) if now is None else now
        return self.timeout_at is not None and self.timeout_at <= moment


class AtFork(msgspec.Struct, frozen=True, tag_field="kind", tag="AtFork"):
    """Fanning out into parallel ``branches``."""

    task_id: str
    branches: tuple[str, ...] = ()


class AtJoin(msgspec.Struct, frozen=True, tag_field="kind", tag="AtJoin"):
    """Waiting for the branches in ``waiting_for`` to finish."""

    task_id: str
    waiting_for: tuple[str, ...] = ()


class InLoop(msgspec.Struct, frozen=True, tag_field="kind", tag="InLoop"):
    """Inside a loop body at ``task_id``, on iteration ``iteration``."""

    task_id: str
    iteration: int = 0


Position: TypeAlias = NotStarted | AtTask | AtDelay | AtSignal | AtFork | AtJoin | InLoop


def position_task_id(position: Position) -> str | None:
    """The task a position points at, or None before the first task."""
    return None if isinstance(position, NotStarted) else position.task_id


class TaskResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, weakref=True):
    """What one task produced. ``output`` is stored once, in the tasks sidecar.

    Weakly referenceable: a store remembers the results it saved without keeping them
    alive, and treats the same object in the next checkpoint as unchanged metadata."""

    status: TaskStatus = TaskStatus.COMPLETED
    output: Any = None
    error: str | None = None
    attempts: int = 1
    worker_id: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class RetryState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Retry bookkeeping for one task: attempts so far and when to try next."""

    attempts: int
    next_attempt_at: datetime | None = None
    last_error: str | None = None


class WorkflowSnapshot(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One durable checkpoint of a workflow instance.

    Frozen so a snapshot handed to `save` cannot change under the store; derive
    the next checkpoint with `msgspec.structs.replace`.
    """

    instance_id: str
    definition_hash: str
    status: WorkflowStatus = WorkflowStatus.IN_PROGRESS
    position: Position = NotStarted()
    task_results: dict[str, TaskResult] = msgspec.field(default_factory=dict)
    retries: dict[str, RetryState] = msgspec.field(default_factory=dict)
    priority: int = 3
    tags: tuple[str, ...] = ()
    input: Any = None
    output: Any = None
    error: str | None = None
    trace_parent: str | None = None
    created_at: datetime | None = None


MIN_PRIORITY = 1
MAX_PRIORITY = 5


class StoredSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot as read back from a store, with its CAS version."""

    snapshot: WorkflowSnapshot
    version: int
    codec: str
    updated_at: datetime | None = None


class AppliedSignal(msgspec.Struct, frozen=True, kw_only=True):
    """The cancel or pause request a checkpoint applied: who asked, why and when."""

    kind: str
    reason: str | None = None
    requested_by: str | None = None
    requested_at: datetime | None = None


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One immutable checkpoint from the history table (task outputs not hydrated).
    ``applied_signal``: the cancel or pause this checkpoint applied, if any."""

    instance_id: str
    version: int
    status: WorkflowStatus
    current_task_id: str | None
    codec: str
    snapshot: WorkflowSnapshot
    created_at: datetime | None = None
    applied_signal: AppliedSignal | None = None


class SnapshotSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The denormalised columns of one instance: listed without decoding blobs."""

    instance_id: str
    status: WorkflowStatus
    definition_hash: str
    current_task_id: str | None
    position_kind: str
    completed_task_count: int
    priority: int
    tags: tuple[str, ...]
    version: int
    codec: str
    error: str | None = None
    updated_at: datetime | None = None
    forked_from: str | None = None
    """The instance this one was forked from (`fork`), at ``forked_from_version``."""
    forked_from_version: int | None = None


class Page(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a keyset-paginated listing; pass ``next_cursor`` to continue."""

    items: list[SnapshotSummary]
    next_cursor: str | None


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """A TTL lease on one instance. ``token`` fences writes: a save carrying a
    claim whose lease expired or was taken over raises `ClaimLostError`."""

    instance_id: str
    worker_id: str
    token: uuid.UUID
    expires_at: datetime
    task_id: str | None = None


@dataclass(frozen=True, slots=True)
class SaveRequest:
    """One item of `save_many`: the same arguments `save` takes."""

    snapshot: WorkflowSnapshot
    expected_version: int | None = None
    claim: Claim | None = None


@dataclass(frozen=True, slots=True)
class SaveResult:
    """The outcome of one item of a grouped save: a new version or a typed error."""

    instance_id: str
    version: int | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> int:
        """The new version, or raise the item's error."""
        if self.error is not None:
            raise self.error
        assert self.version is not None
        return self.version
