"""Store operations as generators of SQL steps, driven by a sync or async shell.

Each operation yields a `Step` (statement name, parameters, what to fetch) and
receives the fetched rows back; it returns the result or raises a typed error.
The same generator runs under `PostgresBackend` and `AsyncPostgresBackend`,
which is how psycopg itself shares logic between its two APIs.
"""

from __future__ import annotations

import enum
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from snapstore import statements as st
from snapstore.codecs import Codec
from snapstore.model import (
    Claim,
    HistoryEntry,
    Page,
    StoredSnapshot,
    TaskResult,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.queries import wakeup_channel

R = TypeVar("R")


@dataclass(frozen=True)
class Context:
    """What operations need to know about the store they run against."""

    codec: Codec
    schema: str

    @property
    def channel(self) -> str:
        return wakeup_channel(self.schema)


class Fetch(enum.Enum):
    NONE = "none"
    ONE = "one"
    ALL = "all"


class Step(NamedTuple):
    """One statement to run: a name from sql/queries/*.sql and its bound parameters."""

    query: str
    params: st.Params | None = None
    fetch: Fetch = Fetch.ONE


Program = Generator[Step, Any, R]


def save(
    ctx: Context, snapshot: WorkflowSnapshot, expected_version: int | None, claim: Claim | None
) -> Program[int]:
    """CAS save: one statement; on failure, one read to name the precise error."""
    params = st.save_params(ctx.codec, snapshot, expected_version, claim=claim, channel=ctx.channel)
    version = st.saved_version((yield Step("save_snapshot", params)))
    if version is None:
        current = yield Step("current_state", st.state_params(snapshot.instance_id, claim))
        raise st.save_failure(snapshot.instance_id, expected_version, claim, current)
    return version


def load(instance_id: str) -> Program[StoredSnapshot | None]:
    row = yield Step("load_snapshot", st.id_params(instance_id))
    return st.interpret_load(instance_id, row)


def load_task_result(instance_id: str, task_id: str) -> Program[TaskResult | None]:
    row = yield Step("load_task_result", st.task_params(instance_id, task_id))
    return st.interpret_task_result(instance_id, task_id, row)


def delete(instance_id: str) -> Program[bool]:
    row = yield Step("delete_instance", st.id_params(instance_id))
    return bool(row[0])


def list_snapshots(
    statuses: Iterable[WorkflowStatus] | WorkflowStatus | None, limit: int, cursor: str | None
) -> Program[Page]:
    rows = yield Step("list_snapshots", st.list_params(statuses, limit, cursor), Fetch.ALL)
    return st.interpret_list(rows, limit)


def history(instance_id: str, after_version: int, limit: int | None) -> Program[list[HistoryEntry]]:
    rows = yield Step(
        "read_history", st.history_params(instance_id, after_version, limit), Fetch.ALL
    )
    return st.interpret_history(rows)


def truncate_all() -> Program[None]:
    yield Step("truncate_all", None, Fetch.NONE)
