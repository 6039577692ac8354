"""Task rows are written once: unchanged results are not sent again, and never wrongly skipped."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as hst
from psycopg import sql

from snapstore import (
    AtTask,
    ConflictError,
    JsonCodec,
    PostgresBackend,
    TaskResult,
    WorkflowSnapshot,
    WorkflowStatus,
    programs,
)
from snapstore import rows as rw
from snapstore.codecs import codec_instance
from snapstore.task_cache import UNKNOWN, Known, TaskCache
from tests import twins


def with_outputs(iid: str, outputs: dict[str, object]) -> WorkflowSnapshot:
    results = {t: TaskResult(output=o) for t, o in outputs.items()}
    return twins.snap(iid, position=AtTask(task_id=f"t{len(outputs)}"), task_results=results)


def test_each_task_row_is_written_by_the_save_that_introduced_it(
    backend: PostgresBackend[JsonCodec],
) -> None:
    outputs: dict[str, object] = {}
    version = backend.save(with_outputs("long", outputs))
    for step in range(30):
        outputs[f"t{step}"] = {"step": step}
        version = backend.save(with_outputs("long", outputs), expected_version=version)
    query = sql.SQL(
        "SELECT t.task_id, t.xmin::text = h.xmin::text FROM {s}.tasks t "
        "JOIN {s}.history h ON h.instance_id = t.instance_id "
        "AND h.version = 2 + substr(t.task_id, 2)::int WHERE t.instance_id = 'long'"
    ).format(s=sql.Identifier(backend.schema))
    with backend.pool.connection() as conn:
        rows = conn.execute(query).fetchall()
    assert len(rows) == 30
    assert all(same for _, same in rows)
    # ...because the next save would send only the new row, not all thirty again
    outputs["t30"] = "new"
    item = programs.prepare(backend.ctx, with_outputs("long", outputs), version, None)
    assert item.task_ids == ["t30"]
    assert len(item.all_task_rows) == 31
    stored = backend.load("long")
    del outputs["t30"]
    assert stored is not None
    assert stored.snapshot == with_outputs("long", outputs)


def test_changed_results_are_written_and_other_writers_are_not_masked(
    dsn: str, backend: PostgresBackend[JsonCodec]
) -> None:
    with PostgresBackend[JsonCodec].connect(dsn, schema=backend.schema) as other:
        v1 = backend.save(with_outputs("x", {"a": 1}))
        stored = other.load("x")
        assert stored is not None
        v2 = other.save(with_outputs("x", {"a": 2}), expected_version=stored.version)
        # backend remembers version 1 only, so it must send row "a" again
        v3 = backend.save(with_outputs("x", {"a": 1, "b": 0}), expected_version=v2)
        assert (v1, v2, v3) == (1, 2, 3)
        result = backend.load_task_result("x", "a")
        assert result is not None
        assert result.output == 1
        # an equal-but-changed-back result after our own save is written too
        v4 = backend.save(with_outputs("x", {"a": 5, "b": 0}), expected_version=v3)
        backend.save(with_outputs("x", {"a": 1, "b": 0}), expected_version=v4)
        final = other.load("x")
        assert final is not None
        assert final.snapshot == with_outputs("x", {"a": 1, "b": 0})


def test_in_place_mutation_of_an_output_is_still_written(
    backend: PostgresBackend[JsonCodec],
) -> None:
    output = {"n": 1}
    version = backend.save(with_outputs("m", {"a": output}))
    output["n"] = 2  # the frozen TaskResult still holds this very dict
    backend.save(with_outputs("m", {"a": output}), expected_version=version)
    result = backend.load_task_result("m", "a")
    assert result is not None
    assert result.output == {"n": 2}


def test_cache_keeps_the_newest_version_and_is_bounded() -> None:
    cache = TaskCache(max_instances=2)
    results = {"a": ("Completed", 1, None, None, None, None, b"x")}
    life = datetime(2026, 1, 1, tzinfo=UTC)
    cache.remember("i", 3, life, results)
    cache.remember("i", 2, life, {})  # an older save finishing late must not win
    assert cache.known("i", 3) == Known(life, results)
    assert cache.known("i", 2) == UNKNOWN
    assert cache.known("i", None) == UNKNOWN
    cache.remember("j", 1, life, results)
    cache.remember("k", 1, life, results)  # evicts "i", the least recently used
    assert cache.known("i", 3) == UNKNOWN
    assert cache.known("k", 1) == Known(life, results)
    cache.forget("k")
    assert cache.known("k", 1) == UNKNOWN


def test_an_instance_recreated_elsewhere_up_to_the_same_version_is_a_conflict(
    dsn: str, backend: PostgresBackend[JsonCodec]
) -> None:
    """Version 2 of the instance this backend remembers is not version 2 of the one
    another process deleted and recreated: skipping task rows on the strength of the
    version alone would pair this checkpoint with the other instance's outputs."""
    with PostgresBackend[JsonCodec].connect(dsn, schema=backend.schema) as other:
        v1 = backend.save(with_outputs("aba", {"a": "mine"}))
        v2 = backend.save(with_outputs("aba", {"a": "mine", "b": "mine"}), expected_version=v1)
        assert other.delete("aba")
        w1 = other.save(with_outputs("aba", {"a": "theirs"}))
        w2 = other.save(with_outputs("aba", {"a": "theirs", "b": "theirs"}), expected_version=w1)
        assert (v2, w2) == (2, 2)
        with pytest.raises(ConflictError):
            backend.save(
                with_outputs("aba", {"a": "mine", "b": "mine", "c": 0}), expected_version=v2
            )
        stored = other.load("aba")
        assert stored is not None
        assert stored.version == 2
        assert stored.snapshot == with_outputs("aba", {"a": "theirs", "b": "theirs"})
        # the conflict made the cache forget: a retry from a fresh read sends every row
        fresh = backend.load("aba")
        assert fresh is not None
        v3 = backend.save(with_outputs("aba", {"a": "mine", "b": "mine", "c": 0}), fresh.version)
        final = other.load("aba")
        assert final is not None
        assert final.version == v3
        assert final.snapshot == with_outputs("aba", {"a": "mine", "b": "mine", "c": 0})


