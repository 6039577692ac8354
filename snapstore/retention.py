"""Retention: prune old checkpoints and purge finished instances in bounded batches.

Each batch is its own short transaction, so clean-up runs beside live traffic
without long locks; the current checkpoint of a live instance is never removed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

from snapstore import checks
from snapstore.programs import Batch, Fetch, Program, Step, delete_instances

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
    row = yield Step("prune_history", params)
    if row is None:  # nothing was left to read
        return Batch(0)
    deleted, last_id, last_version = row
    return Batch(int(deleted), (last_id, int(last_version)))


def purge_terminal(older_than: timedelta, batch: int, after: datetime | None) -> Program[Batch]:
    params = {"older_than": older_than, "batch": batch, "after": after}
    rows = yield Step("terminal_ids", params, Fetch.ALL)
    if not rows:
        return Batch(0)
    deleted = yield from delete_instances([r[0] for r in rows], finished_before=rows[0][2])
    return Batch(deleted, rows[-1][1] if len(rows) == batch else None)


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
