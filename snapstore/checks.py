"""The one check layer: every argument a public method takes is checked here, once,
at the boundary, before any cache lookup or I/O, and a bad one is a `ValidationError`
that names it.

msgspec does not type-check Struct constructors and PostgreSQL refuses some values
(NUL in text, integers past their column), so without these a wrong value would
surface as a driver error mid-write or, for blob-only fields, as a checkpoint that
saves fine and then fails to decode on every load.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from snapstore.errors import ValidationError
from snapstore.model import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    AtDelay,
    AtFork,
    AtJoin,
    AtSignal,
    Claim,
    InLoop,
    NotStarted,
    Position,
    RetryState,
    SaveRequest,
    TaskResult,
    TaskStatus,
    WorkflowSnapshot,
    WorkflowStatus,
)

MAX_ID_LENGTH: Final = 255
MAX_COUNT: Final = 2**31 - 1  # PostgreSQL integer
MAX_VERSION: Final = 2**63 - 1  # PostgreSQL bigint
MAX_PAGE_SIZE: Final = 1000
MAX_TEXT_LENGTH: Final = 1 << 20
"""Characters of one text column value (an error message, a tag...)."""
MAX_DURATION: Final = timedelta(days=36_525)
"""A lease, an age, an aging interval: about a century."""
LATEST_SCHEDULE: Final = datetime(9999, 12, 31, tzinfo=UTC)
"""Timers and retries must come before this; parked instances wait at the end of time."""

Seconds = float | timedelta
"""A duration, as seconds or a timedelta."""


def _storable(kind: str, value: str) -> str:
    """Text PostgreSQL can hold: no NUL, valid UTF-8 (a lone surrogate is not)."""
    if "\x00" in value:
        raise ValidationError(f"{kind} must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            message = f"{kind} must be valid Unicode (a lone surrogate is not)"
            raise ValidationError(message) from None
    return value


def check_id(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"{kind} must be a non-empty str of at most {MAX_ID_LENGTH} chars")
    return _storable(kind, value)


def check_text(kind: str, value: object, *, optional: bool = False) -> str | None:
    """A value bound to a text column: a str (or None) without NUL, in UTF-8, of at most
    `MAX_TEXT_LENGTH` characters (a column value is sent and returned whole)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{kind} must be a str{' or None' if optional else ''}")
    if len(value) > MAX_TEXT_LENGTH:
        raise ValidationError(f"{kind} is longer than {MAX_TEXT_LENGTH} characters")
    return _storable(kind, value)