def test_a_save_after_loading_an_instance_recreated_elsewhere_succeeds(
    dsn: str, backend: PostgresBackend[JsonCodec]
) -> None:
    """Having read the other process's new life of the id, this backend saves at its
    version: its cache of the old life must not turn that into a conflict. (The new life
    ran the same steps, so its results equal the cached ones: rows the cache would skip.)"""
    with PostgresBackend[JsonCodec].connect(dsn, schema=backend.schema) as other:
        v1 = backend.save(with_outputs("life", {"a": "same"}))
        backend.save(with_outputs("life", {"a": "same", "b": "same"}), expected_version=v1)
        assert other.delete("life")
        w1 = other.save(with_outputs("life", {"a": "same"}))
        w2 = other.save(with_outputs("life", {"a": "same", "b": "same"}), expected_version=w1)
        fresh = backend.load("life")
        assert fresh is not None
        assert fresh.version == w2 == 2
        nxt = with_outputs("life", {"a": "same", "b": "same", "c": 0})
        assert backend.save(nxt, fresh.version) == 3
        final = other.load("life")
        assert final is not None
        assert final.snapshot == nxt


def test_a_rolled_back_save_is_not_remembered(backend: PostgresBackend[JsonCodec]) -> None:
    version = backend.save(with_outputs("r", {"a": 1}))

    def save_then_fail() -> programs.Program[None]:
        yield from programs.save(backend.ctx, with_outputs("r", {"a": 2}), version, None)
        raise RuntimeError("the enclosing transaction fails after the save")

    with pytest.raises(RuntimeError):
        backend._runner.run(save_then_fail(), transaction=True)
    assert backend.ctx.tasks.known("r", version + 1) == UNKNOWN
    assert backend.ctx.tasks.known("r", version) != UNKNOWN
    stored = backend.load("r")
    assert stored is not None
    assert stored.version == version


def test_cache_keeps_digests_and_is_bounded_by_bytes(backend: PostgresBackend[JsonCodec]) -> None:
    big = "x" * 1_000_000
    version = backend.save(with_outputs("big", {"a": big}))
    known = backend.ctx.tasks.known("big", version)
    (row,) = known.rows.values()
    assert row[-1] is not None
    assert len(row[-1]) == 16
    cache = TaskCache(max_bytes=20_000)
    life = datetime(2026, 1, 1, tzinfo=UTC)
    rows = {f"t{k}": ("Completed", 1, None, None, None, "e" * 100, b"d" * 16) for k in range(10)}
    for n in range(10):
        cache.remember(f"i{n}", 1, life, rows)
        instances, size = cache.size
        assert size <= 20_000
    assert 1 <= instances < 10
    assert cache.known("i9", 1) != UNKNOWN
    assert cache.known("i0", 1) == UNKNOWN


