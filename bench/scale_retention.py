"""Scale workload ``retention``: does clean-up keep its pace on a big history, beside saves?

Retention runs in bounded batches (one short transaction each) so that it can run next to
live traffic. Two ways that goes wrong at scale: each batch re-scans what earlier batches
already deleted (dead rows until vacuum), so batches get slower and slower; or the batches
starve the saves running beside them. So:

- ``prune_history(keep_last=1)`` on a history built by SQL (default 20k instances x 100
  versions = 2M rows), while a few threads keep saving other instances in the same tables:
  rows/s per batch (first, median, last) and overall, and the saves/s during the prune vs
  the saves/s of the same threads just before it (median windows each);
- ``purge_terminal`` on Completed instances with two history rows each (default 200k).

Per-batch times come from the backend's own pool (a `from_pool` pool whose checkouts are
timed): every batch of the public call is one checkout, so nothing of the library's
statements is assumed. Each phase has a time budget: once spent, the next checkout raises
and the figures cover the batches done (``truncated`` says so), so a clean-up that slows
down quadratically cannot stall the whole benchmark run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import msgspec
import psycopg
from psycopg_pool import ConnectionPool

from bench import db
from bench import scale_common as sc
from bench.stats import Recorder
from snapstore import AtTask, JsonCodec, PostgresBackend, TaskResult, WorkflowSnapshot
from snapstore.errors import ServerError

PRUNE_INSTANCES = {"tiny": 200, "small": 2_000, "default": 20_000, "large": 50_000}
VERSIONS = 100
PURGE_INSTANCES = {"tiny": 2_000, "small": 20_000, "default": 200_000, "large": 1_000_000}
PRUNE_BUDGET_S = {"tiny": 3.0, "small": 15.0, "default": 25.0, "large": 120.0}
PURGE_BUDGET_S = {"tiny": 2.0, "small": 10.0, "default": 15.0, "large": 60.0}
BATCH = 1000
SAVERS = 3
SAVE_WINDOW_S = 1.0
ENDS = 5  # batches at each end whose median rates are compared
RATE_TARGET = 20_000.0
STEADY_FACTOR = 2.0
SAVES_FLOOR = 0.5  # prune must not halve the saves beside it
PURGE_AGE = timedelta(days=2)
PURGE_OLDER_THAN = timedelta(days=1)
CANCEL_GRACE_S = 5.0


class BudgetSpent(Exception):
    """Raised at the checkout after the phase's time budget: ends the public call's loop."""


class BatchClock(ConnectionPool[psycopg.Connection[Any]]):
    """A pool that times each checkout (one retention batch each) and enforces a budget."""

    def __init__(self, dsn: str, schema: str) -> None:
        super().__init__(dsn, kwargs={"autocommit": True}, min_size=1, max_size=2, open=False)
        self.dsn = dsn
        self.schema = schema
        self.spans: list[float] = []
        self.deadline = float("inf")
        self.current: psycopg.Connection[Any] | None = None

    def budget(self, seconds: float) -> None:
        self.spans = []
        self.deadline = time.perf_counter() + seconds

    def unlimited(self) -> None:
        self.deadline = float("inf")

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        if time.perf_counter() > self.deadline:
            raise BudgetSpent
        began = time.perf_counter()
        with super().connection(timeout) as conn:
            self.current = conn
            yield conn
            self.current = None
        self.spans.append(time.perf_counter() - began)

    def cancel_overdue(self) -> None:
        """A batch still running well past the budget is cancelled (it rolls back)."""
        conn = self.current
        if conn is not None and time.perf_counter() > self.deadline + CANCEL_GRACE_S:
            conn.cancel_safe()


_COUNTER = """
CREATE TABLE {s}.scale_deleted (
    id bigserial PRIMARY KEY, tbl text NOT NULL, n bigint NOT NULL, tx bigint NOT NULL);
CREATE FUNCTION {s}.scale_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.scale_deleted (tbl, n, tx)
    SELECT TG_TABLE_NAME, count(*), txid_current() FROM gone;
    RETURN NULL;
END $$;
CREATE TRIGGER scale_count_deleted AFTER DELETE ON {s}.history
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION {s}.scale_count_deleted();
CREATE TRIGGER scale_count_deleted AFTER DELETE ON {s}.snapshots
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION {s}.scale_count_deleted();
"""


def install_delete_counter(dsn: str, schema: str) -> None:
    """Count the rows each retention transaction deleted, per table, on the server.

    The public calls return only a total, and how many rows one batch deletes is the
    library's business (a keyset batch may read N rows and delete fewer). A statement-level
    trigger with a transition table logs (table, rows, transaction) for every DELETE,
    whatever statement issued it; its cost is a count over rows already in memory. The
    trigger lives on this workload's scratch tables only and is dropped with them.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sc.query(_COUNTER, schema))


