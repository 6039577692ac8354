"""An in-memory store with the exact observable semantics of `PostgresBackend`.

It is the reference model the property tests compare PostgreSQL against, and a
fast test double for engines built on snapstore. Blobs go through the same
codec and envelope code, so what it returns is what PostgreSQL would return.
"""

from __future__ import annotations

import builtins
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from snapstore import checks, programs
from snapstore import rows as rw
from snapstore.codecs import Codec, JsonCodec, codec_instance, decode_snapshot
from snapstore.errors import (
    ConflictError,
    NotFoundError,
    SnapstoreError,
    TerminalStateError,
    ValidationError,
)
from snapstore.model import (
    Claim,
    HistoryEntry,
    Page,
    SaveRequest,
    SaveResult,
    SnapshotSummary,
    StoredSnapshot,
    TaskResult,
    WorkflowStatus,
)
from snapstore.model import WorkflowSnapshot as Snapshot


@dataclass
class _History:
    version: int
    status: WorkflowStatus
    current_task_id: str | None
    blob: bytes
    created_at: datetime


@dataclass
class _Instance:
    summary: SnapshotSummary
    history: list[_History] = field(default_factory=builtins.list)
    outputs: dict[str, bytes] = field(default_factory=dict)
    tasks: dict[str, TaskResult] = field(default_factory=dict)


class MemoryBackend:
    """Thread-safe in-process store; same API and errors as the sync backend."""

    def __init__(self, codec: Codec | None = None) -> None:
        self.codec = codec if codec is not None else codec_instance(JsonCodec)
        self._lock = threading.Lock()
        self._instances: dict[str, _Instance] = {}
        self._ctx = programs.Context(self.codec, "memory")

    def save(
        self,
        snapshot: Snapshot,
        expected_version: int | None = None,
        *,
        claim: Claim | None = None,
    ) -> int:
        """Same contract as `PostgresBackend.save` (claims are not modelled: no leases here)."""
        if claim is not None:
            raise ValidationError("MemoryBackend does not model claims")
        checks.check_save(snapshot, expected_version, None)
        item = rw.prepare_save(self.codec, snapshot, expected_version)
        with self._lock:
            return self._apply(item, snapshot)

    def save_many(self, requests: Sequence[SaveRequest]) -> builtins.list[SaveResult]:
        """Same contract as `PostgresBackend.save_many`: all or nothing is applied at once."""
        prepared, rejected = programs.prepare_many(self._ctx, requests)
        results = iter(prepared)
        out: builtins.list[SaveResult] = []
        with self._lock:
            for index, req in enumerate(requests):
                if index in rejected:
                    out.append(rejected[index])
                    continue
                item = next(results)
                try:
                    out.append(SaveResult(item.instance_id, self._apply(item, req.snapshot)))
                except SnapstoreError as exc:
                    out.append(SaveResult(item.instance_id, None, exc))
        return out

    def _apply(self, item: rw.PreparedSave, snapshot: Snapshot) -> int:
        iid, expected_version = item.instance_id, item.expected_version
        now = datetime.now(UTC)
        current = self._instances.get(iid)
        if current is None:
            if expected_version is not None:
                raise NotFoundError(f"instance {iid!r} does not exist")
            current = self._instances[iid] = _Instance(summary=_summary(item, 0, now))
        else:
            old = current.summary
            if old.status.is_terminal:
                raise TerminalStateError(iid, old.status.value)
            if expected_version != old.version:
                raise ConflictError(iid, expected_version, old.version)
        version = current.summary.version + 1
        current.summary = _summary(item, version, now)
        current.history.append(
            _History(version, snapshot.status, item.current_task_id, item.data, now)
        )
        for task_id, result, row in zip(
            item.task_ids, snapshot.task_results.values(), item.task_rows, strict=True
        ):
            current.tasks[task_id] = result
            blob = row[-1]
            if blob is None:
                current.outputs.pop(task_id, None)
            else:
                current.outputs[task_id] = blob
        return version

    def load(self, instance_id: str) -> StoredSnapshot | None:
        rw.id_params(instance_id)
        with self._lock:
            current = self._instances.get(instance_id)
            if current is None:
                return None
            last, outputs = current.history[-1], dict(current.outputs)
        codec, snapshot = decode_snapshot(
            last.blob, outputs, instance_id=instance_id, version=last.version
        )
        return StoredSnapshot(
            snapshot=snapshot, version=last.version, codec=codec.name, updated_at=last.created_at
        )

    def load_task_result(self, instance_id: str, task_id: str) -> TaskResult | None:
        rw.task_params(instance_id, task_id)
        with self._lock:
            current = self._instances.get(instance_id)
            if current is None or task_id not in current.tasks:
                return None
            result = current.tasks[task_id]
            blob = current.outputs.get(task_id)
        return rw.interpret_task_result(instance_id, task_id, rw.task_row(result, blob))

    def delete(self, instance_id: str) -> bool:
        rw.id_params(instance_id)
        with self._lock:
            return self._instances.pop(instance_id, None) is not None

    def list(
        self,
        status: Iterable[WorkflowStatus] | WorkflowStatus | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        params = rw.list_params(status, limit, cursor)
        wanted, after = params["statuses"], params["after"]
        with self._lock:
            rows = sorted(
                (iid, inst.summary)
                for iid, inst in self._instances.items()
                if (wanted is None or inst.summary.status.value in wanted)
                and (after is None or iid > after)
            )
        summaries = [s for _, s in rows[: params["limit"]]]
        return rw.interpret_list([_summary_row(s) for s in summaries], limit)

    def history(
        self, instance_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> builtins.list[HistoryEntry]:
        rw.history_params(instance_id, after_version, limit)
        with self._lock:
            current = self._instances.get(instance_id)
            entries = [] if current is None else builtins.list(current.history)
        chosen = [h for h in entries if h.version > after_version][:limit]
        rows = [
            (
                instance_id,
                h.version,
                h.status.value,
                h.current_task_id,
                "",
                h.blob,
                h.created_at,
                False,
                *_NO_APPLIED_SIGNAL,  # the reference model has no signals
            )
            for h in chosen
        ]
        return rw.interpret_history(rows)

    def truncate_all(self) -> None:
        with self._lock:
            self._instances.clear()


_NO_APPLIED_SIGNAL: Final = (None, None, None, None)


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
        list(s.tags),
        s.version,
        s.codec,
        s.error,
        s.updated_at,
        s.forked_from,
        s.forked_from_version,
    )
