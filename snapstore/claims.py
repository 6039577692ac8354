"""Distributed task claims: TTL leases, dispatch and fencing.

A *claim* is a lease on one instance held by one worker until ``expires_at``, a time
computed by the database server's clock (``now() + ttl``), so workers with skewed clocks
agree on who holds what. Its random ``token`` fences writes: ``save(..., claim=claim)``
is refused with `ClaimLostError` once the lease expired or was taken over.

Rules, all enforced in SQL (sql/queries/claims.sql):

* a live lease is never taken over; an expired one may be (*stolen*), with a new token;
* `claim` by the worker that already holds a live lease issues a **fresh** lease (new
  token, new expiry) and the old token stops fencing: a restarted worker that reuses its
  id takes its work back at once, and a zombie execution of its previous life is fenced
  off. To keep a lease, `extend` it;
* `extend` is absolute (server ``now() + ttl``, not added to what is left) and only
  works while the lease is live;
* `release` drops the lease and, when the instance is dispatchable, NOTIFYs the wakeup
  channel in the same statement;
* dispatch (`find_available_tasks`, `claim_notified`) picks *dispatchable* instances:
  InProgress, due (``available_at <= now()``: due AtDelay timers and elapsed retry backoff
  are folded into that column on save), no live lease, and tags that are a subset of the
  worker's tags; ordered by priority (1 = most urgent) with aging, under
  ``FOR UPDATE SKIP LOCKED``. It may return fewer than ``limit`` instances while other
  workers are claiming at the same moment, never the same instance twice.

Every operation is a generator program (see `snapstore.programs`) built from the pure
helpers below; the backends' methods only run them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID, uuid4

import msgspec

from snapstore import checks, programs
from snapstore import rows as rw
from snapstore.errors import (
    ClaimLostError,
    NotFoundError,
    SnapstoreError,
    TerminalStateError,
    UnknownCodecError,
)
from snapstore.model import AtSignal, Claim, StoredSnapshot, WorkflowSnapshot, WorkflowStatus
from snapstore.programs import AfterCommit, Context, Fetch, Program, Receipt, Step

log = logging.getLogger("snapstore.claims")

DEFAULT_TTL: Final = 30.0
"""Seconds a lease lasts unless told otherwise; renew with `extend` well before."""

DEFAULT_AGING_INTERVAL: Final = 60.0
"""Seconds of waiting that raise an instance by one priority level: a fresh priority-5
instance overtakes fresh priority-1 work after about four minutes due."""

PEEK_WORKER: Final = "(peek)"
"""The worker id a report-only dispatch query carries; it never reaches a lease."""

MAX_DISPATCH: Final = rw.MAX_PAGE_SIZE
"""Most instances one dispatch call may lease (bounds the statement and its locks)."""

Seconds = checks.Seconds


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """One instance leased by dispatch, with the checkpoint to run it from.

    The snapshot is loaded in the transaction that took the lease, while the row was
    locked, so it is exactly the checkpoint the dispatch predicate accepted; save the
    next one with ``expected_version=task.stored.version`` and ``claim=task.claim``.

    A checkpoint that cannot be decoded does not fail the whole dispatch (which would
    let one corrupt instance block every worker): its lease is still held and ``error``
    says why, and reading ``stored`` raises that error. Release it or let it expire.
    """

    claim: Claim
    error: SnapstoreError | None = None
    _stored: StoredSnapshot | None = field(default=None, repr=False)

    @property
    def instance_id(self) -> str:
        return self.claim.instance_id

    @property
    def stored(self) -> StoredSnapshot:
        """The checkpoint with its version; raises ``error`` if it could not be loaded."""
        if self.error is not None or self._stored is None:
            raise self.error or _no_snapshot(self.instance_id)
        return self._stored

    @property
    def snapshot(self) -> WorkflowSnapshot:
        return self.stored.snapshot

    @property
    def timed_out(self) -> bool:
        """Whether this is a signal wait whose deadline passed: dispatch hands out an
        instance parked AtSignal only then (decided by the server's clock). False for a
        task whose checkpoint could not be read."""
        if self._stored is None:
            return False
        position = self._stored.snapshot.position
        return isinstance(position, AtSignal) and position.timeout_at is not None


# -- pure helpers: validation, parameters, row interpretation ------------------------------


def _no_snapshot(instance_id: str) -> NotFoundError:
    return NotFoundError(f"instance {instance_id!r} has no snapshot")


def claim_params(instance_id: str, worker_id: str, ttl: Seconds) -> rw.Params:
    return {
        **rw.id_params(instance_id),
        "worker_id": checks.check_id("worker_id", worker_id),
        "ttl": checks.check_seconds(ttl, "ttl"),
    }


def token_params(claim: Claim) -> rw.Params:
    return {"instance_id": checks.check_claim(claim).instance_id, "token": claim.token}


@dataclass(frozen=True, slots=True)
class DispatchQuery:
    """The arguments of one run of the ``dispatch`` statement, validated.

    ``instance_ids=None`` considers every instance; ``lease=False`` only reports ids
    (`dispatchable_ids_program`; `dispatch_program` always leases).
    """

    worker_id: str
    limit: int
    ttl: timedelta
    tags: list[str] | None
    aging_interval: timedelta
    instance_ids: list[str] | None = None
    lease: bool = True

    @classmethod
    def build(
        cls,
        worker_id: str,
        *,
        limit: int | None,
        ttl: Seconds = DEFAULT_TTL,
        tags: Iterable[str] | None = None,
        aging_interval: Seconds = DEFAULT_AGING_INTERVAL,
        instance_ids: Iterable[str] | None = None,
        lease: bool = True,
    ) -> DispatchQuery:
        """``limit=None`` means "as many as ``instance_ids`` names" (capped)."""
        ids = None if instance_ids is None else checks.check_ids("instance_id", instance_ids)
        if limit is None:
            limit = min(len(ids), MAX_DISPATCH) if ids else MAX_DISPATCH
        return cls(
            worker_id=checks.check_id("worker_id", worker_id),
            limit=checks.check_limit(limit, MAX_DISPATCH),
            ttl=checks.check_seconds(ttl, "ttl"),
            tags=checks.check_tags(tags),
            # Never added to a time, so any length works (timedelta.max: no aging).
            aging_interval=checks.check_seconds(aging_interval, "aging_interval", bounded=False),
            instance_ids=ids,
            lease=lease,
        )

    @property
    def empty(self) -> bool:
        """True when the hint names no instance at all: nothing to ask the server."""
        return self.instance_ids is not None and not self.instance_ids

    def params(self) -> rw.Params:
        return {
            "worker_id": self.worker_id,
            "limit": self.limit,
            "ttl": self.ttl,
            "worker_tags": self.tags,
            "aging_seconds": self.aging_interval.total_seconds(),
            "instance_ids": self.instance_ids,
            "token": None,  # the lease's, set per run by dispatch_program
        }


def interpret_claim(instance_id: str, worker_id: str, row: rw.Row | None) -> Claim | None:
    """The `Claim` from a ``claim_instance`` row: None if another worker holds a live
    lease; `NotFoundError` / `TerminalStateError` when the instance cannot be claimed."""
    if row is None or row[0] is None:  # claim_instance answers NULLs for no instance
        raise NotFoundError(f"instance {instance_id!r} does not exist")
    status, task_id, token, expires_at = row
    if WorkflowStatus(status).is_terminal:
        raise TerminalStateError(instance_id, status)
    if token is None:
        return None
    return Claim(
        instance_id=instance_id,
        worker_id=worker_id,
        token=token,
        expires_at=expires_at,
        task_id=task_id,
    )


def leased_claims(worker_id: str, rows: Sequence[rw.Row]) -> list[Claim]:
    """Claims from ``dispatch`` rows (instance_id, task_id, token, expires_at)."""
    return [
        Claim(instance_id=iid, worker_id=worker_id, token=token, expires_at=expires, task_id=task)
        for iid, task, token, expires in rows
    ]


def renewed(claim: Claim, row: rw.Row | None) -> Claim:
    """The claim with its new expiry from an ``extend_claim`` row; no row: lease lost."""
    if row is None:
        log.info(
            "lease on %s lost (expired or taken over): not renewed",
            claim.instance_id,
            extra={"instance_id": claim.instance_id, "worker_id": claim.worker_id},
        )
        raise ClaimLostError(claim.instance_id, "lease expired or taken over; claim it again")
    return msgspec.structs.replace(claim, expires_at=row[0])


# -- programs ------------------------------------------------------------------------------


def claim_program(
    instance_id: str, worker_id: str, ttl: Seconds, receipt: Receipt
) -> Program[Claim | None]:
    """Take the lease; its token is chosen here, so a claim whose connection was lost can
    be looked up (``receipt``)."""
    params = {**claim_params(instance_id, worker_id, ttl), "token": uuid4()}
    receipt.confirm = functools.partial(_claim_held, receipt, params)
    row = yield Step("claim_instance", params)
    return interpret_claim(instance_id, worker_id, row)


def _claim_held(receipt: Receipt, params: rw.Params) -> Program[bool]:
    """Whether the lost claim of ``params`` committed; if so its `Claim` is the outcome."""
    row = yield Step("claim_held", {"instance_id": params["instance_id"], "token": params["token"]})
    if row is None:
        return False
    task_id, expires_at = row
    receipt.outcome = Claim(
        instance_id=params["instance_id"],
        worker_id=params["worker_id"],
        token=params["token"],
        expires_at=expires_at,
        task_id=task_id,
    )
    return True


def extend_program(claim: Claim, ttl: Seconds) -> Program[Claim]:
    params = {**token_params(claim), "ttl": checks.check_seconds(ttl, "ttl")}
    row = yield Step("extend_claim", params)
    return renewed(claim, row)


def release_program(ctx: Context, claim: Claim) -> Program[bool]:
    """Drop the lease; an instance it put back in its queue is announced by this client's
    own NOTIFY (best effort: the release stands if the server refuses it)."""
    released, requeued = yield Step("release_claim", token_params(claim), hot=True)
    if requeued:
        wakeup = {"channel": ctx.channel, "instance_ids": [claim.instance_id]}
        yield Step("notify", wakeup, Fetch.NONE, best_effort=True)
    return bool(released)


CANDIDATES_PER_LEASE: Final = 8
"""How many candidates an unmarked dispatch reads per lease it wants: concurrent
dispatchers read the same queue head without row locks, and pass over what another one is
leasing (8 workers at limit 10 hold up to 70 rows of it at once; measured with bench
dispatch_backlog, 2 and 4 left workers short of candidates)."""

MARKED_LIMIT: Final = 12
"""The largest dispatch limit that marks its candidates (``part_mark`` in
sql/queries/claims.sql): five priority scans mark up to 5 x 12 = 60 instances, within the
64 lock-table slots PostgreSQL sizes per transaction by default (max_locks_per_transaction),
so any number of dispatchers at once never runs the shared lock table out. A larger
dispatch reads `CANDIDATES_PER_LEASE` times as many candidates unmarked instead."""


def candidates(limit: int) -> int:
    """The unmarked candidate scan's size for a dispatch of ``limit`` (at most
    `MAX_DISPATCH`, as every dispatch query's limit is checked to be)."""
    return limit * CANDIDATES_PER_LEASE


def scan_params(limit: int, *, lease: bool = True) -> rw.Params:
    """How a dispatch of ``limit`` reads the queue: marked, each priority's scan hands over
    ``limit`` rows none marked by another dispatcher and reads at most `candidates` rows
    to find them; unmarked, `candidates` rows go to lease_instances. A report
    (``lease=False``) reads ``limit`` rows and marks none."""
    if not lease:
        return {"mark": False, "scan": limit, "depth": limit}
    depth = candidates(limit)
    marked = limit <= MARKED_LIMIT
    return {"mark": marked, "scan": limit if marked else depth, "depth": depth}


def claimed_task(claim: Claim, loaded: rw.Loaded | None) -> ClaimedTask:
    """A just-leased instance with its checkpoint; one that cannot be read becomes the
    task's ``error`` instead of failing the whole dispatch."""
    try:
        stored = rw.interpret_load(claim.instance_id, loaded)
    except SnapstoreError as exc:
        return ClaimedTask(claim, error=exc)
    if stored is None:  # cannot happen while the row is locked; say so if it does
        return ClaimedTask(claim, error=_no_snapshot(claim.instance_id))
    return ClaimedTask(claim, _stored=stored)


def dispatch_program(
    ctx: Context, query: DispatchQuery, receipt: Receipt
) -> Program[list[ClaimedTask]]:
    """Lease up to ``query.limit`` dispatchable instances and load them: one statement
    scans the candidates in queue order (of the ids a wakeup named, if given) and leases
    each by its key, then the loads. One whose checkpoint cannot be read comes back once, its
    ``error`` set, and is quarantined so that no worker is handed it again.

    Run it in one transaction: the snapshot rows stay locked until the loads are done,
    and a failure anywhere leaves no lease behind.
    """
    if query.empty:
        return []
    token = uuid4()  # one per run: a lost run's leases can be found and dropped
    receipt.confirm = functools.partial(_undo_dispatch, token)
    receipt.resend_safe = True  # whatever the lost run did is undone first
    params = {**query.params(), "token": token, **scan_params(query.limit)}
    rows = yield Step("dispatch", params, Fetch.ALL, hot=True)
    claims = leased_claims(query.worker_id, rows)
    if not claims:
        return []
    loaded = yield from programs.load_many(ctx, [c.instance_id for c in claims], checked=True)
    tasks = [claimed_task(c, loaded.get(c.instance_id)) for c in claims]
    # A codec this process lacks is not poison: another worker may have it.
    poisoned = [
        t for t in tasks if t.error is not None and not isinstance(t.error, UnknownCodecError)
    ]
    if poisoned:
        ids = [t.instance_id for t in poisoned]
        yield Step("quarantine", {"instance_ids": ids, "until": rw.PARKED_UNTIL}, Fetch.NONE)
        yield AfterCommit(functools.partial(_report_poison, ctx.poison, poisoned))
    return tasks


def _undo_dispatch(token: UUID) -> Program[bool]:
    """Drop the leases of a dispatch whose connection was lost: never "committed", so the
    caller dispatches again (and gets the instances loaded)."""
    yield Step("undo_dispatch", {"token": token}, Fetch.NONE)
    return False


def _report_poison(poison: programs.PoisonCounts, tasks: list[ClaimedTask]) -> None:
    poison.count(instances=len(tasks))
    for task in tasks:
        log.warning(
            "instance %s cannot be read and is quarantined (not dispatched again until a"
            " good checkpoint is saved): %s",
            task.instance_id,
            task.error,
            extra={"instance_id": task.instance_id},
        )


def dispatchable_ids_program(query: DispatchQuery) -> Program[list[str]]:
    """Ids ``dispatch`` would lease now, in the same order, without leasing them."""
    scan = scan_params(query.limit, lease=False)
    rows = yield Step("dispatch_candidates", {**query.params(), **scan}, Fetch.ALL)
    return [row[0] for row in rows]


def next_dispatch_at_program() -> Program[datetime | None]:
    row = yield Step("next_dispatch_at")
    return None if row is None else row[0]


__all__ = [
    "DEFAULT_AGING_INTERVAL",
    "DEFAULT_TTL",
    "ClaimedTask",
    "DispatchQuery",
]
