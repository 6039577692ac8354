"""Runs a whole benchmark: every codec x workload, then the ceilings, then the checks."""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import acceptance, api, ceiling, db, engine, environment
from bench.progress import Progress
from bench.stats import Recorder
from snapstore.testing import DSN_ENV

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Config:
    """Everything that shapes a run; stored in the result so runs can be compared."""

    duration: float = 7.0
    ceiling_duration: float = 7.0
    codecs: tuple[str, ...] = ("json", "msgpack", "cbor")
    workloads: tuple[str, ...] = engine.ALL_WORKLOADS
    concurrency: int = 8
    group_threads: int = 32
    batch: int = 10
    poll_interval: float = 0.1
    wakeups: bool = True
    warmup: float = 1.0
    pgbench: bool = True
    schema_prefix: str = db.SCHEMA_PREFIX
    out: Path = field(default=DEFAULT_OUT)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["codecs"], d["workloads"] = list(self.codecs), list(self.workloads)
        return d


def _status(rec: Recorder) -> str:
    window = max(rec.window, 1e-9)
    return f"saves {rec.saves / window:7.0f}/s  workflows {rec.workflows / window:6.1f}/s"


def _skip_reason(workload: str, caps: api.Capabilities) -> str | None:
    if workload == "save_many" and not caps.save_many:
        return "backend.save_many not available"
    if workload == "group_commit" and not caps.group_commit:
        return "group_commit connect option not available"
    return None


def _replay_schema(config: Config, codec: str) -> str:
    return db.schema_for(f"rw_{codec}", config.schema_prefix)


def _replay(config: Config, dsn: str, codec: str, progress: Progress) -> dict[str, Any]:
    """The single-save target's reference for ``codec``: its ``saves`` statements replayed raw."""
    name = ceiling.workflow_ceiling_name(codec)
    schema = _replay_schema(config, codec)
    seconds = config.ceiling_duration
    with progress.phase(f"ceiling {name}", config.warmup + seconds, lambda: ""):
        try:
            return ceiling.workflow_ceiling(
                dsn, schema, codec, config.concurrency, seconds, config.warmup
            )
        except Exception as exc:  # reported, like a failed workload
            return {"error": repr(exc)[:500]}


def _codec_runs(
    config: Config, dsn: str, codec: str, caps: api.Capabilities, progress: Progress
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All workloads for one codec, in its own fresh schema (dropped afterwards), and
    right after its ``saves`` run the raw replay of the same statements: measured minutes
    apart, the two would mostly compare how the machine's load changed in between."""
    schema = db.schema_for(codec, config.schema_prefix)
    db.drop_schema(dsn, schema)
    pool = config.concurrency + 6
    runs: list[dict[str, Any]] = []
    replays: dict[str, Any] = {}
    backend = db.open_backend(dsn, codec, schema, pool_size=pool)
    try:
        for workload in config.workloads:
            reason = _skip_reason(workload, caps)
            if reason is not None:
                runs.append({"codec": codec, "workload": workload, "skipped": reason})
                progress.done += 1
                continue
            spec = engine.RunSpec(
                workload=workload,
                codec=codec,
                duration=config.duration,
                concurrency=config.concurrency,
                batch=config.batch,
                group_threads=config.group_threads,
                poll_interval=config.poll_interval,
                wakeups=config.wakeups,
                warmup=config.warmup,
            )
            target = backend
            recorder = Recorder()
            try:
                if workload == "group_commit":
                    target = db.open_backend(dsn, codec, schema, pool_size=pool, group_commit=True)
                with progress.phase(
                    f"{workload}/{codec}",
                    config.warmup + config.duration,
                    functools.partial(_status, recorder),
                ):
                    outcome = engine.run(spec, dsn, target, caps, recorder)
                runs.append(outcome.as_dict())
            except Exception as exc:  # one broken workload must not hide the others' figures
                runs.append({"codec": codec, "workload": workload, "failed": repr(exc)[:500]})
            finally:
                if target is not backend:
                    target.close()
            if workload == "saves":
                replays[ceiling.workflow_ceiling_name(codec)] = _replay(
                    config, dsn, codec, progress
                )
    finally:
        backend.close()
        db.drop_schema(dsn, schema)
    return runs, replays


def _ceilings(config: Config, dsn: str, progress: Progress) -> dict[str, Any]:
    """The raw statement at the single-save concurrency, grouped, and pgbench."""
    raw_schema = db.schema_for("ceiling", config.schema_prefix)
    pgbench_schema = db.schema_for("pgbench", config.schema_prefix)
    db.fresh_schema(dsn, raw_schema)
    seconds, n = config.ceiling_duration, config.concurrency
    found: dict[str, Any] = {}
    for name, shape in (("raw_single", "single"), ("raw_grouped_tx", "tx"), ("raw_batch", "batch")):
        with progress.phase(f"ceiling {name}", seconds, lambda: ""):
            found[name] = ceiling.raw_ceiling(dsn, raw_schema, n, seconds, shape)
    db.drop_schema(dsn, raw_schema)
    binary = ceiling.pgbench_path(dsn_from_env=bool(os.environ.get(DSN_ENV)))
    for name, per in (("pgbench_single", 1), ("pgbench_grouped_tx", ceiling.GROUP)):
        if not config.pgbench or binary is None:
            found[name] = None if not config.pgbench else {"error": "pgbench not found"}
            continue
        with progress.phase(f"ceiling {name}", seconds, lambda: ""):
            found[name] = ceiling.pgbench_ceiling(dsn, pgbench_schema, binary, n, seconds, per)
    db.drop_schema(dsn, pgbench_schema)
    return found


def run_suite(config: Config, dsn: str, progress: Progress | None = None) -> dict[str, Any]:
    """Measure everything ``config`` asks for and return the result document."""
    replay_phases = len(config.codecs) if "saves" in config.workloads else 0
    phases = len(config.codecs) * len(config.workloads) + 3 + replay_phases
    phases += 2 if config.pgbench else 0
    progress = progress or Progress(phases)
    caps = api.detect()
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "format": 1,
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": config.as_dict(),
        "environment": environment.capture(dsn),
        "capabilities": caps.as_dict(),
        "runs": [],
    }
    replays: dict[str, Any] = {}
    for codec in config.codecs:
        runs, replayed = _codec_runs(config, dsn, codec, caps, progress)
        result["runs"] += runs
        replays.update(replayed)
    result["ceilings"] = {**_ceilings(config, dsn, progress), **replays}
    result["acceptance"] = acceptance.check(result)
    result["warnings"] = []
    result["elapsed_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    return result
