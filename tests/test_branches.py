"""Parallel branches: one lease per branch of a fork, results written per task under
the branch lease, and the join checkpoint written exactly once by the last result."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from snapstore import (
    AtFork,
    AtJoin,
    AtTask,
    BranchClaim,
    ClaimLostError,
    EncodeError,
    JsonCodec,
    PostgresBackend,
    SignalOutcome,
    TaskResult,
    TaskStatus,
    ValidationError,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.sql_catalog import wakeup_channel
from tests.twins import Twin, snap

BRANCHES = ("b1", "b2", "b3")


def at_fork(
    instance_id: str, branches: tuple[str, ...] = BRANCHES, **fields: Any
) -> WorkflowSnapshot:
    done = {"start": TaskResult(output="s")}
    return snap(
        instance_id,
        position=AtFork("fan", branches=branches),
        task_results=done,
        **fields,
    )


async def forked(store: Twin, instance_id: str = "wf") -> int:
    """An instance taken by a worker and handed to its branches; the fork's version."""
    await store.save(snap(instance_id, position=AtTask("start")))
    (task,) = await store.claim_notified([instance_id], "boss")
    version: int = await store.start_branches(at_fork(instance_id), 1, claim=task.claim)
    return version


async def test_branches_run_on_different_workers_and_join_once(store: Twin) -> None:
    version = await forked(store)
    assert version == 2
    # parked at the fork: nobody dispatches the instance itself, its lease was given up
    assert await store.find_available_tasks("w") == []
    assert await store.count("claims") == 0
    leased = [await store.find_available_branches(f"w{n}", limit=1) for n in range(3)]
    assert [b.branch_id for (b,) in leased] == ["b1", "b2", "b3"]
    assert all(b.stored.version == 2 for (b,) in leased)
    assert await store.find_available_branches("late") == []  # every branch is leased
    outcomes = []
    for n, (branch,) in reversed(list(enumerate(leased))):  # finish in any order
        result = TaskResult(output={"n": n}, worker_id=f"w{n}")
        outcomes.append(await store.complete_branch(branch.claim, result))
        assert (await store.load_task_result("wf", branch.branch_id)) == result
    assert [(o.joined, o.version) for o in outcomes] == [(False, 2), (False, 2), (True, 3)]
    stored = await store.load("wf")
    assert stored.version == 3
    assert stored.snapshot.position == AtJoin("fan")
    assert stored.snapshot.task_results == {
        "start": TaskResult(output="s"),
        **{f"b{n + 1}": TaskResult(output={"n": n}, worker_id=f"w{n}") for n in range(3)},
    }
    (joined,) = await store.find_available_tasks("boss")
    assert joined.stored.version == 3
    assert [e.snapshot.position for e in await store.history("wf")][1:] == [
        at_fork("wf").position,
        AtJoin("fan"),
    ]


async def test_a_branch_result_needs_its_live_lease(store: Twin) -> None:
    await forked(store)
    (first,) = await store.find_available_branches("w1", limit=1, ttl=0.2)
    await asyncio.sleep(0.3)  # w1 died: its branch is open again
    (taken,) = await store.find_available_branches("w2", limit=1)
    assert taken.branch_id == first.branch_id
    assert taken.claim.token != first.claim.token
    with pytest.raises(ClaimLostError, match="b1"):
        await store.complete_branch(first.claim, TaskResult(output="zombie"))
    with pytest.raises(ClaimLostError):
        await store.extend_branch(first.claim)
    renewed = await store.extend_branch(taken.claim, ttl=60)
    assert renewed.expires_at > taken.claim.expires_at
    done = await store.complete_branch(renewed, TaskResult(output="real"))
    assert not done.joined
    assert (await store.load_task_result("wf", "b1")).output == "real"
    with pytest.raises(ClaimLostError):  # once only
        await store.complete_branch(renewed, TaskResult(output="again"))


