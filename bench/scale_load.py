"""Scale workload ``load_big``: does load() move big task outputs at the wire's speed?

A task output is stored once, in ``tasks.output``, and `load` hydrates it into the snapshot.
With multi-megabyte outputs, anything beyond fetching the bytes (text instead of binary
transfer, extra copies, a slow decoder) shows up as a throughput gap to the plain
``SELECT output FROM tasks`` over psycopg with ``binary=True``, the reference here; and as
peak memory several times the payload.

Throughput: outputs of 1 MB and 10 MB, as ``str`` (JsonCodec) and as ``bytes``
(MsgpackCodec; JSON has no bytes), random so that TOAST compression plays no part; load and
raw windows alternate, MB/s of payload, medians over ``repeats`` windows each.

Memory: one 100 MB output loaded in a fresh SUBPROCESS (``python -m bench.scale_load
--probe``), peak RSS (``ru_maxrss``) after the call minus the peak after connecting; the raw
SELECT's peak the same way.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import db
from bench import scale_common as sc
from snapstore import AtTask, PostgresBackend, TaskResult, WorkflowSnapshot

MB = 1_000_000
SIZES_MB = (1, 10)
BIG_MB = {"tiny": 5, "small": 20, "default": 100, "large": 300}
WINDOW_BYTES = 20 * MB  # each window moves about this much (at least one call)
THROUGHPUT_SHARE = 0.8
MEMORY_FACTOR = 3.0
TASK = "big"
KINDS = {"str": "json", "bytes": "msgpack"}  # payload type -> the codec that stores it
PROJECT = Path(__file__).resolve().parent.parent


def _payload(kind: str, size: int) -> str | bytes:
    """Random, so neither the codec nor TOAST can compress it away."""
    if kind == "bytes":
        return os.urandom(size)
    return base64.b64encode(os.urandom(size * 3 // 4)).decode()[:size]


def _instance(kind: str, size: int) -> str:
    return f"{kind}-{size}"


def _store(dsn: str, schema: str, kind: str, size: int) -> None:
    """Save one instance whose single task output is the payload, through the public API."""
    backend = db.open_backend(dsn, KINDS[kind], schema, pool_size=2)
    try:
        backend.save(
            WorkflowSnapshot(
                instance_id=_instance(kind, size),
                definition_hash="scale-load-v1",
                position=AtTask("next"),
                task_results={TASK: TaskResult(output=_payload(kind, size))},
            )
        )
    finally:
        backend.close()


def _raw_select(conn: psycopg.Connection[Any], schema: str, instance_id: str) -> bytes:
    cur = conn.cursor(binary=True)
    cur.execute(
        sc.query("SELECT output FROM {s}.tasks WHERE instance_id = %s AND task_id = %s", schema),
        (instance_id, TASK),
    )
    row = cur.fetchone()
    assert row is not None
    return bytes(row[0])


def _loaded(backend: PostgresBackend[Any], instance_id: str) -> Any:
    stored = backend.load(instance_id)
    assert stored is not None
    return stored.snapshot.task_results[TASK].output


def _window_mb_s(call: Callable[[], object], size: int) -> float:
    calls = max(1, WINDOW_BYTES // size)
    began = time.perf_counter()
    for _ in range(calls):
        call()
    return calls * size / MB / (time.perf_counter() - began)


def _throughput(dsn: str, schema: str, repeats: int) -> dict[str, Any]:
    backend = db.open_backend(dsn, sc.CODEC, schema, pool_size=2)
    results: dict[str, Any] = {}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for kind in KINDS:
                for size_mb in SIZES_MB:
                    size = size_mb * MB
                    iid = _instance(kind, size)
                    value = _loaded(backend, iid)  # warm, and check the round trip
                    assert len(value) == size, f"{iid}: loaded {len(value)} of {size}"
                    _raw_select(conn, schema, iid)
                    load_rates, raw_rates = [], []
                    for _ in range(repeats):
                        raw_rates.append(
                            _window_mb_s(functools.partial(_raw_select, conn, schema, iid), size)
                        )
                        load_rates.append(
                            _window_mb_s(functools.partial(_loaded, backend, iid), size)
                        )
                    load_mb_s, raw_mb_s = sc.median(load_rates), sc.median(raw_rates)
                    results[f"{kind}_{size_mb}mb"] = {
                        "load_mb_s": sc.rounded(load_mb_s),
                        "raw_mb_s": sc.rounded(raw_mb_s),
                        "load_vs_raw": sc.ratio(load_mb_s, raw_mb_s),
                        "load_windows": [round(v, 1) for v in load_rates],
                        "raw_windows": [round(v, 1) for v in raw_rates],
                    }
    finally:
        backend.close()
    return results


STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _baseline() -> tuple[int, str]:
    """The peak-RSS baseline, taken once connected. ``ru_maxrss`` alone would do, except that
    Linux carries it over from the parent across fork+exec (the parent holds the payloads, so
    the child would start "at" the parent's peak and show no growth). So where the kernel
    allows, the high-water mark is reset (``clear_refs`` 5) and read as VmHWM, which counts
    this process's own address space only."""
    try:
        CLEAR_REFS.write_text("5")
        hwm = _status_kb("VmHWM")
        if hwm is not None:
            return hwm, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def _peak(method: str) -> int:
    hwm = _status_kb("VmHWM") if method == "VmHWM" else None
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def probe(dsn: str, schema: str, instance_id: str, mode: str) -> dict[str, Any]:
    """In a fresh process: peak RSS growth (KiB) of one load() (or one raw SELECT)."""
    if mode == "raw":
        with psycopg.connect(dsn, autocommit=True) as conn:
            baseline, method = _baseline()
            size = len(_raw_select(conn, schema, instance_id))
            peak = _peak(method)
    else:
        backend = db.open_backend(dsn, sc.CODEC, schema, pool_size=2)
        try:
            baseline, method = _baseline()
            size = len(_loaded(backend, instance_id))
            peak = _peak(method)
        finally:
            backend.close()
    return {
        "method": method,
        "baseline_kb": baseline,
        "peak_kb": peak,
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "payload_len": size,
    }


def _probe_subprocess(dsn: str, schema: str, instance_id: str, mode: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.scale_load", "--probe", dsn, schema, instance_id, mode]
    done = subprocess.run(
        command, cwd=PROJECT, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:]}
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def _memory(dsn: str, schema: str, size_mb: int) -> dict[str, Any]:
    size = size_mb * MB
    results: dict[str, Any] = {"payload_mb": size_mb}
    for kind in KINDS:
        _store(dsn, schema, kind, size)
    modes = [(f"load_{kind}", _instance(kind, size), "load") for kind in KINDS]
    modes.append(("raw_select", _instance("str", size), "raw"))
    for name, iid, mode in modes:
        found = _probe_subprocess(dsn, schema, iid, mode)
        if "peak_kb" in found:
            grown = (found["peak_kb"] - found["baseline_kb"]) * 1024
            found["peak_growth_mb"] = round(grown / MB, 1)
            found["peak_vs_payload"] = round(grown / size, 2)
        results[name] = found
    return results


def _checks(found: dict[str, Any], memory: dict[str, Any]) -> list[dict[str, Any]]:
    checks = [
        sc.check(
            f"load() >= {THROUGHPUT_SHARE:.0%} of raw SELECT throughput [{name}]",
            sc.at_least(got["load_vs_raw"], THROUGHPUT_SHARE),
            got["load_vs_raw"],
            f">= {THROUGHPUT_SHARE:.0%}",
            f"load {got['load_mb_s']} MB/s vs raw binary SELECT {got['raw_mb_s']} MB/s "
            "(medians of windows)",
        )
        for name, got in found.items()
    ]
    raw = memory.get("raw_select", {}).get("peak_vs_payload")
    for kind in KINDS:
        got = memory.get(f"load_{kind}", {})
        share = got.get("peak_vs_payload")
        checks.append(
            sc.check(
                f"load() peak memory < {MEMORY_FACTOR:g}x payload [{kind} "
                f"{memory['payload_mb']} MB]",
                None if share is None else share < MEMORY_FACTOR,
                share,
                f"< {MEMORY_FACTOR:g}x",
                f"peak RSS growth {got.get('peak_growth_mb')} MB for a {memory['payload_mb']} MB "
                f"output; raw SELECT {raw}x"
                + (f"; probe failed: {got['error']}" if "error" in got else ""),
            )
        )
    return checks


def run_load_big(
    dsn: str, schema_prefix: str, *, size: str = "default", repeats: int = 5
) -> dict[str, Any]:
    """load() MB/s vs a raw binary SELECT for 1 and 10 MB outputs; peak memory at 100 MB."""
    began = time.perf_counter()
    big_mb = sc.pick(size, BIG_MB)
    with sc.scratch_schema(dsn, schema_prefix, "load") as schema:
        for kind in KINDS:
            for size_mb in SIZES_MB:
                _store(dsn, schema, kind, size_mb * MB)
        db.analyze(dsn, schema)
        found = _throughput(dsn, schema, repeats)
        memory = _memory(dsn, schema, big_mb)
    figures = {
        f"load_mb_s_{name}": sc.figure(
            got["load_mb_s"], "MB/s", f">= {THROUGHPUT_SHARE:.0%} of raw", got["raw_mb_s"]
        )
        for name, got in found.items()
    } | {
        f"peak_vs_payload_{kind}": sc.figure(
            memory.get(f"load_{kind}", {}).get("peak_vs_payload"),
            "x payload",
            f"< {MEMORY_FACTOR:g}",
            {"raw_select": memory.get("raw_select", {}).get("peak_vs_payload")},
        )
        for kind in KINDS
    }
    return {
        "workload": "load_big",
        "size": size,
        "repeats": repeats,
        "params": {"sizes_mb": list(SIZES_MB), "kinds": KINDS, "memory_payload_mb": big_mb},
        "throughput": found,
        "memory": memory,
        "figures": figures,
        "checks": _checks(found, memory),
        "elapsed_s": round(time.perf_counter() - began, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """``--probe DSN SCHEMA INSTANCE load|raw``: the memory probe's subprocess side."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale_load")
    parser.add_argument("--probe", nargs=4, metavar=("DSN", "SCHEMA", "INSTANCE", "MODE"))
    args = parser.parse_args(argv)
    if not args.probe:
        parser.error("only --probe is run directly; use python -m bench.scale --only load_big")
    dsn, schema, instance_id, mode = args.probe
    print(json.dumps(probe(dsn, schema, instance_id, mode)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
