"""Size limits: over them is an EncodeError before anything is written, on both twins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from snapstore import AtSignal, ConfigurationError, EncodeError, TaskResult
from snapstore.limits import DEFAULT_LIMITS, MIB, Limits
from tests.twins import KINDS, Kind, Twin, advance, open_store, opened, snap

VALUE = 2_000  # bytes of one value, in these tests
CHECKPOINT = 5_000


@pytest.fixture(params=KINDS)
async def small(request: pytest.FixtureRequest, dsn: str, fresh_schema: str) -> AsyncIterator[Twin]:
    kind: Kind = request.param
    async with opened(
        kind, dsn, schema=fresh_schema, max_value_bytes=VALUE, max_checkpoint_bytes=CHECKPOINT
    ) as store:
        yield store


def with_outputs(count: int, size: int) -> Any:
    results = {f"t{i}": TaskResult(output="x" * size) for i in range(count)}
    return snap(task_results=results)


async def test_a_value_over_the_limit_is_refused_and_nothing_is_written(small: Twin) -> None:
    assert await small.save(with_outputs(1, VALUE // 2)) == 1
    before = await small.row_counts()
    with pytest.raises(EncodeError, match="max_value_bytes"):
        await small.save(with_outputs(2, VALUE + 10), 1)
    assert await small.row_counts() == before


async def test_a_checkpoint_adding_up_past_the_limit_is_refused(small: Twin) -> None:
    """Each output is small; the saves that carry earlier ones forward (without encoding
    them again) still count them."""
    version = await small.save(with_outputs(1, 1_000))
    for count in (2, 3, 4):
        version = await small.save(with_outputs(count, 1_000), version)
    before = await small.row_counts()
    with pytest.raises(EncodeError, match="max_checkpoint_bytes"):
        await small.save(with_outputs(5, 1_000), version)
    assert await small.row_counts() == before
    stored = await small.load("wf-1")
    assert stored is not None
    assert len(stored.snapshot.task_results) == 4


async def test_an_event_payload_over_the_limit_is_refused(small: Twin) -> None:
    await small.save(snap(position=AtSignal(task_id="t", signal_name="go")))
    with pytest.raises(EncodeError, match="event payload"):
        await small.send_event("wf-1", "other", "y" * (VALUE + 10))
    assert await small.count("events") == 0
    assert await small.peek_events("wf-1") == []


async def test_the_document_itself_is_a_value(small: Twin) -> None:
    with pytest.raises(EncodeError, match="document"):
        await small.save(advance(snap(), input="z" * (VALUE + 10)))
    assert await small.count("snapshots") == 0


@pytest.mark.parametrize(
    "options",
    [
        {"max_value_bytes": 0},
        {"max_value_bytes": "1"},
        {"max_checkpoint_bytes": 2**31},
        {"max_value_bytes": 10, "max_checkpoint_bytes": 5},
    ],
    ids=repr,
)
async def test_bad_limits_are_a_configuration_error(kind: Kind, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        await open_store(kind, "postgresql://nobody@127.0.0.1:1/nowhere", **options)


def test_the_defaults_stay_under_postgresql_single_allocation_limit() -> None:
    """1 GB (MaxAllocSize) is where PostgreSQL refuses one value; a bytea shown as text
    doubles: the defaults keep even a doubled value under it."""
    assert Limits(256 * MIB, 512 * MIB) == DEFAULT_LIMITS
    assert 2 * DEFAULT_LIMITS.max_checkpoint_bytes < 1024 * MIB + 1


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    chosen: Kind = request.param
    return chosen
