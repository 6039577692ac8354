"""Model-based test: PostgreSQL must be observably identical to the in-memory reference.

Hypothesis drives `PostgresBackend` and `snapstore.memory.MemoryBackend` with the same
random operations (saves with absent, correct, stale, ahead and arbitrary expected
versions; loads, deletes, paginated listings, history reads, task lookups, terminal
transitions) and requires the same return values, or the same exception with the same
details. Server timestamps are the only thing ignored. A divergence means one of the two
got the contract wrong: the SQL (CAS, terminal guard, sidecar, ordering...) or the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from snapstore import (
    ConflictError,
    JsonCodec,
    MemoryBackend,
    PostgresBackend,
    SnapstoreError,
    TerminalStateError,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.model import TERMINAL_STATUSES
from tests import strategies as sst
from tests.twins import advance, without_timestamps

R = TypeVar("R")

# A few ids, so operations keep hitting the same instances; byte order != code point
# order would show up in listings ("z" < "é" < "日本" < "😀" in both, by design of UTF-8).
INSTANCE_IDS = st.sampled_from(["a", "z", "é", "日本", "😀"])
STATUSES = st.one_of(st.just(WorkflowStatus.IN_PROGRESS), st.sampled_from(WorkflowStatus))
# "current" is what a well-behaved engine sends; the others must all be refused.
EXPECTED = st.sampled_from(["current", "current", "current", "none", "stale", "ahead", "random"])
STATUS_FILTERS = st.one_of(
    st.none(), st.sampled_from(WorkflowStatus), st.lists(st.sampled_from(WorkflowStatus))
)


def outcome(call: Callable[[], R]) -> tuple[str, Any]:
    """What a caller can observe of one call: its result, or its error and details."""
    try:
        return "ok", without_timestamps(call())
    except ConflictError as exc:
        return "ConflictError", (exc.instance_id, exc.expected_version, exc.actual_version)
    except TerminalStateError as exc:
        return "TerminalStateError", (exc.instance_id, exc.status)
    except SnapstoreError as exc:
        return type(exc).__name__, None


class PostgresMatchesMemory(RuleBasedStateMachine):
    """Bound to a backend by subclassing (hypothesis builds machines from a class)."""

    pg: ClassVar[PostgresBackend[JsonCodec]]

    def __init__(self) -> None:
        super().__init__()
        self.mem = MemoryBackend(codec=self.pg.codec)
        self.task_ids: set[str] = {"never-saved"}
        self.pg.truncate_all()

    def same(self, op: Callable[[Any], R]) -> tuple[str, Any]:
        """Run ``op`` on both stores; they must agree. Returns the shared outcome."""
        expected = outcome(lambda: op(self.mem))
        actual = outcome(lambda: op(self.pg))
        assert actual == expected
        return actual

    def current_version(self, instance_id: str) -> int | None:
        stored = self.mem.load(instance_id)
        return None if stored is None else stored.version

    @rule(
        snapshot=sst.snapshots(instance_id=INSTANCE_IDS, status=STATUSES),
        choice=EXPECTED,
        arbitrary=st.integers(1, 6),
    )
    def save(self, snapshot: WorkflowSnapshot, choice: str, arbitrary: int) -> None:
        current = self.current_version(snapshot.instance_id)
        expected = {
            "none": None,
            "current": current,
            "stale": current - 1 if current and current > 1 else None,
            "ahead": (current or 0) + 1,
            "random": arbitrary,
        }[choice]
        self.task_ids.update(snapshot.task_results)
        self.same(lambda s: s.save(snapshot, expected))

    @rule(
        instance_id=INSTANCE_IDS,
        status=st.sampled_from(sorted(TERMINAL_STATUSES)),
        output=sst.json_values,
    )
    def finish(self, instance_id: str, status: WorkflowStatus, output: Any) -> None:
        """A correct-version terminal transition (random saves rarely get both right)."""
        stored = self.mem.load(instance_id)
        if stored is None:
            return
        done = advance(stored.snapshot, status=status, output=output)
        self.same(lambda s: s.save(done, stored.version))

    @rule(instance_id=INSTANCE_IDS)
    def load(self, instance_id: str) -> None:
        self.same(lambda s: s.load(instance_id))

    @rule(instance_id=INSTANCE_IDS)
    def delete(self, instance_id: str) -> None:
        self.same(lambda s: s.delete(instance_id))

    @rule(status=STATUS_FILTERS, limit=st.integers(1, 4))
    def list_all_pages(self, status: Any, limit: int) -> None:
        cursor: str | None = None

        def next_page(store: Any) -> Any:
            return store.list(status, limit=limit, cursor=cursor)

        while True:
            kind, page = self.same(next_page)
            if kind != "ok" or page.next_cursor is None:
                return
            cursor = page.next_cursor

    @rule(
        instance_id=INSTANCE_IDS,
        after_version=st.integers(0, 6),
        limit=st.none() | st.integers(0, 4),
    )
    def history(self, instance_id: str, after_version: int, limit: int | None) -> None:
        self.same(lambda s: s.history(instance_id, after_version=after_version, limit=limit))

    @rule(instance_id=INSTANCE_IDS, data=st.data())
    def load_task_result(self, instance_id: str, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.task_ids)))
        self.same(lambda s: s.load_task_result(instance_id, task_id))


def test_postgres_backend_matches_the_memory_reference(pg: PostgresBackend[JsonCodec]) -> None:
    class AgainstThisDatabase(PostgresMatchesMemory):
        pass

    AgainstThisDatabase.pg = pg
    run_state_machine_as_test(
        AgainstThisDatabase,
        settings=settings(
            max_examples=35,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
