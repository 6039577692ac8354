"""Operator views of a store: what is in it (`stats`) and what looks wrong (`check`).

Programs like those of `snapstore.programs`, run by the backends' ``stats`` and
``check``; the CLI's ``snapstore stats`` / ``snapstore check`` print them.
"""

from __future__ import annotations

from typing import Final

import msgspec

from snapstore import checks
from snapstore import rows as rw
from snapstore.migrations import load_migrations
from snapstore.programs import Fetch, Program, Step

DEFAULT_CHECK_AGE: Final = 300.0
"""Seconds something must have been wrong for `check` to report it (a due instance not
taken, a lease run out, an event waiting on an instance that is not parked)."""
CHECK_SAMPLE: Final = 20
"""Instances named per kind of problem (the count says how many there are)."""


class StoreStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counts of one moment of the store (exact: read with one statement)."""

    instances: dict[str, int]
    """Instances by status."""
    due: int
    """Dispatchable now: InProgress, due, no live lease."""
    oldest_due_seconds: float | None
    """How long the longest-waiting dispatchable instance has waited."""
    live_leases: int
    expired_leases: int
    buffered_events: int
    events_not_parked: int
    """Buffered events whose instance is not parked AtSignal (finished, paused, running)."""
    dead_events: int
    open_branches: int


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing `check` found wrong."""

    kind: str
    """``migrations``, ``stuck``, ``expired_lease`` or ``stray_event``."""
    detail: str
    instance_id: str | None = None
    age_seconds: float | None = None


CHECKS: Final = {
    "stuck": ("stuck_instances", "due, and no worker has taken it"),
    "expired_lease": ("expired_leases", "its lease ran out and nobody took it over"),
    "stray_event": (
        "stray_events",
        "event {name!r} buffered; the instance is not parked waiting for one",
    ),
}
"""Kinds of problem past the migrations: the statement finding them, what they mean."""


def problem(kind: str, instance_id: str, age_seconds: float, name: str | None = None) -> Problem:
    """A `Problem` of one of the `CHECKS` kinds (``name``: the event's, for stray events)."""
    return Problem(
        kind=kind,
        detail=CHECKS[kind][1].format(name=name),
        instance_id=instance_id,
        age_seconds=round(age_seconds, 3),
    )


GAUGE_EXACT_BELOW: Final = 100_000
"""Instances up to which the cheap statement (``exact=False``) counts them by status;
above, it reads the planner's estimate."""
GAUGE_DUE_CAP: Final = 10_000
"""Where the cheap statement stops counting the due backlog."""


def store_stats(schema: str, *, exact: bool = True) -> Program[StoreStats]:
    """The store's counts (``exact=False``: at a cost bounded whatever the store's size,
    see ``store_gauges`` in sql/queries/operations.sql)."""
    if exact:
        row = yield Step("store_stats")
    else:
        params = {"schema": schema, "exact_below": GAUGE_EXACT_BELOW, "cap": GAUGE_DUE_CAP}
        row = yield Step("store_gauges", params)
    statuses, due, oldest, live, expired, events, stray, dead, branches = row
    return StoreStats(
        instances={str(k): int(v) for k, v in sorted(statuses.items())},  # estimates: floats
        due=due,
        oldest_due_seconds=oldest,
        live_leases=live,
        expired_leases=expired,
        buffered_events=events,
        events_not_parked=stray,
        dead_events=dead,
        open_branches=branches,
    )


def migration_problems(applied: dict[int, str] | None) -> list[Problem]:
    """The schema's migrations against the shipped files: each one applied, unchanged,
    and none this version does not know (None: the schema is not migrated at all)."""
    shipped = {m.version: m for m in load_migrations()}
    if applied is None:
        return [Problem(kind="migrations", detail="the schema is not migrated (run migrate)")]
    problems = [
        Problem(kind="migrations", detail=f"migration {v} is unknown to this snapstore")
        for v in applied
        if v not in shipped
    ]
    for version, migration in shipped.items():
        if version not in applied:
            detail = f"migration {version:04d}_{migration.name} is not applied"
        elif applied[version] != migration.checksum:
            detail = f"migration {version:04d}_{migration.name} differs from the shipped file"
        else:
            continue
        problems.append(Problem(kind="migrations", detail=detail))
    return problems


def check_store(older_than: checks.Seconds = DEFAULT_CHECK_AGE) -> Program[list[Problem]]:
    """Every problem found, migrations first; none: the store looks healthy."""
    age = checks.check_seconds(older_than, "older_than", zero=True)
    (exists,) = yield Step("migrations_exist")
    applied = None
    if exists:
        rows = yield Step("applied_migrations", None, Fetch.ALL)
        applied = {int(v): c for v, c in rows}
    problems = migration_problems(applied)
    if applied is None:
        return problems  # nothing else can be read
    params: rw.Params = {"older": age, "limit": CHECK_SAMPLE}
    for kind, (query, _) in CHECKS.items():
        for iid, waited, name in (yield Step(query, params, Fetch.ALL)):
            problems.append(problem(kind, iid, waited, name))
    return problems
