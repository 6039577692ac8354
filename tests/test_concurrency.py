"""Compare-and-set under real contention: no lost update, no gap in history.

Writers race on one instance with the load-modify-save-retry loop an engine uses. If
CAS ever let a stale write through, two writers would commit the same counter value:
the final counter would fall short of the number of increments, and some history entry
would disagree with its version. Nothing here depends on timing: contention only makes
conflicts likely, and every assertion holds for any interleaving.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from snapstore import (
    AsyncPostgresBackend,
    ConflictError,
    JsonCodec,
    PostgresBackend,
    TaskResult,
    WorkflowSnapshot,
)
from tests.twins import advance, snap

WRITERS = 16
INCREMENTS = 8  # per writer


@pytest.fixture
def backend(dsn: str, schema: str) -> Iterator[PostgresBackend[JsonCodec]]:
    with PostgresBackend[JsonCodec].connect(dsn, schema=schema, max_size=WRITERS) as b:
        b.truncate_all()
        yield b


def bump(snapshot: WorkflowSnapshot, writer: int) -> WorkflowSnapshot:
    """The next checkpoint: counter + 1, recorded in input, output and a task result."""
    counter = snapshot.input["counter"] + 1
    return advance(
        snapshot,
        input={"counter": counter},
        output=counter,
        task_results={**snapshot.task_results, f"w{writer}": TaskResult(output=counter)},
    )


def check_outcome(history_counters: list[tuple[int, int]], final_counter: int) -> None:
    """Every increment landed exactly once, in a gapless chain of versions."""
    total = WRITERS * INCREMENTS
    assert final_counter == total
    assert history_counters == [(v, v - 1) for v in range(1, total + 2)]


def test_threads_racing_with_cas_retries_lose_no_update(
    backend: PostgresBackend[JsonCodec],
) -> None:
    backend.save(snap("hot", input={"counter": 0}))
    start = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            start.wait(timeout=30)
            for _ in range(INCREMENTS):
                while True:
                    stored = backend.load("hot")
                    assert stored is not None
                    try:
                        backend.save(bump(stored.snapshot, n), expected_version=stored.version)
                        break
                    except ConflictError as exc:  # expected: retry on the newer version
                        assert exc.actual_version is not None  # noqa: PT017
                        assert exc.actual_version > stored.version  # noqa: PT017
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    final = backend.load("hot")
    assert final is not None
    assert final.version == WRITERS * INCREMENTS + 1
    history = backend.history("hot")
    check_outcome(
        [(h.version, h.snapshot.input["counter"]) for h in history], final.snapshot.output
    )
    # Each writer's task row holds the counter of its last successful save.
    outputs = {r.output for r in final.snapshot.task_results.values()}
    assert max(outputs) == WRITERS * INCREMENTS
    assert len(outputs) == WRITERS


def test_racing_creates_yield_exactly_one_winner(backend: PostgresBackend[JsonCodec]) -> None:
    start = threading.Barrier(WRITERS)
    outcomes: list[int | str] = []

    def creator(n: int) -> None:
        start.wait(timeout=30)
        try:
            outcomes.append(backend.save(snap("born", input=n)))
        except ConflictError as exc:
            outcomes.append(f"conflict@{exc.actual_version}")

    threads = [threading.Thread(target=creator, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes, key=str) == [1] + ["conflict@1"] * (WRITERS - 1)
    assert [h.version for h in backend.history("born")] == [1]


async def test_asyncio_tasks_racing_with_cas_retries_lose_no_update(dsn: str, schema: str) -> None:
    async with await AsyncPostgresBackend[JsonCodec].connect(
        dsn, schema=schema, max_size=WRITERS
    ) as backend:
        await backend.truncate_all()
        await backend.save(snap("hot", input={"counter": 0}))

        async def writer(n: int) -> None:
            for _ in range(INCREMENTS):
                while True:
                    stored = await backend.load("hot")
                    assert stored is not None
                    try:
                        await backend.save(bump(stored.snapshot, n), stored.version)
                        break
                    except ConflictError:
                        continue

        await asyncio.gather(*(writer(n) for n in range(WRITERS)))
        final = await backend.load("hot")
        assert final is not None
        assert final.version == WRITERS * INCREMENTS + 1
        history = await backend.history("hot")
        check_outcome(
            [(h.version, h.snapshot.input["counter"]) for h in history], final.snapshot.output
        )
