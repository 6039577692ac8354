"""The two ways a save is sent agree: alone (each statement executed once: the common
save) it writes exactly what it writes inside a batch (each statement executemany'd over
the batch's items).

The same scenario runs twice, on instance "solo" through plain saves and on instance
"many" inside two-item batches (the second item pads the batch, so the batch statement
runs). Rows, NOTIFYs and outcomes must match, column for column, but for timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from snapstore import (
    AtDelay,
    AtTask,
    ClaimLostError,
    ConflictError,
    JsonCodec,
    PostgresBackend,
    SaveRequest,
    TaskResult,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.sql_catalog import wakeup_channel

Saver = Callable[[WorkflowSnapshot, int | None, Any], int]
WAKE_AT = datetime.now(UTC) + timedelta(hours=1)  # one timer for both runs


def scenario(backend: PostgresBackend[JsonCodec], iid: str, save: Saver) -> list[object]:
    """Saves of every kind the statement decides on; the outcome of each."""
    outcomes: list[object] = []

    def attempt(snapshot: WorkflowSnapshot, version: int | None, claim: Any = None) -> int | None:
        try:
            got = save(snapshot, version, claim)
        except (ConflictError, ClaimLostError) as exc:
            outcomes.append(type(exc).__name__)
            return None
        outcomes.append(got)
        return got

    base = WorkflowSnapshot(instance_id=iid, definition_hash="h", position=AtTask(task_id="a"))
    v = backend.save(base)
    results = {"a": TaskResult(output={"x": 1})}
    steps = [
        msgspec.structs.replace(base, task_results=results),  # stays due: silent
        msgspec.structs.replace(base, task_results=results, tags=("gpu",)),  # re-tagged
        msgspec.structs.replace(
            base,
            position=AtDelay(task_id="b", wake_at=WAKE_AT),
            task_results={**results, "b": TaskResult(error="e", attempts=2)},
        ),  # a timer: not due
        msgspec.structs.replace(base, position=AtTask(task_id="c"), priority=1),  # due again
    ]
    for snapshot in steps:
        v = attempt(snapshot, v) or v
    attempt(steps[-1], v - 1)  # stale: conflict
    claim = backend.claim(iid, "w", ttl=30)
    assert claim is not None
    v = attempt(msgspec.structs.replace(steps[-1], error="under lease"), v, claim) or v
    backend.release(claim)
    attempt(steps[-1], v, claim)  # a released lease no longer fences: lost
    claim = backend.claim(iid, "w", ttl=30)
    done = msgspec.structs.replace(steps[-1], status=WorkflowStatus.COMPLETED, output=1)
    attempt(done, v, claim)  # finishing drops the lease
    return outcomes


def rows(backend: PostgresBackend[JsonCodec], iid: str) -> list[object]:
    """Every row the scenario left, blobs decoded (they name the instance)."""
    s = sql.Identifier(backend.schema)
    queries = [
        "SELECT status, definition_hash, current_task_id, position_kind, completed_task_count,"
        " error, priority, tags, delay_wake_at, version, codec, completed_at IS NOT NULL,"
        " data_hash = (SELECT data_hash FROM {s}.history h WHERE h.instance_id = s.instance_id"
        " AND h.version = s.version) FROM {s}.snapshots s WHERE instance_id = %s",
        "SELECT version, status, current_task_id, codec, octet_length(data), base_version"
        " FROM {s}.history WHERE instance_id = %s"
        " ORDER BY version",
        "SELECT task_id, status, attempts, worker_id, error, output FROM {s}.tasks"
        " WHERE instance_id = %s ORDER BY task_id",
        "SELECT count(*) FROM {s}.claims WHERE instance_id = %s",
    ]
    with backend.pool.connection() as conn:
        found: list[object] = [
            conn.execute(sql.SQL(q).format(s=s), (iid,)).fetchall() for q in queries
        ]
    found.append(
        [msgspec.structs.replace(h.snapshot, instance_id="x") for h in backend.history(iid)]
    )
    return found


def test_a_save_alone_writes_what_it_writes_in_a_batch(
    backend: PostgresBackend[JsonCodec], dsn: str
) -> None:
    channel = wakeup_channel(backend.schema)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

        def alone(snapshot: WorkflowSnapshot, version: int | None, claim: Any) -> int:
            return backend.save(snapshot, version, claim=claim)

        pad = iter(range(1000))

        def batched(snapshot: WorkflowSnapshot, version: int | None, claim: Any) -> int:
            other = WorkflowSnapshot(instance_id=f"pad{next(pad)}", definition_hash="h")
            first, _ = backend.save_many(
                [SaveRequest(snapshot, version, claim), SaveRequest(other)]
            )
            return first.unwrap()

        one = scenario(backend, "solo", alone)
        many = scenario(backend, "many", batched)
        notified = [n.payload for n in listener.notifies(timeout=0.5)]
    assert one == many
    assert one.count("ConflictError") == 1
    assert "ClaimLostError" in one
    assert rows(backend, "solo") == rows(backend, "many")
    # created, re-tagged, due again after the timer, released: announced; staying due,
    # the timer itself and saves under a lease: not
    assert notified.count("solo") == notified.count("many") == 4