async def test_a_released_branch_goes_to_the_next_worker(store: Twin) -> None:
    await forked(store)
    (branch,) = await store.find_available_branches("w1", limit=1)
    assert await store.release_branch(branch.claim) is True
    assert await store.release_branch(branch.claim) is False
    (again,) = await store.find_available_branches("w2", limit=1)
    assert again.branch_id == branch.branch_id
    states = await store.branches("wf")
    assert [(s.branch_id, s.worker_id, s.leased) for s in states] == [
        ("b1", "w2", True),
        ("b2", None, False),
        ("b3", None, False),
    ]


async def test_a_checkpoint_past_the_fork_fences_its_branches(store: Twin) -> None:
    await forked(store)
    (branch,) = await store.find_available_branches("w1", limit=1)
    # a branch lease does not hold off a cancel: it applies at once, ending the fork
    assert await store.cancel("wf", "stop") == SignalOutcome.APPLIED
    with pytest.raises(ClaimLostError, match="terminal"):
        await store.complete_branch(branch.claim, TaskResult(output="late"))
    assert await store.find_available_branches("w1") == []
    assert await store.branches("wf") == []  # the current checkpoint is not the fork
    assert (await store.load("wf")).snapshot.status is WorkflowStatus.CANCELLED


async def test_branch_dispatch_respects_tags(store: Twin) -> None:
    await store.save(snap("gpu", position=AtTask("start"), tags=("gpu",)))
    (task,) = await store.find_available_tasks("boss")
    await store.start_branches(at_fork("gpu", tags=("gpu",)), 1, claim=task.claim)
    assert await store.find_available_branches("cpu", tags=["cpu"]) == []
    assert len(await store.find_available_branches("any", tags=["gpu", "cpu"])) == 3


async def test_a_failed_branch_is_a_result_too(store: Twin) -> None:
    await forked(store, "one")
    branches = await store.find_available_branches("w", limit=3)
    failed = TaskResult(status=TaskStatus.FAILED, error="boom")
    for branch in branches[:-1]:
        await store.complete_branch(branch.claim, TaskResult(output=1))
    done = await store.complete_branch(branches[-1].claim, failed)
    assert done.joined
    assert (await store.load("one")).snapshot.task_results["b3"] == failed


async def test_bad_input_is_refused_before_anything_is_written(store: Twin) -> None:
    await store.save(snap("wf", position=AtTask("start")))
    for position in (AtTask("x"), AtFork("f"), AtFork("f", branches=("a", "a"))):
        with pytest.raises(ValidationError):
            await store.start_branches(snap("wf", position=position), 1)
    with pytest.raises(ValidationError):
        await store.start_branches(at_fork("wf", status=WorkflowStatus.PAUSED), 1)
    assert await store.count("branches") == 0
    assert (await store.load("wf")).version == 1
    with pytest.raises(ValidationError, match="BranchClaim"):
        await store.complete_branch(object(), TaskResult())
    await forked(store, "other")
    (branch,) = await store.find_available_branches("w", limit=1)
    with pytest.raises(ValidationError):
        await store.complete_branch(branch.claim, "not a result")
    assert not (await store.branches("other"))[0].done_at


async def test_a_new_fork_replaces_the_branches_of_the_last(store: Twin) -> None:
    version = await forked(store)
    for branch in await store.find_available_branches("w", limit=3):
        await store.complete_branch(branch.claim, TaskResult(output=branch.branch_id))
    (task,) = await store.find_available_tasks("boss")
    again = at_fork("wf", branches=("x",))
    assert await store.start_branches(again, version + 1, claim=task.claim) == version + 2
    assert [s.branch_id for s in await store.branches("wf")] == ["x"]
    (branch,) = await store.find_available_branches("w")
    assert branch.claim.fork_version == version + 2


async def test_delete_removes_the_branches(store: Twin) -> None:
    await forked(store)
    assert await store.delete("wf")
    assert await store.count("branches") == 0


