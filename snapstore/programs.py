"""Store operations as generators of SQL steps, driven by a sync or async shell.

Each operation yields a `Step` (statement name, parameters, what to fetch) and
receives the fetched rows back; it returns the result or raises a typed error.
The same generator runs under `PostgresBackend` and `AsyncPostgresBackend`,
which is how psycopg itself shares logic between its two APIs.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple, Protocol, TypeVar

import msgspec

from snapstore import checks, logs
from snapstore import rows as rw
from snapstore.codecs import Codec
from snapstore.errors import ClaimLostError, EncodeError, NotFoundError, ValidationError
from snapstore.limits import DEFAULT_LIMITS, Limits
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
from snapstore.sql_catalog import wakeup_channel
from snapstore.task_cache import Stored, TaskCache

R = TypeVar("R")

# A batch rolled back by one of these (e.g. two batches locking rows in opposite
# orders) wrote nothing, so running it again is safe.
RETRYABLE_SQLSTATES: Final = frozenset({"40P01", "40001"})  # deadlock, serialization
MAX_BATCH_ATTEMPTS: Final = 3


@dataclass
class PoisonCounts:
    """Bad items a backend found and set aside since it started, so that they block
    nothing (also logged, each with its instance id, on the ``snapstore`` loggers)."""

    instances_quarantined: int = 0
    """Instances dispatch could not read, parked until a good checkpoint is saved."""
    events_buried: int = 0
    """Buffered events whose payload could not be read, moved to ``dead_events``."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, *, instances: int = 0, events: int = 0) -> None:
        """Add to the counts (sync backends call this from many threads)."""
        with self._lock:
            self.instances_quarantined += instances
            self.events_buried += events

    def copy(self) -> PoisonCounts:
        """The counts as they are now."""
        with self._lock:
            return PoisonCounts(self.instances_quarantined, self.events_buried)


