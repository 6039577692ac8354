"""Every public method checks its arguments at the boundary, before any I/O.

The backends here sit on pools that were never opened: any attempt to take a
connection raises `PoolClosed`, so a `ValidationError` proves the bad argument was
refused first. Both twins run every case.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from snapstore import (
    AsyncPostgresBackend,
    AtDelay,
    AtSignal,
    Claim,
    JsonCodec,
    PostgresBackend,
    SaveRequest,
    ValidationError,
)
from tests.twins import Twin, snap

GOOD = snap("wf-1")
CLAIM = Claim(
    instance_id="wf-1",
    worker_id="w",
    token=uuid.uuid4(),
    expires_at=datetime(2030, 1, 1, tzinfo=UTC),
)
PARKED = snap("wf-1", position=AtSignal(task_id="t", signal_name="go"))
OTHER = Claim(instance_id="wf-2", worker_id="w", token=uuid.uuid4(), expires_at=CLAIM.expires_at)
NOT_A_TOKEN = Claim(instance_id="wf-1", worker_id="w", token="t", expires_at=CLAIM.expires_at)  # type: ignore[arg-type]

LONE = "a\ud800b"  # a lone surrogate: a Python str that is not Unicode text
YEAR_10000 = datetime(9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))

# (method, args, kwargs): one bad argument each.
BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("save", (snap(LONE),), {}),
    ("save", (snap("wf-1", tags=(LONE,)),), {}),
    ("save", (snap("wf-1", error="x" * (2**20 + 1)),), {}),
    ("save", (snap("wf-1", position=AtDelay(task_id="t", wake_at=YEAR_10000)),), {}),
    ("load", (LONE,), {}),
    ("send_event", ("wf-1", LONE), {}),
    ("claim", ("wf-1", LONE), {}),
    ("claim", ("wf-1", "w", timedelta(days=3_650_000)), {}),
    ("find_available_tasks", ("w",), {"tags": [LONE]}),
    ("find_available_tasks", ("w",), {"ttl": 1e12}),
    ("cancel", ("wf-1", LONE), {}),
    ("save", (snap(""),), {}),
    ("save", (GOOD, 0), {}),
    ("save", (GOOD, 1), {"claim": "not a claim"}),
    ("save_many", ([GOOD],), {}),
    ("save_many", ((r for r in [SaveRequest(GOOD)]),), {}),  # a generator cannot be counted
    ("load", ("",), {}),
    ("load", ("a\x00b",), {}),
    ("load_task_result", ("wf-1", ""), {}),
    ("delete", ("",), {}),
    ("list", (), {"limit": 0}),
    ("list", (), {"cursor": "???"}),
    ("list", (), {"cursor": 5}),
    ("list", ("Bogus",), {}),
    ("list", ([1],), {}),
    ("history", ("",), {}),
    ("history", ("wf-1",), {"after_version": 2**63}),
    ("history", ("wf-1",), {"limit": -1}),
    ("store_signal", ("wf-1", "explode"), {}),
    ("store_signal", ("wf-1", "cancel", "nul\x00"), {}),
    ("get_signals", ("",), {}),
    ("get_signal", ("wf-1", "explode"), {}),
    ("clear_signal", ("wf-1", "explode"), {}),
    ("cancel", ("",), {}),
    ("pause", ("wf-1", 7), {}),
    ("unpause", ("",), {}),
    ("check_and_cancel", ("",), {}),
    ("check_and_pause", ("wf-1", "not a claim"), {}),
    ("check_and_cancel", ("wf-1", OTHER), {}),
    ("check_signals", ("",), {}),
    ("fork", ("", 1, "copy"), {}),
    ("fork", ("wf-1", 0, "copy"), {}),
    ("fork", ("wf-1", 1, "nul\x00"), {}),
    ("check_signals", ("wf-1", OTHER), {}),
    ("cancel", ("wf-1",), {"requested_by": "nul\x00"}),
    ("pause", ("wf-1",), {"requested_by": 7}),
    ("store_signal", ("wf-1", "pause"), {"requested_by": "\ud800"}),
    ("send_event", ("wf-1", ""), {}),
    ("send_event", ("", "go"), {}),
    ("peek_events", ("wf-1",), {"limit": 0}),
    ("consume_event", ("1", GOOD, 1), {}),
    ("consume_event", (1, GOOD, 0), {}),
    ("consume_event", (1, GOOD, None), {}),
    ("consume_event", (2**63, GOOD, 1), {}),
    ("park", (GOOD, None), {}),
    ("park", (PARKED, 0), {}),
    ("claim", ("wf-1", ""), {}),
    ("claim", ("wf-1", "w", -1), {}),
    ("extend", (CLAIM, 0), {}),
    ("extend", ("not a claim",), {}),
    ("extend", (NOT_A_TOKEN,), {}),
    ("release", ("not a claim",), {}),
    ("release", (NOT_A_TOKEN,), {}),
    ("find_available_tasks", ("w",), {"limit": 0}),
    ("find_available_tasks", ("w",), {"tags": "gpu"}),
    ("find_available_tasks", ("w",), {"tags": ["nul\x00"]}),
    ("claim_notified", ("wf-1", "w"), {}),
    ("dispatchable_ids", (), {"aging_interval": 0}),
    ("prune_history", (), {"keep_last": 0}),
    ("prune_history", (), {"keep_last": True}),
    ("prune_history", (), {"batch_size": "10"}),
    ("prune_history", (), {"older_than": -1}),
    ("purge_terminal", (), {"older_than": timedelta(seconds=-1)}),
    ("purge_terminal", (), {"older_than": 60, "batch_size": 0}),
]


@pytest.fixture(params=["sync", "async"])
async def closed(request: pytest.FixtureRequest) -> Twin:
    """A backend whose pool was never opened (and cannot be)."""
    conninfo = "postgresql://nobody@127.0.0.1:1/nowhere"
    if request.param == "sync":
        pool: Any = ConnectionPool(conninfo, open=False)
        backend: Any = PostgresBackend[JsonCodec].from_pool(pool, run_migrations=False)
    else:
        pool = AsyncConnectionPool(conninfo, open=False)
        backend = await AsyncPostgresBackend[JsonCodec].from_pool(pool, run_migrations=False)
    return Twin(backend)


@pytest.mark.parametrize(("method", "args", "kwargs"), BAD_CALLS, ids=repr)
async def test_bad_arguments_are_refused_before_any_io(
    closed: Twin, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        await getattr(closed, method)(*args, **kwargs)


async def test_save_many_reports_a_bad_snapshot_in_its_result(closed: Twin) -> None:
    """A bad snapshot inside a SaveRequest fails that item only; no item, no I/O."""
    results = await closed.save_many([SaveRequest(snap(""))])
    assert results[0].error is not None
    assert isinstance(results[0].error, ValidationError)