def test_a_finished_instance_is_forgotten(backend: PostgresBackend[JsonCodec]) -> None:
    version = backend.save(with_outputs("f", {"a": 1}))
    assert backend.ctx.tasks.known("f", version) != UNKNOWN
    done = msgspec.structs.replace(with_outputs("f", {"a": 1}), status=WorkflowStatus.COMPLETED)
    final = backend.save(done, expected_version=version)
    assert backend.ctx.tasks.known("f", final) == UNKNOWN
    assert backend.ctx.tasks.known("f", version) == UNKNOWN


def _fields(item: rw.PreparedSave) -> tuple[object, ...]:
    return (
        item.data,
        item.base_version,
        item.expected_created_at,
        item.task_ids,
        item.task_rows,
        dict(item.all_task_rows),
        item.completed_task_count,
        item.chain,
        item.prior.order,
        item.prior.outputs_digest,
        item.prior.completed,
        item.prior.digests,
        item.prior.footprint,
    )


@given(
    steps=hst.lists(
        hst.tuples(hst.sampled_from(["add", "mutate", "replace", "same"]), hst.integers(0, 9)),
        min_size=1,
        max_size=25,
    )
)
def test_reused_results_are_prepared_exactly_as_if_all_were_looked_at(
    steps: list[tuple[str, int]],
) -> None:
    """The fast path (results that are the very objects saved before are not encoded one
    by one) must produce the same save as comparing every task: same blob, same rows."""
    codec = codec_instance(JsonCodec)
    life = datetime(2026, 1, 1, tzinfo=UTC)
    outputs: list[dict[str, int]] = []
    results: dict[str, TaskResult] = {}
    current = with_outputs("p", {})
    item = rw.prepare_save(codec, current, None)
    version = 1
    for action, k in steps:
        if action == "add" or not results:
            outputs.append({"n": len(outputs)})
            results[f"t{len(results)}"] = TaskResult(output=outputs[-1])
        elif action == "mutate":  # in place, inside an object the store saw
            outputs[k % len(outputs)]["n"] += 100
        elif action == "replace":  # an equal result, but a new object
            task = f"t{k % len(results)}"
            results[task] = TaskResult(output=results[task].output, attempts=2)
        current = msgspec.structs.replace(current, task_results=dict(results))
        known = Known(life, item.all_task_rows, item.chain, item.prior)
        fast = rw.prepare_save(codec, current, version, None, known)
        slow = rw.prepare_save(codec, current, version, None, known._replace(prior=None))
        assert _fields(fast) == _fields(slow)
        item, version = fast, version + 1


def test_results_carried_over_are_recognised_and_changes_are_not() -> None:
    codec = codec_instance(JsonCodec)
    output = {"n": 1}
    first = with_outputs("q", {"a": output})
    item = rw.prepare_save(codec, first, None)
    results = {**first.task_results, "b": TaskResult(output=2)}
    found = rw._new_tasks(results, item.prior)
    assert found is not None
    assert found[0] == ["b"]
    assert rw._new_tasks({"a": TaskResult(output={"n": 1})}, item.prior) is None  # new object
    output["n"] = 2  # the same object, mutated in place
    assert rw._new_tasks(results, item.prior) is None


def test_a_new_life_of_an_id_is_remembered_from_version_one() -> None:
    """Deleted and created again (elsewhere, or by truncate_all): the new life's saves
    start at version 1 again and must not be shut out by the old life's higher one."""
    cache = TaskCache()
    old, new = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    rows = {"a": ("Completed", 1, None, None, None, None, b"x")}
    cache.remember("i", 30, old, rows)
    cache.remember("i", 1, new, {})
    assert cache.known("i", 1) == Known(new, {})
    assert cache.known("i", 30) == UNKNOWN
    cache.clear()
    assert cache.known("i", 1) == UNKNOWN
    assert cache.size == (0, 0)
