"""Parameters in, rows out: the pure functions that build statement parameters (a
save's encoding included) and interpret result rows.

Both `PostgresBackend` and `AsyncPostgresBackend` call these; they only add I/O.
Keeping the logic here means the sync and async stores cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import operator
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import msgspec
import msgspec.inspect
from psycopg.types.numeric import Int2, Int4, Int8

from snapstore import arrays, checks
from snapstore.codecs import (
    Codec,
    decode_chain,
    lower_checkpoint,
    lower_document,
    open_value,
    seal_delta,
)
from snapstore.codecs.envelope import seal_document
from snapstore.codecs.snapshot import hydrate_outputs
from snapstore.errors import (
    ClaimLostError,
    ConflictError,
    DecodeError,
    EncodeError,
    NotFoundError,
    SnapstoreError,
    TerminalStateError,
    ValidationError,
)
from snapstore.limits import DEFAULT_LIMITS, Limits
from snapstore.model import (
    TERMINAL_STATUSES,
    AppliedSignal,
    AtDelay,
    AtSignal,
    Claim,
    HistoryEntry,
    Page,
    SnapshotSummary,
    StoredSnapshot,
    TaskResult,
    TaskStatus,
    WorkflowSnapshot,
    WorkflowStatus,
    position_task_id,
)

_TAGS_JSON: Final = msgspec.json.Encoder()
MAX_PAGE_SIZE: Final = checks.MAX_PAGE_SIZE
TERMINAL_NAMES: Final = frozenset(s.value for s in TERMINAL_STATUSES)
Params = dict[str, Any]
Row = Sequence[Any]


# An instance parked on a signal waits for an event, not for a worker: it is due never,
# or at its wait's deadline.
PARKED_UNTIL: Final = datetime.max.replace(tzinfo=UTC)


def _available_at(snapshot: WorkflowSnapshot) -> datetime | None:
    """Earliest time the instance may be dispatched: timers, retry backoff and signal
    deadlines (queued and indexed like timers, so dispatch and the listener find them)."""
    if isinstance(snapshot.position, AtSignal):
        return snapshot.position.timeout_at or PARKED_UNTIL
    times = [r.next_attempt_at for r in snapshot.retries.values() if r.next_attempt_at]
    if isinstance(snapshot.position, AtDelay):
        times.append(snapshot.position.wake_at)
    return max(times) if times else None


def data_hash(blob: bytes) -> bytes:
    """A 16-byte fingerprint of a stored blob."""
    return hashlib.blake2b(blob, digest_size=16).digest()


class PreparedSave(msgspec.Struct, frozen=True):
    """One validated, encoded save: the column values and task rows it will write.

    A msgspec Struct: one is built per save, and its constructor is several
    times cheaper than a frozen dataclass's.
    """

    instance_id: str
    expected_version: int | None
    expected_created_at: datetime | None  # set when task rows were skipped as stored
    claim_token: uuid.UUID | None
    status: str
    definition_hash: str
    current_task_id: str | None
    position_kind: str
    completed_task_count: int
    error: str | None
    priority: int
    tags: str  # JSON array text: arrays of arrays must be rectangular in PostgreSQL
    tag_values: tuple[str, ...]
    delay_wake_at: datetime | None
    available_at: datetime | None
    codec: str
    data: bytes
    data_hash: bytes
    base_version: int | None  # a delta's chain start (NULL: a whole checkpoint)
    task_ids: list[str]  # the task rows to write: new or changed ones only
    task_rows: list[TaskRow]
    all_task_rows: Mapping[str, TaskRow]  # every task as `remembered_row`, for the task cache
    chain: Chain  # the delta chain this save ends once committed, for the task cache
    prior: Prior  # its task results as handed over, for the task cache


TaskRow = tuple[Any, ...]


def task_row(result: TaskResult, output: bytes | None) -> TaskRow:
    """The tasks-table values of one result with its encoded output."""
    return (
        result.status.value,
        result.attempts,
        result.worker_id,
        result.started_at,
        result.completed_at,
        result.error,
        output,
    )


def _same_time(ours: datetime | None, stored: datetime | None) -> bool:
    """Whether a task time in a checkpoint is the one stored; a naive one (read in the
    session's time zone when stored) cannot be told apart, and counts as the same."""
    if ours is None or stored is None:
        return ours is stored
    return ours.utcoffset() is None or ours == stored


def forked_snapshot(
    snapshot: WorkflowSnapshot, instance_id: str, rows: Sequence[Row]
) -> WorkflowSnapshot:
    """``snapshot`` (a history version, outputs stripped) as a new instance, each task's
    output taken from its stored row where that row is still the task as it was then."""
    stored = {row[0]: row for row in rows}
    results: dict[str, TaskResult] = {}
    for task_id, result in snapshot.task_results.items():
        row = stored.get(task_id)
        same = row is not None and (
            (row[1], row[2], row[3], row[6])
            == (result.status.value, result.attempts, result.worker_id, result.error)
            and _same_time(result.started_at, row[4])
            and _same_time(result.completed_at, row[5])
        )
        if not same or row is None:
            raise NotFoundError(
                f"task {task_id!r} of {snapshot.instance_id!r} changed since (ran again, or"
                " finished): its output at that version is no longer stored"
            )
        try:
            output = None if row[7] is None else open_value(row[7])
        except DecodeError as exc:
            raise exc.located(
                instance_id=snapshot.instance_id, prefix=f"task {task_id!r}: "
            ) from exc
        results[task_id] = msgspec.structs.replace(result, output=output)
    return msgspec.structs.replace(snapshot, instance_id=instance_id, task_results=results)


def remembered_row(row: TaskRow) -> TaskRow:
    """``row`` as the task cache keeps it: the output replaced by its digest. Rows are
    compared by value, encoded output included, so an output mutated in place is still
    seen; the digest does that without keeping the output alive."""
    output = row[-1]
    return (*row[:-1], None if output is None else data_hash(output))


class Chain(NamedTuple):
    """The delta chain a stored version ends: its first, whole checkpoint's version and
    size, and the bytes of the deltas written since."""

    base_version: int
    full_bytes: int
    delta_bytes: int


class Prior(NamedTuple):
    """The task results of a stored version as the saving backend handed them over:
    weakly (the engine keeps them alive by carrying them into its next checkpoint), in
    order, with a digest of their outputs' encoding (all of them, and each), how many
    were completed, and what remembering their rows costs (`rows_footprint`)."""

    order: tuple[str, ...]
    refs: tuple[weakref.ref[TaskResult], ...]
    outputs_digest: bytes
    completed: int
    footprint: int
    digests: tuple[bytes, ...]  # per task, of its output's msgpack encoding
    sizes: tuple[int, ...]  # per task, of its stored output (0: none)


# What one remembered row costs beyond its strings: the tuple, its ints and times, the
# digest, the dict slot and the weak reference (sys.getsizeof on CPython 3.11, rounded up).
ROW_OVERHEAD: Final = 480
ENTRY_OVERHEAD: Final = 400  # one cached instance beyond its rows


def rows_footprint(rows: Iterable[tuple[str, TaskRow]]) -> int:
    """About how many bytes the task cache keeps alive for these (task id, row) pairs:
    the fixed part, the id, and the texts a row can carry (worker id, error)."""
    size = 0
    for task_id, row in rows:
        size += ROW_OVERHEAD + len(task_id) + len(row[2] or "") + len(row[5] or "")
    return size


_MSGPACK: Final = msgspec.msgpack.Encoder()


def _packed(value: Any) -> bytes:
    """``value`` in msgpack, for digests only (not the store's codec: only equality
    matters here)."""
    try:
        return _MSGPACK.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise EncodeError(f"cannot encode a task output: {exc}") from exc


def _outputs_hash(outputs: list[Any], into: Any = None) -> Any:
    """``into`` (a new sha256 when None) updated with the outputs' msgpack encodings, one
    after another: two C calls however many outputs there are, and the hash of a list
    extended by more outputs is the first hash updated with theirs. An output mutated in
    place changes it."""
    encoded = _packed(outputs)
    count = len(outputs)
    header = 1 if count < 16 else 3 if count < 2**16 else 5  # the msgpack array header
    hasher = hashlib.sha256() if into is None else into
    hasher.update(memoryview(encoded)[header:])
    return hasher


_OUTPUT: Final = operator.attrgetter("output")
_DEREF: Final = weakref.ref.__call__


def _output_digest(output: Any) -> bytes:
    """The digest `Prior.digests` keeps of one output (see `_outputs_hash`)."""
    return hashlib.sha256(_packed(output)).digest()


def _reused(results: Mapping[str, TaskResult], prior: Prior) -> set[str]:
    """The tasks whose result is the very object ``prior`` had, with an output that
    still encodes the same: their rows and metadata are as stored."""
    kept = zip(map(_DEREF, prior.refs), prior.digests, strict=True)
    before = dict(zip(prior.order, kept, strict=True))
    same: set[str] = set()
    for task_id, result in results.items():
        entry = before.get(task_id)
        if entry is not None and entry[0] is result and _output_digest(result.output) == entry[1]:
            same.add(task_id)
    return same


def _new_tasks(results: Mapping[str, TaskResult], prior: Prior) -> tuple[list[str], Any] | None:
    """The tasks added since ``prior`` and the hash of the outputs it had, when the
    results begin with every result it had, in its order, as the very same objects,
    with outputs encoding to the same bytes; else None. (C loops throughout: at 1000
    tasks a Python loop per task was most of a save's client time.)"""
    count = len(prior.order)
    if len(results) < count or tuple(itertools.islice(results, count)) != prior.order:
        return None
    kept = tuple(itertools.islice(results.values(), count))
    if not all(map(operator.is_, kept, map(_DEREF, prior.refs))):
        return None
    hasher = _outputs_hash(list(map(_OUTPUT, kept)))
    if hasher.digest() != prior.outputs_digest:
        return None
    return list(itertools.islice(results, count, None)), hasher


def _prior_after(
    results: Mapping[str, TaskResult],
    prior: Prior | None,
    found: tuple[list[str], Any] | None,
    remembered: Mapping[str, TaskRow],
    reused: set[str],
    outputs: Mapping[str, bytes | None],
) -> Prior:
    """The `Prior` of the checkpoint being saved (``found``: what `_new_tasks` found;
    ``reused``: otherwise, the tasks `_reused` vouched for; ``remembered``: the rows the
    cache will keep)."""
    completed = TaskStatus.COMPLETED
    if prior is None or found is None:
        order = tuple(results)
        refs = tuple(map(weakref.ref, results.values()))
        done = sum(1 for r in results.values() if r.status is completed)
        hasher = _outputs_hash(list(map(_OUTPUT, results.values())))
        known = dict(zip(prior.order, prior.digests, strict=True)) if prior and reused else {}
        digests = tuple(
            known[t] if t in reused else _output_digest(r.output) for t, r in results.items()
        )
        stored = dict(zip(prior.order, prior.sizes, strict=True)) if prior and reused else {}
        sizes = tuple(stored[t] if t in reused else _size(outputs[t]) for t in results)
        size = rows_footprint(remembered.items())
    else:
        new, hasher = found
        order = prior.order + tuple(new)
        refs = prior.refs + tuple(weakref.ref(results[t]) for t in new)
        done = prior.completed + sum(1 for t in new if results[t].status is completed)
        if new:
            _outputs_hash([results[t].output for t in new], hasher)
        digests = prior.digests + tuple(_output_digest(results[t].output) for t in new)
        sizes = prior.sizes + tuple(_size(outputs[t]) for t in new)
        size = prior.footprint + rows_footprint((t, remembered[t]) for t in new)
    return Prior(order, refs, hasher.digest(), done, size, digests, sizes)


def _size(blob: bytes | None) -> int:
    return 0 if blob is None else len(blob)


class Known(NamedTuple):
    """What one save left in the store, as the backend that made it remembers it (see
    `snapstore.task_cache`): when that life of the instance began, its task rows (as
    `remembered_row`), the delta chain its checkpoint ends and its task results as
    handed over."""

    created_at: datetime | None
    rows: Mapping[str, TaskRow]
    chain: Chain | None = None
    prior: Prior | None = None


UNKNOWN: Final = Known(None, {})


def prepare_save(
    codec: Codec,
    snapshot: WorkflowSnapshot,
    expected_version: int | None,
    claim: Claim | None = None,
    known: Known = UNKNOWN,
    limits: Limits = DEFAULT_LIMITS,
) -> PreparedSave:
    """Encode a save whose arguments `checks.check_save` accepted, checking the task
    results it looks at; raises before any I/O if the input is bad.

    ``known``: what the store holds at ``expected_version``. Task rows equal to its rows
    are not sent again: they are already right, which the save checks by also requiring
    the instance's creation time.

    With the chain that version ends, the checkpoint is written as a delta of it
    (only changed task metadata: a save costs what changed, not what came before) while
    the chain's deltas add up to no more than its whole checkpoint; then a whole one
    starts the next chain. So reading any version decodes at most about twice one whole
    checkpoint, and the bytes written stay within about twice the deltas'.

    With its prior results too, results that are the very objects saved before (and whose
    outputs still encode the same) are neither checked nor encoded for the store again:
    when they all are, in order, the Python work is for the tasks added and the rest two
    C calls over the outputs; otherwise each carried-over output costs one msgpack
    encoding and one digest.
    """
    results = snapshot.task_results
    stored, stored_created_at, chain, prior = known.rows, known.created_at, known.chain, known.prior
    reusable = prior is not None and stored_created_at is not None and bool(stored)
    found = _new_tasks(results, prior) if reusable and prior is not None else None
    reused: set[str] = set()
    if found is not None:  # every result carried over, in order: look at the added ones
        looked, removed = found[0], []
    else:
        if reusable and prior is not None:
            reused = _reused(results, prior)
        looked = [t for t in results if t not in reused]
        removed = [t for t in stored if t not in results]
    checks.check_task_results(results, looked)
    everything = len(looked) == len(results)
    shown = (
        snapshot
        if everything
        else msgspec.structs.replace(snapshot, task_results={t: results[t] for t in looked})
    )
    doc, outputs, typed = lower_checkpoint(codec, shown, strict=limits.strict_values)
    for task_id, output in outputs.items():
        if output is not None:
            limits.value(len(output), f"output of task {task_id!r}")
    rows = {t: task_row(results[t], outputs[t]) for t in looked}
    fresh = {t: remembered_row(row) for t, row in rows.items()}
    remembered = {**stored, **fresh}
    for task_id in removed:
        del remembered[task_id]
    changed = [t for t, row in fresh.items() if stored.get(t) != row]
    whole: dict[str, Any] | None = doc if everything else None
    blob: bytes | None = None
    base_version: int | None = None
    if chain is not None and stored_created_at is not None:
        delta = seal_delta(codec, doc, changed, removed, typed=typed)
        if chain.delta_bytes + len(delta) <= chain.full_bytes:
            blob, base_version = delta, chain.base_version
            after = chain._replace(delta_bytes=chain.delta_bytes + len(delta))
    if blob is None:
        if whole is None:
            whole, typed = lower_document(codec, snapshot, strict=limits.strict_values)
        blob = seal_document(codec, whole, typed=typed)
        after = Chain((expected_version or 0) + 1, len(blob), 0)
    # Skipped rows and a delta both rely on what this life of the id stored before.
    relies = len(changed) < len(results) or base_version is not None
    next_prior = _prior_after(results, prior, found, remembered, reused, outputs)
    limits.value(len(blob), "the checkpoint document")
    # A load decodes the whole chain the version ends, then returns every output.
    chain_bytes = after.full_bytes + after.delta_bytes
    limits.checkpoint(chain_bytes + sum(next_prior.sizes), snapshot.instance_id)
    position = snapshot.position
    return PreparedSave(
        instance_id=snapshot.instance_id,
        expected_version=expected_version,
        expected_created_at=stored_created_at if relies else None,
        claim_token=None if claim is None else claim.token,
        status=snapshot.status.value,
        definition_hash=snapshot.definition_hash,
        current_task_id=position_task_id(position),
        position_kind=type(position).__name__,
        completed_task_count=next_prior.completed,
        error=snapshot.error,
        priority=snapshot.priority,
        tags=_TAGS_JSON.encode(snapshot.tags).decode(),
        tag_values=tuple(snapshot.tags),
        delay_wake_at=position.wake_at if isinstance(position, AtDelay) else None,
        available_at=_available_at(snapshot),
        codec=codec.name,
        data=blob,
        data_hash=data_hash(blob),
        base_version=base_version,
        task_ids=changed,
        task_rows=[rows[t] for t in changed],
        all_task_rows=remembered,
        chain=after,
        prior=next_prior,
    )


_TASK_COLUMNS: Final = (
    ("status", arrays.TEXT), ("attempts", arrays.INTEGER), ("worker", arrays.TEXT),
    ("started", arrays.TIMESTAMPTZ), ("completed", arrays.TIMESTAMPTZ), ("error", arrays.TEXT),
    ("output", arrays.BYTEA),
)  # fmt: skip
_NO_TASK_ROWS: Final[list[tuple[Any, ...]]] = [()] * len(_TASK_COLUMNS)


# The per-item columns of ``save_checkpoints`` and their element types (the SQL casts
# name the same). Tags go as JSON arrays: arrays of arrays must be rectangular.
_ITEM_COLUMNS: Final = (
    ("instance_id", arrays.TEXT), ("expected_version", arrays.BIGINT),
    ("expected_created_at", arrays.TIMESTAMPTZ), ("claim_token", arrays.UUID),
    ("status", arrays.TEXT), ("definition_hash", arrays.TEXT),
    ("current_task_id", arrays.TEXT), ("position_kind", arrays.TEXT),
    ("completed_task_count", arrays.INTEGER), ("error", arrays.TEXT),
    ("priority", arrays.SMALLINT), ("tags", arrays.JSONB), ("delay_wake_at", arrays.TIMESTAMPTZ),
    ("available_at", arrays.TIMESTAMPTZ), ("codec", arrays.TEXT), ("data", arrays.BYTEA),
    ("data_hash", arrays.BYTEA), ("base_version", arrays.BIGINT),
)  # fmt: skip
_FIELD_INDEX: Final = {name: k for k, name in enumerate(PreparedSave.__struct_fields__)}
_ITEM_PLAN: Final = tuple((name, element, _FIELD_INDEX[name]) for name, element in _ITEM_COLUMNS)


def save_many_params(items: Sequence[PreparedSave]) -> Params:
    """Parameters of ``save_checkpoints`` (several instances, distinct): one pre-encoded
    array per column, and the task rows flattened, each item's the slice
    [task_from, task_to] (1-based, empty when from > to)."""
    column = arrays.encode_column
    fields = list(zip(*map(msgspec.structs.astuple, items), strict=True))
    params: Params = {name: column(element, fields[k]) for name, element, k in _ITEM_PLAN}
    task_from: list[int] = []
    task_to: list[int] = []
    task_ids: list[str] = []
    task_rows: list[tuple[Any, ...]] = []
    for item in items:
        task_from.append(len(task_ids) + 1)
        task_ids.extend(item.task_ids)
        task_rows.extend(item.task_rows)
        task_to.append(len(task_ids))
    params["task_from"] = column(arrays.INTEGER, task_from)
    params["task_to"] = column(arrays.INTEGER, task_to)
    params["task_ids"] = column(arrays.TEXT, task_ids)
    values = list(zip(*task_rows, strict=True)) if task_rows else _NO_TASK_ROWS
    for (name, element), column_values in zip(_TASK_COLUMNS, values, strict=True):
        params[f"task_{name}"] = column(element, column_values)
    return params


def save_params(item: PreparedSave) -> Params:
    """Parameters of ``save_checkpoint`` for one save, typed so that every call binds
    the same parameter types (one prepared statement)."""
    column = arrays.encode_column
    expected = item.expected_version
    params: Params = {
        "instance_id": item.instance_id,
        "expected_version": None if expected is None else Int8(expected),
        "expected_created_at": item.expected_created_at,
        "claim_token": item.claim_token,
        "status": item.status,
        "definition_hash": item.definition_hash,
        "current_task_id": item.current_task_id,
        "position_kind": item.position_kind,
        "completed_task_count": Int4(item.completed_task_count),
        "error": item.error,
        "priority": Int2(item.priority),
        "tags": column(arrays.TEXT, item.tag_values),
        "delay_wake_at": item.delay_wake_at,
        "available_at": item.available_at,
        "codec": item.codec,
        "data": item.data,
        "data_hash": item.data_hash,
        "base_version": None if item.base_version is None else Int8(item.base_version),
        "task_ids": column(arrays.TEXT, item.task_ids),
    }
    values = list(zip(*item.task_rows, strict=True)) if item.task_rows else _NO_TASK_ROWS
    for (name, element), column_values in zip(_TASK_COLUMNS, values, strict=True):
        params[f"task_{name}"] = column(element, column_values)
    return params


def save_rounds(items: Sequence[PreparedSave]) -> list[list[int]]:
    """Split a batch into rounds with distinct instance ids (one statement cannot
    update a row twice), keeping each instance's saves in submission order."""
    rounds: list[list[int]] = []
    last_round: dict[str, int] = {}
    for index, item in enumerate(items):
        r = last_round.get(item.instance_id, -1) + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(index)
        last_round[item.instance_id] = r
    return rounds


class Saved(NamedTuple):
    """What one save that went through wrote, from its RETURNING row."""

    version: int
    created_at: datetime  # of the instance: tells two lives of one id apart
    was_dispatchable: bool  # InProgress, due and tagged the same before this save
    due: bool  # due now


def saved(rows: Sequence[Row]) -> Saved | None:
    """The row ``save_checkpoint`` returned; None where the CAS failed."""
    version, created_at, was_dispatchable, due = rows[0]
    if version is None:
        return None
    return Saved(int(version), created_at, bool(was_dispatchable), bool(due))


def announced(item: PreparedSave) -> bool:
    """Whether ``item`` will make its instance dispatchable if it goes through, known
    before it is sent: a create of a due, unclaimed instance (a new instance holds no
    lease). Its NOTIFY goes in the same pipeline, so it costs no round trip of its own;
    one whose create fails (a taken id) only wakes a worker for nothing."""
    return (
        item.expected_version is None
        and item.status == "InProgress"
        and item.claim_token is None
        and item.available_at is None
    )


def wakes(item: PreparedSave, done: Saved) -> bool:
    """Whether ``item``'s save made its instance dispatchable (due now, and before it
    was new, not due, not InProgress or tagged differently) with no claimant driving
    it: only an unclaimed save leaves the instance to other workers. An instance that
    stays dispatchable was announced already; announcing every step of it would cost
    every commit the server's global notify lock. The lease check comes after."""
    return (
        item.status == "InProgress"
        and item.claim_token is None
        and done.due
        and not done.was_dispatchable
    )


def committed_params(items: Sequence[PreparedSave]) -> Params:
    """What each save would have left in history had it committed."""
    return {
        "instance_ids": [i.instance_id for i in items],
        "versions": [(i.expected_version or 0) + 1 for i in items],
        "hashes": [i.data_hash for i in items],
    }


def interpret_committed(items: Sequence[PreparedSave], rows: Sequence[Row]) -> list[int]:
    """The positions of the lost batch's items found in history. A batch commits as a
    whole (one statement, or one transaction), so any found means it committed, and the
    items not found were refused by it (a conflict...)."""
    found: dict[tuple[str, int], int] = {}  # one history row is one item's, the first's
    for (position,) in rows:
        item = items[int(position) - 1]
        found.setdefault((item.instance_id, (item.expected_version or 0) + 1), int(position) - 1)
    return sorted(found.values())


def states_params(items: Sequence[PreparedSave]) -> Params:
    return {
        "instance_ids": [i.instance_id for i in items],
        "claim_tokens": [i.claim_token for i in items],
    }


def save_failure(item: PreparedSave, current: Row | None) -> SnapstoreError:
    """The error for a failed save, given its ``current_states`` row read afterwards."""
    instance_id, expected_version = item.instance_id, item.expected_version
    if current is None or current[0] is None:
        if expected_version is None:  # created and deleted between the two statements
            return ConflictError(instance_id, None, None)
        return NotFoundError(f"instance {instance_id!r} does not exist")
    version, status, claim_live = int(current[0]), WorkflowStatus(current[1]), current[2]
    if status.is_terminal:
        return TerminalStateError(instance_id, status.value)
    if version != expected_version:
        return ConflictError(instance_id, expected_version, version)
    if item.claim_token is not None and not claim_live:
        return ClaimLostError(instance_id)
    return ConflictError(instance_id, expected_version, None)  # changed and changed back


def id_params(instance_id: str) -> Params:
    return {"instance_id": checks.check_id("instance_id", instance_id)}


def task_params(instance_id: str, task_id: str) -> Params:
    return {
        "instance_id": checks.check_id("instance_id", instance_id),
        "task_id": checks.check_id("task_id", task_id),
    }


def ids_params(instance_ids: Sequence[str]) -> Params:
    return {"instance_ids": [checks.check_id("instance_id", i) for i in instance_ids]}


def load_params(instance_ids: Sequence[str], *, checked: bool = False) -> Params:
    """``checked``: the ids are known good (the server just returned them)."""
    ids = {"instance_ids": list(instance_ids)} if checked else ids_params(instance_ids)
    return {**ids, "chunk": LOAD_CHUNK}


LOAD_CHUNK: Final = 16 * 2**20  # bytes of one output per row of load_snapshots
LOAD_ROWS: Final = 2  # rows per result streamed: at most 2 chunks wait in the client


class Loaded(NamedTuple):
    """What ``load_snapshots`` returned for one instance: the checkpoints from the start
    of its current version's delta chain, in version order, and the stored outputs."""

    chain: list[tuple[int, bytes]]
    updated_at: datetime | None
    outputs: dict[str, bytes | bytearray]
    created_at: datetime | None = None  # of the instance: which life of the id

    @property
    def version(self) -> int:
        return self.chain[-1][0]


class LoadedRows:
    """Folds ``load_snapshots`` rows, as they stream in, into `Loaded` per instance: an
    output sent in parts is copied into one buffer of its size as each part arrives,
    so no part outlives its row."""

    def __init__(self, chunk: int = LOAD_CHUNK) -> None:
        self._chunk = chunk
        self._chains: dict[str, list[tuple[int, bytes]]] = {}
        self._updated: dict[str, datetime | None] = {}
        self._created: dict[str, datetime | None] = {}
        self._outputs: dict[str, dict[str, bytes | bytearray]] = {}

    def add(self, row: Row) -> None:
        instance_id, task_id, number, updated_at, size, blob, created_at = row
        if task_id is None:
            self._chains.setdefault(instance_id, []).append((int(number), blob))
            self._updated[instance_id] = updated_at
            self._created[instance_id] = created_at
            return
        outputs = self._outputs.setdefault(instance_id, {})
        if size <= self._chunk:
            outputs[task_id] = blob
            return
        whole = outputs.get(task_id)
        if not isinstance(whole, bytearray):
            whole = outputs[task_id] = bytearray(size)
        start = int(number) * self._chunk
        whole[start : start + len(blob)] = blob

    def result(self) -> dict[str, Loaded]:
        """Instances without a checkpoint row do not exist."""
        return {
            iid: Loaded(sorted(chain, key=lambda c: c[0]), self._updated[iid],
                        self._outputs.get(iid, {}), self._created[iid])
            for iid, chain in self._chains.items()
        }  # fmt: skip


def readable(snapshot: WorkflowSnapshot) -> WorkflowSnapshot:
    """A decoded checkpoint the writer would have accepted; anything else (priority 9,
    NUL in an id: a blob written by another tool, or corrupted consistently with its
    checksum) is a `DecodeError`, not a value the engine then trips over."""
    try:
        checks.check_readable(snapshot)
    except ValidationError as exc:
        raise DecodeError(f"stored checkpoint is not one snapstore writes: {exc}") from None
    return snapshot


def interpret_load(instance_id: str, loaded: Loaded | None) -> StoredSnapshot | None:
    """A `StoredSnapshot` from what ``load_snapshots`` read (None: no such instance)."""
    if loaded is None:
        return None
    *_, (version, codec, snapshot) = decode_chain(loaded.chain, instance_id=instance_id)
    try:
        snapshot = hydrate_outputs(snapshot, loaded.outputs)
        readable(snapshot)
    except DecodeError as exc:
        raise exc.located(instance_id=instance_id, version=version) from exc
    return StoredSnapshot(
        snapshot=snapshot, version=version, codec=codec.name, updated_at=loaded.updated_at
    )


def interpret_task_result(instance_id: str, task_id: str, row: Row | None) -> TaskResult | None:
    if row is None:
        return None
    status, attempts, worker_id, started_at, completed_at, error, output = row
    try:
        value = None if output is None else open_value(output)
    except DecodeError as exc:
        raise exc.located(instance_id=instance_id, prefix=f"task {task_id!r}: ") from exc
    return TaskResult(
        status=TaskStatus(status),
        output=value,
        error=error,
        attempts=attempts,
        worker_id=worker_id,
        started_at=started_at,
        completed_at=completed_at,
    )


def encode_cursor(instance_id: str) -> str:
    return base64.urlsafe_b64encode(instance_id.encode()).decode()


def decode_cursor(cursor: str) -> str:
    """The instance id a cursor continues after. Only what `encode_cursor` made is
    accepted: a mangled cursor must fail loudly, not restart the listing."""
    try:
        after = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError) as exc:
        raise ValidationError(f"invalid page cursor {cursor!r}") from exc
    if encode_cursor(after) != cursor:
        raise ValidationError(f"invalid page cursor {cursor!r}")
    return after


