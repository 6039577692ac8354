"""Group commit: concurrent saves from many threads or tasks share one commit.

A durable commit costs one WAL flush whatever it contains, so batching is what
lifts throughput past the fsync ceiling. There is no timer: whoever arrives
while no flush slot is free simply waits, and the next flush takes everyone
waiting (natural batching). A flusher writes one batch and then hands the
leader role to the oldest waiter, so no caller is kept serving others.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from snapstore.errors import ConfigurationError
from snapstore.model import SaveResult
from snapstore.rows import PreparedSave

DEFAULT_MAX_BATCH: Final = 256
DEFAULT_MAX_FLUSHES: Final = 2
E = TypeVar("E")


@dataclass(eq=False)
class _Slot(Generic[E]):
    item: PreparedSave
    wake: E
    result: SaveResult | BaseException | None = None
    promoted: bool = False


@dataclass
class GroupCommitStats:
    """How well saves are being grouped: ``saves / flushes`` is the mean batch size."""

    saves: int = 0
    flushes: int = 0
    largest_batch: int = 0

    @property
    def mean_batch(self) -> float:
        return self.saves / self.flushes if self.flushes else 0.0


@dataclass
class _Queue(Generic[E]):
    """The leader-election state machine shared by the sync and async committers."""

    max_batch: int
    max_flushes: int
    pending: list[_Slot[E]] = field(default_factory=list)
    flushing: int = 0
    stats: GroupCommitStats = field(default_factory=GroupCommitStats)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_flushes < 1:
            raise ConfigurationError("group commit max_batch and max_flushes must be >= 1")

    def enqueue(self, slot: _Slot[E]) -> bool:
        """Queue a save; True if the caller must lead a flush now."""
        with self.lock:
            self.pending.append(slot)
            if self.flushing < self.max_flushes:
                self.flushing += 1
                return True
            return False

    def take(self) -> list[_Slot[E]]:
        with self.lock:
            batch = self.pending[: self.max_batch]
            del self.pending[: self.max_batch]
            self.stats.saves += len(batch)
            self.stats.flushes += 1 if batch else 0
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            return batch

    def finish(
        self, batch: list[_Slot[E]], outcome: Sequence[SaveResult] | BaseException
    ) -> list[_Slot[E]]:
        """Record results; return the slots to wake (done ones, plus a promoted leader)."""
        for i, slot in enumerate(batch):
            slot.result = outcome if isinstance(outcome, BaseException) else outcome[i]
        with self.lock:
            if self.pending:
                successor = self.pending[0]
                successor.promoted = True
                return [*batch, successor]
            self.flushing -= 1
            return batch


def _outcome(slot: _Slot[E]) -> SaveResult:
    if isinstance(slot.result, BaseException):
        raise slot.result
    assert slot.result is not None
    return slot.result


class GroupCommitter:
    """Thread-safe group committer; ``flush`` saves a batch in one transaction."""

    ON_BY_DEFAULT: Final = False
    """Handing a save to another thread costs a thread wake-up, which outweighs the
    shared commit until many threads save at once."""

    def __init__(
        self,
        flush: Callable[[list[PreparedSave]], Sequence[SaveResult]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_flushes: int = DEFAULT_MAX_FLUSHES,
    ) -> None:
        self._flush = flush
        self._queue: _Queue[threading.Event] = _Queue(max_batch, max_flushes)

    @property
    def stats(self) -> GroupCommitStats:
        return self._queue.stats

    def submit(self, item: PreparedSave) -> SaveResult:
        """Block until the batch holding ``item`` has committed; its result."""
        slot = _Slot(item, threading.Event())
        lead = self._queue.enqueue(slot)
        while True:
            if lead:
                self._lead()
            slot.wake.wait()
            if slot.result is not None:
                return _outcome(slot)
            slot.wake.clear()
            slot.promoted, lead = False, True

    def _lead(self) -> None:
        batch = self._queue.take()
        try:
            outcome: Sequence[SaveResult] | BaseException = (
                self._flush([s.item for s in batch]) if batch else []
            )
        except BaseException as exc:  # every waiter must hear about it, then it propagates
            outcome = exc
        for slot in self._queue.finish(batch, outcome):
            slot.wake.set()


class AsyncGroupCommitter:
    """The asyncio twin of `GroupCommitter` (one event loop)."""

    ON_BY_DEFAULT: Final = True
    """With many coroutines on a few connections, saves that share commits outpace
    one commit each (same contract; see README "Semantics")."""

    def __init__(
        self,
        flush: Callable[[list[PreparedSave]], Awaitable[Sequence[SaveResult]]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_flushes: int = DEFAULT_MAX_FLUSHES,
    ) -> None:
        self._flush = flush
        self._queue: _Queue[asyncio.Event] = _Queue(max_batch, max_flushes)
        self._orphans: set[asyncio.Future[None]] = set()

    @property
    def stats(self) -> GroupCommitStats:
        return self._queue.stats

    async def submit(self, item: PreparedSave) -> SaveResult:
        """Wait until the batch holding ``item`` has committed. A cancelled caller's
        save may still commit, exactly as a cancelled plain save may."""
        slot = _Slot(item, asyncio.Event())
        lead = self._queue.enqueue(slot)
        try:
            while True:
                if lead:
                    await asyncio.shield(self._lead())
                await slot.wake.wait()
                if slot.result is not None:
                    return _outcome(slot)
                slot.wake.clear()
                slot.promoted, lead = False, True
        except asyncio.CancelledError:
            if slot.promoted and slot.result is None:  # don't strand the other waiters
                task = asyncio.ensure_future(self._lead())
                self._orphans.add(task)
                task.add_done_callback(self._orphans.discard)
            raise

    async def _lead(self) -> None:
        batch = self._queue.take()
        try:
            outcome: Sequence[SaveResult] | BaseException = (
                await self._flush([s.item for s in batch]) if batch else []
            )
        except BaseException as exc:
            outcome = exc
        for slot in self._queue.finish(batch, outcome):
            slot.wake.set()
