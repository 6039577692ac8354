"""The in-memory store on its own: time from a `ManualClock` (leases, timers, signal
deadlines, aging, retention), and the async twin giving what the sync one gives.
(`test_stateful_api.py` proves it against PostgreSQL call by call.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from snapstore import (
    AsyncMemoryBackend,
    AtDelay,
    AtFork,
    AtSignal,
    AtTask,
    ClaimLostError,
    EventOutcome,
    ManualClock,
    MemoryBackend,
    SignalOutcome,
    TaskResult,
    WorkflowStatus,
)
from tests.twins import snap

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def mem(clock: ManualClock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


def test_a_lease_runs_out_when_the_clock_says(mem: MemoryBackend, clock: ManualClock) -> None:
    mem.save(snap("wf"))
    first = mem.claim("wf", "w1", ttl=30)
    assert first is not None
    assert first.expires_at == T0 + timedelta(seconds=30)
    assert mem.claim("wf", "w2") is None
    assert mem.cancel("wf") == SignalOutcome.PENDING
    clock.advance(30)
    with pytest.raises(ClaimLostError):
        mem.extend(first)
    taken = mem.claim("wf", "w2")
    assert taken is not None
    assert taken.worker_id == "w2"
    with pytest.raises(ClaimLostError):
        mem.save(snap("wf", input=1), 1, claim=first)


def test_timers_come_due_and_next_dispatch_at_says_when(
    mem: MemoryBackend, clock: ManualClock
) -> None:
    wake = T0 + timedelta(seconds=10)
    mem.save(snap("sleeper", position=AtDelay("t", wake_at=wake)))
    assert mem.find_available_tasks("w") == []
    assert mem.next_dispatch_at() == wake
    clock.advance(10)
    (task,) = mem.find_available_tasks("w", ttl=5)
    assert task.instance_id == "sleeper"
    assert mem.next_dispatch_at() == T0 + timedelta(seconds=15)  # the lease running out


def test_a_signal_wait_times_out_and_a_late_event_is_buffered(
    mem: MemoryBackend, clock: ManualClock
) -> None:
    mem.save(snap("wf"))
    deadline = T0 + timedelta(seconds=5)
    parked = snap("wf", position=AtSignal("approve", "go", timeout_at=deadline))
    assert mem.park(parked, 1).version == 2
    assert mem.find_available_tasks("w") == []
    clock.advance(6)
    assert mem.send_event("wf", "go", "late") == EventOutcome.BUFFERED
    (task,) = mem.find_available_tasks("w")
    assert task.timed_out
    assert [e.payload for e in mem.peek_events("wf")] == ["late"]


def test_aging_lets_old_low_priority_work_overtake_fresh_urgent_work(
    mem: MemoryBackend, clock: ManualClock
) -> None:
    mem.save(snap("old", priority=5))
    clock.advance(minutes=5)
    mem.save(snap("urgent", priority=1))
    assert mem.dispatchable_ids(aging_interval=60) == ["old", "urgent"]
    assert mem.dispatchable_ids(aging_interval=3600) == ["urgent", "old"]


def test_retention_by_age(mem: MemoryBackend, clock: ManualClock) -> None:
    for version in range(1, 4):
        mem.save(snap("wf", input=version), version - 1 or None)
    clock.advance(hours=2)
    assert mem.prune_history(keep_last=1, older_than=timedelta(hours=3)) == 0
    assert mem.prune_history(keep_last=1, older_than=timedelta(hours=1)) == 2
    assert [e.version for e in mem.history("wf")] == [3]
    mem.save(snap("wf", status=WorkflowStatus.COMPLETED), 3)
    assert mem.purge_terminal(older_than=60) == 0
    clock.advance(61)
    assert mem.purge_terminal(older_than=60) == 1
    assert mem.load("wf") is None


def test_a_failed_operation_changes_nothing(mem: MemoryBackend) -> None:
    """As a rolled-back transaction: cancel's signal bookkeeping goes with its save."""
    mem.save(snap("wf"))
    claim = mem.claim("wf", "w1")
    assert claim is not None
    mem.store_signal("wf", "cancel", "stop")
    mem.release(claim)
    mem.save(snap("wf", input=2), 1)
    with pytest.raises(ClaimLostError):
        mem.check_signals("wf", claim)  # the lease is gone: nothing applied
    assert [s.kind for s in mem.get_signals("wf")] == ["cancel"]
    assert mem.load("wf").version == 2  # type: ignore[union-attr]


Scenario = Callable[[Callable[..., Awaitable[Any]]], Awaitable[list[Any]]]


async def scenario(call: Callable[..., Awaitable[Any]]) -> list[Any]:
    """One run through every part of the API, each result kept (tokens left out)."""
    out: list[Any] = [
        await call("save", snap("wf", position=AtTask("start"))),
        await call("send_event", "wf", "go", 1),
        await call("pause", "wf", "ops", requested_by="me"),
        await call("unpause", "wf"),
    ]
    (task,) = await call("find_available_tasks", "w")
    out.append(task.stored)
    fork = snap("wf", position=AtFork("fan", branches=("b1", "b2")))
    out.append(await call("start_branches", fork, task.stored.version, claim=task.claim))
    for branch in await call("find_available_branches", "w", limit=2):
        out.append(await call("complete_branch", branch.claim, TaskResult(output=branch.branch_id)))
    out.append(await call("load", "wf"))
    out.append(await call("history", "wf"))
    out.append(await call("fork", "wf", 1, "copy"))
    out.append(await call("list"))
    out.append(await call("prune_history", keep_last=1))
    return out


def test_the_async_twin_gives_what_the_sync_one_gives() -> None:
    sync = MemoryBackend(clock=ManualClock(T0))
    asynchronous = AsyncMemoryBackend(clock=ManualClock(T0))

    async def on_sync(name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(sync, name)(*args, **kwargs)

    async def on_async(name: str, *args: Any, **kwargs: Any) -> Any:
        return await getattr(asynchronous, name)(*args, **kwargs)

    assert asyncio.run(scenario(on_async)) == asyncio.run(scenario(on_sync))
