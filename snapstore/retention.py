"""Retention: prune old checkpoints and purge finished instances in bounded batches.

Each batch is its own short transaction, so clean-up runs beside live traffic
without long locks; the current checkpoint of a live instance is never removed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from snapstore import statements as st
from snapstore.errors import ValidationError
from snapstore.operations import Batch, Fetch, Program, Step
from snapstore.runner import AsyncRunner, SyncRunner

DEFAULT_BATCH: Final = 1000


def _check(batch_size: int, keep_last: int = 1) -> None:
    if batch_size < 1:
        raise ValidationError("batch_size must be >= 1")
    if keep_last < 1:
        raise ValidationError("keep_last must be >= 1: the current checkpoint is always kept")


PRUNE_START: Final = ("", 0)  # before every (instance_id, version): ids are non-empty


def prune_history(
    instance_id: str | None,
    keep_last: int,
    older_than: timedelta | None,
    batch: int,
    after: tuple[str, int],
) -> Program[Batch]:
    if instance_id is not None:
        st.id_params(instance_id)
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
    row = yield Step("delete_instances", {"instance_ids": [r[0] for r in rows]})
    return Batch(int(row[0]), rows[-1][1] if len(rows) == batch else None)


class RetentionMixin(SyncRunner):
    """Retention on `PostgresBackend`."""

    def prune_history(
        self,
        *,
        keep_last: int = 1,
        older_than: timedelta | None = None,
        instance_id: str | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> int:
        """Delete checkpoints beyond the last ``keep_last`` per instance (and older than
        ``older_than``, if given); returns how many were deleted."""
        _check(batch_size, keep_last)
        return self._run_batches(
            lambda after: prune_history(instance_id, keep_last, older_than, batch_size, after),
            PRUNE_START,
        )

    def purge_terminal(self, *, older_than: timedelta, batch_size: int = DEFAULT_BATCH) -> int:
        """Delete instances that finished more than ``older_than`` ago, with all their rows."""
        _check(batch_size)
        return self._run_batches(lambda after: purge_terminal(older_than, batch_size, after), None)


class AsyncRetentionMixin(AsyncRunner):
    """Retention on `AsyncPostgresBackend`."""

    async def prune_history(
        self,
        *,
        keep_last: int = 1,
        older_than: timedelta | None = None,
        instance_id: str | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> int:
        _check(batch_size, keep_last)
        return await self._run_batches(
            lambda after: prune_history(instance_id, keep_last, older_than, batch_size, after),
            PRUNE_START,
        )

    async def purge_terminal(
        self, *, older_than: timedelta, batch_size: int = DEFAULT_BATCH
    ) -> int:
        _check(batch_size)
        return await self._run_batches(
            lambda after: purge_terminal(older_than, batch_size, after), None
        )
