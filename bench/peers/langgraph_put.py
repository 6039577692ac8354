"""LangGraph PostgresSaver put throughput: a peer reference for snapstore's single save.

Run by the throwaway venv's python (see bench/peers/__init__.py), never by the project's:

    .venv-peers/langgraph/bin/python bench/peers/langgraph_put.py \
        --dsn postgresql://postgres@127.0.0.1:5432/test --seconds 10 --concurrency 8

What runs: a fresh schema of our own (``--schema``, default ``peer_langgraph``, reached through
``search_path`` because PostgresSaver's SQL names its tables unqualified) set up by the
saver's own ``setup()``. ``--concurrency`` threads, each with its own sync ``PostgresSaver``
on its own connection (opened as ``PostgresSaver.from_conn_string`` does: autocommit,
prepare_threshold=0, dict_row), drive LangGraph threads (thread_id) of their own, one after
another. A thread_id starts with a checkpoint carrying ``--channels`` task outputs of about
``--value-bytes`` each (dict values, so the saver stores them as blobs, as it does for
anything but a str/number/bool), then takes ``--steps`` steps; each step changes one output
and bumps its ``channel_versions`` entry (``get_next_version``), so ``put`` writes that one
blob plus the checkpoint row. ``--mode put`` times ``put`` alone; ``--mode step`` does what
LangGraph's loop does per step with one task: ``put_writes`` of the task's write against the
current checkpoint, then ``put`` of the next one (each timed; the step is the pair).
Operations are counted in a window after a 1 s warm-up. Server execution time per put comes
from pg_stat_statements when the server has it loaded, else it is reported unavailable. The
schema is dropped at the end, whatever happens. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import resource
import statistics
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg  # type: ignore[import-not-found, unused-ignore]
from psycopg.conninfo import conninfo_to_dict  # type: ignore[import-not-found, unused-ignore]

# Run as a script by another venv's python: the repository root makes bench.peers importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from psycopg.rows import dict_row  # type: ignore[import-not-found, unused-ignore]

from bench.peers.script_support import logger, ms, percentile
from bench.peers.script_support import require_loopback as _require_loopback

WARMUP_S = 1.0
log = logger("langgraph")


def require_loopback(dsn: str) -> None:
    _require_loopback(conninfo_to_dict(dsn).get("host"))


def connect(dsn: str, schema: str) -> Any:
    """A connection as ``PostgresSaver.from_conn_string`` opens one, on our schema."""
    conn = psycopg.Connection.connect(
        dsn,
        autocommit=True,
        prepare_threshold=0,
        row_factory=dict_row,
        application_name="peer_langgraph",
    )
    conn.execute(f"SET search_path TO {schema}")
    return conn


def scalar(conn: Any, sql: str, params: tuple[Any, ...] | None = None) -> Any:
    """The first column of the first row (dict_row connections)."""
    row = conn.execute(sql, params).fetchone()
    return next(iter(row.values()))


def checkpoint(conn: Any) -> None:
    """Open the window right after a CHECKPOINT, as bench/ does, when the role may run one."""
    try:
        conn.execute("CHECKPOINT")
    except psycopg.Error as exc:
        log(f"no CHECKPOINT before the window: {type(exc).__name__}")


STATEMENTS_SQL = """
    SELECT coalesce(sum(calls), 0) AS calls, coalesce(sum(total_exec_time), 0) AS ms
    FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND query ILIKE %s
"""


def statement_stats(conn: Any) -> dict[str, tuple[float, float]] | str:
    """Per-table (calls, exec ms) of the saver's INSERTs, or why they cannot be had."""
    if "pg_stat_statements" not in str(scalar(conn, "SHOW shared_preload_libraries")):
        return "unavailable: pg_stat_statements is not in shared_preload_libraries"
    try:
        out: dict[str, tuple[float, float]] = {}
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            row = conn.execute(STATEMENTS_SQL, (f"INSERT INTO {table} %",)).fetchone()
            out[table] = (float(row["calls"]), float(row["ms"]))
        return out
    except psycopg.Error as exc:
        return f"unavailable: {type(exc).__name__}"


