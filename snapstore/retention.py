"""Retention: prune old checkpoints and purge finished instances in bounded batches.

Each batch is its own short transaction, so clean-up runs beside live traffic
without long locks; the current checkpoint of a live instance is never removed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

from snapstore import checks
from snapstore.programs import Batch, Fetch, Pipeline, Program, Step
from snapstore.rows import Params, Row

DEFAULT_BATCH: Final = 1000


PRUNE_START: Final = ("", 0)  # before every (instance_id, version): ids are non-empty


def prune_history(
    instance_id: str | None,
    keep_last: int,
    older_than: timedelta | None,
    batch: int,
    after: tuple[str, int],
) -> Program[Batch]:
    params = {
        "instance_id": instance_id,
        "keep_last": keep_last,
        "older_than": older_than,
        "batch": batch,
        "after_id": after[0],
        "after_version": after[1],
    }
    rows = yield Step("prune_candidates", params, Fetch.ALL)
    if not rows:  # nothing was left to read
        return Batch(0)
    *old, (last_id, last_version, *_) = rows
    gone = [r for r in old if r[3]]
    hidden = [r for r in old if not r[3] and not r[4]]
    steps = tuple(
        Step(query, _history_keys(keys), Fetch.NONE)
        for query, keys in (("prune_delete", gone), ("prune_hide", hidden))
        if keys
    )
    if steps:
        yield Pipeline(steps)
    counted = sum(1 for r in gone if not r[4]) + len(hidden)  # each checkpoint once
    return Batch(counted, (last_id, int(last_version)))


def _history_keys(rows: list[Row]) -> Params:
    """The keys of history rows (instance id, version, created_at) as column arrays."""
    return {
        "instance_ids": [r[0] for r in rows],
        "versions": [r[1] for r in rows],
        "created_at": [r[2] for r in rows],
    }


def purge_terminal(older_than: timedelta, batch: int, after: datetime | None) -> Program[Batch]:
    params = {"older_than": older_than, "batch": batch, "after": after}
    rows = yield Step("terminal_ids", params, Fetch.ALL)
    if not rows:
        return Batch(0)
    ids = {"instance_ids": [r[0] for r in rows], "finished_before": rows[0][2]}
    row = yield Step("delete_instances", ids)
    return Batch(int(row[0]), rows[-1][1] if len(rows) == batch else None)


BatchFactory = Callable[[Any], Program[Batch]]


def prune_batches(
    instance_id: str | None, keep_last: int, older_than: checks.Seconds | None, batch_size: int
) -> BatchFactory:
    """The batches of `prune_history`, arguments checked before any runs."""
    checks.check_positive("batch_size", batch_size)
    checks.check_positive("keep_last (the current checkpoint is always kept)", keep_last)
    age = None if older_than is None else checks.check_seconds(older_than, "older_than", zero=True)
    if instance_id is not None:
        checks.check_id("instance_id", instance_id)
    return lambda after: prune_history(instance_id, keep_last, age, batch_size, after)


def purge_batches(older_than: checks.Seconds, batch_size: int) -> BatchFactory:
    """The batches of `purge_terminal`, arguments checked before any runs."""
    checks.check_positive("batch_size", batch_size)
    age = checks.check_seconds(older_than, "older_than", zero=True)
    return lambda after: purge_terminal(age, batch_size, after)


def prune_dry_run(
    instance_id: str | None, keep_last: int, older_than: checks.Seconds | None, batch_size: int
) -> Program[int]:
    """How many checkpoints `prune_history` with these arguments would take out now."""
    prune_batches(instance_id, keep_last, older_than, batch_size)  # the same checks
    age = None if older_than is None else checks.check_seconds(older_than, "older_than", zero=True)
    params = {"instance_id": instance_id, "keep_last": keep_last, "older_than": age}
    (count,) = yield Step("prune_count", params)
    return int(count)


def purge_dry_run(older_than: checks.Seconds, batch_size: int) -> Program[int]:
    """How many instances `purge_terminal` with these arguments would delete now."""
    purge_batches(older_than, batch_size)
    age = checks.check_seconds(older_than, "older_than", zero=True)
    (count,) = yield Step("purge_count", {"older_than": age})
    return int(count)