class OperationalCounts:
    """How often a backend had to work around trouble since it started: batches sent
    again after a deadlock (``retries``), writes whose connection was lost, by what a
    fresh connection found (``lost_connections_committed``, ``_resent``, ``_unknown``),
    reads a replica answered (``replica_reads``) and those the primary answered instead,
    by why (``replica_fallbacks_behind``, ``_unavailable``, ``_refused``, ``_down``; see
    `snapstore.replicas`). Thread-safe; read with `snapshot`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def count(self, what: str) -> None:
        with self._lock:
            self._counts[what] = self._counts.get(what, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@dataclass(frozen=True)
class Context:
    """What operations need to know about the store they run against."""

    codec: Codec
    schema: str
    tasks: TaskCache = field(default_factory=TaskCache, compare=False)
    limits: Limits = DEFAULT_LIMITS
    poison: PoisonCounts = field(default_factory=PoisonCounts, compare=False)

    @functools.cached_property
    def channel(self) -> str:
        return wakeup_channel(self.schema)


class Fetch(enum.Enum):
    NONE = "none"
    ONE = "one"
    ALL = "all"
    ROWCOUNT = "rowcount"
    FOLD = "fold"  # rows streamed a few at a time into Step.fold(), whose result is sent


class Fold(Protocol):
    """Takes a statement's rows one by one (`Fetch.FOLD`), so a big result never sits in
    the client whole before it is reduced."""

    def add(self, row: rw.Row) -> None: ...

    def result(self) -> Any: ...


STREAM_ROWS: Final = rw.LOAD_ROWS  # rows per result while folding


class Step(NamedTuple):
    """One statement to run: a name from sql/queries/*.sql and its bound parameters.

    ``hot``: a statement on the hot path with a small result, run on a cursor the
    connection keeps (see `snapstore.runner`); others get a fresh cursor, so a big
    result (a loaded blob) is freed as soon as it has been read. ``binary``: results in
    binary format (bytea as it is stored, not as hex text twice its size).
    """

    query: str
    params: rw.Params | None = None
    fetch: Fetch = Fetch.ONE
    hot: bool = False
    binary: bool = False
    fold: Callable[[], Fold] | None = None
    best_effort: bool = False
    """Outside a transaction, the server refusing it is logged and its result is None:
    what came before has committed and stands (a wakeup after the saves it announces)."""


class Pipeline(NamedTuple):
    """Statements sent together, one round trip: inside the caller's transaction, or
    else in the one implicit transaction a pipeline's Sync ends, so they commit (or fail)
    as one. The result is one per step, as `Step` describes (None for `Fetch.NONE`);
    only `Fetch.NONE` and `Fetch.ALL` steps may be pipelined."""

    steps: tuple[Step, ...]


class AfterCommit(NamedTuple):
    """Not a statement: ``action`` runs once the enclosing transaction has committed
    (never if it rolls back), so caches only learn what is durable."""

    action: Callable[[], None]


Program = Generator[Step | Pipeline | AfterCommit, Any, R]


class Batch(NamedTuple):
    """One batch's outcome: rows deleted, and where the next batch starts (None: done)."""

    deleted: int
    resume: Any = None


def save_batch(ctx: Context, items: Sequence[rw.PreparedSave]) -> Program[list[SaveResult]]:
    """Save prepared items in one round trip and one commit (one `save_checkpoint` call
    per item); per-item outcomes. On failures one read names the precise errors;
    instances the saves made dispatchable are announced by the client's own NOTIFY."""
    steps, order = save_steps(items)
    announce = [item.instance_id for item in items if rw.announced(item)]
    if announce:  # in the saves' transaction: sent at their commit
        wakeups: rw.Params = {"channel": ctx.channel, "instance_ids": announce}
        steps += (Step("notify", wakeups, Fetch.NONE),)
    if len(steps) == 1:  # the common save: one statement, no pipeline machinery
        found = [(yield steps[0])]
    else:
        found = yield Pipeline(steps)
    outcomes: list[rw.Saved | None] = [None] * len(items)
    for k, positions in enumerate(order):
        if steps[k].query == "save_checkpoint":
            outcomes[positions[0]] = rw.saved(found[k])
            continue
        for n, *returned in found[k]:  # ordinals, 1-based
            outcomes[positions[n - 1]] = rw.saved([returned])
    failed = [item for item, o in zip(items, outcomes, strict=True) if o is None]
    states = iter(
        (yield Step("current_states", rw.states_params(failed), Fetch.ALL)) if failed else ()
    )
    results: list[SaveResult] = []
    stored: list[Stored] = []
    for item, done in zip(items, outcomes, strict=True):
        if done is None:
            ctx.tasks.forget(item.instance_id)
            failure = rw.save_failure(item, next(states))
            _log_refusal(ctx, item, failure)
            results.append(SaveResult(item.instance_id, None, failure))
            continue
        results.append(SaveResult(item.instance_id, done.version))
        if item.status in rw.TERMINAL_NAMES:  # finished: no later save can use its rows
            ctx.tasks.forget(item.instance_id)
        else:
            known = rw.Known(done.created_at, item.all_task_rows, item.chain, item.prior)
            stored.append(Stored(item.instance_id, done.version, known))
    woken = [
        item.instance_id
        for item, done in zip(items, outcomes, strict=True)
        if done is not None and rw.wakes(item, done) and not rw.announced(item)
    ]
    if woken:
        yield from wake(ctx, woken)
    if stored:
        yield AfterCommit(functools.partial(ctx.tasks.remember_many, stored))
    return results


def save_steps(items: Sequence[rw.PreparedSave]) -> tuple[tuple[Step, ...], list[list[int]]]:
    """The pipeline of a batch: per round (distinct instance ids) one statement saving
    its items in instance_id order (one lock order for every batch), and the item
    positions each returns rows for, in that order."""
    steps: list[Step] = []
    order: list[list[int]] = []
    for round_ in rw.save_rounds(items):
        positions = sorted(round_, key=lambda p: items[p].instance_id)
        if len(positions) == 1:
            step = Step("save_checkpoint", rw.save_params(items[positions[0]]), Fetch.ALL)
        else:
            params = rw.save_many_params([items[p] for p in positions])
            step = Step("save_checkpoints", params, Fetch.ALL)
        steps.append(step._replace(hot=not steps))
        order.append(positions)
    return tuple(steps), order


def wake(ctx: Context, instance_ids: Sequence[str]) -> Program[None]:
    """NOTIFY the wakeup channel for instances that became dispatchable, but for those a
    live lease holds (nobody else may take them)."""
    ids: rw.Params = {"instance_ids": list(instance_ids)}
    held = yield Step("live_leases", ids, Fetch.ALL, best_effort=True)
    if held is None:  # refused: the saves stand; the listeners' poll finds them
        return
    leased = {instance_id for (instance_id,) in held}
    free = [i for i in instance_ids if i not in leased]
    if free:
        wakeups: rw.Params = {"channel": ctx.channel, "instance_ids": free}
        yield Step("notify", wakeups, Fetch.NONE, best_effort=True)


def _log_refusal(ctx: Context, item: rw.PreparedSave, failure: Exception) -> None:
    """A lost claim at INFO (a worker lost its instance), other refusals at DEBUG."""
    level = logging.INFO if isinstance(failure, ClaimLostError) else logging.DEBUG
    if logs.store.isEnabledFor(level):  # conflicts are routine: no work unless wanted
        extra = {"instance_id": item.instance_id, "version": item.expected_version}
        logs.store.log(level, "save refused: %s", failure, extra={**extra, "schema": ctx.schema})


LOST_SAVE_WAIT: Final = 5.0
"""Seconds to wait for the server process of a lost save to finish before asking
whether it committed (longer: the outcome stays unknown)."""
_LOST_SAVE_POLL: Final = 0.05


def backend_finished(pid: int | None) -> Program[bool]:
    """Whether the server process ``pid`` (that ran a lost save) is done, waiting up to
    `LOST_SAVE_WAIT`: asking history before it is would report a save that is still
    running as not committed."""
    if pid is None:
        return False
    for poll in range(int(LOST_SAVE_WAIT / _LOST_SAVE_POLL)):
        pause = _LOST_SAVE_POLL if poll else 0.0  # usually gone already: ask at once
        _, running = yield Step("backend_running", {"pid": pid, "pause": pause})
        if not running:
            return True
    return False


def committed(ctx: Context, items: Sequence[rw.PreparedSave]) -> Program[dict[int, SaveResult]]:
    """After a lost connection: the results of the items of ``items`` whose commit went
    through, by position ({} if the batch did not commit: it may be sent again)."""
    rows = yield Step("committed_saves", rw.committed_params(items), Fetch.ALL)
    found = rw.interpret_committed(items, rows)
    for item in items:  # the commit's AfterCommit never ran: what the cache knows is old
        ctx.tasks.forget(item.instance_id)
    return {
        i: SaveResult(items[i].instance_id, (items[i].expected_version or 0) + 1) for i in found
    }


@dataclass
class Receipt:
    """What a write call had sent when its connection was lost: how to ask on a fresh
    connection whether it committed (``confirm``, a program answering True if it did) and
    what the call returns then (``outcome``). A program records both before the
    statement that commits; one that records nothing writes idempotently, so sending it
    again is safe (README "Failures and guarantees" says what each call may return)."""

    confirm: Callable[[], Program[bool]] | None = None
    outcome: Any = None
    resend_safe: bool = False
    """Sending the call again is safe even while the lost attempt may still be running
    (``confirm`` undid it): behind a transaction pooler it cannot be waited for."""


def save_committed(ctx: Context, item: rw.PreparedSave) -> Program[bool]:
    """Whether the lost save of ``item`` committed (its version and data_hash in history)."""
    return bool((yield from committed(ctx, [item])))


def prepare(
    ctx: Context,
    snapshot: WorkflowSnapshot,
    expected_version: int | None,
    claim: Claim | None,
    *,
    checked: bool = False,
) -> rw.PreparedSave:
    """Check the arguments (unless the caller just did: ``checked``), then
    `rows.prepare_save`, skipping task rows the store is known to hold."""
    if not checked:
        checks.check_save(snapshot, expected_version, claim)
    known = ctx.tasks.known(snapshot.instance_id, expected_version)
    return rw.prepare_save(ctx.codec, snapshot, expected_version, claim, known, ctx.limits)


def save(
    ctx: Context,
    snapshot: WorkflowSnapshot,
    expected_version: int | None,
    claim: Claim | None,
    *,
    checked: bool = False,
    receipt: Receipt | None = None,
    parked: bool = False,
) -> Program[int]:
    """CAS save: one statement; on failure, one read to name the precise error. With a
    ``receipt``, the way to confirm it committed is recorded there first. ``parked``:
    the instance waits for something other than a worker (not dispatchable)."""
    item = prepare(ctx, snapshot, expected_version, claim, checked=checked)
    if parked:
        item = msgspec.structs.replace(item, available_at=rw.PARKED_UNTIL)
    if receipt is not None:
        receipt.confirm = functools.partial(save_committed, ctx, item)
    (result,) = yield from save_batch(ctx, [item])
    return result.unwrap()


def prepare_many(
    ctx: Context, requests: Iterable[SaveRequest]
) -> tuple[list[rw.PreparedSave], dict[int, SaveResult]]:
    """Prepare each request; bad ones become error results instead of failing the batch.
    Something that is not a `SaveRequest` at all refuses the whole call, before any I/O."""
    requests = checks.check_requests(requests)  # before the backend counts them
    prepared: list[rw.PreparedSave] = []
    rejected: dict[int, SaveResult] = {}
    for index, req in enumerate(requests):
        try:
            prepared.append(prepare(ctx, req.snapshot, req.expected_version, req.claim))
        except (ValidationError, EncodeError) as exc:
            instance_id = getattr(req.snapshot, "instance_id", None)  # a wrong snapshot has none
            rejected[index] = SaveResult(str(instance_id or "?"), None, exc)
    return prepared, rejected


def merge_results(
    count: int, rejected: Mapping[int, SaveResult], saved: Iterable[SaveResult]
) -> list[SaveResult]:
    """The results of ``count`` requests in order: rejected ones where they were, saved ones
    (in order) everywhere else."""
    outcomes = iter(saved)
    return [rejected[i] if i in rejected else next(outcomes) for i in range(count)]


def load(ctx: Context, instance_id: str) -> Program[StoredSnapshot | None]:
    rows = yield from load_many(ctx, [instance_id])
    return rw.interpret_load(instance_id, rows.get(instance_id))


def load_many(
    ctx: Context, instance_ids: Sequence[str], *, checked: bool = False
) -> Program[dict[str, rw.Loaded]]:
    """What ``load_snapshots`` read of the instances that exist, by id; interpret each
    with `rows.interpret_load` (one undecodable blob must not hide the rest). The task
    cache drops what it remembers of another life of an id read here."""
    params = rw.load_params(instance_ids, checked=checked)
    loaded: dict[str, rw.Loaded] = yield Step(
        "load_snapshots", params, Fetch.FOLD, binary=True, fold=rw.LoadedRows
    )
    for instance_id, found in loaded.items():
        ctx.tasks.keep_life(instance_id, found.created_at)
    return loaded


def load_task_result(instance_id: str, task_id: str) -> Program[TaskResult | None]:
    row = yield Step("load_task_result", rw.task_params(instance_id, task_id))
    return rw.interpret_task_result(instance_id, task_id, row)


def fork(
    ctx: Context, source_id: str, version: int, instance_id: str, receipt: Receipt
) -> Program[int]:
    """Create ``instance_id`` from version ``version`` of ``source_id``, with the task
    outputs as they were then, recorded as forked from there; its first version (1).

    History keeps task metadata, the tasks table each task's latest row: an output is
    taken where the stored row still matches the task's metadata at that version. A task
    run again since (a loop, a retry) no longer has its output of then: `NotFoundError`
    rather than a checkpoint paired with later outputs."""
    checks.check_id("source_id", source_id)
    checks.check_id("instance_id", instance_id)
    checks.check_version("version", version, minimum=1)
    rows = yield Step("read_history", rw.history_params(source_id, version - 1, 1), Fetch.ALL)
    entries = rw.interpret_history(rows)
    if not entries or entries[0].version != version:
        raise NotFoundError(f"instance {source_id!r} has no version {version} in history")
    wanted = {"instance_id": source_id, "task_ids": list(entries[0].snapshot.task_results)}
    tasks = yield Step("read_task_rows", wanted, Fetch.ALL, binary=True)
    snapshot = rw.forked_snapshot(entries[0].snapshot, instance_id, tasks)
    receipt.outcome = 1
    result = yield from save(ctx, snapshot, None, None, receipt=receipt)
    marks = {"instance_id": instance_id, "source": source_id, "version": version}
    yield Step("mark_forked", marks, Fetch.NONE)
    return result


INSTANCE_ROWS: Final = (
    "drop_history_rows",
    "drop_task_rows",
    "drop_signal_rows",
    "drop_event_rows",
    "drop_claim_rows",
    "drop_dead_event_rows",
    "drop_applied_signal_rows",
    "drop_branch_rows",
)
"""The statements that delete an instance's rows from every table but snapshots."""


def delete_instances(ids: list[str], finished_before: datetime | None = None) -> Program[int]:
    """Delete instances and every row of theirs, in the caller's transaction; how many
    existed. ``finished_before`` (purge): only those finished before then. Without it,
    rows of an id with no snapshot (strays) go too."""
    gone = yield Step(
        "drop_snapshots", {"instance_ids": ids, "finished_before": finished_before}, Fetch.ALL
    )
    owners = ids if finished_before is None else [row[0] for row in gone]
    if owners:
        rows = {"instance_ids": owners}
        yield Pipeline(tuple(Step(name, rows, Fetch.NONE) for name in INSTANCE_ROWS))
    return len(gone)


def delete(instance_id: str, ctx: Context) -> Program[bool]:
    """Run it in one transaction (see `delete_instances`)."""
    checks.check_id("instance_id", instance_id)
    ctx.tasks.forget(instance_id)
    return bool((yield from delete_instances([instance_id])))


def list_snapshots(
    statuses: Iterable[WorkflowStatus] | WorkflowStatus | None, limit: int, cursor: str | None
) -> Program[Page]:
    rows = yield Step("list_snapshots", rw.list_params(statuses, limit, cursor), Fetch.ALL)
    return rw.interpret_list(rows, limit)


def history(
    instance_id: str, after_version: int, limit: int | None, skip_corrupt: bool = False
) -> Program[list[HistoryEntry]]:
    params = rw.history_params(instance_id, after_version, limit)
    checks.check_flag("skip_corrupt", skip_corrupt)
    rows = yield Step("read_history", params, Fetch.ALL)
    return rw.interpret_history(rows, skip_corrupt=skip_corrupt)


def truncate_all(ctx: Context) -> Program[None]:
    yield Step("truncate_all", None, Fetch.NONE)
    yield AfterCommit(ctx.tasks.clear)  # every instance is gone