def list_params(
    statuses: Iterable[WorkflowStatus] | WorkflowStatus | None, limit: int, cursor: str | None
) -> Params:
    checks.check_limit(limit)
    names = checks.check_statuses(statuses)
    if cursor is not None and not isinstance(cursor, str):
        raise ValidationError("cursor must be None or the next_cursor of a Page")
    return {
        "statuses": names,
        "after": None if cursor is None else decode_cursor(cursor),
        "limit": limit + 1,  # one extra row tells whether another page exists
    }


def interpret_list(rows: Sequence[Row], limit: int) -> Page:
    items = [
        SnapshotSummary(
            instance_id=r[0],
            status=WorkflowStatus(r[1]),
            definition_hash=r[2],
            current_task_id=r[3],
            position_kind=r[4],
            completed_task_count=r[5],
            priority=r[6],
            tags=tuple(r[7]),
            version=int(r[8]),
            codec=r[9],
            error=r[10],
            updated_at=r[11],
            forked_from=r[12],
            forked_from_version=r[13],
        )
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return Page(items=items, next_cursor=encode_cursor(items[-1].instance_id) if more else None)


def history_params(instance_id: str, after_version: int, limit: int | None) -> Params:
    checks.check_version("after_version", after_version)
    if limit is not None:
        checks.check_version("limit", limit)
    return {
        **id_params(instance_id),
        "after_version": after_version,
        "limit": limit,
    }


def interpret_history(rows: Sequence[Row], *, skip_corrupt: bool = False) -> list[HistoryEntry]:
    """``read_history`` rows as entries; rows marked as context (the last column: the
    start of the first entry's delta chain) are only decoded from. ``skip_corrupt``:
    versions that cannot be read are left out (see `decode_chain`) instead of failing
    the whole history."""
    if not rows:
        return []
    by_version = {int(r[1]): r for r in rows}
    chain = decode_chain(
        ((int(r[1]), r[5]) for r in rows),
        instance_id=rows[0][0],
        check=readable,
        skip_corrupt=skip_corrupt,
    )
    entries = []
    for version, codec, snapshot in chain:
        row = by_version[version]
        instance_id, _, status, task_id, _, _, created_at, context = row[:8]
        if context:
            continue
        kind, reason, requested_by, requested_at = row[8:12]
        applied = (
            None
            if kind is None
            else AppliedSignal(
                kind=kind, reason=reason, requested_by=requested_by, requested_at=requested_at
            )
        )
        entries.append(
            HistoryEntry(
                instance_id=instance_id,
                version=version,
                status=WorkflowStatus(status),
                current_task_id=task_id,
                codec=codec.name,
                snapshot=snapshot,
                created_at=created_at,
                applied_signal=applied,
            )
        )
    return entries


def check_value_type(kind: str, type_: Any) -> Any:
    """A type msgspec can convert stored values into (None: none asked for)."""
    if type_ is None:
        return None
    try:
        msgspec.inspect.type_info(type_)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{kind} must be a type msgspec can decode into: {exc}") from exc
    return type_


def typed_value(value: Any, type_: Any, what: str) -> Any:
    """``value`` (of the value domain) as ``type_``; `DecodeError` naming ``what`` if the
    stored data does not fit."""
    if type_ is None:
        return value
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"{what} does not fit {_type_name(type_)}: {exc}") from exc


def _type_name(type_: Any) -> str:
    return getattr(type_, "__qualname__", None) or repr(type_)


def typed_load(
    stored: StoredSnapshot | None, input_type: Any, output_type: Any
) -> StoredSnapshot | None:
    """A loaded checkpoint with its input and output converted to the types asked for."""
    if stored is None or (input_type is None and output_type is None):
        return stored
    snap = stored.snapshot
    where = f"instance {snap.instance_id!r} v{stored.version}"
    converted = msgspec.structs.replace(
        snap,
        input=typed_value(snap.input, input_type, f"input of {where}"),
        output=typed_value(snap.output, output_type, f"output of {where}"),
    )
    return msgspec.structs.replace(stored, snapshot=converted)


def typed_result(
    instance_id: str, task_id: str, result: TaskResult | None, output_type: Any
) -> TaskResult | None:
    """A task result with its output converted to ``output_type`` (None: as stored)."""
    if result is None or output_type is None:
        return result
    what = f"output of task {task_id!r} of {instance_id!r}"
    return msgspec.structs.replace(result, output=typed_value(result.output, output_type, what))
