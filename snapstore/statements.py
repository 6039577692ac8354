"""Pure functions that build statement parameters and interpret result rows.

Both `PostgresBackend` and `AsyncPostgresBackend` call these; they only add I/O.
Keeping the logic here means the sync and async stores cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

from snapstore.codecs import Codec, decode_snapshot, encode_output, encode_snapshot, open_value
from snapstore.errors import (
    ClaimLostError,
    ConflictError,
    DecodeError,
    NotFoundError,
    SnapstoreError,
    TerminalStateError,
    ValidationError,
)
from snapstore.model import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    AtDelay,
    Claim,
    HistoryEntry,
    Page,
    Position,
    RetryState,
    SnapshotSummary,
    StoredSnapshot,
    TaskResult,
    TaskStatus,
    WorkflowSnapshot,
    WorkflowStatus,
    position_task_id,
)

MAX_ID_LENGTH: Final = 255
MAX_PAGE_SIZE: Final = 1000
Params = dict[str, Any]
Row = Sequence[Any]


def _check_id(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"{kind} must be a non-empty str of at most {MAX_ID_LENGTH} chars")
    if "\x00" in value:
        raise ValidationError(f"{kind} must not contain NUL characters")
    return value


def validate_snapshot(snapshot: WorkflowSnapshot) -> None:
    """Reject a snapshot the store could not faithfully keep, before any I/O."""
    if not isinstance(snapshot, WorkflowSnapshot):
        raise ValidationError(f"expected WorkflowSnapshot, got {type(snapshot).__name__}")
    _check_id("instance_id", snapshot.instance_id)
    if not isinstance(snapshot.definition_hash, str):
        raise ValidationError("definition_hash must be a str")
    if not isinstance(snapshot.status, WorkflowStatus):
        raise ValidationError(f"status must be a WorkflowStatus, got {snapshot.status!r}")
    if not isinstance(snapshot.position, Position):
        raise ValidationError(f"position must be a Position, got {snapshot.position!r}")
    prio = snapshot.priority
    if (
        isinstance(prio, bool)
        or not isinstance(prio, int)
        or not MIN_PRIORITY <= prio <= MAX_PRIORITY
    ):
        raise ValidationError(f"priority must be an int in {MIN_PRIORITY}..{MAX_PRIORITY}")
    if not all(isinstance(t, str) for t in snapshot.tags):
        raise ValidationError("tags must be strings")
    for task_id, result in snapshot.task_results.items():
        _check_id("task id", task_id)
        if not isinstance(result, TaskResult):
            raise ValidationError(f"task_results[{task_id!r}] must be a TaskResult")
    for task_id, retry in snapshot.retries.items():
        if not isinstance(retry, RetryState):
            raise ValidationError(f"retries[{task_id!r}] must be a RetryState")


def check_expected_version(expected_version: int | None) -> None:
    if expected_version is not None and (
        isinstance(expected_version, bool)
        or not isinstance(expected_version, int)
        or expected_version < 1
    ):
        raise ValidationError("expected_version must be None (create) or an int >= 1")


def _available_at(snapshot: WorkflowSnapshot) -> datetime | None:
    """Earliest time the instance may be dispatched: timers and retry backoff."""
    times = [r.next_attempt_at for r in snapshot.retries.values() if r.next_attempt_at]
    if isinstance(snapshot.position, AtDelay):
        times.append(snapshot.position.wake_at)
    return max(times) if times else None


def data_hash(blob: bytes) -> bytes:
    """A 16-byte fingerprint of a stored blob."""
    return hashlib.blake2b(blob, digest_size=16).digest()


def save_params(
    codec: Codec,
    snapshot: WorkflowSnapshot,
    expected_version: int | None,
    *,
    claim: Claim | None = None,
    channel: str = "",
) -> Params:
    """Parameters of the ``save_snapshot`` statement."""
    validate_snapshot(snapshot)
    check_expected_version(expected_version)
    if claim is not None and claim.instance_id != snapshot.instance_id:
        raise ValidationError(
            f"claim is for {claim.instance_id!r}, snapshot is {snapshot.instance_id!r}"
        )
    blob = encode_snapshot(codec, snapshot)
    results = snapshot.task_results
    position = snapshot.position
    return {
        "instance_id": snapshot.instance_id,
        "expected_version": expected_version,
        "status": snapshot.status.value,
        "definition_hash": snapshot.definition_hash,
        "current_task_id": position_task_id(position),
        "position_kind": type(position).__name__,
        "completed_task_count": sum(
            1 for r in results.values() if r.status is TaskStatus.COMPLETED
        ),
        "error": snapshot.error,
        "priority": snapshot.priority,
        "tags": list(snapshot.tags),
        "delay_wake_at": position.wake_at if isinstance(position, AtDelay) else None,
        "available_at": _available_at(snapshot),
        "codec": codec.name,
        "data": blob,
        "data_hash": data_hash(blob),
        "terminal": snapshot.status.is_terminal,
        "claim_token": None if claim is None else claim.token,
        "channel": channel,
        # A claimant keeps driving its instance; others learn of it when it is released.
        "notify": claim is None and snapshot.status is WorkflowStatus.IN_PROGRESS,
        "task_ids": list(results),
        "task_statuses": [r.status.value for r in results.values()],
        "task_attempts": [r.attempts for r in results.values()],
        "task_workers": [r.worker_id for r in results.values()],
        "task_started": [r.started_at for r in results.values()],
        "task_completed": [r.completed_at for r in results.values()],
        "task_errors": [r.error for r in results.values()],
        "task_outputs": [encode_output(codec, r.output) for r in results.values()],
    }


def saved_version(row: Row | None) -> int | None:
    """The new version from a ``save_snapshot`` row, or None if the CAS failed."""
    return None if row is None else int(row[0])


def state_params(instance_id: str, claim: Claim | None) -> Params:
    return {**id_params(instance_id), "claim_token": None if claim is None else claim.token}


def save_failure(
    instance_id: str, expected_version: int | None, claim: Claim | None, current: Row | None
) -> SnapstoreError:
    """The error for a failed save, given the ``current_state`` row read afterwards."""
    if current is None:
        if expected_version is None:  # created and deleted between the two statements
            return ConflictError(instance_id, None, None)
        return NotFoundError(f"instance {instance_id!r} does not exist")
    version, status, claim_live = int(current[0]), WorkflowStatus(current[1]), current[2]
    if status.is_terminal:
        return TerminalStateError(instance_id, status.value)
    if version != expected_version:
        return ConflictError(instance_id, expected_version, version)
    if claim is not None and not claim_live:
        return ClaimLostError(instance_id)
    return ConflictError(instance_id, expected_version, None)  # changed and changed back


def id_params(instance_id: str) -> Params:
    return {"instance_id": _check_id("instance_id", instance_id)}


def task_params(instance_id: str, task_id: str) -> Params:
    return {
        "instance_id": _check_id("instance_id", instance_id),
        "task_id": _check_id("task_id", task_id),
    }


def interpret_load(instance_id: str, row: Row | None) -> StoredSnapshot | None:
    """A `StoredSnapshot` from a ``load_snapshot`` row."""
    if row is None:
        return None
    version, _codec_name, updated_at, blob, task_ids, outputs = row
    hydrate = dict(zip(task_ids, outputs, strict=True)) if task_ids else None
    codec, snapshot = decode_snapshot(blob, hydrate, instance_id=instance_id, version=int(version))
    return StoredSnapshot(
        snapshot=snapshot, version=int(version), codec=codec.name, updated_at=updated_at
    )


def interpret_task_result(instance_id: str, task_id: str, row: Row | None) -> TaskResult | None:
    if row is None:
        return None
    status, attempts, worker_id, started_at, completed_at, error, output = row
    try:
        value = None if output is None else open_value(output)
    except DecodeError as exc:
        raise DecodeError(f"task {task_id!r}: {exc}", instance_id=instance_id) from exc
    return TaskResult(
        status=TaskStatus(status),
        output=value,
        error=error,
        attempts=attempts,
        worker_id=worker_id,
        started_at=started_at,
        completed_at=completed_at,
    )


def encode_cursor(instance_id: str) -> str:
    return base64.urlsafe_b64encode(instance_id.encode()).decode()


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeError) as exc:
        raise ValidationError(f"invalid page cursor {cursor!r}") from exc


def list_params(
    statuses: Iterable[WorkflowStatus] | WorkflowStatus | None, limit: int, cursor: str | None
) -> Params:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError(f"limit must be an int in 1..{MAX_PAGE_SIZE}")
    if isinstance(statuses, WorkflowStatus):
        statuses = [statuses]
    names = None if statuses is None else [WorkflowStatus(s).value for s in statuses]
    return {
        "statuses": names,
        "after": None if cursor is None else decode_cursor(cursor),
        "limit": limit + 1,  # one extra row tells whether another page exists
    }


def interpret_list(rows: Sequence[Row], limit: int) -> Page:
    items = [
        SnapshotSummary(
            instance_id=r[0],
            status=WorkflowStatus(r[1]),
            definition_hash=r[2],
            current_task_id=r[3],
            position_kind=r[4],
            completed_task_count=r[5],
            priority=r[6],
            tags=tuple(r[7]),
            version=int(r[8]),
            codec=r[9],
            error=r[10],
            updated_at=r[11],
        )
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return Page(items=items, next_cursor=encode_cursor(items[-1].instance_id) if more else None)


def history_params(instance_id: str, after_version: int, limit: int | None) -> Params:
    return {
        **id_params(instance_id),
        "after_version": after_version,
        "limit": limit,
    }


def interpret_history(rows: Sequence[Row]) -> list[HistoryEntry]:
    entries = []
    for instance_id, version, status, task_id, _codec, blob, created_at in rows:
        codec, snapshot = decode_snapshot(blob, instance_id=instance_id, version=int(version))
        entries.append(
            HistoryEntry(
                instance_id=instance_id,
                version=int(version),
                status=WorkflowStatus(status),
                current_task_id=task_id,
                codec=codec.name,
                snapshot=snapshot,
                created_at=created_at,
            )
        )
    return entries