def clear_delete_log(clock: BatchClock) -> None:
    """Forget deletions logged so far (the template's clean-up, an earlier phase)."""
    with psycopg.connect(clock.dsn, autocommit=True) as conn:
        conn.execute(sc.query("TRUNCATE {s}.scale_deleted", clock.schema))


def _deleted_per_transaction(dsn: str, schema: str, table: str) -> list[int]:
    """Rows of ``table`` deleted by each logged transaction, in commit order; the log is
    emptied, so the next phase starts afresh."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            sc.query(
                "SELECT tx, sum(n) FILTER (WHERE tbl = %s) FROM {s}.scale_deleted "
                "GROUP BY tx ORDER BY min(id)",
                schema,
            ),
            (table,),
        ).fetchall()
        conn.execute(sc.query("TRUNCATE {s}.scale_deleted", schema))
    return [int(r[1] or 0) for r in rows]


def _batches(spans: list[float], counts: list[int]) -> dict[str, Any]:
    """Per-batch rates, pairing the timed checkouts with the logged transactions in order
    (one thread runs the batches one after another). A trailing checkout that deleted nothing
    (the call's last look) has no log row and counts 0. Rates are taken over the batches
    that deleted at least half a batch: a batch that found a handful of rows (the tail, a few
    live instances' rows) costs a round trip and says nothing about the rate."""
    counts = (counts + [0] * len(spans))[: len(spans)]
    rates = [c / s for c, s in zip(counts, spans, strict=True) if c >= BATCH // 2]
    if not rates:
        return {"batches": len(spans), "rows": sum(counts)}
    first, last = sc.median(rates[:ENDS]), sc.median(rates[-ENDS:])
    return {
        "batches": len(spans),
        "rows": sum(counts),
        "rows_per_batch": {"first": counts[0], "median": sc.median([float(c) for c in counts])},
        "partial_batches": len(spans) - len(rates),
        "batch_rows_per_s": {
            "first": sc.rounded(rates[0]),
            "median": sc.rounded(sc.median(rates)),
            "last": sc.rounded(rates[-1]),
            f"first_{ENDS}_median": sc.rounded(first),
            f"last_{ENDS}_median": sc.rounded(last),
            "last_vs_first": sc.ratio(last, first),
        },
        "batch_ms": {
            "first": round(spans[0] * 1000, 2),
            "median": round((sc.median(spans) or 0.0) * 1000, 2),
            "last": round(spans[-1] * 1000, 2),
            "max": round(max(spans) * 1000, 2),
        },
    }


def _run_budgeted(
    clock: BatchClock,
    seconds: float,
    call: Callable[[], int],
    counts: Callable[[], list[int]],
) -> dict[str, Any]:
    """Run one public retention call under a budget; its figures, truncated or not.
    ``counts`` reads the rows each of its transactions deleted, once it is over."""
    clock.budget(seconds)
    clear_delete_log(clock)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["total"] = call()
        except BudgetSpent:
            outcome["truncated"] = True
        except psycopg.errors.QueryCanceled:
            outcome["truncated"] = True
        except ServerError as exc:
            if exc.sqlstate == "57014":  # statement_timeout: the budget ran out
                outcome["truncated"] = True
            else:
                outcome["error"] = repr(exc)[:300]
        except Exception as exc:  # reported with the figures
            outcome["error"] = repr(exc)[:300]

    began = time.perf_counter()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
            clock.cancel_overdue()
    finally:
        clock.unlimited()  # the budget bounds this call only: later checkouts must work
    wall = time.perf_counter() - began
    found = _batches(clock.spans, counts())
    rows = found["rows"]
    return {
        "truncated": bool(outcome.get("truncated")),
        "budget_s": seconds,
        "wall_s": round(wall, 2),
        "rows_per_s": round(rows / wall, 1) if wall > 0 else None,
        **found,
        "returned": outcome.get("total"),
        **({"error": outcome["error"]} if "error" in outcome else {}),
    }


class Savers:
    """A few threads advancing their own instances, one CAS save per step, beside retention."""

    def __init__(self, backend: PostgresBackend[Any]) -> None:
        self.backend = backend
        self.saved = sc.Counter(SAVERS)
        self.errors = Recorder()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(SAVERS)
        ]

    def _loop(self, slot: int) -> None:
        snap = WorkflowSnapshot(
            instance_id=f"saver-{slot}", definition_hash="scale-retention-v1", position=AtTask("s")
        )
        version: int | None = None
        step = 0
        while not self.stop.is_set():
            try:
                version = self.backend.save(snap, version)
                self.saved.add(slot)
            except Exception as exc:
                self.errors.error(exc)
                time.sleep(0.05)
                continue
            step += 1
            task = f"t{step % 4}"  # a few tasks, replaced in turn: each save costs the same
            results = {**snap.task_results, task: TaskResult(output={"step": step})}
            snap = msgspec.structs.replace(snap, task_results=results, position=AtTask(task))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _prune_phase(
    dsn: str,
    schema: str,
    store: PostgresBackend[Any],
    clock: BatchClock,
    size: str,
    repeats: int,
    budget_s: float,
) -> dict[str, Any]:
    instances = sc.pick(size, PRUNE_INSTANCES)
    blob = sc.capture_blob(store, dsn, _template("prune-template"))
    runs = (sc.Clones("p", 1, instances, versions=VERSIONS, history_versions=VERSIONS),)
    build = sc.bulk_load(dsn, schema, blob, runs)
    db.checkpoint(dsn)
    saver_backend = db.open_backend(dsn, sc.CODEC, schema, pool_size=SAVERS + 1)
    savers = Savers(saver_backend)
    savers.start()
    try:
        time.sleep(SAVE_WINDOW_S / 2)  # warm: statements prepared, plans made
        without = sc.rate_windows(savers.saved.total, repeats, SAVE_WINDOW_S)
        done = threading.Event()
        during: list[float] = []
        counting = threading.Thread(
            target=lambda: during.extend(
                sc.rate_windows(savers.saved.total, 10**6, SAVE_WINDOW_S, until=done.is_set)
            ),
            daemon=True,
        )
        counting.start()
        prune = _run_budgeted(
            clock,
            budget_s,
            lambda: store.prune_history(keep_last=1, batch_size=BATCH),
            lambda: _deleted_per_transaction(dsn, schema, "history"),
        )
        done.set()
        counting.join(30)
    finally:
        savers.close()
        saver_backend.close()
    saves_without, saves_during = sc.median(without), sc.median(during)
    return {
        "history_rows": instances * VERSIONS,
        "instances": instances,
        "build_s": build,
        "prune": prune,
        "saves_per_s_without_prune": sc.rounded(saves_without),
        "saves_per_s_during_prune": sc.rounded(saves_during),
        "saves_windows": {
            "without": [round(v, 1) for v in without],
            "during": [round(v, 1) for v in during],
        },
        "saves_during_vs_without": sc.ratio(saves_during, saves_without),
        "saver_errors": dict(savers.errors.errors),
    }


def _purge_phase(
    dsn: str,
    schema: str,
    store: PostgresBackend[Any],
    clock: BatchClock,
    size: str,
    budget_s: float,
) -> dict[str, Any]:
    instances = sc.pick(size, PURGE_INSTANCES)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sc.query("TRUNCATE {s}.snapshots, {s}.history, {s}.tasks, {s}.claims", schema))
    blob = sc.capture_blob(store, dsn, _template("purge-template"))
    runs = (
        sc.Clones(
            "z", 1, instances, status="Completed", versions=2, history_versions=2, age=PURGE_AGE
        ),
    )
    build = sc.bulk_load(dsn, schema, blob, runs)
    db.checkpoint(dsn)
    history: list[int] = []

    def instances_deleted() -> list[int]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                sc.query("SELECT sum(n) FROM {s}.scale_deleted WHERE tbl = 'history'", schema)
            ).fetchone()
        history.append(int(row[0] or 0) if row else 0)
        return _deleted_per_transaction(dsn, schema, "snapshots")

    purge = _run_budgeted(
        clock,
        budget_s,
        lambda: store.purge_terminal(older_than=PURGE_OLDER_THAN, batch_size=BATCH),
        instances_deleted,
    )
    purge["history_rows_deleted"] = history[0] if history else None
    return {"instances": instances, "history_rows": instances * 2, "build_s": build, "purge": purge}