def check_count(kind: str, value: object) -> None:
    """Counts are stored as ``integer``: a larger one must fail here, not mid-save."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValidationError(f"{kind} must be an int in 0..{MAX_COUNT}, got {value!r}")


def check_time(kind: str, value: object, *, optional: bool = True, aware: bool = False) -> None:
    """``aware`` for times the server schedules by: a naive one would be read in the
    session's time zone, silently shifting a timer or a retry. An aware time must be
    one Python can read back in UTC (9999-12-31T23:30-05:00 is year 10000 there), and
    a scheduling one must come before the end of time that marks parked instances."""
    if value is None and optional:
        return
    if not isinstance(value, datetime):
        raise ValidationError(f"{kind} must be a datetime{' or None' if optional else ''}")
    if value.utcoffset() is None:
        if aware:
            raise ValidationError(f"{kind} must be timezone-aware")
        return
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(f"{kind} {value.isoformat()} is past year 9999 in UTC") from None
    if aware and utc >= LATEST_SCHEDULE:
        raise ValidationError(f"{kind} must be before {LATEST_SCHEDULE.isoformat()}")


def check_names(kind: str, values: object) -> None:
    if not isinstance(values, tuple | list):
        raise ValidationError(f"{kind} must be a tuple of str")
    for value in values:
        check_text(kind, value)


def check_position(position: Position) -> None:
    if not isinstance(position, Position):
        raise ValidationError(f"position must be a Position, got {position!r}")
    if isinstance(position, NotStarted):
        return
    check_text("position task_id", position.task_id)
    if isinstance(position, AtDelay):
        check_time("AtDelay.wake_at", position.wake_at, optional=False, aware=True)
    elif isinstance(position, AtSignal):
        check_id("AtSignal.signal_name", position.signal_name)  # an event name resumes it
        check_time("AtSignal.timeout_at", position.timeout_at, optional=True, aware=True)
    elif isinstance(position, AtFork):
        check_names("AtFork.branches", position.branches)
    elif isinstance(position, AtJoin):
        check_names("AtJoin.waiting_for", position.waiting_for)
    elif isinstance(position, InLoop):
        check_count("InLoop.iteration", position.iteration)


def check_task_result(task_id: str, result: object) -> None:
    where = f"task_results[{task_id!r}]"
    if not isinstance(result, TaskResult):
        raise ValidationError(f"{where} must be a TaskResult")
    if not isinstance(result.status, TaskStatus):
        raise ValidationError(f"{where}.status must be a TaskStatus, got {result.status!r}")
    check_count(f"{where}.attempts", result.attempts)
    check_text(f"{where}.error", result.error, optional=True)
    check_text(f"{where}.worker_id", result.worker_id, optional=True)
    check_time(f"{where}.started_at", result.started_at)
    check_time(f"{where}.completed_at", result.completed_at)


def check_retry(task_id: str, retry: object) -> None:
    where = f"retries[{task_id!r}]"
    if not isinstance(retry, RetryState):
        raise ValidationError(f"{where} must be a RetryState")
    check_count(f"{where}.attempts", retry.attempts)
    check_time(f"{where}.next_attempt_at", retry.next_attempt_at, aware=True)
    check_text(f"{where}.last_error", retry.last_error, optional=True)


def check_task_results(
    results: Mapping[str, TaskResult], tasks: Iterable[str] | None = None
) -> None:
    """Check the task results named by ``tasks`` (None: all of them)."""
    for task_id in results if tasks is None else tasks:
        check_id("task id", task_id)
        check_task_result(task_id, results[task_id])


def check_snapshot(snapshot: WorkflowSnapshot, tasks: Iterable[str] | None = None) -> None:
    """Reject a snapshot the store could not faithfully keep. ``tasks``: only these
    task results are checked (the others are the very objects a checked save wrote)."""
    if not isinstance(snapshot, WorkflowSnapshot):
        raise ValidationError(f"expected WorkflowSnapshot, got {type(snapshot).__name__}")
    check_id("instance_id", snapshot.instance_id)
    check_text("definition_hash", snapshot.definition_hash)
    check_text("error", snapshot.error, optional=True)
    if not isinstance(snapshot.trace_parent, str | None):
        raise ValidationError("trace_parent must be a str or None")
    check_time("created_at", snapshot.created_at)
    if not isinstance(snapshot.status, WorkflowStatus):
        raise ValidationError(f"status must be a WorkflowStatus, got {snapshot.status!r}")
    check_position(snapshot.position)
    check_names("tags", snapshot.tags)
    if not isinstance(snapshot.task_results, dict) or not isinstance(snapshot.retries, dict):
        raise ValidationError("task_results and retries must be dicts keyed by task id")
    prio = snapshot.priority
    if (
        isinstance(prio, bool)
        or not isinstance(prio, int)
        or not MIN_PRIORITY <= prio <= MAX_PRIORITY
    ):
        raise ValidationError(f"priority must be an int in {MIN_PRIORITY}..{MAX_PRIORITY}")
    check_task_results(snapshot.task_results, tasks)
    for task_id, retry in snapshot.retries.items():
        check_id("retry task id", task_id)
        check_retry(task_id, retry)


def check_readable(snapshot: WorkflowSnapshot) -> None:
    """What a decoded checkpoint must hold for the engine and the store to use it, beyond
    the types msgspec already enforced while decoding: ids that are ids, a priority in
    range, tags without NUL. Deliberately looser than `check_snapshot` (no length or
    schedule limits): a checkpoint an earlier release wrote stays readable, and it is
    cheap enough for every load."""
    check_id("instance_id", snapshot.instance_id)
    prio = snapshot.priority
    if not MIN_PRIORITY <= prio <= MAX_PRIORITY:
        raise ValidationError(f"priority must be an int in {MIN_PRIORITY}..{MAX_PRIORITY}")
    for tag in snapshot.tags:
        if "\x00" in tag:
            raise ValidationError("tags must not contain NUL characters")


def check_expected_version(expected_version: int | None) -> None:
    if expected_version is not None and (
        isinstance(expected_version, bool)
        or not isinstance(expected_version, int)
        or not 1 <= expected_version <= MAX_VERSION
    ):
        raise ValidationError(
            f"expected_version must be None (create) or an int in 1..{MAX_VERSION}"
        )


def check_limit(limit: object, maximum: int = MAX_PAGE_SIZE, what: str = "limit") -> int:
    """A page or batch size: an int in 1..``maximum``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise ValidationError(f"{what} must be an int in 1..{maximum}")
    return limit


