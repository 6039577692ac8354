"""The one place that knows which snapstore features exist and how they are called.

Claims, signals and wakeups are being built alongside this harness, so every
optional feature is detected on the backend class and called through these
small adapters; the report states which mode actually ran.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any

from snapstore import PostgresBackend, StoredSnapshot, WorkflowSnapshot
from snapstore.model import Claim


@dataclass(frozen=True)
class Capabilities:
    claims: bool
    signals: bool
    wakeups: bool
    save_many: bool
    group_commit: bool
    branches: bool = False

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


def detect(backend_type: type[Any] = PostgresBackend) -> Capabilities:
    """Which optional APIs the installed snapstore offers."""
    connect_params = {
        *inspect.signature(backend_type.connect).parameters,
        *inspect.signature(backend_type.from_pool).parameters,
    }
    return Capabilities(
        claims=all(
            hasattr(backend_type, n) for n in ("find_available_tasks", "claim_notified", "release")
        ),
        signals=all(hasattr(backend_type, n) for n in ("send_event", "park")),
        wakeups=hasattr(backend_type, "wakeups"),
        save_many=hasattr(backend_type, "save_many"),
        group_commit="group_commit" in connect_params,
        branches=all(
            hasattr(backend_type, n)
            for n in ("start_branches", "find_available_branches", "complete_branch")
        ),
    )


def _pairs(tasks: Any, on_error: Any) -> list[tuple[Claim, StoredSnapshot]]:
    """(claim, checkpoint) per leased task; undecodable ones are reported and released."""
    pairs: list[tuple[Claim, StoredSnapshot]] = []
    for task in tasks:
        if task.error is not None:
            on_error(task.error, task.claim)
            continue
        pairs.append((task.claim, task.stored))
    return pairs


def find_available(
    backend: Any, worker_id: str, *, limit: int, ttl: float, on_error: Any
) -> list[tuple[Claim, StoredSnapshot]]:
    """Lease up to ``limit`` dispatchable instances with their checkpoints."""
    tasks = backend.find_available_tasks(worker_id, limit=limit, ttl=ttl)
    return _pairs(tasks, on_error)


def claim_notified(
    backend: Any, ids: list[str], worker_id: str, *, ttl: float, on_error: Any
) -> list[tuple[Claim, StoredSnapshot]]:
    """Lease those of ``ids`` (named by wakeups) that are still dispatchable."""
    tasks = backend.claim_notified(ids, worker_id, ttl=ttl, limit=len(ids))
    return _pairs(tasks, on_error)


def release(backend: Any, claim: Any) -> None:
    if claim is not None:
        backend.release(claim)


def send_event(backend: Any, instance_id: str, name: str, payload: Any) -> str:
    """Deliver the event; returns the outcome name (RESUMED / BUFFERED)."""
    outcome = backend.send_event(instance_id, name, payload)
    return str(getattr(outcome, "name", outcome))


def park(
    backend: Any, snapshot: WorkflowSnapshot, version: int, claim: Claim | None
) -> tuple[int, WorkflowSnapshot, bool]:
    """Save an AtSignal checkpoint via ``park``: (version, checkpoint, resumed at once?)."""
    result = backend.park(snapshot, version, claim=claim)
    return result.version, result.snapshot, result.event is not None


def open_wakeups(backend: Any, poll_interval: float) -> Any:
    """A started wakeup listener (its own LISTEN connection), or None without the API."""
    if not hasattr(backend, "wakeups"):
        return None
    return backend.wakeups(poll_interval=poll_interval)


def wakeup_batch(listener: Any, timeout: float, limit: int) -> list[str]:
    return list(listener.get(timeout, max_items=limit))


def wakeup_counters(listener: Any) -> dict[str, Any]:
    """The listener's counters (received, dropped, ...) plus its drop rate."""
    stats = listener.stats()
    counters: dict[str, Any] = asdict(stats)
    counters["drop_rate"] = round(float(stats.drop_rate), 6)
    return counters


def close_wakeups(listener: Any) -> None:
    listener.close()


def group_commit_stats(backend: Any) -> dict[str, Any] | None:
    """Batching figures of a group-commit backend (a property or a method: either works)."""
    stats = getattr(backend, "group_commit_stats", None)
    if callable(stats):
        stats = stats()
    if stats is None:
        return None
    return {
        "saves": stats.saves,
        "flushes": stats.flushes,
        "largest_batch": stats.largest_batch,
        "mean_batch": round(stats.mean_batch, 2),
    }
