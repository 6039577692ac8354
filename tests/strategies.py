"""Hypothesis strategies for snapshots and the values they carry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from snapstore.model import (
    AtDelay,
    AtFork,
    AtJoin,
    AtSignal,
    AtTask,
    InLoop,
    NotStarted,
    Position,
    RetryState,
    TaskResult,
    TaskStatus,
    WorkflowSnapshot,
    WorkflowStatus,
)

ids = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=24)
short_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
# Aware datetimes at microsecond precision: what every codec and PostgreSQL keep exactly.
times = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)

# The portable value domain: JSON's data model with finite floats and 64-bit ints.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | short_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(short_text, inner, max_size=4),
    max_leaves=12,
)

positions: st.SearchStrategy[Position] = st.one_of(
    st.just(NotStarted()),
    st.builds(AtTask, task_id=ids),
    st.builds(AtDelay, task_id=ids, wake_at=times),
    st.builds(AtSignal, task_id=ids, signal_name=ids),
    st.builds(AtFork, task_id=ids, branches=st.lists(ids, max_size=3).map(tuple)),
    st.builds(AtJoin, task_id=ids, waiting_for=st.lists(ids, max_size=3).map(tuple)),
    st.builds(InLoop, task_id=ids, iteration=st.integers(0, 10_000)),
)

task_results = st.builds(
    TaskResult,
    status=st.sampled_from(TaskStatus),
    output=json_values,
    error=st.none() | short_text,
    attempts=st.integers(0, 50),
    worker_id=st.none() | ids,
    started_at=st.none() | times,
    completed_at=st.none() | times,
)

retries = st.builds(
    RetryState,
    attempts=st.integers(0, 50),
    next_attempt_at=st.none() | times,
    last_error=st.none() | short_text,
)


statuses = st.sampled_from(WorkflowStatus)


def snapshots(
    instance_id: st.SearchStrategy[str] = ids,
    status: st.SearchStrategy[WorkflowStatus] = statuses,
) -> st.SearchStrategy[WorkflowSnapshot]:
    """Arbitrary valid snapshots."""
    return st.builds(
        WorkflowSnapshot,
        instance_id=instance_id,
        definition_hash=short_text,
        status=status,
        position=positions,
        task_results=st.dictionaries(ids, task_results, max_size=4),
        retries=st.dictionaries(ids, retries, max_size=2),
        priority=st.integers(1, 5),
        tags=st.lists(ids, max_size=3, unique=True).map(tuple),
        input=json_values,
        output=json_values,
        error=st.none() | short_text,
        trace_parent=st.none() | short_text,
        created_at=st.none() | times,
    )