def _template(instance_id: str) -> WorkflowSnapshot:
    return WorkflowSnapshot(
        instance_id=instance_id, definition_hash="scale-retention-v1", position=AtTask("work")
    )


def _rate_checks(what: str, found: dict[str, Any], unit: str) -> list[dict[str, Any]]:
    rates = found.get("batch_rows_per_s") or {}
    median_rate = rates.get("median")
    steady = rates.get("last_vs_first")
    truncated = " (budget spent before the end: figures cover the batches done)"
    note = truncated if found.get("truncated") else ""
    return [
        sc.check(
            f"retention {what} >= {RATE_TARGET:,.0f} {unit}/s",
            sc.at_least(median_rate, RATE_TARGET),
            median_rate,
            f">= {RATE_TARGET:,.0f} {unit}/s (median batch)",
            f"median batch {median_rate} {unit}/s, overall {found.get('rows_per_s')}/s, "
            f"{found.get('rows')} deleted in {found.get('batches')} batches "
            f"(batch_size={BATCH}){note}",
        ),
        sc.check(
            f"retention {what} steady (last batches within {STEADY_FACTOR:g}x of the first)",
            sc.at_least(steady, 1 / STEADY_FACTOR),
            steady,
            f">= {1 / STEADY_FACTOR:.0%} of the first batches' rate",
            f"median of the last {ENDS} batches {rates.get(f'last_{ENDS}_median')}/s vs the first "
            f"{ENDS} {rates.get(f'first_{ENDS}_median')}/s{note}",
        ),
    ]