async def test_a_claim_from_an_earlier_life_of_the_id_is_lost_not_joined(store: Twin) -> None:
    """Found by the whole-API model test: a branch lease of a deleted instance, whose
    fork version a new life of the id reached by joining its own fork."""
    await forked(store)  # the fork at version 2
    (stale,) = await store.find_available_branches("w", limit=1)
    assert await store.delete("wf")
    await store.start_branches(at_fork("wf", ("b1",)), None)  # a new life: its fork at 1
    (branch,) = await store.find_available_branches("w", limit=1)
    assert (await store.complete_branch(branch.claim, TaskResult(output=1))).version == 2
    with pytest.raises(ClaimLostError, match="no longer current"):
        await store.complete_branch(stale.claim, TaskResult(output=0))
    assert (await store.load("wf")).snapshot.position == AtJoin("fan")


# -- many workers, killed ones among them ---------------------------------------------------

INSTANCES = 12
FANOUT = 6
WORKERS = 8


@pytest.fixture
def backend(dsn: str, schema: str) -> Iterator[PostgresBackend[JsonCodec]]:
    with PostgresBackend[JsonCodec].connect(dsn, schema=schema, max_size=WORKERS + 2) as b:
        b.truncate_all()
        yield b


def test_many_workers_join_each_fork_exactly_once(
    backend: PostgresBackend[JsonCodec], dsn: str
) -> None:
    """Workers race for branches; some die holding a lease (it expires and another
    worker takes the branch over). Every fork joins once: one join checkpoint, one
    NOTIFY, every branch result its own worker's, no result lost or doubled."""
    branches = tuple(f"b{i}" for i in range(FANOUT))
    for n in range(INSTANCES):
        iid = f"fan-{n}"
        backend.save(snap(iid, position=AtTask("start")))
        (task,) = backend.claim_notified([iid], "boss")
        backend.start_branches(at_fork(iid, branches=branches), 1, claim=task.claim)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(
            pgsql.SQL("LISTEN {}").format(pgsql.Identifier(wakeup_channel(backend.schema)))
        )
        joins: Counter[str] = Counter()
        abandoned: list[BranchClaim] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            rng = random.Random(n)
            try:
                idle = 0
                while idle < 20:
                    got = backend.find_available_branches(f"w{n}", limit=1, ttl=0.5)
                    if not got:
                        idle += 1
                        threading.Event().wait(0.05)
                        continue
                    idle = 0
                    (branch,) = got
                    if rng.random() < 0.15:  # killed mid-branch: the lease is left to expire
                        with lock:
                            abandoned.append(branch.claim)
                        continue
                    result = TaskResult(
                        output=[branch.instance_id, branch.branch_id], worker_id=f"w{n}"
                    )
                    try:
                        done = backend.complete_branch(branch.claim, result)
                    except ClaimLostError:  # too slow: the lease ran out and was taken over
                        continue
                    if done.joined:
                        with lock:
                            joins[branch.instance_id] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        assert joins == Counter({f"fan-{n}": 1 for n in range(INSTANCES)})
        notified = Counter(n.payload for n in listener.notifies(timeout=1.0))
        assert notified == Counter({f"fan-{n}": 1 for n in range(INSTANCES)})
    assert abandoned  # the kills happened
    for n in range(INSTANCES):
        iid = f"fan-{n}"
        stored = backend.load(iid)
        assert stored is not None
        assert stored.version == 3
        assert stored.snapshot.position == AtJoin("fan")
        results = stored.snapshot.task_results
        assert {b: results[b].output for b in branches} == {b: [iid, b] for b in branches}
        kinds = [e.snapshot.position.__class__.__name__ for e in backend.history(iid)]
        assert kinds == ["AtTask", "AtFork", "AtJoin"]
    for claim in abandoned:  # a dead worker's late result never lands
        with pytest.raises(ClaimLostError):
            backend.complete_branch(claim, TaskResult(output="late"))
    assert len(backend.find_available_tasks("boss", limit=INSTANCES + 1)) == INSTANCES


