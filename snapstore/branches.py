"""Parallel branches: the branches of one fork run by different workers at once.

A worker holding an instance at a fork hands its branches out with `start_branches`:
it saves the AtFork checkpoint (fenced by its claim, which it then gives up) parked, so
no worker dispatches the instance itself, and opens one row per branch. Branch workers
lease branches with `find_available_branches` (one lease per branch, TTL and fencing
as for instance claims, taken over once expired) and record each result with
`complete_branch`: a write of that task's row only, fenced by the branch lease and by
the fork still being the instance's current checkpoint, so siblings never conflict.

The result that completes the fork writes the join checkpoint in the same
transaction: the fork's snapshot with every branch result in ``task_results`` and
position ``AtJoin(fork task, waiting_for=())``, through a normal save, so the instance
becomes dispatchable exactly once, with one wakeup NOTIFY. Every finisher locks the
instance row first and counts the open branches in a statement that starts after the
lock, so of two racing finishers exactly one sees none left.

A checkpoint saved past the fork (a cancel, a pause, a takeover by an explicit claim)
ends it: the fork's heartbeats and results are refused (`ClaimLostError`). Branch leases
do not hold off `cancel` and `pause` (a fork has no safe point at which a branch worker
could apply one): they apply at once. One left pending by a worker that held the
instance itself is applied by whoever dispatches the join.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID, uuid4

import msgspec

from snapstore import checks, programs
from snapstore import rows as rw
from snapstore.claims import DEFAULT_TTL, MAX_DISPATCH, Seconds, candidates
from snapstore.codecs.snapshot import encode_output
from snapstore.errors import ClaimLostError, NotFoundError, SnapstoreError, ValidationError
from snapstore.model import (
    AtFork,
    AtJoin,
    Claim,
    StoredSnapshot,
    TaskResult,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.programs import Context, Fetch, Program, Receipt, Step
from snapstore.signals import interpret_target

MAX_BRANCHES: Final = 1000
"""Most branches one fork may open (each is a row and a lease)."""


class BranchClaim(msgspec.Struct, frozen=True, kw_only=True):
    """A TTL lease on one branch of a fork. ``token`` fences `complete_branch`;
    ``fork_version`` is the checkpoint that opened the branch."""

    instance_id: str
    branch_id: str
    worker_id: str
    token: UUID
    expires_at: datetime
    fork_version: int


@dataclass(frozen=True, slots=True)
class ClaimedBranch:
    """One branch leased by `find_available_branches`, with the fork's checkpoint
    (loaded after the lease: one read per instance, shared by its branches). One that
    cannot be read keeps its lease and ``error`` says why; reading ``stored`` raises it."""

    claim: BranchClaim
    error: SnapstoreError | None = None
    _stored: StoredSnapshot | None = field(default=None, repr=False)

    @property
    def instance_id(self) -> str:
        return self.claim.instance_id

    @property
    def branch_id(self) -> str:
        return self.claim.branch_id

    @property
    def stored(self) -> StoredSnapshot:
        if self.error is not None or self._stored is None:
            raise self.error or NotFoundError(f"instance {self.instance_id!r} has no snapshot")
        return self._stored

    @property
    def snapshot(self) -> WorkflowSnapshot:
        return self.stored.snapshot


class BranchDone(msgspec.Struct, frozen=True, kw_only=True):
    """What `complete_branch` did: ``joined`` when this result completed the fork and
    the join checkpoint was written (``version``, else the fork's version)."""

    joined: bool
    version: int


class BranchState(msgspec.Struct, frozen=True, kw_only=True):
    """One branch of an instance's current fork, as `branches` reports it."""

    branch_id: str
    worker_id: str | None
    leased: bool
    done_at: datetime | None


# -- pure helpers --------------------------------------------------------------------------


def fork_branches(snapshot: WorkflowSnapshot) -> list[str]:
    """The branch ids of a checkpoint `start_branches` may save (checked)."""
    position = snapshot.position
    if snapshot.status is not WorkflowStatus.IN_PROGRESS or not isinstance(position, AtFork):
        raise ValidationError("start_branches needs an InProgress snapshot positioned AtFork")
    branches = list(position.branches)
    if not branches or len(branches) > MAX_BRANCHES:
        raise ValidationError(f"an AtFork needs 1 to {MAX_BRANCHES} branches, got {len(branches)}")
    for branch in branches:
        checks.check_id("branch id", branch)
    if len(set(branches)) != len(branches):
        raise ValidationError(f"branch ids must be distinct, got {branches!r}")
    again = [b for b in branches if b in snapshot.task_results]
    if again:  # their rows are about to be rewritten while this checkpoint still names them
        raise ValidationError(
            f"branches {again!r} already have results in the checkpoint: to run them again,"
            " leave their old results out of task_results"
        )
    return branches


def check_branch_result(branch_id: str, result: object) -> TaskResult:
    """A branch's result, its times timezone-aware: they are stored as timestamptz and
    read back by the join, where a naive time would come back shifted into UTC."""
    checks.check_task_result(branch_id, result)
    assert isinstance(result, TaskResult)
    for name in ("started_at", "completed_at"):
        checks.check_time(f"{name} of branch {branch_id!r}", getattr(result, name), aware=True)
    return result


def check_branch_claim(claim: object) -> BranchClaim:
    if not isinstance(claim, BranchClaim) or not isinstance(claim.token, UUID):
        raise ValidationError(
            f"claim must be a BranchClaim from find_available_branches, got {claim!r}"
        )
    checks.check_id("claim instance_id", claim.instance_id)
    checks.check_id("claim branch_id", claim.branch_id)
    checks.check_version("claim fork_version", claim.fork_version, minimum=1)
    return claim


def branch_params(claim: BranchClaim) -> rw.Params:
    return {
        "instance_id": claim.instance_id,
        "branch_id": claim.branch_id,
        "token": claim.token,
        "version": claim.fork_version,
    }


def joined_snapshot(snapshot: WorkflowSnapshot, results: dict[str, TaskResult]) -> WorkflowSnapshot:
    """The join checkpoint: the fork's, with every branch result, at its join."""
    position = snapshot.position
    assert isinstance(position, AtFork)  # the fork start_branches saved, still current
    done = {b: results[b] for b in position.branches}
    return msgspec.structs.replace(
        snapshot,
        position=AtJoin(task_id=position.task_id),
        task_results={**snapshot.task_results, **done},
    )


def lost_branch(claim: BranchClaim, detail: str) -> ClaimLostError:
    """The error for a branch write its lease no longer covers."""
    return ClaimLostError(claim.instance_id, f"branch {claim.branch_id!r}: {detail}")


@dataclass(frozen=True, slots=True)
class BranchQuery:
    """The validated arguments of one branch dispatch."""

    worker_id: str
    limit: int
    ttl: timedelta
    tags: list[str] | None

    @classmethod
    def build(
        cls,
        worker_id: str,
        *,
        limit: int = 10,
        ttl: Seconds = DEFAULT_TTL,
        tags: Iterable[str] | None = None,
    ) -> BranchQuery:
        return cls(
            worker_id=checks.check_id("worker_id", worker_id),
            limit=checks.check_limit(limit, MAX_DISPATCH),
            ttl=checks.check_seconds(ttl, "ttl"),
            tags=checks.check_tags(tags),
        )


# -- programs ------------------------------------------------------------------------------


def start_branches(
    ctx: Context,
    snapshot: WorkflowSnapshot,
    expected_version: int | None,
    claim: Claim | None,
    receipt: Receipt,
) -> Program[int]:
    """Save the AtFork checkpoint parked and open its branches; its version."""
    checks.check_save(snapshot, expected_version, claim)
    branches = fork_branches(snapshot)
    iid = snapshot.instance_id
    if expected_version is not None:
        row = yield Step("lock_instance", {"instance_id": iid})
        interpret_target(iid, row)
    receipt.outcome = (expected_version or 0) + 1
    # The save first: a create that loses a race, or a stale fork, is refused before the
    # branch rows of whatever is there are touched.
    version = yield from programs.save(
        ctx, snapshot, expected_version, claim, checked=True, receipt=receipt, parked=True
    )
    yield Step("close_branches", {"instance_id": iid}, Fetch.NONE)
    params = {"instance_id": iid, "version": version, "branch_ids": branches}
    yield Step("open_branches", params, Fetch.NONE)
    yield Step("announce_branches", {"channel": ctx.channel, "instance_id": iid}, Fetch.NONE)
    if claim is not None:
        yield Step("hand_over", {"instance_id": iid, "token": claim.token}, Fetch.NONE)
    return version


def dispatch_branches(
    ctx: Context, query: BranchQuery, receipt: Receipt
) -> Program[list[ClaimedBranch]]:
    """Lease up to ``query.limit`` open branches, oldest first, and load their forks."""
    token = uuid4()  # one per run: a lost run's leases can be found and given back
    receipt.confirm = functools.partial(_undo_branch_dispatch, token)
    receipt.resend_safe = True
    params = {
        "worker_id": query.worker_id,
        "limit": query.limit,
        "ttl": query.ttl,
        "worker_tags": query.tags,
        "token": token,
        "scan": candidates(query.limit),
    }
    rows = yield Step("dispatch_branches", params, Fetch.ALL, hot=True)  # oldest first
    claims = [
        BranchClaim(
            instance_id=iid,
            branch_id=branch,
            worker_id=query.worker_id,
            token=token,
            expires_at=expires,
            fork_version=version,
        )
        for iid, branch, version, expires, _ in rows
    ]
    if not claims:
        return []
    ids = list(dict.fromkeys(c.instance_id for c in claims))
    loaded = yield from programs.load_many(ctx, ids, checked=True)
    stored: dict[str, StoredSnapshot | SnapstoreError] = {}
    for iid in ids:
        try:
            found = rw.interpret_load(iid, loaded.get(iid))
            stored[iid] = found or NotFoundError(f"instance {iid!r} has no snapshot")
        except SnapstoreError as exc:
            stored[iid] = exc
    out: list[ClaimedBranch] = []
    for c in claims:
        got = stored[c.instance_id]
        if isinstance(got, SnapstoreError):
            out.append(ClaimedBranch(c, error=got))
        elif got.version != c.fork_version:  # saved past the fork since: the lease fences it
            out.append(ClaimedBranch(c, error=lost_branch(c, "the fork is no longer current")))
        else:
            out.append(ClaimedBranch(c, _stored=got))
    return out


def _undo_branch_dispatch(token: UUID) -> Program[bool]:
    yield Step("undo_branch_dispatch", {"token": token}, Fetch.NONE)
    return False


def extend_branch(claim: BranchClaim, ttl: Seconds) -> Program[BranchClaim]:
    claim = check_branch_claim(claim)
    params = {**branch_params(claim), "ttl": checks.check_seconds(ttl, "ttl")}
    row = yield Step("extend_branch", params)
    if row is None:
        raise lost_branch(claim, "lease expired, taken over or finished")
    return msgspec.structs.replace(claim, expires_at=row[0])


def release_branch(claim: BranchClaim) -> Program[bool]:
    claim = check_branch_claim(claim)
    row = yield Step("release_branch", branch_params(claim))
    return row is not None


def complete_branch(
    ctx: Context, claim: BranchClaim, result: TaskResult, receipt: Receipt
) -> Program[BranchDone]:
    """Record one branch's result under its lease; the last one writes the join."""
    claim = check_branch_claim(claim)
    result = check_branch_result(claim.branch_id, result)
    output = encode_output(ctx.codec, result.output, strict=ctx.limits.strict_values)
    if output is not None:
        ctx.limits.value(len(output), f"output of branch {claim.branch_id!r}")
    params = branch_params(claim)
    receipt.confirm = functools.partial(_branch_finished, receipt, claim)
    row = yield Step("lock_instance", {"instance_id": claim.instance_id})
    try:
        target = interpret_target(claim.instance_id, row)
    except SnapstoreError as exc:
        raise lost_branch(claim, str(exc)) from exc
    if target.version != claim.fork_version:
        raise lost_branch(claim, f"the fork (version {claim.fork_version}) is no longer current")
    # Counted before anything is written (a fresh statement, the instance locked): the
    # last result checks the join it completes first, so one that cannot be saved (too
    # big) is refused with its error, not retried for ever by whoever takes the branch.
    others, stored_bytes = yield Step("branches_left", params)
    ctx.limits.checkpoint(stored_bytes + len(output or b""), claim.instance_id)
    join = None if others else (yield from _join_checkpoint(ctx, claim, result))
    if (yield Step("finish_branch", params)) is None:
        raise lost_branch(claim, "lease expired, taken over or finished")
    values = rw.task_row(result, output)
    keys = ("status", "attempts", "worker_id", "started_at", "completed_at", "error", "output")
    yield Step("put_branch_result", {**params, **dict(zip(keys, values, strict=True))}, Fetch.NONE)
    if join is None:
        return BranchDone(joined=False, version=claim.fork_version)
    version = claim.fork_version + 1
    yield Step("mark_joined", {**params, "joined": version}, Fetch.NONE)
    receipt.outcome = BranchDone(joined=True, version=version)
    (saved,) = yield from programs.save_batch(ctx, [join])  # last: see `signals._set_status`
    saved.unwrap()
    return BranchDone(joined=True, version=version)


def _join_checkpoint(
    ctx: Context, claim: BranchClaim, result: TaskResult
) -> Program[rw.PreparedSave]:
    """The join checkpoint the last result completes, prepared (checked and encoded)."""
    stored = yield from programs.load(ctx, claim.instance_id)
    if stored is None or stored.version != claim.fork_version:  # we hold the lock
        raise lost_branch(claim, "the fork is no longer current")
    wanted = {"instance_id": claim.instance_id, "task_ids": siblings(claim, stored.snapshot)}
    rows = yield Step("read_task_rows", wanted, Fetch.ALL, binary=True)
    snapshot = join_of(claim, stored.snapshot, result, rows)
    return programs.prepare(ctx, snapshot, claim.fork_version, None)


def siblings(claim: BranchClaim, fork: WorkflowSnapshot) -> list[str]:
    """The other branches of the fork ``claim``'s branch belongs to. A checkpoint at the
    claim's version that is no fork of that branch (a stale claim from an earlier life of
    the id) means the lease is lost."""
    position = fork.position
    if not isinstance(position, AtFork) or claim.branch_id not in position.branches:
        raise lost_branch(claim, "the fork is no longer current")
    return [b for b in position.branches if b != claim.branch_id]


def join_of(
    claim: BranchClaim, fork: WorkflowSnapshot, result: TaskResult, rows: Iterable[rw.Row]
) -> WorkflowSnapshot:
    """The join checkpoint: ``fork`` with ``result`` and the siblings' stored task rows
    (task_id, then the tasks-table values)."""
    results = {claim.branch_id: result}
    for task_id, *values in rows:
        found = rw.interpret_task_result(claim.instance_id, task_id, values)
        assert found is not None
        results[task_id] = found
    return joined_snapshot(fork, results)


def _branch_finished(receipt: Receipt, claim: BranchClaim) -> Program[bool]:
    row = yield Step("branch_finished", branch_params(claim))
    if row is None or not row[0]:
        return False
    joined = row[1]
    receipt.outcome = BranchDone(
        joined=joined is not None, version=claim.fork_version if joined is None else joined
    )
    return True


def branch_states(instance_id: str) -> Program[list[BranchState]]:
    rows = yield Step("branch_leases", rw.id_params(instance_id), Fetch.ALL)
    return [
        BranchState(branch_id=b, worker_id=w, leased=bool(live), done_at=done)
        for b, w, live, done in rows
    ]


__all__ = [
    "BranchClaim",
    "BranchDone",
    "BranchQuery",
    "BranchState",
    "ClaimedBranch",
]
