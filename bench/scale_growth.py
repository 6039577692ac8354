"""Scale workload ``task_growth``: does a long workflow cost more per step as it grows?

One workflow of N steps (default 1000) records one new TaskResult (~200 B output) per
step, each a CAS save; the reference is N saves of a workflow kept at 10 tasks, each step
replacing one of the 10 outputs. If a save rewrote every earlier task (in the history blob,
in the tasks table, or in the client's encoding work), the long workflow's totals would grow
with N squared and its late saves would be slower than its early ones.

Both workflows advance in lockstep (one step of each in turn), so machine noise falls on both
alike. Per step: history bytes (``octet_length(history.data)``), WAL bytes (the WAL position
read on a separate connection before and after the save), client wall time and client CPU
(``time.process_time``) of preparing the next snapshot plus saving it. The step ranges are
the repeated windows: first 10 steps vs last 10, medians.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg

from bench import db
from bench import scale_common as sc
from snapstore import AtTask, PostgresBackend, TaskResult, WorkflowSnapshot

STEPS = {"tiny": 30, "small": 200, "default": 1000, "large": 3000}
FIXED_TASKS = 10
RANGE = 10  # steps compared at each end
OUTPUT_PAD = 170  # ~200 B of encoded output per task
BYTES_FACTOR = 2.0
TIME_FACTOR = 2.0
DEFINITION = "scale-growth-v1"
WARM_UP_SAVES = 24  # > prepare_threshold (5) on each of the pool's connections


def _output(step: int) -> dict[str, Any]:
    return {"step": step, "pad": "x" * OUTPUT_PAD}


def _task_id(n: int) -> str:
    return f"t{n:05d}"


def _grow(snap: WorkflowSnapshot, step: int) -> WorkflowSnapshot:
    """Step ``step`` of the long workflow: one more task, the position moves on."""
    results = {**snap.task_results, _task_id(step): TaskResult(output=_output(step))}
    return msgspec.structs.replace(snap, task_results=results, position=AtTask(_task_id(step + 1)))


def _rotate(snap: WorkflowSnapshot, step: int) -> WorkflowSnapshot:
    """Step ``step`` of the reference: one of its 10 outputs replaced, the count unchanged."""
    results = {**snap.task_results, _task_id(step % FIXED_TASKS): TaskResult(output=_output(step))}
    return msgspec.structs.replace(snap, task_results=results, position=AtTask(_task_id(step)))


@dataclass
class Track:
    """One workflow driven step by step, with what each step cost."""

    name: str
    snapshot: WorkflowSnapshot
    advance: Callable[[WorkflowSnapshot, int], WorkflowSnapshot]
    version: int | None = None
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    wal: list[int] = field(default_factory=list)

    def step(self, backend: PostgresBackend[Any], probe: sc.WalProbe, n: int) -> None:
        before = probe.position()
        wall, cpu = time.perf_counter(), time.process_time()
        snap = self.snapshot if self.version is None else self.advance(self.snapshot, n)
        version = backend.save(snap, self.version)
        self.cpu_s.append(time.process_time() - cpu)
        self.wall_s.append(time.perf_counter() - wall)
        self.wal.append(probe.position() - before)
        self.snapshot, self.version = snap, version


def _warm_up(backend: PostgresBackend[Any], probe: sc.WalProbe) -> None:
    """A throwaway workflow first, so that step 1 does not pay for what only a cold store
    pays (psycopg prepares a statement on its WARM_UP_SAVES-th use on each pooled connection),
    which would make the first steps look slow and the late ones flat by comparison."""
    warm = Track(
        "warm",
        WorkflowSnapshot(
            instance_id="warm", position=AtTask(_task_id(1)), definition_hash=DEFINITION
        ),
        _grow,
    )
    for n in range(1, WARM_UP_SAVES + 1):
        warm.step(backend, probe, n)


def _history_bytes(dsn: str, schema: str, instance_id: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            sc.query(
                "SELECT octet_length(data) FROM {s}.history WHERE instance_id = %s "
                "ORDER BY version",
                schema,
            ),
            (instance_id,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def _ends(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    """Median of the first and of the last RANGE steps (scaled, e.g. seconds to ms)."""
    first = sc.median([v * scale for v in values[:RANGE]])
    last = sc.median([v * scale for v in values[-RANGE:]])
    return {
        "first": sc.rounded(first, 4),
        "last": sc.rounded(last, 4),
        "last_vs_first": sc.ratio(last, first),
    }


def _summary(track: Track, history: list[int]) -> dict[str, Any]:
    return {
        "steps": len(track.wall_s),
        "history_bytes_total": sum(history),
        "history_bytes_per_step": _ends([float(v) for v in history]),
        "wal_bytes_total": sum(track.wal),
        "wal_bytes_per_step": _ends([float(v) for v in track.wal]),
        "save_wall_ms": _ends(track.wall_s, 1000),
        "save_cpu_ms": _ends(track.cpu_s, 1000),
        "save_wall_ms_median_all": sc.rounded((sc.median(track.wall_s) or 0.0) * 1000, 4),
    }


def _checks(long: dict[str, Any], fixed: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for key, what in (("history_bytes_total", "history bytes"), ("wal_bytes_total", "WAL")):
        share = sc.ratio(float(long[key]), float(fixed[key]))
        checks.append(
            sc.check(
                f"task_growth {what} within {BYTES_FACTOR:g}x of the 10-task workflow",
                sc.at_most(share, BYTES_FACTOR),
                share,
                f"<= {BYTES_FACTOR:g}x",
                f"{long['steps']}-task workflow {long[key]:,} B vs {fixed['steps']} saves of a "
                f"{FIXED_TASKS}-task workflow {fixed[key]:,} B",
            )
        )
    for key, what in (("save_wall_ms", "client time"), ("save_cpu_ms", "client CPU")):
        ends = long[key]
        checks.append(
            sc.check(
                f"task_growth per-save {what} flat (last {RANGE} vs first {RANGE} steps)",
                sc.at_most(ends["last_vs_first"], TIME_FACTOR),
                ends["last_vs_first"],
                f"<= {TIME_FACTOR:g}x",
                f"median {ends['first']} ms over steps 1-{RANGE}, {ends['last']} ms over the last "
                f"{RANGE}; the 10-task workflow: {fixed[key]['first']} -> {fixed[key]['last']} ms",
            )
        )
    return checks


def run_task_growth(
    dsn: str, schema_prefix: str, *, size: str = "default", repeats: int = 5
) -> dict[str, Any]:
    """Per-step history bytes, WAL and client cost of a growing vs a 10-task workflow.
    ``repeats`` is not used: the step ranges at both ends are the repeated windows."""
    began = time.perf_counter()
    steps = sc.pick(size, STEPS)
    with sc.scratch_schema(dsn, schema_prefix, "grow") as schema:
        backend = db.open_backend(dsn, sc.CODEC, schema, pool_size=2)
        probe = sc.WalProbe(dsn)
        try:
            long = Track(
                "long",
                WorkflowSnapshot(
                    instance_id="long",
                    position=AtTask(_task_id(1)),
                    task_results={_task_id(0): TaskResult(output=_output(0))},
                    definition_hash=DEFINITION,
                ),
                _grow,
            )
            fixed = Track(
                "fixed",
                WorkflowSnapshot(
                    instance_id="fixed",
                    position=AtTask(_task_id(0)),
                    task_results={
                        _task_id(i): TaskResult(output=_output(i)) for i in range(FIXED_TASKS)
                    },
                    definition_hash=DEFINITION,
                ),
                _rotate,
            )
            _warm_up(backend, probe)
            db.checkpoint(dsn)
            for n in range(1, steps + 1):
                long.step(backend, probe, n)
                fixed.step(backend, probe, n)
        finally:
            probe.close()
            backend.close()
        summaries = {
            t.name: _summary(t, _history_bytes(dsn, schema, t.name)) for t in (long, fixed)
        }
    long_s, fixed_s = summaries["long"], summaries["fixed"]
    return {
        "workload": "task_growth",
        "size": size,
        "repeats": repeats,
        "params": {"steps": steps, "fixed_tasks": FIXED_TASKS, "output_bytes": 200, "ends": RANGE},
        "long": long_s,
        "fixed": fixed_s,
        "figures": {
            "history_bytes_total": sc.figure(
                long_s["history_bytes_total"],
                "B",
                f"<= {BYTES_FACTOR:g}x reference",
                fixed_s["history_bytes_total"],
            ),
            "wal_bytes_total": sc.figure(
                long_s["wal_bytes_total"],
                "B",
                f"<= {BYTES_FACTOR:g}x reference",
                fixed_s["wal_bytes_total"],
            ),
            "save_wall_ms_last": sc.figure(
                long_s["save_wall_ms"]["last"],
                "ms",
                f"<= {TIME_FACTOR:g}x first steps",
                long_s["save_wall_ms"]["first"],
            ),
            "save_cpu_ms_last": sc.figure(
                long_s["save_cpu_ms"]["last"],
                "ms",
                f"<= {TIME_FACTOR:g}x first steps",
                long_s["save_cpu_ms"]["first"],
            ),
        },
        "checks": _checks(long_s, fixed_s),
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
