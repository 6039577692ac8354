"""Scale workload ``async_saves``: does the asyncio backend keep up with the threaded one?

Both backends share one implementation, so at equal concurrency the async backend should
never be slower: one event loop has no GIL hand-offs between eight threads to pay for. Many
coroutines are cheap where many threads are not, so it is driven wider too.

Each coroutine (thread) runs `bench.workflows` linear workflows back to back, one CAS save per
step, the same shape as the main bench's ``saves`` workload. Configurations: async at 8, 32
and 64 coroutines, with and without ``group_commit=True`` (when the async connect accepts it),
each against sync at the same number of threads and the same commit mode (sync at 8 threads,
plain, is the reference the issue names). Every
configuration has a fresh (truncated) schema, a warm-up, then ANALYZE + CHECKPOINT, then
``repeats`` windows; saves/s is the median window. The pool is sized min(concurrency,
POOL_CAP) on both sides, so neither side gets more server connections than the other.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import db
from bench import scale_common as sc
from bench.stats import Recorder
from bench.workflows import DEFINITIONS, Definition, Outcome, Shape
from snapstore import AsyncPostgresBackend, ConfigurationError, JsonCodec, WorkflowSnapshot

WIDTHS = (8, 32, 64)
REFERENCE_THREADS = 8
POOL_CAP = 16
WINDOW_S = {"tiny": 0.15, "small": 0.3, "default": 0.4, "large": 1.0}
WARMUP_S = 0.4
ERROR_PAUSE_S = 0.05

Save = Callable[[WorkflowSnapshot, int | None], Awaitable[int]]


def _definition() -> Definition:
    return DEFINITIONS["linear"](Shape())


def _ids(tag: str, slot: int) -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"{tag}-{slot}-{next(counter)}"


def _pool(width: int) -> int:
    return min(width, POOL_CAP)


async def _arate_windows(read: Callable[[], int], windows: int, seconds: float) -> list[float]:
    """`scale_common.rate_windows` on an event loop (the counting coroutines must run)."""
    rates: list[float] = []
    last, began = read(), time.perf_counter()
    for _ in range(windows):
        await asyncio.sleep(seconds)
        count, now = read(), time.perf_counter()
        rates.append((count - last) / (now - began))
        last, began = count, now
    return rates


async def _async_worker(
    save: Save,
    definition: Definition,
    next_id: Callable[[], str],
    on_saved: Callable[[], None],
    errors: Recorder,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        snap = definition.create(next_id())
        version: int | None = None
        outcome = Outcome.CONTINUE
        try:
            while not stop.is_set():
                version = await save(snap, version)
                on_saved()
                if outcome is Outcome.DONE:
                    break
                snap, outcome = definition.step(snap)
        except Exception as exc:  # counted, never raised: the figures report it
            errors.error(exc)
            await asyncio.sleep(ERROR_PAUSE_S)


async def _async_config(
    dsn: str, schema: str, width: int, group_commit: bool, windows: int, seconds: float
) -> dict[str, Any]:
    options: dict[str, Any] = {"group_commit": True} if group_commit else {}
    backend = await AsyncPostgresBackend[JsonCodec].connect(
        dsn, schema=schema, min_size=2, max_size=_pool(width), **options
    )
    counter = sc.Counter(width)
    errors = Recorder()
    stop = asyncio.Event()
    definition = _definition()
    tag = f"a{width}{'g' if group_commit else ''}"
    try:
        await backend.truncate_all()
        tasks = [
            asyncio.create_task(
                _async_worker(
                    backend.save,
                    definition,
                    _ids(tag, i),
                    functools.partial(counter.add, i),
                    errors,
                    stop,
                )
            )
            for i in range(width)
        ]
        await asyncio.sleep(WARMUP_S)
        await asyncio.to_thread(db.settle, dsn, schema)
        rates = await _arate_windows(counter.total, windows, seconds)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await backend.close()
    return _config_result("async", width, group_commit, rates, errors)


def _sync_config(
    dsn: str, schema: str, width: int, group_commit: bool, windows: int, seconds: float
) -> dict[str, Any]:
    backend = db.open_backend(
        dsn, sc.CODEC, schema, pool_size=_pool(width), group_commit=group_commit
    )
    counter = sc.Counter(width)
    errors = Recorder()
    definition = _definition()

    def worker(slot: int, stop: threading.Event) -> None:
        next_id = _ids(f"s{width}{'g' if group_commit else ''}", slot)
        while not stop.is_set():
            snap = definition.create(next_id())
            version: int | None = None
            outcome = Outcome.CONTINUE
            try:
                while not stop.is_set():
                    version = backend.save(snap, version)
                    counter.add(slot)
                    if outcome is Outcome.DONE:
                        break
                    snap, outcome = definition.step(snap)
            except Exception as exc:
                errors.error(exc)
                time.sleep(ERROR_PAUSE_S)

    try:
        backend.truncate_all()
        rates = sc.threaded_windows(
            worker,
            width,
            counter.total,
            warmup=WARMUP_S,
            settle=functools.partial(db.settle, dsn, schema),
            windows=windows,
            seconds=seconds,
        )
    finally:
        backend.close()
    return _config_result("sync", width, group_commit, rates, errors)


def _config_result(
    kind: str, width: int, group_commit: bool, rates: list[float], errors: Recorder
) -> dict[str, Any]:
    return {
        "backend": kind,
        "concurrency": width,
        "group_commit": group_commit,
        "pool_max": _pool(width),
        "saves_per_s": sc.rounded(sc.median(rates)),
        "windows": [round(r, 1) for r in rates],
        "errors": dict(errors.errors),
        "first_errors": dict(errors.first_error),
    }


def _async_group_commit_accepted(dsn: str, schema: str) -> str | None:
    """None when ``AsyncPostgresBackend.connect(group_commit=True)`` works, else why not."""

    async def attempt() -> None:
        backend = await AsyncPostgresBackend[JsonCodec].connect(
            dsn, schema=schema, min_size=1, max_size=1, group_commit=True
        )
        await backend.close()

    try:
        asyncio.run(attempt())
    except (TypeError, ConfigurationError) as exc:
        return repr(exc)[:200]
    return None


def _checks(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each async configuration against sync at the same width and the same commit mode."""
    checks: list[dict[str, Any]] = []
    reference = runs[f"sync_{REFERENCE_THREADS}"]["saves_per_s"]
    for name, got in runs.items():
        if got["backend"] != "async":
            continue
        twin = runs[name.replace("async_", "sync_", 1)]
        share = sc.ratio(got["saves_per_s"], twin["saves_per_s"])
        mode = " group_commit" if got["group_commit"] else ""
        checks.append(
            sc.check(
                f"async saves not slower than sync [{got['concurrency']}{mode}]",
                sc.at_least(share, 1.0),
                share,
                ">= 100% of sync at equal concurrency",
                f"async {got['saves_per_s']} saves/s with {got['concurrency']} coroutines vs "
                f"sync {twin['saves_per_s']} with {twin['concurrency']} threads{mode} (medians "
                f"of windows); sync at {REFERENCE_THREADS} threads: {reference}",
            )
        )
    return checks


