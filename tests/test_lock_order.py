"""Dispatch, claim, release, extend and saves take row locks in one order (the snapshot
row, then the claim), so no mix of them can deadlock.

Workers race over a handful of instances with every claim operation at once. A statement
that locked claims before snapshots (as release once did) meets dispatch, which locks the
other way round, and PostgreSQL aborts one of them with DeadlockDetected: the workers count
every error they see, and the test demands none. Nothing depends on timing: contention only
makes a wrong lock order likely to show within the run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from snapstore import (
    AtTask,
    ClaimLostError,
    ConflictError,
    JsonCodec,
    PostgresBackend,
    TaskResult,
    WorkflowSnapshot,
)
from tests.twins import isolated_schema, snap

WORKERS = 8
INSTANCES = 6
SECONDS = 3.0


@pytest.fixture
def backend(dsn: str) -> Iterator[PostgresBackend[JsonCodec]]:
    with (
        isolated_schema(dsn) as schema,
        PostgresBackend[JsonCodec].connect(dsn, schema=schema, max_size=WORKERS + 2) as b,
    ):
        yield b


def _one_task(iid: str, step: int) -> WorkflowSnapshot:
    results = {f"t{step}": TaskResult(output=step)}
    return snap(iid, position=AtTask(task_id=f"t{step}"), task_results=results)


def _worker(
    backend: PostgresBackend[JsonCodec], name: str, deadline: float, errors: list[BaseException]
) -> None:
    ids = [f"i{k}" for k in range(INSTANCES)]
    step = 0
    try:
        while time.monotonic() < deadline:
            step += 1
            for task in backend.find_available_tasks(name, limit=3, ttl=5):
                claim = backend.extend(task.claim, ttl=5)
                # Another worker's explicit claim() below may have taken it over.
                with contextlib.suppress(ConflictError, ClaimLostError):
                    nxt = _one_task(claim.instance_id, step)
                    backend.save(nxt, task.stored.version, claim=claim)
                backend.release(claim)
            explicit = backend.claim(ids[step % INSTANCES], name, ttl=5)
            if explicit is not None:
                backend.release(explicit)
    except BaseException as exc:  # every error counts, deadlocks above all
        errors.append(exc)


def test_claim_operations_never_deadlock(backend: PostgresBackend[JsonCodec]) -> None:
    for k in range(INSTANCES):
        backend.save(_one_task(f"i{k}", 0))
    errors: list[BaseException] = []
    deadline = time.monotonic() + SECONDS
    threads = [
        threading.Thread(target=_worker, args=(backend, f"w{n}", deadline, errors))
        for n in range(WORKERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(backend.dispatchable_ids()) == INSTANCES  # every lease was released
