"""The core store contract, run against real PostgreSQL through both backends.

Every test takes the `store` fixture, parametrized over the sync and async twins (see
`tests.twins`), so both are held to one set of expectations. Where the contract is about
what was (or was not) committed, the tests read the tables directly instead of trusting
the store's own read path.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from snapstore import (
    AtDelay,
    AtFork,
    AtJoin,
    AtSignal,
    AtTask,
    ConflictError,
    DecodeError,
    EncodeError,
    InLoop,
    NotFoundError,
    RetryState,
    TaskResult,
    TerminalStateError,
    ValidationError,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.codecs.snapshot import strip_outputs
from snapstore.model import TERMINAL_STATUSES, NotStarted
from tests.twins import (
    CHILD_TABLES,
    Twin,
    advance,
    snap,
    with_tasks,
)

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


async def task_xmins(store: Twin, instance_id: str) -> dict[str, str]:
    """The creating transaction of each task row: it changes iff the row was rewritten."""
    rows = await store.sql(
        "SELECT task_id, xmin::text FROM @schema@.tasks WHERE instance_id = %(iid)s",
        {"iid": instance_id},
    )
    return dict(rows)


# --- save: create, compare-and-set, history ------------------------------------------


async def test_create_returns_version_1_and_a_second_create_conflicts(store: Twin) -> None:
    first = snap(input={"n": 1})
    assert await store.save(first) == 1
    with pytest.raises(ConflictError) as info:
        await store.save(advance(first, input={"n": 2}))
    assert (info.value.instance_id, info.value.expected_version) == ("wf-1", None)
    assert info.value.actual_version == 1
    loaded = await store.load("wf-1")
    assert loaded is not None
    assert loaded.snapshot == first
    assert loaded.version == 1
    assert await store.count("history") == 1


async def test_stale_expected_version_conflicts_and_names_both_versions(store: Twin) -> None:
    s1 = snap()
    await store.save(s1)
    assert await store.save(advance(s1, input=2), expected_version=1) == 2
    for stale in (1, 3, 99):
        with pytest.raises(ConflictError) as info:
            await store.save(advance(s1, input="lost"), expected_version=stale)
        assert (info.value.expected_version, info.value.actual_version) == (stale, 2)
    loaded = await store.load("wf-1")
    assert loaded is not None
    assert loaded.snapshot.input == 2
    assert [h.version for h in await store.history("wf-1")] == [1, 2]


async def test_expecting_a_version_of_a_missing_instance_is_not_found(store: Twin) -> None:
    with pytest.raises(NotFoundError):
        await store.save(snap("ghost"), expected_version=1)
    assert set((await store.row_counts()).values()) == {0}


async def test_every_save_appends_one_gapless_history_row_with_the_same_blob(
    store: Twin,
) -> None:
    saved: list[WorkflowSnapshot] = []
    current = with_tasks()
    for n in range(5):
        current = advance(current, input={"step": n}, position=InLoop("loop", iteration=n))
        version = await store.save(current, expected_version=n or None)
        assert version == n + 1
        saved.append(current)
    history = await store.history("wf-1")
    assert [h.version for h in history] == [1, 2, 3, 4, 5]
    # History blobs are checkpoints without task outputs (those live in the tasks sidecar).
    assert [h.snapshot for h in history] == [strip_outputs(s) for s in saved]
    assert {(h.status, h.current_task_id, h.codec) for h in history} == {
        (WorkflowStatus.IN_PROGRESS, "loop", store.codec.name)
    }
    # The narrow snapshots row points at the latest history row of the same commit.
    rows = await store.sql(
        "SELECT s.version, s.data_hash = h.data_hash, s.updated_at = h.created_at "
        "FROM @schema@.snapshots s JOIN @schema@.history h USING (instance_id) "
        "WHERE h.version = s.version"
    )
    assert rows == [(5, True, True)]


async def test_history_reads_in_version_order_with_after_version_and_limit(
    store: Twin,
) -> None:
    base = snap()
    await store.save(base)
    for v in range(1, 6):
        await store.save(advance(base, input=v), expected_version=v)
    assert [h.snapshot.input for h in await store.history("wf-1")] == [None, 1, 2, 3, 4, 5]
    assert [h.version for h in await store.history("wf-1", after_version=2)] == [3, 4, 5, 6]
    assert [h.version for h in await store.history("wf-1", after_version=1, limit=2)] == [2, 3]
    assert await store.history("wf-1", after_version=6) == []
    assert await store.history("absent") == []
    assert await store.history("wf-1", limit=0) == []
    entry = (await store.history("wf-1", limit=1))[0]
    assert (entry.instance_id, entry.created_at is not None) == ("wf-1", True)


@pytest.mark.parametrize(
    "kwargs",
    [{"limit": -1}, {"limit": True}, {"limit": 1.5}, {"after_version": "1"}],
    ids=repr,
)
async def test_history_rejects_bad_bounds(store: Twin, kwargs: dict[str, Any]) -> None:
    """Caught before the query: PostgreSQL would fail on some, and silently coerce others."""
    await store.save(snap())
    with pytest.raises(ValidationError):
        await store.history("wf-1", **kwargs)


# --- tasks sidecar ---------------------------------------------------------------------


async def test_task_outputs_are_stored_once_in_the_tasks_table(store: Twin) -> None:
    first = with_tasks()
    await store.save(first)
    rows = await store.sql(
        "SELECT task_id, status, attempts, worker_id, error, output IS NOT NULL "
        "FROM @schema@.tasks ORDER BY task_id"
    )
    assert rows == [
        ("a", "Completed", 1, "w1", None, True),
        ("b", "Failed", 3, None, "boom", False),
    ]
    blob = await store.scalar("SELECT data FROM @schema@.history")
    assert b"SIDECAR-ONLY" not in bytes(blob)
    loaded = await store.load("wf-1")
    assert loaded is not None
    assert loaded.snapshot == first

    # Re-saving the same task results must not rewrite their rows (no WAL per save).
    before = await task_xmins(store, "wf-1")
    await store.save(advance(first, input="next"), expected_version=1)
    assert await task_xmins(store, "wf-1") == before

    # Changing one task rewrites that row only.
    changed = dict(first.task_results, a=TaskResult(output={"rows": []}, attempts=2))
    await store.save(advance(first, task_results=changed), expected_version=2)
    after = await task_xmins(store, "wf-1")
    assert after["b"] == before["b"]
    assert after["a"] != before["a"]
    assert await store.load_task_result("wf-1", "a") == changed["a"]


async def test_load_task_result_returns_each_task_with_its_output(store: Twin) -> None:
    snapshot = with_tasks()
    await store.save(snapshot)
    for task_id, result in snapshot.task_results.items():
        assert await store.load_task_result("wf-1", task_id) == result
    assert await store.load_task_result("wf-1", "zzz") is None
    assert await store.load_task_result("absent", "a") is None
    with pytest.raises(ValidationError):
        await store.load_task_result("wf-1", "")


async def test_tasks_dropped_from_a_later_snapshot_are_not_hydrated(store: Twin) -> None:
    first = with_tasks()
    await store.save(first)
    second = advance(first, task_results={"b": first.task_results["b"]})
    await store.save(second, expected_version=1)
    loaded = await store.load("wf-1")
    assert loaded is not None
    assert loaded.snapshot == second


# --- terminal guard --------------------------------------------------------------------


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
async def test_terminal_instances_are_never_written_again(
    store: Twin, terminal: WorkflowStatus
) -> None:
    running = with_tasks()
    await store.save(running)
    done = advance(running, status=terminal, output="result", error="why")
    assert await store.save(done, expected_version=1) == 2
    completed_at = await store.scalar("SELECT completed_at FROM @schema@.snapshots")
    assert completed_at is not None
    before = await store.rows("snapshots")
    xmins = await task_xmins(store, "wf-1")

    resurrect = advance(running, task_results={"a": TaskResult(output="new")})
    attempts: list[tuple[WorkflowSnapshot, int | None]] = [
        (resurrect, 2),
        (resurrect, None),
        (resurrect, 1),
        (done, 2),
        (advance(done, status=WorkflowStatus.COMPLETED), 2),
    ]
    for snapshot, expected in attempts:
        with pytest.raises(TerminalStateError) as info:
            await store.save(snapshot, expected_version=expected)
        assert info.value.status == terminal.value
    assert await store.rows("snapshots") == before
    assert await store.count("history") == 2
    assert await task_xmins(store, "wf-1") == xmins
    loaded = await store.load("wf-1")
    assert loaded is not None
    assert loaded.snapshot == done
    assert loaded.version == 2


async def test_an_instance_may_be_created_terminal_and_paused_is_not_terminal(
    store: Twin,
) -> None:
    await store.save(snap("done", status=WorkflowStatus.CANCELLED))
    with pytest.raises(TerminalStateError):
        await store.save(snap("done"), expected_version=1)
    paused = snap("p", status=WorkflowStatus.PAUSED)
    await store.save(paused)
    assert await store.save(advance(paused, status=WorkflowStatus.IN_PROGRESS), 1) == 2


# --- load ------------------------------------------------------------------------------


async def test_load_round_trips_every_field(store: Twin) -> None:
    snapshot = with_tasks(
        "ünïcødé/☃",
        position=AtDelay("c", wake_at=T0),
        retries={"c": RetryState(attempts=2, next_attempt_at=T0, last_error="x")},
        priority=5,
        tags=("gpu", "eu"),
        input={"nested": [1, 2.5, None, True, "s"]},
        output=None,
        error=None,
        trace_parent="00-abc-def-01",
        created_at=T0,
    )
    await store.save(snapshot)
    loaded = await store.load("ünïcødé/☃")
    assert loaded is not None
    assert (loaded.snapshot, loaded.version, loaded.codec) == (snapshot, 1, store.codec.name)
    assert loaded.updated_at is not None
    assert await store.load("absent") is None


# --- delete ----------------------------------------------------------------------------


async def insert_child_rows(store: Twin, instance_id: str) -> None:
    """Child rows of every kind, written by hand."""
    params = {"iid": instance_id}
    await store.sql(
        "INSERT INTO @schema@.signals (instance_id, kind) VALUES (%(iid)s, 'cancel')", params
    )
    await store.sql(
        "INSERT INTO @schema@.events (instance_id, name, payload) "
        "VALUES (%(iid)s, 'go', '\\x01'), (%(iid)s, 'go', '\\x02')",
        params,
    )
    await store.sql(
        "INSERT INTO @schema@.claims (instance_id, worker_id, token, expires_at) "
        "VALUES (%(iid)s, 'w', gen_random_uuid(), now() + interval '1 minute')",
        params,
    )
    await store.sql(
        "INSERT INTO @schema@.dead_events (instance_id, id, name, payload, created_at, reason)"
        " VALUES (%(iid)s, 0, 'go', '\\x00', now(), 'unreadable')",
        params,
    )
    await store.sql(
        "INSERT INTO @schema@.applied_signals (instance_id, version, kind, requested_at)"
        " VALUES (%(iid)s, 1, 'pause', now())",
        params,
    )
    await store.sql(
        "INSERT INTO @schema@.branches (instance_id, branch_id, fork_version)"
        " VALUES (%(iid)s, 'b', 1)",
        params,
    )


async def test_delete_removes_the_instance_and_all_its_child_rows(store: Twin) -> None:
    for iid in ("doomed", "kept"):
        await store.save(with_tasks(iid))
        await store.save(with_tasks(iid, input=2), expected_version=1)
        await insert_child_rows(store, iid)
    kept_before = await store.row_counts("kept")
    assert all(kept_before[t] > 0 for t in CHILD_TABLES)

    assert await store.delete("doomed") is True
    assert set((await store.row_counts("doomed")).values()) == {0}
    assert await store.row_counts("kept") == kept_before
    assert await store.load("doomed") is None
    assert await store.history("doomed") == []
    assert await store.load_task_result("doomed", "a") is None
    assert await store.delete("doomed") is False
    # A deleted id starts over from version 1.
    assert await store.save(snap("doomed")) == 1
    assert [h.version for h in await store.history("doomed")] == [1]


async def test_truncate_all_empties_every_table(store: Twin) -> None:
    await store.save(with_tasks())
    await insert_child_rows(store, "wf-1")
    assert min((await store.row_counts()).values()) > 0
    await store.truncate_all()
    assert set((await store.row_counts()).values()) == {0}


# --- list ------------------------------------------------------------------------------

UNICODE_IDS = [
    "a", "B", "Z", "_", "~", "a1", "a10", "a2", "é", "ß", "Ω", "日本", "😀", "\u00a0",
    "zz", "Zz", "0", "9", "-", "ﬃ", "\U0010fffd", "e\u0301",
]  # fmt: skip


async def test_list_filters_by_status_without_decoding(store: Twin) -> None:
    statuses = list(WorkflowStatus)
    for n in range(10):
        status = statuses[n % len(statuses)]
        await store.save(with_tasks(f"i{n}", status=status, priority=n % 5 + 1))
    every = await store.list()
    assert [s.instance_id for s in every.items] == [f"i{n}" for n in range(10)]
    assert every.next_cursor is None
    for status in statuses:
        page = await store.list(status)
        assert {s.instance_id for s in page.items} == {
            f"i{n}" for n in range(10) if statuses[n % len(statuses)] is status
        }
        assert {s.status for s in page.items} == {status}
    both = await store.list([WorkflowStatus.FAILED, WorkflowStatus.PAUSED])
    assert [s.instance_id for s in both.items] == ["i2", "i4", "i7", "i9"]
    assert (await store.list([])).items == []
    by_name = await store.list("Paused")  # a status name is one status, not its letters
    assert by_name == await store.list(WorkflowStatus.PAUSED)

    summary = every.items[0]
    assert (summary.definition_hash, summary.current_task_id, summary.position_kind) == (
        "def-1",
        "c",
        "AtTask",
    )
    assert (summary.completed_task_count, summary.priority, summary.tags) == (1, 1, ())
    assert (summary.version, summary.codec, summary.error) == (1, store.codec.name, None)


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 11, 22, 100])
async def test_keyset_pagination_walks_every_id_once_in_byte_order(store: Twin, limit: int) -> None:
    for iid in UNICODE_IDS:
        status = WorkflowStatus.PAUSED if len(iid.encode()) > 1 else WorkflowStatus.IN_PROGRESS
        await store.save(snap(iid, status=status))

    async def walk(status: WorkflowStatus | None) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = await store.list(status, limit=limit, cursor=cursor)
            assert len(page.items) <= limit
            seen += [s.instance_id for s in page.items]
            if page.next_cursor is None:
                return seen
            assert len(page.items) == limit  # only full pages promise another one
            cursor = page.next_cursor

    def by_bytes(ids: list[str]) -> list[str]:
        return sorted(ids, key=lambda i: i.encode())

    assert await walk(None) == by_bytes(UNICODE_IDS)
    paused = [i for i in UNICODE_IDS if len(i.encode()) > 1]
    assert await walk(WorkflowStatus.PAUSED) == by_bytes(paused)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": True},
        {"cursor": "a"},
        {"cursor": "_w=="},
        {"cursor": "!!!!"},  # not base64 at all: must not silently restart the listing
        {"cursor": "a b c d"},
        {"cursor": "aQ==aQ=="},  # data after padding
    ],
    ids=repr,
)
async def test_list_rejects_bad_arguments(store: Twin, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        await store.list(**kwargs)


# --- validation: bad input raises before any I/O ---------------------------------------

GOOD = snap()
NAIVE = datetime(2030, 1, 1)  # no tzinfo: the server would read it in its own time zone


def bad(**changes: Any) -> Callable[[], WorkflowSnapshot]:
    return lambda: advance(GOOD, **changes)


BAD_SNAPSHOTS: dict[str, Callable[[], WorkflowSnapshot]] = {
    "priority 0": bad(priority=0),
    "priority 6": bad(priority=6),
    "priority bool": bad(priority=True),
    "priority str": bad(priority="3"),
    "empty id": bad(instance_id=""),
    "id too long": bad(instance_id="x" * 256),
    "NUL in id": bad(instance_id="a\x00b"),
    "int id": bad(instance_id=7),
    "None definition_hash": bad(definition_hash=None),
    "NUL in definition_hash": bad(definition_hash="d\x00"),
    "str status": bad(status="InProgress"),
    "str position": bad(position="AtTask"),
    "NUL in position task": bad(position=AtTask("t\x00")),
    "int position task": bad(position=AtTask(5)),  # type: ignore[arg-type]
    "NUL in tag": bad(tags=("ok", "b\x00d")),
    "int tag": bad(tags=(1,)),
    "tags None": bad(tags=None),
    "NUL in error": bad(error="e\x00"),
    "int error": bad(error=5),
    "task_results None": bad(task_results=None),
    "task result not a TaskResult": bad(task_results={"t": "done"}),
    "NUL in task id": bad(task_results={"t\x00": TaskResult()}),
    "NUL in task error": bad(task_results={"t": TaskResult(error="\x00")}),
    "NUL in task worker": bad(task_results={"t": TaskResult(worker_id="w\x00")}),
    "retry not a RetryState": bad(retries={"t": 1}),
    "task status str": bad(task_results={"t": TaskResult(status="Completed")}),  # type: ignore[arg-type]
    "task attempts str": bad(task_results={"t": TaskResult(attempts="2")}),  # type: ignore[arg-type]
    "task attempts negative": bad(task_results={"t": TaskResult(attempts=-1)}),
    "task attempts beyond integer": bad(task_results={"t": TaskResult(attempts=2**31)}),
    "task started_at str": bad(task_results={"t": TaskResult(started_at="now")}),  # type: ignore[arg-type]
    "retry attempts None": bad(retries={"t": RetryState(attempts=None)}),  # type: ignore[arg-type]
    "naive retry time": bad(retries={"t": RetryState(attempts=1, next_attempt_at=NAIVE)}),
    "NUL in retry error": bad(retries={"t": RetryState(attempts=1, last_error="\x00")}),
    "empty retry task id": bad(retries={"": RetryState(attempts=1)}),
    "naive wake_at": bad(position=AtDelay("t", NAIVE)),
    "wake_at str": bad(position=AtDelay("t", "soon")),  # type: ignore[arg-type]
    "signal name int": bad(position=AtSignal("t", 7)),  # type: ignore[arg-type]
    "fork branch int": bad(position=AtFork("t", (1,))),  # type: ignore[arg-type]
    "join list of None": bad(position=AtJoin("t", (None,))),  # type: ignore[arg-type]
    "loop iteration str": bad(position=InLoop("t", "1")),  # type: ignore[arg-type]
    "created_at str": bad(created_at="yesterday"),
    "trace_parent int": bad(trace_parent=1),
}


@pytest.mark.parametrize("make", BAD_SNAPSHOTS.values(), ids=BAD_SNAPSHOTS.keys())
async def test_invalid_snapshots_raise_validation_error_and_write_nothing(
    store: Twin, make: Callable[[], WorkflowSnapshot]
) -> None:
    with pytest.raises(ValidationError):
        await store.save(make())
    assert set((await store.row_counts()).values()) == {0}


async def test_bad_updates_leave_the_stored_checkpoint_untouched(store: Twin) -> None:
    await store.save(with_tasks())
    before = {t: await store.rows(t) for t in ("snapshots", "tasks")}
    for make in BAD_SNAPSHOTS.values():
        candidate = make()
        if getattr(candidate, "instance_id", None) != "wf-1":
            continue
        with pytest.raises(ValidationError):
            await store.save(candidate, expected_version=1)
    with pytest.raises(EncodeError):
        await store.save(with_tasks(input={"x": object()}), expected_version=1)
    for expected in (0, -1, True, "1", 2**63):
        with pytest.raises(ValidationError):
            await store.save(with_tasks(), expected_version=expected)
    assert {t: await store.rows(t) for t in before} == before
    assert await store.count("history") == 1


@pytest.mark.parametrize("bad_id", ["", "x" * 256, "a\x00", 3, None], ids=repr)
async def test_reads_and_deletes_validate_instance_ids(store: Twin, bad_id: Any) -> None:
    calls = [
        store.load(bad_id),
        store.delete(bad_id),
        store.history(bad_id),
        store.load_task_result(bad_id, "t"),
    ]
    for call in calls:
        with pytest.raises(ValidationError):
            await call


async def test_ids_at_the_length_limit_and_not_started_positions_round_trip(
    store: Twin,
) -> None:
    longest = snap("é" * 255, position=NotStarted())
    await store.save(longest)
    loaded = await store.load("é" * 255)
    assert loaded is not None
    assert loaded.snapshot == longest
    summary = (await store.list()).items[0]
    assert (summary.current_task_id, summary.position_kind) == (None, "NotStarted")


async def test_one_corrupt_version_can_be_skipped_instead_of_failing_the_history(
    store: Twin,
) -> None:
    version = await store.save(with_tasks())
    for n in range(6):
        version = await store.save(advance(with_tasks(), error=f"step {n}"), version)
    before = {e.version: e for e in await store.history("wf-1")}
    await store.sql(
        "UPDATE @schema@.history SET data = overlay(data placing '\\xff'::bytea from 12)"
        " WHERE instance_id = 'wf-1' AND version = 3"
    )
    with pytest.raises(DecodeError, match="version 3"):
        await store.history("wf-1")
    kept = await store.history("wf-1", skip_corrupt=True)
    versions = [e.version for e in kept]
    assert 3 not in versions
    assert versions[:2] == [1, 2]
    assert all(e == before[e.version] for e in kept)
