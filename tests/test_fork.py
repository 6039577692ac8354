"""Replay: a new instance from a past checkpoint of another, its task outputs as they were
then, recorded as forked from there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from snapstore import ConflictError, NotFoundError, TaskResult, TaskStatus, ValidationError
from tests.twins import Twin, snap

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def done(output: object, minute: int) -> TaskResult:
    at = T0 + timedelta(minutes=minute)
    return TaskResult(
        status=TaskStatus.COMPLETED, output=output, started_at=at, completed_at=at, attempts=1
    )


async def three_steps(store: Twin) -> None:
    results: dict[str, TaskResult] = {}
    for version, (task, output) in enumerate([("a", {"x": 1}), ("b", "two"), ("c", [3])], 1):
        results = {**results, task: done(output, version)}
        expected = None if version == 1 else version - 1
        assert await store.save(snap("src", task_results=results), expected) == version


async def test_a_fork_starts_from_the_version_with_its_outputs_of_then(store: Twin) -> None:
    await three_steps(store)
    assert await store.fork("src", 2, "copy") == 1
    copy = await store.load("copy")
    assert copy is not None
    assert copy.version == 1
    assert copy.snapshot == snap("copy", task_results={"a": done({"x": 1}, 1), "b": done("two", 2)})
    (summary,) = [s for s in (await store.list()).items if s.instance_id == "copy"]
    assert (summary.forked_from, summary.forked_from_version) == ("src", 2)
    (source,) = [s for s in (await store.list()).items if s.instance_id == "src"]
    assert (source.forked_from, source.version) == (None, 3)
    # the copy goes on by itself
    nxt = snap("copy", task_results={**copy.snapshot.task_results, "d": done("own", 9)})
    assert await store.save(nxt, 1) == 2
    assert [e.version for e in await store.history("src")] == [1, 2, 3]


async def test_a_task_run_again_since_cannot_give_its_old_output(store: Twin) -> None:
    await three_steps(store)
    rerun = snap("src", task_results={"a": done({"x": "again"}, 7)})  # a loop ran "a" again
    assert await store.save(rerun, 3) == 4
    with pytest.raises(NotFoundError, match="changed since"):
        await store.fork("src", 2, "copy")
    assert await store.load("copy") is None
    assert await store.fork("src", 4, "copy") == 1  # the latest is always whole


async def test_fork_refuses_what_it_cannot_do_and_writes_nothing(store: Twin) -> None:
    await three_steps(store)
    await store.save(snap("taken"))
    with pytest.raises(ConflictError):
        await store.fork("src", 1, "taken")
    with pytest.raises(NotFoundError):
        await store.fork("src", 9, "copy")
    with pytest.raises(NotFoundError):
        await store.fork("nobody", 1, "copy")
    for bad in (0, -1, "1", True):
        with pytest.raises(ValidationError):
            await store.fork("src", bad, "copy")
    with pytest.raises(ValidationError):
        await store.fork("src", 1, "")
    assert await store.load("copy") is None


async def test_a_task_running_at_that_version_and_finished_since_is_not_taken_as_then(
    store: Twin,
) -> None:
    running = TaskResult(status=TaskStatus.RUNNING, attempts=1, started_at=T0)
    assert await store.save(snap("src", task_results={"a": running})) == 1
    assert await store.save(snap("src", task_results={"a": done("out", 0)}), 1) == 2
    with pytest.raises(NotFoundError, match="changed since"):
        await store.fork("src", 1, "copy")
    assert await store.fork("src", 2, "copy") == 1
