"""PgQueuer dequeue throughput at a fixed backlog: a peer reference for snapstore dispatch.

Run by the throwaway venv's python (see bench/peers/__init__.py), never by the project's:

    .venv-peers/pgqueuer/bin/python bench/peers/pgqueuer_dequeue.py \
        --dsn postgresql://postgres@127.0.0.1:5432/test --seconds 10 --concurrency 8 \
        --backlog 1000000

What runs: PgQueuer's schema is installed by its own ``Queries.install()`` (what the
``pgq install`` CLI calls) into a fresh schema of our own (``--schema``, default
``peer_pgqueuer``; its NOTIFY channel is renamed too, since channels are database-wide). The
backlog is built by one ``INSERT ... SELECT generate_series`` per 100k rows into PgQueuer's
own queue table, then ANALYZEd. ``--concurrency`` QueueManagers, each on its own psycopg
connection (PsycopgDriver), run ``QueueManager.run(batch_size=...)`` in one asyncio process,
as PgQueuer's own tools/benchmark.py does; the entrypoint only counts. A refiller inserts
as many jobs as were consumed every 50 ms, so the queue stays at the backlog (``--no-refill``
lets it drain). jobs/s counts entrypoint calls inside the window; each ``Queries.dequeue``
call (one batch: the UPDATE ... FOR UPDATE SKIP LOCKED statement) is timed for latency.
Completion is PgQueuer's own buffered ``log_jobs`` (DELETE from the queue, INSERT into its
log), as in service. The schema is dropped at the end, whatever happens. Prints one JSON
object on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg  # type: ignore[import-not-found, unused-ignore]
from psycopg.conninfo import conninfo_to_dict  # type: ignore[import-not-found, unused-ignore]

# Run as a script by another venv's python: the repository root makes bench.peers importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.peers.script_support import logger, ms, percentile
from bench.peers.script_support import require_loopback as _require_loopback

ENTRYPOINT = "peer_bench"
FILL_CHUNK = 100_000
REFILL_EVERY_S = 0.05
WARMUP_S = 1.0
log = logger("pgqueuer")


def require_loopback(dsn: str) -> None:
    _require_loopback(conninfo_to_dict(dsn).get("host"))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    schema = args.schema
    if not re.fullmatch(r"peer_[a-z0-9_]{1,40}", schema):
        raise SystemExit("--schema must match peer_[a-z0-9_]+")
    # PgQueuer reads its object names from the environment once (db_settings()).
    os.environ["PGQUEUER_SCHEMA"] = schema
    os.environ["PGQUEUER_CHANNEL"] = f"{schema}_ch"
    os.environ["PGQUEUER_DURABILITY"] = args.durability
    from pgqueuer import PsycopgDriver, Queries, QueueManager  # type: ignore[import-not-found]
    from pgqueuer.domain.settings import db_settings  # type: ignore[import-not-found]

    db_settings.cache_clear()
    settings = db_settings()
    queue_table = settings.qualified.queue_table
    log_table = settings.qualified.queue_table_log
    status_type = settings.qualified.queue_status_type

    async def connect() -> Any:
        return await psycopg.AsyncConnection.connect(
            args.dsn, autocommit=True, application_name="peer_pgqueuer"
        )

    fill_sql = (
        f"INSERT INTO {queue_table} (priority, entrypoint, status, payload)"  # noqa: S608
        f" SELECT 0, '{ENTRYPOINT}', 'queued'::{status_type}, convert_to(md5(g::text), 'UTF8')"
        " FROM generate_series(1, %s) AS g"
    )
    admin = await connect()
    consumers: list[Any] = []
    result: dict[str, Any] = {}
    try:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await Queries(PsycopgDriver(admin)).install()
        server = (await (await admin.execute("SHOW server_version")).fetchone())[0]
        durability = {
            name: (await (await admin.execute(f"SHOW {name}")).fetchone())[0]
            for name in ("fsync", "synchronous_commit")
        }

        t0 = time.perf_counter()
        left = args.backlog
        while left > 0:
            n = min(FILL_CHUNK, left)
            await admin.execute(fill_sql, (n,))
            left -= n
            if args.backlog > FILL_CHUNK:
                log(f"backlog {args.backlog - left:,}/{args.backlog:,}")
        await admin.execute(f"ANALYZE {queue_table}")
        fill_s = time.perf_counter() - t0
        log(f"backlog of {args.backlog:,} built in {fill_s:.1f} s; starting consumers")

        consumed = 0
        window: dict[str, float] = {}
        in_window = 0
        dequeues: list[tuple[float, int]] = []

        def timed(inner: Callable[..., Awaitable[list[Any]]]) -> Callable[..., Awaitable[Any]]:
            async def dequeue(*a: Any, **kw: Any) -> list[Any]:
                start = time.perf_counter()
                jobs = await inner(*a, **kw)
                if "start" in window and "end" not in window:
                    dequeues.append((time.perf_counter() - start, len(jobs)))
                return jobs

            return dequeue

        for _ in range(args.concurrency):
            conn = await connect()
            queries = Queries(PsycopgDriver(conn))
            queries.dequeue = timed(queries.dequeue)
            qm = QueueManager(queries)

            @qm.entrypoint(ENTRYPOINT)  # type: ignore[untyped-decorator, unused-ignore]
            async def handle(job: Any) -> None:
                nonlocal consumed, in_window
                consumed += 1
                if "start" in window and "end" not in window:
                    in_window += 1

            consumers.append((conn, qm))

        stop_refill = asyncio.Event()
        refilled = 0

        async def refill() -> None:
            nonlocal refilled
            conn = await connect()
            try:
                while not stop_refill.is_set():
                    await asyncio.sleep(REFILL_EVERY_S)
                    if (n := consumed - refilled) > 0:
                        await conn.execute(fill_sql, (n,))
                        refilled += n
            finally:
                await conn.close()

        async def queued() -> int:
            sql = f"SELECT count(*) FROM {queue_table} WHERE status = 'queued'"  # noqa: S608
            return int((await (await admin.execute(sql)).fetchone())[0])

        runs = [
            asyncio.create_task(
                qm.run(
                    batch_size=args.batch_size,
                    dequeue_timeout=timedelta(seconds=1),
                )
            )
            for _, qm in consumers
        ]
        refiller = asyncio.create_task(refill()) if args.refill else None
        await asyncio.sleep(WARMUP_S)
        depth_start = await queued()
        try:  # open the window right after a CHECKPOINT, as bench/ does, when permitted
            await admin.execute("CHECKPOINT")
        except psycopg.Error as exc:
            log(f"no CHECKPOINT before the window: {type(exc).__name__}")
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        wal0 = (await (await admin.execute("SELECT pg_current_wal_lsn()")).fetchone())[0]
        window["start"] = time.perf_counter()
        marks = [(window["start"], in_window)]
        for _ in range(args.windows):  # consecutive windows: the caller takes the median
            await asyncio.sleep(args.seconds)
            marks.append((time.perf_counter(), in_window))
        window["end"] = marks[-1][0]
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        wal_sql = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)"
        wal_bytes = int((await (await admin.execute(wal_sql, (wal0,))).fetchone())[0])
        depth_end = await queued()
        elapsed = window["end"] - window["start"]
        done_in_window = marks[-1][1]
        rates = [(c1 - c0) / (t1 - t0) for (t0, c0), (t1, c1) in itertools.pairwise(marks)]

        for _, qm in consumers:
            qm.shutdown.set()
        stop_refill.set()
        waited = [*runs, *([refiller] if refiller else [])]
        _, pending = await asyncio.wait(waited, timeout=30)
        for task in pending:
            task.cancel()
        errors = [
            repr(t.exception())
            for t in waited
            if t.done() and not t.cancelled() and t.exception() is not None
        ]
        logged_sql = f"SELECT count(*) FROM {log_table} WHERE status = 'successful'"  # noqa: S608
        logged = int((await (await admin.execute(logged_sql)).fetchone())[0])

        full = [d for d, n in dequeues if n > 0]
        sizes = [n for _, n in dequeues if n > 0]
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        result = {
            "peer": "pgqueuer",
            "versions": {p: metadata.version(p) for p in ("pgqueuer", "psycopg", "psycopg-binary")},
            "server_version": server,
            "server_durability": durability,
            "pgqueuer_durability": args.durability,
            "driver": "psycopg (PsycopgDriver, AsyncConnection autocommit)",
            "event_loop": "uvloop" if args.uvloop else "asyncio",
            "concurrency": args.concurrency,
            "batch_size": args.batch_size,
            "backlog": args.backlog,
            "refill": args.refill,
            "backlog_fill_s": round(fill_s, 2),
            "queued_at_window_start": depth_start,
            "queued_at_window_end": depth_end,
            "seconds": round(elapsed, 3),
            "jobs": done_in_window,
            "windows": args.windows,
            "window_s": args.seconds,
            "jobs_per_s": round(statistics.median(rates), 1),
            "jobs_per_s_windows": [round(r, 1) for r in rates],
            "jobs_per_s_overall": round(done_in_window / elapsed, 1),
            "dequeue_calls": len(dequeues),
            "empty_dequeue_calls": len(dequeues) - len(full),
            "mean_batch": round(statistics.fmean(sizes), 2) if sizes else None,
            "dequeue_ms_p50": ms(percentile(full, 0.50)),
            "dequeue_ms_p99": ms(percentile(full, 0.99)),
            "dequeue_ms_mean": ms(statistics.fmean(full)) if full else None,
            "client_cpu_cores": round(cpu / elapsed, 2),
            "wal_bytes_per_job_serverwide": (
                round(wal_bytes / done_in_window, 1) if done_in_window else None
            ),
            "jobs_logged_successful_total": logged,
            "jobs_consumed_total": consumed,
            "errors": errors,
        }
        log(f"{result['jobs_per_s']:,} jobs/s, dequeue p50 {result['dequeue_ms_p50']} ms")
    finally:
        for conn, _ in consumers:
            await conn.close()
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
        log(f"dropped schema {schema}")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--seconds", type=float, default=10.0, help="one measured window")
    parser.add_argument(
        "--windows", type=int, default=1, help="consecutive windows; jobs_per_s is their median"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="QueueManagers")
    parser.add_argument("--backlog", type=int, default=10_000, help="jobs queued before start")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument(
        "--refill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-insert what was consumed every 50 ms so the backlog holds (default on)",
    )
    parser.add_argument(
        "--durability",
        choices=("durable", "balanced", "volatile"),
        default="durable",
        help="PgQueuer table durability (durable: logged)",
    )
    parser.add_argument("--schema", default="peer_pgqueuer")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args(argv)
    if not (0 < args.seconds <= 600 and 0 < args.concurrency <= 64 and args.backlog >= 0):
        parser.error("need 0 < --seconds <= 600, 0 < --concurrency <= 64, --backlog >= 0")
    if not 0 < args.windows <= 50:
        parser.error("need 0 < --windows <= 50")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_loopback(args.dsn)
    try:
        if args.uvloop:
            import uvloop  # type: ignore[import-not-found]

            result = uvloop.run(run(args))
        else:
            result = asyncio.run(run(args))
    except Exception as exc:  # report, do not crash: the caller wants a reason
        print(json.dumps({"peer": "pgqueuer", "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