def check_claim(claim: object, instance_id: str | None = None) -> Claim:
    """A `Claim` as `claim()` made it (of ``instance_id``, when given)."""
    if not isinstance(claim, Claim) or not isinstance(claim.token, uuid.UUID):
        raise ValidationError(f"claim must be a Claim from claim(), got {claim!r}")
    check_id("claim instance_id", claim.instance_id)
    if instance_id is not None and claim.instance_id != instance_id:
        raise ValidationError(f"claim is for {claim.instance_id!r}, not {instance_id!r}")
    return claim


def check_optional_claim(claim: object, instance_id: str | None = None) -> Claim | None:
    return None if claim is None else check_claim(claim, instance_id)


def check_version(kind: str, value: object, *, minimum: int = 0) -> int:
    """A version number (bigint): an int in ``minimum``..MAX_VERSION."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_VERSION:
        raise ValidationError(f"{kind} must be an int in {minimum}..{MAX_VERSION}, got {value!r}")
    return value


def check_statuses(statuses: object) -> list[str] | None:
    """Status filters as their names: one `WorkflowStatus` (or its name), an iterable
    of them, or None for every status."""
    if statuses is None:
        return None
    if isinstance(statuses, WorkflowStatus | str):
        statuses = [statuses]
    if not isinstance(statuses, Iterable):
        raise ValidationError("status must be a WorkflowStatus or an iterable of them")
    names = []
    for status in statuses:
        try:
            names.append(WorkflowStatus(status).value)
        except ValueError:
            known = ", ".join(s.value for s in WorkflowStatus)
            raise ValidationError(f"unknown status {status!r} (one of {known})") from None
    return names


def check_seconds(
    value: object, what: str, *, zero: bool = False, bounded: bool = True
) -> timedelta:
    """A positive (or, with ``zero``, non-negative) finite duration of at most
    `MAX_DURATION`, from seconds or a timedelta: the server adds it to now(), and the
    sum must stay a time Python can read back."""
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"{what} must be a finite number of seconds or a timedelta")
    else:
        try:
            duration = timedelta(seconds=value)
        except OverflowError as exc:
            raise ValidationError(f"{what} of {value} seconds is too large") from exc
    if duration < timedelta(0) or (duration == timedelta(0) and not zero):
        raise ValidationError(f"{what} must be {'>= 0' if zero else 'positive'}, got {duration}")
    if bounded and duration > MAX_DURATION:
        raise ValidationError(f"{what} must be at most {MAX_DURATION.days} days, got {duration}")
    return duration


def check_tags(tags: Iterable[str] | None) -> list[str] | None:
    """A worker's tags as a list (None: accepts any instance). A bare str is refused
    rather than read as its characters."""
    if tags is None:
        return None
    if isinstance(tags, str):
        raise ValidationError("tags must be an iterable of str, not a str")
    found = list(tags)
    for tag in found:
        check_text("tags", tag)
    return found


def check_ids(kind: str, values: Iterable[str]) -> list[str]:
    """Distinct ids, in order; a bare str is refused rather than read as its characters."""
    if isinstance(values, str):
        raise ValidationError(f"{kind} must be an iterable of str, not a str")
    return list(dict.fromkeys(check_id(kind, v) for v in values))


def check_save(
    snapshot: WorkflowSnapshot, expected_version: int | None, claim: Claim | None
) -> None:
    """A save's arguments, but for its task results: the save checks those itself, as
    far as it must look at them (see `rows.prepare_save`)."""
    check_snapshot(snapshot, tasks=())
    check_expected_version(expected_version)
    check_optional_claim(claim, snapshot.instance_id)


def check_flag(kind: str, value: object) -> bool:
    """A bool argument (a truthy string or number is refused: ``dry_run="no"`` would run)."""
    if not isinstance(value, bool):
        raise ValidationError(f"{kind} must be a bool")
    return value


def check_positive(kind: str, value: object) -> int:
    """An int >= 1 (a batch size, how many to keep)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise ValidationError(f"{kind} must be an int in 1..{MAX_COUNT}, got {value!r}")
    return value


def check_requests(requests: object) -> list[SaveRequest]:
    """The items of a `save_many` call: `SaveRequest` objects, in a sequence."""
    if isinstance(requests, str | bytes) or not isinstance(requests, Sequence):
        raise ValidationError("save_many needs a sequence (list, tuple) of SaveRequest")
    found = list(requests)
    for index, request in enumerate(found):
        if not isinstance(request, SaveRequest):
            raise ValidationError(
                f"save_many item {index} must be a SaveRequest, got {type(request).__name__}"
            )
    return found
