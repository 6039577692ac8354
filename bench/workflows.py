"""The workflow shapes the benchmark drives, as pure snapshot transitions.

A definition knows how to create an instance and how to advance it by one
step; the engine does all I/O. Keeping the shapes pure makes the same
definitions usable by every dispatch mode (claims, in-process, batched).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from snapstore import (
    AtDelay,
    AtFork,
    AtJoin,
    AtSignal,
    AtTask,
    TaskResult,
    WorkflowSnapshot,
    WorkflowStatus,
)

SIGNAL_NAME = "approval"


class Outcome(enum.Enum):
    """What the worker does after saving a step."""

    CONTINUE = "continue"  # keep driving: the instance is still ours and runnable
    PARK = "park"  # waiting for a timer or a signal: hand it back
    DONE = "done"  # terminal
    FORK = "fork"  # hand the branches to other workers (`start_branches`)


@dataclass(frozen=True)
class Shape:
    """Knobs of the workflow shapes (kept small: a benchmark, not a simulation)."""

    steps: int = 5
    branches: int = 4
    delay: timedelta = timedelta(milliseconds=200)
    branch_work: timedelta = timedelta(milliseconds=10)  # a branch's own work, simulated


def _input(instance_id: str) -> dict[str, Any]:
    return {
        "order": instance_id,
        "amount": 4200,
        "currency": "EUR",
        "items": [{"sku": f"sku-{i}", "qty": i + 1} for i in range(3)],
    }


def _output(task_id: str) -> dict[str, Any]:
    return {"task": task_id, "ok": True, "value": len(task_id) * 7}


def _record(
    snap: WorkflowSnapshot, task_id: str, task_output: Any = None, **changes: Any
) -> WorkflowSnapshot:
    """The next checkpoint: ``task_id`` completed with a small output, plus ``changes``."""
    now = datetime.now(UTC)
    result = TaskResult(
        output=_output(task_id) if task_output is None else task_output,
        worker_id="bench",
        started_at=now,
        completed_at=now,
    )
    return msgspec.structs.replace(
        snap, task_results={**snap.task_results, task_id: result}, **changes
    )


def _finish(snap: WorkflowSnapshot, task_id: str) -> WorkflowSnapshot:
    return _record(snap, task_id, status=WorkflowStatus.COMPLETED, output={"result": "ok"})


Step = Callable[[WorkflowSnapshot], tuple[WorkflowSnapshot, Outcome]]


@dataclass(frozen=True)
class Definition:
    """A workflow shape: its first checkpoint and its one-step transition."""

    name: str
    first_position: Callable[[], Any]
    step: Step
    work: Callable[[WorkflowSnapshot], float] = lambda _: 0.0
    """Seconds of the task's own work before ``step`` (slept by the engine)."""

    def create(self, instance_id: str) -> WorkflowSnapshot:
        return WorkflowSnapshot(
            instance_id=instance_id,
            definition_hash=f"bench-{self.name}-v1",
            position=self.first_position(),
            input=_input(instance_id),
            tags=("bench",),
            created_at=datetime.now(UTC),
        )


def linear(shape: Shape) -> Definition:
    """``steps`` tasks in a row, one save each."""

    def step(snap: WorkflowSnapshot) -> tuple[WorkflowSnapshot, Outcome]:
        assert isinstance(snap.position, AtTask)
        n = int(snap.position.task_id.rsplit("-", 1)[1])
        if n >= shape.steps:
            return _finish(snap, snap.position.task_id), Outcome.DONE
        nxt = AtTask(f"step-{n + 1}")
        return _record(snap, snap.position.task_id, position=nxt), Outcome.CONTINUE

    return Definition("linear", lambda: AtTask("step-1"), step)


def fanout(shape: Shape) -> Definition:
    """A fork into ``branches`` branches, each recorded, then the join completes."""
    branches = tuple(f"branch-{i}" for i in range(shape.branches))

    def step(snap: WorkflowSnapshot) -> tuple[WorkflowSnapshot, Outcome]:
        pos = snap.position
        if isinstance(pos, AtFork):
            join = AtJoin("join", waiting_for=pos.branches)
            return _record(snap, pos.task_id, position=join), Outcome.CONTINUE
        assert isinstance(pos, AtJoin)
        if not pos.waiting_for:
            return _finish(snap, pos.task_id), Outcome.DONE
        done, rest = pos.waiting_for[0], pos.waiting_for[1:]
        nxt = AtJoin(pos.task_id, waiting_for=rest)
        return _record(snap, done, position=nxt), Outcome.CONTINUE

    def work(snap: WorkflowSnapshot) -> float:
        pos = snap.position
        running = isinstance(pos, AtJoin) and bool(pos.waiting_for)  # a branch step
        return shape.branch_work.total_seconds() if running else 0.0

    return Definition("fanout", lambda: AtFork("fork", branches=branches), step, work)


def fanout_parallel(shape: Shape) -> Definition:
    """The same fork, its branches run by different workers at once
    (`start_branches` / `complete_branch`): ``step`` hands the fork over and finishes
    at the join the store wrote; `branch_result` is each branch's work."""

    def step(snap: WorkflowSnapshot) -> tuple[WorkflowSnapshot, Outcome]:
        pos = snap.position
        if isinstance(pos, AtFork):  # the fork task ran: hand out its branches
            return _record(snap, pos.task_id), Outcome.FORK
        assert isinstance(pos, AtJoin)
        assert not pos.waiting_for
        return _finish(snap, "join"), Outcome.DONE

    return Definition("fanout_parallel", lambda: fanout(shape).first_position(), step)


def branch_result(branch_id: str) -> TaskResult:
    now = datetime.now(UTC)
    return TaskResult(
        output=_output(branch_id), worker_id="bench", started_at=now, completed_at=now
    )


def signal(shape: Shape) -> Definition:
    """One task, then park for an external event; the resumed instance completes."""

    def step(snap: WorkflowSnapshot) -> tuple[WorkflowSnapshot, Outcome]:
        pos = snap.position
        if isinstance(pos, AtTask) and pos.task_id == "prepare":
            parked = AtSignal("approve", SIGNAL_NAME)
            return _record(snap, "prepare", position=parked), Outcome.PARK
        # Resumed by the event: the store recorded it as the parked task's result.
        assert isinstance(pos, AtTask | AtSignal)
        if pos.task_id in snap.task_results:
            done = msgspec.structs.replace(
                snap, status=WorkflowStatus.COMPLETED, output={"result": "ok"}
            )
            return done, Outcome.DONE
        return _finish(snap, pos.task_id), Outcome.DONE

    return Definition("signal", lambda: AtTask("prepare"), step)


def timer(shape: Shape) -> Definition:
    """One task, then sleep ``delay`` (AtDelay); once due the instance completes."""

    def step(snap: WorkflowSnapshot) -> tuple[WorkflowSnapshot, Outcome]:
        pos = snap.position
        if isinstance(pos, AtTask):
            wake = AtDelay("after-sleep", wake_at=datetime.now(UTC) + shape.delay)
            return _record(snap, pos.task_id, position=wake), Outcome.PARK
        assert isinstance(pos, AtDelay)
        return _finish(snap, pos.task_id), Outcome.DONE

    return Definition("timer", lambda: AtTask("prepare"), step)


DEFINITIONS: dict[str, Callable[[Shape], Definition]] = {
    "linear": linear,
    "fanout": fanout,
    "fanout_parallel": fanout_parallel,
    "signal": signal,
    "timer": timer,
}
