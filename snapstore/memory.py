# Generated from snapstore/memory_async.py by snapstore/_async_to_sync.py: do not edit.
# Change the async source, then run `make sync`.
"""The in-memory store behind the backend API, for threads: the reference model the
property tests compare PostgreSQL against, and a fast test double for engines.

Every method is a thin shell over one `snapstore.memory_state.MemoryStore`, which
holds the whole logic; the sync `MemoryBackend` is generated from this module
(``make sync``). Same arguments, results and errors as `PostgresBackend`, except
that nothing is durable and there are no wakeups. Time comes from ``clock`` (default:
the system clock; `ManualClock` moves only when told).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from snapstore import checks
from snapstore import claims as cl
from snapstore import operations as ops
from snapstore import replicas as rp
from snapstore import retention as rt
from snapstore import rows as rw
from snapstore import signals as sg
from snapstore.branches import BranchClaim, BranchDone, BranchQuery, BranchState, ClaimedBranch
from snapstore.claims import ClaimedTask, DispatchQuery, Seconds
from snapstore.codecs import Codec
from snapstore.limits import Limits
from snapstore.memory_state import Clock, MemoryStore
from snapstore.model import (
    Claim,
    HistoryEntry,
    Page,
    SaveRequest,
    SaveResult,
    StoredSnapshot,
    TaskResult,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.operations import Problem, StoreStats
from snapstore.signals import Event, EventOutcome, ParkResult, Signal, SignalKind, SignalOutcome


def _one_server(min_version: object, replica: object) -> None:
    """The read-replica options, checked as `PostgresBackend` checks them; one store in
    memory is always up to date, so they change nothing here."""
    rp.check_min_version(min_version)
    checks.check_flag("replica", replica)


class MemoryBackend:
    """An in-process store with the observable semantics of `PostgresBackend`.

    Pass ``store`` to share one `MemoryStore` between a sync and an backend."""

    def __init__(
        self,
        codec: Codec | None = None,
        *,
        clock: Clock | None = None,
        limits: Limits | None = None,
        store: MemoryStore | None = None,
    ) -> None:
        self.store = store if store is not None else MemoryStore(codec, clock=clock, limits=limits)

    @property
    def codec(self) -> Codec:
        """The codec new blobs are written with (settable: see `MemoryStore.codec`)."""
        return self.store.codec

    @codec.setter
    def codec(self, codec: Codec) -> None:
        self.store.codec = codec

    def close(self) -> None:
        """Nothing to release; here so code written for the PostgreSQL backend runs."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- checkpoints -----------------------------------------------------------------------

    def save(
        self,
        snapshot: WorkflowSnapshot,
        expected_version: int | None = None,
        *,
        claim: Claim | None = None,
    ) -> int:
        return self.store.save(snapshot, expected_version, claim)

    def save_many(self, requests: Sequence[SaveRequest]) -> builtins.list[SaveResult]:
        return self.store.save_many(requests)

    def load(
        self,
        instance_id: str,
        *,
        input_type: Any = None,
        output_type: Any = None,
        min_version: int | None = None,
        replica: bool = True,
    ) -> StoredSnapshot | None:
        _one_server(min_version, replica)
        in_type = rw.check_value_type("input_type", input_type)
        out_type = rw.check_value_type("output_type", output_type)
        return rw.typed_load(self.store.load(instance_id), in_type, out_type)

    def load_task_result(
        self,
        instance_id: str,
        task_id: str,
        *,
        output_type: Any = None,
        min_version: int | None = None,
        replica: bool = True,
    ) -> TaskResult | None:
        _one_server(min_version, replica)
        type_ = rw.check_value_type("output_type", output_type)
        found = self.store.load_task_result(instance_id, task_id)
        return rw.typed_result(instance_id, task_id, found, type_)

    def fork(self, source_id: str, version: int, instance_id: str) -> int:
        return self.store.fork(source_id, version, instance_id)

    def delete(self, instance_id: str) -> bool:
        return self.store.delete(instance_id)

    def list(
        self,
        status: Iterable[WorkflowStatus] | WorkflowStatus | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        replica: bool = True,
    ) -> Page:
        _one_server(None, replica)
        return self.store.list(status, limit, cursor)

    def history(
        self,
        instance_id: str,
        *,
        after_version: int = 0,
        limit: int | None = None,
        skip_corrupt: bool = False,
        min_version: int | None = None,
        replica: bool = True,
    ) -> builtins.list[HistoryEntry]:
        _one_server(min_version, replica)
        return self.store.history(instance_id, after_version, limit, skip_corrupt)

    def truncate_all(self) -> None:
        self.store.truncate_all()

    # --- signals ---------------------------------------------------------------------------

    def store_signal(
        self,
        instance_id: str,
        kind: SignalKind | str,
        reason: str | None = None,
        *,
        requested_by: str | None = None,
    ) -> Signal:
        return self.store.store_signal(instance_id, kind, reason, requested_by)

    def get_signals(self, instance_id: str) -> builtins.list[Signal]:
        return self.store.get_signals(instance_id, None)

    def get_signal(self, instance_id: str, kind: SignalKind | str) -> Signal | None:
        return self.store.get_signal(instance_id, kind)

    def clear_signal(self, instance_id: str, kind: SignalKind | str | None = None) -> bool:
        return self.store.clear_signal(instance_id, kind)

    def cancel(
        self, instance_id: str, reason: str | None = None, *, requested_by: str | None = None
    ) -> SignalOutcome:
        return self.store.request(instance_id, SignalKind.CANCEL, reason, requested_by)

    def pause(
        self, instance_id: str, reason: str | None = None, *, requested_by: str | None = None
    ) -> SignalOutcome:
        return self.store.request(instance_id, SignalKind.PAUSE, reason, requested_by)

    def unpause(self, instance_id: str) -> SignalOutcome:
        return self.store.unpause(instance_id)

    def check_and_cancel(self, instance_id: str, claim: Claim | None = None) -> Signal | None:
        return self.store.check_and_apply(instance_id, SignalKind.CANCEL, claim)

    def check_and_pause(self, instance_id: str, claim: Claim | None = None) -> Signal | None:
        return self.store.check_and_apply(instance_id, SignalKind.PAUSE, claim)

    def check_signals(self, instance_id: str, claim: Claim | None = None) -> Signal | None:
        return self.store.check_and_apply(instance_id, None, claim)

    # --- events ----------------------------------------------------------------------------

    def send_event(self, instance_id: str, name: str, payload: Any = None) -> EventOutcome:
        return self.store.send_event(instance_id, name, payload)

    def peek_events(
        self, instance_id: str, name: str | None = None, *, limit: int = sg.DEFAULT_EVENT_PAGE
    ) -> builtins.list[Event]:
        return self.store.peek_events(instance_id, name, limit)

    def consume_event(
        self,
        event_id: int,
        snapshot: WorkflowSnapshot,
        expected_version: int,
        *,
        claim: Claim | None = None,
    ) -> ParkResult:
        return self.store.consume_event(event_id, snapshot, expected_version, claim)

    def park(
        self,
        snapshot: WorkflowSnapshot,
        expected_version: int | None,
        *,
        claim: Claim | None = None,
    ) -> ParkResult:
        return self.store.park(snapshot, expected_version, claim)

    # --- claims and dispatch ---------------------------------------------------------------

    def claim(
        self, instance_id: str, worker_id: str, ttl: Seconds = cl.DEFAULT_TTL
    ) -> Claim | None:
        return self.store.claim(instance_id, worker_id, ttl)

    def extend(self, claim: Claim, ttl: Seconds = cl.DEFAULT_TTL) -> Claim:
        return self.store.extend(claim, ttl)

    def release(self, claim: Claim) -> bool:
        return self.store.release(claim)

    def find_available_tasks(
        self,
        worker_id: str,
        *,
        limit: int = 10,
        ttl: Seconds = cl.DEFAULT_TTL,
        tags: Iterable[str] | None = None,
        aging_interval: Seconds = cl.DEFAULT_AGING_INTERVAL,
    ) -> builtins.list[ClaimedTask]:
        query = DispatchQuery.build(
            worker_id, limit=limit, ttl=ttl, tags=tags, aging_interval=aging_interval
        )
        return self.store.dispatch(query)

    def claim_notified(
        self,
        instance_ids: Iterable[str],
        worker_id: str,
        *,
        ttl: Seconds = cl.DEFAULT_TTL,
        tags: Iterable[str] | None = None,
        limit: int | None = None,
        aging_interval: Seconds = cl.DEFAULT_AGING_INTERVAL,
    ) -> builtins.list[ClaimedTask]:
        query = DispatchQuery.build(
            worker_id,
            limit=limit,
            ttl=ttl,
            tags=tags,
            aging_interval=aging_interval,
            instance_ids=instance_ids,
        )
        return self.store.dispatch(query)

    def dispatchable_ids(
        self,
        *,
        limit: int = 100,
        tags: Iterable[str] | None = None,
        aging_interval: Seconds = cl.DEFAULT_AGING_INTERVAL,
    ) -> builtins.list[str]:
        query = DispatchQuery.build(
            cl.PEEK_WORKER, limit=limit, tags=tags, aging_interval=aging_interval, lease=False
        )
        return self.store.dispatchable_ids(query)

    def next_dispatch_at(self) -> datetime | None:
        return self.store.next_dispatch_at()

    # --- parallel branches -----------------------------------------------------------------

    def start_branches(
        self,
        snapshot: WorkflowSnapshot,
        expected_version: int | None,
        *,
        claim: Claim | None = None,
    ) -> int:
        return self.store.start_branches(snapshot, expected_version, claim)

    def find_available_branches(
        self,
        worker_id: str,
        *,
        limit: int = 10,
        ttl: Seconds = cl.DEFAULT_TTL,
        tags: Iterable[str] | None = None,
    ) -> builtins.list[ClaimedBranch]:
        query = BranchQuery.build(worker_id, limit=limit, ttl=ttl, tags=tags)
        return self.store.dispatch_branches(query)

    def extend_branch(self, claim: BranchClaim, ttl: Seconds = cl.DEFAULT_TTL) -> BranchClaim:
        return self.store.extend_branch(claim, ttl)

    def release_branch(self, claim: BranchClaim) -> bool:
        return self.store.release_branch(claim)

    def complete_branch(self, claim: BranchClaim, result: TaskResult) -> BranchDone:
        return self.store.complete_branch(claim, result)

    def branches(self, instance_id: str) -> builtins.list[BranchState]:
        return self.store.branch_states(instance_id)

    # --- retention -------------------------------------------------------------------------

    def prune_history(
        self,
        *,
        keep_last: int = 1,
        older_than: Seconds | None = None,
        instance_id: str | None = None,
        batch_size: int = rt.DEFAULT_BATCH,
        dry_run: bool = False,
    ) -> int:
        checks.check_flag("dry_run", dry_run)
        return self.store.prune_history(keep_last, older_than, instance_id, batch_size, dry_run)

    def purge_terminal(
        self, *, older_than: Seconds, batch_size: int = rt.DEFAULT_BATCH, dry_run: bool = False
    ) -> int:
        checks.check_flag("dry_run", dry_run)
        return self.store.purge_terminal(older_than, batch_size, dry_run)

    # --- operators -------------------------------------------------------------------------

    def stats(self, *, exact: bool = True) -> StoreStats:
        checks.check_flag("exact", exact)  # in memory every count is exact and cheap
        return self.store.stats()

    def check(self, *, older_than: Seconds = ops.DEFAULT_CHECK_AGE) -> builtins.list[Problem]:
        return self.store.check(older_than)