class Worker(threading.Thread):
    """One thread, one saver, one connection, driving its own thread_ids until told to stop."""

    def __init__(self, idx: int, args: argparse.Namespace, stop: threading.Event) -> None:
        super().__init__(name=f"peer-langgraph-{idx}", daemon=True)
        self.idx = idx
        self.args = args
        self.stop = stop
        # (end time, latency, kind) of every completed operation.
        self.ops: list[tuple[float, float, str]] = []
        self.error: str | None = None
        self.blob_bytes: int | None = None

    def run(self) -> None:
        from langgraph.checkpoint.base import empty_checkpoint  # type: ignore[import-not-found]
        from langgraph.checkpoint.base.id import uuid6  # type: ignore[import-not-found]
        from langgraph.checkpoint.postgres import (  # type: ignore[import-not-found]
            PostgresSaver,
        )

        args = self.args
        channels = [f"task_{i}" for i in range(args.channels)]
        filler = "x" * max(0, args.value_bytes - 16)  # msgpack adds ~16 B
        conn = None
        try:
            conn = connect(args.dsn, args.schema)
            saver = PostgresSaver(conn)
            self.blob_bytes = len(saver.serde.dumps_typed({"output": filler, "step": 0})[1])
            perf = time.perf_counter
            ops = self.ops
            n_thread = 0
            while not self.stop.is_set():
                n_thread += 1
                thread_id = f"peer-{self.idx}-{n_thread}"
                config: dict[str, Any] = {
                    "configurable": {"thread_id": thread_id, "checkpoint_ns": ""}
                }
                cp = empty_checkpoint()
                versions: dict[str, Any] = {}
                for ch in channels:
                    versions[ch] = saver.get_next_version(None, None)
                    cp["channel_values"][ch] = {"output": filler, "step": 0}
                cp["channel_versions"] = dict(versions)
                cp["updated_channels"] = list(channels)
                meta = {"source": "input", "step": -1, "parents": {}}
                t0 = perf()
                config = saver.put(config, cp, meta, dict(versions))
                ops.append((perf(), perf() - t0, "put"))
                for step in range(args.steps):
                    if self.stop.is_set():
                        break
                    ch = channels[step % len(channels)]
                    value = {"output": filler, "step": step + 1}
                    task_id = str(uuid6(clock_seq=step))
                    if args.mode == "step":
                        t0 = perf()
                        saver.put_writes(config, [(ch, value)], task_id)
                        ops.append((perf(), perf() - t0, "put_writes"))
                    versions[ch] = saver.get_next_version(versions[ch], None)
                    nxt = empty_checkpoint()
                    nxt["id"] = str(uuid6(clock_seq=step + 1))
                    nxt["channel_values"] = {**cp["channel_values"], ch: value}
                    nxt["channel_versions"] = dict(versions)
                    nxt["versions_seen"] = {**cp["versions_seen"], ch: {ch: versions[ch]}}
                    nxt["updated_channels"] = [ch]
                    meta = {"source": "loop", "step": step, "parents": {}}
                    t1 = perf()
                    config = saver.put(config, nxt, meta, {ch: versions[ch]})
                    end = perf()
                    ops.append((end, end - t1, "put"))
                    if args.mode == "step":
                        ops.append((end, end - t0, "step"))
                    cp = nxt
        except Exception as exc:  # reported in the JSON, the run goes on without this thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if conn is not None:
                conn.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from langgraph.checkpoint.postgres import PostgresSaver

    schema = args.schema
    if not re.fullmatch(r"peer_[a-z0-9_]{1,40}", schema):
        raise SystemExit("--schema must match peer_[a-z0-9_]+")
    admin = psycopg.Connection.connect(args.dsn, autocommit=True, row_factory=dict_row)
    try:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.execute(f"CREATE SCHEMA {schema}")
        with connect(args.dsn, schema) as conn:
            PostgresSaver(conn).setup()
        server = scalar(admin, "SHOW server_version")
        durability = {
            name: scalar(admin, f"SHOW {name}") for name in ("fsync", "synchronous_commit")
        }

        stop = threading.Event()
        workers = [Worker(i, args, stop) for i in range(args.concurrency)]
        for w in workers:
            w.start()
        time.sleep(WARMUP_S)
        admin.execute(f"ANALYZE {schema}.checkpoints, {schema}.checkpoint_blobs")
        checkpoint(admin)
        stats0 = statement_stats(admin)
        wal0 = scalar(admin, "SELECT pg_current_wal_lsn()")
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        time.sleep(args.seconds * args.windows)
        end = time.perf_counter()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        wal_sql = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)"
        wal_bytes = int(scalar(admin, wal_sql, (wal0,)))
        stats1 = statement_stats(admin)
        stop.set()
        for w in workers:
            w.join(timeout=30)
        elapsed = end - start

        def window(kind: str) -> list[float]:
            return [lat for w in workers for (t, lat, k) in w.ops if k == kind and start < t <= end]

        puts = window("put")
        # Consecutive windows of --seconds each: the rates are their medians.
        bounds = [start + i * (end - start) / args.windows for i in range(args.windows + 1)]

        def rates(kind: str) -> list[float]:
            ends = [t for w in workers for (t, _lat, k) in w.ops if k == kind]
            return [
                sum(1 for t in ends if lo < t <= hi) / (hi - lo)
                for lo, hi in itertools.pairwise(bounds)
            ]

        put_rates = rates("put")
        result: dict[str, Any] = {
            "peer": "langgraph",
            "versions": {
                p: metadata.version(p)
                for p in (
                    "langgraph-checkpoint-postgres",
                    "langgraph-checkpoint",
                    "psycopg",
                    "psycopg-binary",
                    "psycopg-pool",
                    "ormsgpack",
                )
            },
            "server_version": server,
            "server_durability": durability,
            "saver": "PostgresSaver (sync), one per thread, own connection, no pipeline",
            "mode": args.mode,
            "measured": "put" if args.mode == "put" else "put_writes + put per step",
            "concurrency": args.concurrency,
            "channels": args.channels,
            "steps_per_thread_id": args.steps,
            "value_blob_bytes": workers[0].blob_bytes,
            "seconds": round(elapsed, 3),
            "puts": len(puts),
            "windows": args.windows,
            "window_s": args.seconds,
            "puts_per_s": round(statistics.median(put_rates), 1),
            "puts_per_s_windows": [round(r, 1) for r in put_rates],
            "puts_per_s_overall": round(len(puts) / elapsed, 1),
            "put_ms_p50": ms(percentile(puts, 0.50)),
            "put_ms_p99": ms(percentile(puts, 0.99)),
            "put_ms_mean": ms(statistics.fmean(puts)) if puts else None,
            "client_cpu_cores": round(
                (cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime) / elapsed, 2
            ),
            "wal_bytes_per_put_serverwide": round(wal_bytes / len(puts), 1) if puts else None,
            "errors": [w.error for w in workers if w.error],
        }
        if args.mode == "step":
            writes, steps = window("put_writes"), window("step")
            result |= {
                "put_writes_ms_p50": ms(percentile(writes, 0.50)),
                "put_writes_ms_p99": ms(percentile(writes, 0.99)),
                "steps_per_s": round(statistics.median(rates("step")), 1),
                "steps_per_s_windows": [round(r, 1) for r in rates("step")],
                "step_ms_p50": ms(percentile(steps, 0.50)),
                "step_ms_p99": ms(percentile(steps, 0.99)),
            }
        if isinstance(stats0, str) or isinstance(stats1, str):
            result["server_exec_ms_per_put"] = stats1 if isinstance(stats1, str) else stats0
        else:
            per_table = {
                t: (stats1[t][0] - stats0[t][0], stats1[t][1] - stats0[t][1]) for t in stats1
            }
            calls = per_table["checkpoints"][0]
            if calls:
                put_ms = per_table["checkpoints"][1] + per_table["checkpoint_blobs"][1]
                result["server_exec_ms_per_put"] = round(put_ms / calls, 4)
        log(f"{result['puts_per_s']:,} puts/s, p50 {result['put_ms_p50']} ms")
        return result
    finally:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()
        log(f"dropped schema {schema}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--seconds", type=float, default=10.0, help="one measured window")
    parser.add_argument(
        "--windows", type=int, default=1, help="consecutive windows; rates are their medians"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="threads, one saver each")
    parser.add_argument(
        "--mode",
        choices=("put", "step"),
        default="step",
        help="step: put_writes + put, as LangGraph's loop per step (default); put: put only",
    )
    parser.add_argument("--channels", type=int, default=10, help="task outputs per checkpoint")
    parser.add_argument("--value-bytes", type=int, default=200, help="size of one task output")
    parser.add_argument("--steps", type=int, default=10, help="steps per thread_id")
    parser.add_argument("--schema", default="peer_langgraph")
    args = parser.parse_args(argv)
    if not (0 < args.seconds <= 600 and 0 < args.concurrency <= 64 and args.channels > 0):
        parser.error("need 0 < --seconds <= 600, 0 < --concurrency <= 64, --channels > 0")
    if not 0 < args.windows <= 50:
        parser.error("need 0 < --windows <= 50")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_loopback(args.dsn)
    try:
        result = run(args)
    except Exception as exc:  # report, do not crash: the caller wants a reason
        print(json.dumps({"peer": "langgraph", "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
