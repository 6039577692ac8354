"""Runs a whole benchmark, one run: every codec x workload (the single save as alternating
store/reference window pairs), the LangGraph peer between two halves of snapstore on its
checkpoint shape, the ceilings, the scale workloads (with the PgQueuer peer right after
dispatch), then the verdicts."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import acceptance, api, ceiling, db, engine, environment, peer_plan, verdicts
from bench import scale as scale_mod
from bench.progress import Progress
from bench.scale_retention import run_retention
from bench.stats import Recorder
from snapstore.testing import DSN_ENV

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SCALE_WORKLOADS = tuple(scale_mod.WORKLOADS)
# Retention's prune/purge time budgets in `make bench` (the per-batch rates need a few
# hundred batches, not the whole table); None: the scale module's own (`--scale-size large`).
RETENTION_BUDGETS_S: dict[str, tuple[float, float] | None] = {
    "tiny": (2.0, 2.0),
    "small": (4.0, 3.0),
    "default": (8.0, 8.0),
    "large": None,
}


@dataclass(frozen=True)
class Config:
    """Everything that shapes a run; stored in the result so runs can be compared."""

    duration: float = 2.5
    ceiling_duration: float = 2.5
    codecs: tuple[str, ...] = ("json", "msgpack", "cbor")
    workloads: tuple[str, ...] = engine.ALL_WORKLOADS
    concurrency: int = 8
    group_threads: int = 32
    batch: int = 10
    poll_interval: float = 0.1
    wakeups: bool = True
    warmup: float = 0.5
    pgbench: bool = True
    # The single-save verdict: `repeats` store windows and as many replay windows, of
    # `repeat_duration` s each, alternating (store first in even pairs, replay first in odd).
    repeats: int = 5
    repeat_duration: float = 1.5
    scale: tuple[str, ...] = SCALE_WORKLOADS  # () = no scale workloads
    scale_size: str = "default"
    scale_repeats: int = 3
    peers: bool = True
    peer_duration: float = 1.5  # per window
    peer_windows: int = 3
    schema_prefix: str = db.SCHEMA_PREFIX
    out: Path = field(default=DEFAULT_OUT)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["codecs"], d["workloads"] = list(self.codecs), list(self.workloads)
        d["scale"] = list(self.scale)
        return d


def _status(rec: Recorder) -> str:
    window = max(rec.window, 1e-9)
    return f"saves {rec.saves / window:7.0f}/s  workflows {rec.workflows / window:6.1f}/s"


def _skip_reason(workload: str, caps: api.Capabilities) -> str | None:
    if workload == "save_many" and not caps.save_many:
        return "backend.save_many not available"
    if workload == "group_commit" and not caps.group_commit:
        return "group_commit connect option not available"
    if workload == "fanout_parallel" and not (caps.branches and caps.claims):
        return "parallel branches (start_branches) not available"
    return None


def _replay_schema(config: Config, codec: str) -> str:
    return db.schema_for(f"rw_{codec}", config.schema_prefix)


def _spec(config: Config, workload: str, codec: str, duration: float) -> engine.RunSpec:
    return engine.RunSpec(
        workload=workload,
        codec=codec,
        duration=duration,
        concurrency=config.concurrency,
        batch=config.batch,
        group_threads=config.group_threads,
        poll_interval=config.poll_interval,
        wakeups=config.wakeups,
        warmup=config.warmup,
    )


def _store_window(
    config: Config,
    dsn: str,
    backend: Any,
    caps: api.Capabilities,
    codec: str,
    label: str,
    progress: Progress,
) -> dict[str, Any]:
    """One window of the ``saves`` workload (truncated tables, warm-up, settle, window)."""
    spec = _spec(config, "saves", codec, config.repeat_duration)
    recorder = Recorder()
    with progress.phase(label, config.warmup + spec.duration, functools.partial(_status, recorder)):
        return engine.run(spec, dsn, backend, caps, recorder).as_dict()


def _replay_window(
    config: Config, dsn: str, codec: str, label: str, progress: Progress
) -> dict[str, Any]:
    """One window of the reference: the ``saves`` statements replayed raw, same warm-up."""
    schema = _replay_schema(config, codec)
    with progress.phase(label, config.warmup + config.repeat_duration, lambda: ""):
        return ceiling.workflow_ceiling(
            dsn,
            schema,
            codec,
            config.concurrency,
            config.repeat_duration,
            config.warmup,
            fresh=False,
        )


def _single_save(
    config: Config,
    dsn: str,
    backend: Any,
    caps: api.Capabilities,
    codec: str,
    progress: Progress,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The single-save target: ``repeats`` windows of the store's ``saves`` workload and as
    many of its statements replayed raw, alternating (S R, R S, S R, ...) so that a change
    in the machine's load falls on both sides alike.

    Returns the ``saves`` run row (the median window's figures, saves/s the median of all
    windows), the ``raw_workflow_<codec>`` ceiling entry (likewise) and the paired summary.
    """
    name = ceiling.workflow_ceiling_name(codec)
    db.fresh_schema(dsn, _replay_schema(config, codec), codec)
    store: list[dict[str, Any]] = []
    replay: list[dict[str, Any]] = []
    order: list[str] = []
    errors: list[str] = []
    try:
        for i in range(config.repeats):
            sides = ("store", "reference") if i % 2 == 0 else ("reference", "store")
            for side in sides:
                label = f"saves/{codec} {side} {i + 1}/{config.repeats}"
                try:
                    if side == "store":
                        store.append(
                            _store_window(config, dsn, backend, caps, codec, label, progress)
                        )
                    else:
                        replay.append(_replay_window(config, dsn, codec, label, progress))
                    order.append(side)
                except Exception as exc:  # reported; the other windows still count
                    errors.append(f"{side} window {i + 1}: {exc!r}"[:500])
    finally:
        db.drop_schema(dsn, _replay_schema(config, codec))
    store_rates = [float(w["saves_per_s"]) for w in store]
    replay_rates = [float(w["saves_per_s"]) for w in replay]
    summary = verdicts.paired(store_rates, replay_rates)
    summary.update(order=order, window_s=config.repeat_duration, errors=errors)
    if store:
        row = dict(store[verdicts.median_index(store_rates)])
        row["saves_per_s"] = summary["store_median"]
        row["windows"] = {"saves_per_s": summary["store_windows"], "figures_from": "median"}
    else:
        row = {"codec": codec, "workload": "saves", "failed": "; ".join(errors) or "no window"}
    if replay:
        ref = dict(replay[verdicts.median_index(replay_rates)])
        ref["saves_per_s"] = summary["reference_median"]
        ref["windows"] = {"saves_per_s": summary["reference_windows"]}
    else:
        ref = {"error": "; ".join(errors) or "no window"}
    return row, {name: ref}, summary