def run_async_saves(
    dsn: str, schema_prefix: str, *, size: str = "default", repeats: int = 5
) -> dict[str, Any]:
    """saves/s of the async backend at 8/32/64 coroutines vs the sync one at 8/32/64
    threads, plain and with group_commit; interleaved (sync then async per width and mode), so
    a change in the machine's load falls on both sides of a comparison."""
    began = time.perf_counter()
    seconds = sc.pick(size, WINDOW_S)
    runs: dict[str, dict[str, Any]] = {}
    with sc.scratch_schema(dsn, schema_prefix, "async") as schema:
        db.fresh_schema(dsn, schema)
        refused = _async_group_commit_accepted(dsn, schema)
        for width in WIDTHS:
            for group_commit in (False, True) if refused is None else (False,):
                suffix = f"{'gc_' if group_commit else ''}{width}"
                runs[f"sync_{suffix}"] = _sync_config(
                    dsn, schema, width, group_commit, repeats, seconds
                )
                runs[f"async_{suffix}"] = asyncio.run(
                    _async_config(dsn, schema, width, group_commit, repeats, seconds)
                )
    reference = runs[f"sync_{REFERENCE_THREADS}"]["saves_per_s"]
    return {
        "workload": "async_saves",
        "size": size,
        "repeats": repeats,
        "params": {
            "window_s": seconds,
            "pool_cap": POOL_CAP,
            "workflow": "bench.workflows linear (create, 5 steps, complete)",
            "group_commit_refused": refused,
        },
        "runs": runs,
        "figures": {
            f"saves_per_s_{name}": sc.figure(
                run["saves_per_s"],
                "saves/s",
                ">= sync at equal concurrency" if run["backend"] == "async" else None,
                {
                    "sync_same_width": runs[name.replace("async_", "sync_", 1)]["saves_per_s"],
                    f"sync_{REFERENCE_THREADS}": reference,
                }
                if run["backend"] == "async"
                else None,
            )
            for name, run in runs.items()
        },
        "checks": _checks(runs),
        "elapsed_s": round(time.perf_counter() - began, 1),
    }
