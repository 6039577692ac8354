"""Checkpoint deltas: a save writes what changed, yet every checkpoint reads back whole.

A long workflow's history rows hold only the task metadata that changed since the
version before (envelope flag FLAG_DELTA), with a whole checkpoint starting each chain.
Loads, history() and retention must see exactly the checkpoints the engine saved.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
import psycopg
import pytest
from psycopg import sql

from snapstore import (
    AtTask,
    JsonCodec,
    PostgresBackend,
    TaskResult,
    TaskStatus,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.codecs.snapshot import is_delta, strip_outputs

STEPS = 60


def step(previous: WorkflowSnapshot | None, n: int) -> WorkflowSnapshot:
    """The engine's next checkpoint: one more task done, now and then one changed again
    or dropped, and the input rewritten, so deltas carry changes, removals and whole
    fields."""
    results = dict(previous.task_results) if previous else {}
    results[f"t{n}"] = TaskResult(output={"n": n, "pad": "x" * 40}, attempts=1 + n % 3)
    if n % 7 == 3:
        results["t1"] = TaskResult(status=TaskStatus.FAILED, error=f"again {n}")
    if n % 11 == 5:
        results.pop(f"t{n - 2}", None)
    return WorkflowSnapshot(
        instance_id="long",
        definition_hash="h",
        position=AtTask(task_id=f"t{n + 1}"),
        task_results=results,
        input={"step": n},
    )


def run_workflow(backend: PostgresBackend[JsonCodec], steps: int) -> list[WorkflowSnapshot]:
    saved: list[WorkflowSnapshot] = []
    current: WorkflowSnapshot | None = None
    version: int | None = None
    for n in range(steps):
        current = step(current, n)
        version = backend.save(current, expected_version=version)
        saved.append(current)
    return saved


def history_rows(backend: PostgresBackend[JsonCodec]) -> list[tuple[int, int | None, bytes]]:
    query = sql.SQL(
        "SELECT version, base_version, data FROM {}.history WHERE instance_id = 'long' "
        "ORDER BY version"
    ).format(sql.Identifier(backend.schema))
    with backend.pool.connection() as conn:
        return [(int(v), b, bytes(d)) for v, b, d in conn.execute(query).fetchall()]


def test_a_long_workflow_writes_deltas_and_reads_back_every_checkpoint(
    backend: PostgresBackend[JsonCodec],
) -> None:
    saved = run_workflow(backend, STEPS)
    rows = history_rows(backend)
    deltas = [r for r in rows if is_delta(r[2])]
    assert len(deltas) > STEPS // 2  # most saves wrote only what changed
    assert all(base is not None for _, base, blob in rows if is_delta(blob))
    assert all(base is None for _, base, blob in rows if not is_delta(blob))
    # a delta carries only the changed task metadata, not every earlier task's: late ones
    # are no bigger than early ones (but for a digit more in a task id or a number)
    early = [len(blob) for v, _, blob in deltas if v <= 20]
    late = [len(blob) for v, _, blob in deltas if v > STEPS - 20]
    assert early
    assert late
    assert max(late) <= max(early) + 8
    assert [h.snapshot for h in backend.history("long")] == [strip_outputs(s) for s in saved]
    stored = backend.load("long")
    assert stored is not None
    assert stored.version == STEPS
    assert stored.snapshot == saved[-1]
    # any window of history, starting inside a chain, decodes from the chain's start
    window = backend.history("long", after_version=37, limit=5)
    assert [h.version for h in window] == [38, 39, 40, 41, 42]
    assert [h.snapshot for h in window] == [strip_outputs(s) for s in saved[37:42]]


def test_a_cache_miss_writes_a_whole_checkpoint(
    dsn: str, backend: PostgresBackend[JsonCodec]
) -> None:
    saved = run_workflow(backend, 10)
    with PostgresBackend[JsonCodec].connect(dsn, schema=backend.schema) as other:
        nxt = step(saved[-1], 10)
        other.save(nxt, expected_version=10)  # it knows nothing of the chain: whole
    version, base, blob = history_rows(backend)[-1]
    assert (version, base, is_delta(blob)) == (11, None, False)
    stored = backend.load("long")
    assert stored is not None
    assert stored.snapshot == nxt


@pytest.mark.parametrize("batch", [1, 7, 1000])  # chains cut by batches, or whole in one
def test_prune_keeps_exactly_the_last_versions_visible_and_every_one_readable(
    backend: PostgresBackend[JsonCodec], batch: int
) -> None:
    saved = run_workflow(backend, STEPS)
    pruned = backend.prune_history(keep_last=5, batch_size=batch)
    assert pruned == STEPS - 5
    history = backend.history("long")
    assert [h.version for h in history] == list(range(STEPS - 4, STEPS + 1))
    assert [h.snapshot for h in history] == [strip_outputs(s) for s in saved[-5:]]
    rows = history_rows(backend)
    assert rows[0][0] <= STEPS - 4  # the rows the kept deltas are read from stayed
    first_kept = next(r for r in rows if r[0] == STEPS - 4)
    assert rows[0][0] == (first_kept[1] or first_kept[0])
    assert backend.prune_history(keep_last=5) == 0  # hidden rows are not counted twice
    # once later saves start a new chain, the hidden rows go for good
    run_more = step(saved[-1], STEPS)
    version = STEPS
    for n in range(STEPS, STEPS + 40):
        run_more = step(run_more, n)
        version = backend.save(run_more, expected_version=version)
    assert backend.prune_history(keep_last=1, batch_size=batch) == 44
    (last,) = backend.history("long")
    assert last.version == version
    assert last.snapshot == strip_outputs(run_more)
    stored = backend.load("long")
    assert stored is not None
    assert stored.snapshot == run_more


def test_finishing_and_readers_agree(backend: PostgresBackend[JsonCodec]) -> None:
    saved = run_workflow(backend, 20)
    done = msgspec.structs.replace(step(saved[-1], 20), status=WorkflowStatus.COMPLETED)
    backend.save(done, expected_version=20)
    stored = backend.load("long")
    assert stored is not None
    assert stored.snapshot == done
    assert backend.history("long")[-1].snapshot == strip_outputs(done)


def test_checkpoints_written_before_deltas_stay_readable(
    dsn: str, backend: PostgresBackend[JsonCodec]
) -> None:
    """Rows from before migration 0005 are whole (base_version NULL); new saves chain
    deltas on top of them."""
    saved = run_workflow(backend, 5)
    with psycopg.connect(dsn, autocommit=True) as conn:  # as an old store left them
        conn.execute(
            sql.SQL("DELETE FROM {}.history WHERE instance_id = 'long' AND version > 1").format(
                sql.Identifier(backend.schema)
            )
        )
        conn.execute(
            sql.SQL("UPDATE {}.snapshots SET version = 1 WHERE instance_id = 'long'").format(
                sql.Identifier(backend.schema)
            )
        )
    with PostgresBackend[JsonCodec].connect(dsn, schema=backend.schema) as fresh:
        stored = fresh.load("long")
        assert stored is not None
        assert stored.version == 1
        current, version = stored.snapshot, 1
        expected = [strip_outputs(saved[0])]
        for n in range(1, 6):
            current = step(current, n)
            version = fresh.save(current, expected_version=version)
            expected.append(strip_outputs(current))
        assert [h.snapshot for h in fresh.history("long")] == expected
        assert any(is_delta(blob) for _, _, blob in history_rows(backend))


@pytest.mark.parametrize("keep_last", [1, 3])
@pytest.mark.parametrize("batch", [4, 1000])
def test_prune_by_age_never_strands_a_kept_delta(
    backend: PostgresBackend[JsonCodec], keep_last: int, batch: int
) -> None:
    saved = run_workflow(backend, 30)
    with backend.pool.connection() as conn:  # the first 20 checkpoints are two days old
        conn.execute(
            sql.SQL(
                "UPDATE {}.history SET created_at = now() - interval '2 days' "
                "WHERE instance_id = 'long' AND version <= 20"
            ).format(sql.Identifier(backend.schema))
        )
    backend.prune_history(keep_last=keep_last, older_than=timedelta(days=1), batch_size=batch)
    history = backend.history("long")
    assert [h.version for h in history] == list(range(21, 31))
    assert [h.snapshot for h in history] == [strip_outputs(s) for s in saved[20:]]
