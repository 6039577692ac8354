"""snapstore's single save on LangGraph's checkpoint shape, the figure held against its put.

The issue's target is "single save at 8 threads >= LangGraph per-thread's rate on the same
checkpoint shape (10 task outputs of ~200 B, one new per step)". The ``saves`` workload has
another shape (5 outputs of ~50 B, one added per step), so comparing its rate with
LangGraph's would compare two workloads, not two stores. Here each thread drives workflows
back to back, each shaped like the LangGraph peer's thread_id (`bench.peers.langgraph_put`
with ``--channels CHANNELS --value-bytes VALUE_BYTES --steps STEPS``): created with
``CHANNELS`` task results of ~``VALUE_BYTES`` B each (one save, as LangGraph's first put),
then ``STEPS`` steps, each replacing one result by a new TaskResult with a new output (the
other results carried over as the same objects, as a workflow engine does) and saving once
with CAS (``expected_version``), as LangGraph puts once per step.

json codec, sync `PostgresBackend`, one backend per run with a pool of threads + 2, a
fresh schema (``<prefix>shape``, dropped after); a warm-up, then ANALYZE + CHECKPOINT, then
``windows`` windows (`scale_common.threaded_windows`). `bench.peer_plan` measures this
right before and right after the LangGraph runs and pools the windows (`pooled`), so both
stores are measured side by side in time.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from bench import db
from bench import scale_common as sc
from bench.stats import Recorder
from snapstore import AtTask, PostgresBackend, TaskResult, WorkflowSnapshot

CODEC = sc.CODEC
CHANNELS = 10  # task outputs per checkpoint
VALUE_BYTES = 200  # about the encoded size of one output
STEPS = 10  # steps per workflow (LangGraph: per thread_id), each replacing one output
SCHEMA_NAME = "shape"
ERROR_PAUSE_S = 0.05
_FILLER = "x" * (VALUE_BYTES - 20)  # {"v":"...","n":N} adds ~15-20 B of JSON around it


def task_id(k: int) -> str:
    return f"task_{k}"


def output(n: int) -> dict[str, Any]:
    """One task output of ~VALUE_BYTES encoded; ``n`` makes every new output differ."""
    return {"v": _FILLER, "n": n}


def output_bytes() -> int:
    """The encoded size of one output (json), reported next to LangGraph's blob size."""
    return len(msgspec.json.encode(output(STEPS)))


def _result(n: int) -> TaskResult:
    now = datetime.now(UTC)
    return TaskResult(output=output(n), worker_id="bench", started_at=now, completed_at=now)


def create(instance_id: str) -> WorkflowSnapshot:
    """A workflow's first checkpoint: CHANNELS task results, as LangGraph's first put."""
    return WorkflowSnapshot(
        instance_id=instance_id,
        definition_hash="bench-langgraph-shape-v1",
        position=AtTask(task_id(0)),
        input={"thread": instance_id},
        task_results={task_id(k): _result(k) for k in range(CHANNELS)},
        created_at=datetime.now(UTC),
    )


def step(snap: WorkflowSnapshot, n: int) -> WorkflowSnapshot:
    """Step ``n`` (0-based): task ``n % CHANNELS`` gets a new result; the others are the
    same objects, so the store sees one changed task, as LangGraph's put sees one blob."""
    replaced = task_id(n % CHANNELS)
    return msgspec.structs.replace(
        snap,
        position=AtTask(task_id((n + 1) % CHANNELS)),
        task_results={**snap.task_results, replaced: _result(CHANNELS + n)},
    )


def _drive(
    backend: PostgresBackend[Any],
    tag: str,
    counter: sc.Counter,
    errors: Recorder,
    slot: int,
    stop: threading.Event,
) -> None:
    """One thread: workflows back to back, one save to create, one CAS save per step."""
    ids = itertools.count()
    while not stop.is_set():
        snap = create(f"{tag}-{slot}-{next(ids)}")
        try:
            version = backend.save(snap)
            counter.add(slot)
            for n in range(STEPS):
                if stop.is_set():
                    break
                snap = step(snap, n)
                version = backend.save(snap, expected_version=version)
                counter.add(slot)
        except Exception as exc:  # counted, never raised: the figures report it
            errors.error(exc)
            time.sleep(ERROR_PAUSE_S)


def measure(
    dsn: str,
    schema_prefix: str,
    label: str,
    *,
    threads: int,
    windows: int,
    seconds: float,
    warmup: float,
) -> dict[str, Any]:
    """saves/s on the shape in ``windows`` windows of ``seconds``, on a fresh schema; a
    crash is reported as ``error`` (never raised), as a peer's is."""
    schema = db.schema_for(SCHEMA_NAME, schema_prefix)
    counter = sc.Counter(threads)
    errors = Recorder()
    found: dict[str, Any] = {"label": label, "threads": threads, "window_s": seconds}
    try:
        db.fresh_schema(dsn, schema, CODEC)
        backend = db.open_backend(dsn, CODEC, schema, pool_size=threads + 2)
        try:
            rates = sc.threaded_windows(
                functools.partial(_drive, backend, label, counter, errors),
                threads,
                counter.total,
                warmup=warmup,
                settle=functools.partial(db.settle, dsn, schema),
                windows=windows,
                seconds=seconds,
            )
        finally:
            backend.close()
        found |= {
            "saves_per_s": sc.rounded(sc.median(rates)),
            "windows": [round(r, 1) for r in rates],
        }
    except Exception as exc:
        found["error"] = repr(exc)[:500]
    finally:
        db.drop_schema(dsn, schema)
    found |= {"errors": dict(errors.errors), "first_errors": dict(errors.first_error)}
    return found


def pooled(halves: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The figure the verdict uses: the median of every window of every half (``before``
    and ``after`` the peer), each half kept as measured; ``error`` says which half failed."""
    windows = [float(w) for half in halves.values() for w in half.get("windows") or []]
    failed = [f"{name}: {half['error']}" for name, half in halves.items() if half.get("error")]
    threads = next((half.get("threads") for half in halves.values()), None)
    return {
        "workload": "langgraph_shape",
        "codec": CODEC,
        "threads": threads,
        "shape": {
            "channels": CHANNELS,
            "steps": STEPS,
            "output_bytes": output_bytes(),
            "per_step": "one TaskResult replaced, one CAS save",
        },
        "saves_per_s": sc.rounded(sc.median(windows)),
        "windows": windows,
        "window_s": next((half.get("window_s") for half in halves.values()), None),
        "halves": dict(halves),
        "error": "; ".join(failed) or None,
    }