def test_ttl_must_be_positive(backend: PostgresBackend[JsonCodec]) -> None:
    with pytest.raises(ValidationError):
        backend.find_available_branches("w", ttl=timedelta(0))


async def test_starting_the_same_fork_again_reopens_its_branches(store: Twin) -> None:
    await store.save(snap("wf", position=AtTask("start")))
    assert await store.start_branches(at_fork("wf"), 1) == 2
    assert await store.start_branches(at_fork("wf"), 2) == 3
    assert [b.claim.fork_version for b in await store.find_available_branches("w")] == [3, 3, 3]


async def test_branches_must_be_new_tasks_of_the_checkpoint(store: Twin) -> None:
    await store.save(snap("wf", position=AtTask("start")))
    again = snap("wf", position=AtFork("fan", branches=("b1",)), task_results={"b1": TaskResult()})
    with pytest.raises(ValidationError, match="already have results"):
        await store.start_branches(again, 1)
    assert await store.count("branches") == 0


async def test_a_request_left_pending_is_applied_at_the_join(store: Twin) -> None:
    """A worker holding the instance itself keeps a cancel pending and lets go without
    applying it: the branches still run, and the worker that takes the join applies it."""
    await forked(store)
    held = await store.claim("wf", "boss")
    assert await store.cancel("wf", "stop") == SignalOutcome.PENDING
    await store.release(held)
    for branch in await store.find_available_branches("w", limit=3):
        await store.complete_branch(branch.claim, TaskResult(output=1))
    (join,) = await store.find_available_tasks("boss")
    assert (await store.check_signals("wf", join.claim)).kind == "cancel"
    assert (await store.load("wf")).snapshot.status is WorkflowStatus.CANCELLED


async def test_a_heartbeat_after_the_fork_moved_on_is_refused(store: Twin) -> None:
    version = await forked(store)
    (branch,) = await store.find_available_branches("w1", limit=1)
    taken = await store.claim("wf", "boss")  # an explicit takeover of the instance
    await store.save(snap("wf", position=AtTask("after")), version, claim=taken)
    with pytest.raises(ClaimLostError):
        await store.extend_branch(branch.claim)


async def test_a_branch_result_needs_aware_times(store: Twin) -> None:
    await forked(store)
    (branch,) = await store.find_available_branches("w1", limit=1)
    naive = TaskResult(started_at=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="timezone-aware"):
        await store.complete_branch(branch.claim, naive)


def test_a_join_too_big_to_save_refuses_the_last_result_and_writes_nothing(
    dsn: str, schema: str
) -> None:
    with PostgresBackend[JsonCodec].connect(
        dsn, schema=schema, max_checkpoint_bytes=3000, max_value_bytes=2000
    ) as small:
        small.truncate_all()
        small.save(snap("wf", position=AtTask("start")))
        small.start_branches(at_fork("wf", branches=("b1", "b2")), 1)
        first, last = small.find_available_branches("w", limit=2)
        small.complete_branch(first.claim, TaskResult(output="x" * 1500))
        with pytest.raises(EncodeError, match="max_checkpoint_bytes"):
            small.complete_branch(last.claim, TaskResult(output="y" * 1800))
        assert [s.done_at is None for s in small.branches("wf")] == [False, True]
        assert small.load_task_result("wf", "b2") is None
        done = small.complete_branch(last.claim, TaskResult(status=TaskStatus.FAILED, error="big"))
        assert done.joined


def test_starting_branches_wakes_idle_workers_once(
    backend: PostgresBackend[JsonCodec], dsn: str
) -> None:
    backend.save(snap("wf", position=AtTask("start")))
    with psycopg.connect(dsn, autocommit=True) as listener:
        channel = pgsql.Identifier(wakeup_channel(backend.schema))
        listener.execute(pgsql.SQL("LISTEN {}").format(channel))
        backend.start_branches(at_fork("wf"), 1)
        assert [n.payload for n in listener.notifies(timeout=1.0)] == ["wf"]
    assert backend.claim_notified(["wf"], "w") == []  # parked: the branches are the work