def run_retention(
    dsn: str,
    schema_prefix: str,
    *,
    size: str = "default",
    repeats: int = 5,
    prune_budget_s: float | None = None,
    purge_budget_s: float | None = None,
) -> dict[str, Any]:
    """prune_history and purge_terminal rates per batch, and saves beside the prune.

    The budgets default to the size's (`PRUNE_BUDGET_S`, `PURGE_BUDGET_S`); `make bench`
    passes shorter ones to stay inside its time budget (the per-batch rates need far fewer
    batches than a whole table's worth)."""
    began = time.perf_counter()
    prune_budget = sc.pick(size, PRUNE_BUDGET_S) if prune_budget_s is None else prune_budget_s
    purge_budget = sc.pick(size, PURGE_BUDGET_S) if purge_budget_s is None else purge_budget_s
    with sc.scratch_schema(dsn, schema_prefix, "ret") as schema:
        clock = BatchClock(dsn, schema)
        clock.open(wait=True)
        store = PostgresBackend[JsonCodec].from_pool(clock, schema=schema)
        install_delete_counter(dsn, schema)
        try:
            prune = _prune_phase(dsn, schema, store, clock, size, repeats, prune_budget)
            purge = _purge_phase(dsn, schema, store, clock, size, purge_budget)
        finally:
            clock.close()
    share = prune["saves_during_vs_without"]
    checks = _rate_checks("prune_history", prune["prune"], "rows")
    checks += _rate_checks("purge_terminal", purge["purge"], "instances")
    checks.append(
        sc.check(
            "retention: prune does not halve concurrent saves",
            sc.at_least(share, SAVES_FLOOR),
            share,
            f">= {SAVES_FLOOR:.0%} of saves/s without prune",
            f"{SAVERS} threads: {prune['saves_per_s_during_prune']} saves/s during prune vs "
            f"{prune['saves_per_s_without_prune']} just before (medians of {SAVE_WINDOW_S}s "
            "windows)",
        )
    )
    figures = {
        "prune_rows_per_s_median_batch": sc.figure(
            (prune["prune"].get("batch_rows_per_s") or {}).get("median"),
            "rows/s",
            f">= {RATE_TARGET:,.0f}",
        ),
        "purge_instances_per_s_median_batch": sc.figure(
            (purge["purge"].get("batch_rows_per_s") or {}).get("median"),
            "instances/s",
            f">= {RATE_TARGET:,.0f}",
        ),
        "saves_per_s_during_prune": sc.figure(
            prune["saves_per_s_during_prune"],
            "saves/s",
            f">= {SAVES_FLOOR:.0%} of reference",
            prune["saves_per_s_without_prune"],
        ),
    }
    return {
        "workload": "retention",
        "size": size,
        "repeats": repeats,
        "params": {
            "batch_size": BATCH,
            "savers": SAVERS,
            "keep_last": 1,
            "ends": ENDS,
            "prune_budget_s": prune_budget,
            "purge_budget_s": purge_budget,
        },
        "prune_history": prune,
        "purge_terminal": purge,
        "figures": figures,
        "checks": checks,
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