def _codec_runs(
    config: Config, dsn: str, codec: str, caps: api.Capabilities, progress: Progress
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    """All workloads for one codec, in its own fresh schema (dropped afterwards); the
    ``saves`` workload as alternating window pairs with its raw replay (measured minutes
    apart, the two would mostly compare how the machine's load changed in between)."""
    schema = db.schema_for(codec, config.schema_prefix)
    db.drop_schema(dsn, schema)
    pool = config.concurrency + 6
    runs: list[dict[str, Any]] = []
    replays: dict[str, Any] = {}
    single: dict[str, Any] | None = None
    backend = db.open_backend(dsn, codec, schema, pool_size=pool)
    try:
        for workload in config.workloads:
            reason = _skip_reason(workload, caps)
            if reason is not None:
                runs.append({"codec": codec, "workload": workload, "skipped": reason})
                progress.done += 1
                continue
            if workload == "saves":
                row, replays, single = _single_save(config, dsn, backend, caps, codec, progress)
                runs.append(row)
                continue
            spec = _spec(config, workload, codec, config.duration)
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
    finally:
        backend.close()
        db.drop_schema(dsn, schema)
    return runs, replays, single


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


def _scale_one(config: Config, dsn: str, name: str) -> dict[str, Any]:
    """One scale workload; a crash is reported with its error, as a failed workload is."""
    began = time.perf_counter()
    try:
        if name == "retention":
            budgets = RETENTION_BUDGETS_S.get(config.scale_size)
            found = run_retention(
                dsn,
                config.schema_prefix,
                size=config.scale_size,
                repeats=config.scale_repeats,
                prune_budget_s=None if budgets is None else budgets[0],
                purge_budget_s=None if budgets is None else budgets[1],
            )
        else:
            found = scale_mod.WORKLOADS[name](
                dsn, config.schema_prefix, size=config.scale_size, repeats=config.scale_repeats
            )
    except Exception as exc:
        found = {"workload": name, "failed": repr(exc)[:500], "checks": []}
    found.setdefault("elapsed_s", round(time.perf_counter() - began, 1))
    return found


def _peer_disabled_reason(config: Config) -> str | None:
    return None if config.peers else "peers off (--no-peers, or --quick without --peers)"


def _phase_counter(progress: Progress, expected: float) -> Callable[[str], Any]:
    @contextlib.contextmanager
    def phase(label: str) -> Iterator[None]:
        with progress.phase(label, expected, lambda: ""):
            yield

    return phase


def _phases(config: Config) -> int:
    per_codec = len(config.workloads) + (
        2 * config.repeats - 1 if "saves" in config.workloads else 0
    )
    phases = len(config.codecs) * per_codec + 3 + (2 if config.pgbench else 0)
    phases += len(config.scale) + (6 if config.peers else 0)  # 4 peer runs, 2 shape halves
    return phases


def run_suite(config: Config, dsn: str, progress: Progress | None = None) -> dict[str, Any]:
    """Measure everything ``config`` asks for and return the result document."""
    progress = progress or Progress(_phases(config))
    caps = api.detect()
    started = datetime.now(UTC)
    began = time.perf_counter()
    timings: dict[str, float] = {}
    result: dict[str, Any] = {
        "format": 2,
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": config.as_dict(),
        "environment": environment.capture(dsn),
        "capabilities": caps.as_dict(),
        "runs": [],
        "single_save": {},
    }
    replays: dict[str, Any] = {}
    for codec in config.codecs:
        mark = time.perf_counter()
        runs, replayed, single = _codec_runs(config, dsn, codec, caps, progress)
        result["runs"] += runs
        replays.update(replayed)
        if single is not None:
            result["single_save"][codec] = single
        timings[f"codec_{codec}"] = round(time.perf_counter() - mark, 1)

    runner = peer_plan.PeerRunner(
        dsn, config.schema_prefix, config.peer_duration, config.peer_windows
    )
    peer_phase = _phase_counter(progress, config.peer_duration * config.peer_windows + 3)
    peer_runs: dict[str, Any] = {}
    snapstore_shape: dict[str, Any] | None = None
    disabled = _peer_disabled_reason(config)
    if disabled is None:  # LangGraph between two halves of snapstore on its shape
        mark = time.perf_counter()
        lg_runs, snapstore_shape = peer_plan.run_langgraph(
            runner, config.concurrency, config.warmup, peer_phase
        )
        peer_runs.update(lg_runs)
        timings["peers_langgraph"] = round(time.perf_counter() - mark, 1)

    mark = time.perf_counter()
    result["ceilings"] = {**_ceilings(config, dsn, progress), **replays}
    timings["ceilings"] = round(time.perf_counter() - mark, 1)

    scale: dict[str, Any] = {
        "format": 1,
        "size": config.scale_size,
        "repeats": config.scale_repeats,
        "workloads": {},
    }
    mark = time.perf_counter()
    pgqueuer_done = False
    for name in config.scale:
        with progress.phase(f"scale {name} ({config.scale_size})", 30.0, lambda: ""):
            scale["workloads"][name] = _scale_one(config, dsn, name)
        if name == "dispatch_backlog" and disabled is None:  # its peer, right after it
            peer_runs.update(peer_plan.run_pgqueuer(runner, config.scale_size, peer_phase))
            pgqueuer_done = True
    if disabled is None and not pgqueuer_done:
        peer_runs.update(peer_plan.run_pgqueuer(runner, config.scale_size, peer_phase))
    scale["checks"] = [c for w in scale["workloads"].values() for c in w.get("checks", [])]
    scale["elapsed_s"] = round(time.perf_counter() - mark, 1)
    timings["scale_and_pgqueuer"] = scale["elapsed_s"]
    result["scale"] = scale
    result["peers"] = {
        "enabled": disabled is None,
        "reason": disabled,
        "window_s": config.peer_duration,
        "windows": config.peer_windows,
        "installs": runner.installs,
        "runs": peer_runs,
        "snapstore_shape": snapstore_shape,
    }

    result["acceptance"] = acceptance.check(result)
    result["warnings"] = []
    install_s = sum(float(i.get("install_s") or 0) for i in runner.installs.values())
    timings["peer_installs"] = round(install_s, 1)
    result["timings"] = timings
    result["elapsed_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    result["elapsed_without_installs_s"] = round(time.perf_counter() - began - install_s, 1)
    return result
