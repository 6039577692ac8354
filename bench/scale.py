"""Scale workloads: the store with big tables, long workflows, big outputs, many coroutines.

The main bench (`bench.suite`) measures throughput on small, freshly emptied tables. These
workloads measure what changes as a store grows in service, each against a reference
measured in the same run on the same machine:

- ``dispatch_backlog``: find_available_tasks latency and 8-worker claims/s with 1M due rows
  and with 1M finished rows, vs a 1k-row table (`bench.scale_dispatch`);
- ``task_growth``: a 1000-task workflow's history bytes, WAL and per-save client time vs
  1000 saves of a 10-task one (`bench.scale_growth`);
- ``retention``: prune_history / purge_terminal rows/s per batch on a 2M-row history, and
  saves beside the prune (`bench.scale_retention`);
- ``load_big``: load() MB/s for 1 and 10 MB outputs vs a raw binary SELECT, and peak memory
  of a 100 MB load in a subprocess (`bench.scale_load`);
- ``async_saves``: the async backend at 8/32/64 coroutines vs the sync one (`bench.scale_async`).

Each ``run_<name>(dsn, schema_prefix, *, size, repeats)`` creates and drops its own schema
(``<prefix>scale_<short>``), builds large tables by SQL, and returns JSON-able figures
(value, target and reference side by side) and ``checks`` in `bench.acceptance`'s shape,
computed from medians of repeated windows. Run alone::

    python -m bench.scale --dsn postgresql://... [--size small|default|large] [--only a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bench import db
from bench.args import choices
from bench.scale_async import run_async_saves
from bench.scale_common import SIZES
from bench.scale_dispatch import run_dispatch_backlog
from bench.scale_growth import run_task_growth
from bench.scale_load import run_load_big
from bench.scale_retention import run_retention
from snapstore.testing import DSN_ENV, database_url

__all__ = [
    "WORKLOADS",
    "main",
    "run_all",
    "run_async_saves",
    "run_dispatch_backlog",
    "run_load_big",
    "run_retention",
    "run_task_growth",
]

DEFAULT_REPEATS = 5
PROJECT = Path(__file__).resolve().parent.parent


class Workload(Protocol):
    def __call__(
        self, dsn: str, schema_prefix: str, *, size: str = ..., repeats: int = ...
    ) -> dict[str, Any]: ...


WORKLOADS: dict[str, Workload] = {
    "dispatch_backlog": run_dispatch_backlog,
    "task_growth": run_task_growth,
    "retention": run_retention,
    "load_big": run_load_big,
    "async_saves": run_async_saves,
}


def _commit() -> str | None:
    """The library version measured: the checkout's commit, '+dirty' with local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(PROJECT), "log", "-1", "--format=%h"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT), "status", "--porcelain", "--", "snapstore", "sql"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def run_all(
    dsn: str,
    schema_prefix: str = db.SCHEMA_PREFIX,
    size: str = "default",
    repeats: int = DEFAULT_REPEATS,
    only: tuple[str, ...] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every scale workload (or ``only`` these), one after another: the result document.

    A workload that crashes is reported with its error and the others still run, as in
    `bench.suite`: one broken measurement must not hide the other figures.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)} (got {size!r})")
    began = time.perf_counter()
    result: dict[str, Any] = {
        "format": 1,
        "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _commit(),
        "size": size,
        "repeats": repeats,
        "workloads": {},
    }
    for name in only or tuple(WORKLOADS):
        if progress is not None:
            progress(f"scale {name} ({size}) ...")
        started = time.perf_counter()
        try:
            found = WORKLOADS[name](dsn, schema_prefix, size=size, repeats=repeats)
        except Exception as exc:  # reported, like a failed workload in the suite
            found = {"workload": name, "failed": repr(exc)[:500], "checks": []}
        result["workloads"][name] = found
        if progress is not None:
            progress(f"scale {name}: {time.perf_counter() - started:.1f}s")
    result["checks"] = [c for w in result["workloads"].values() for c in w.get("checks", [])]
    result["elapsed_s"] = round(time.perf_counter() - began, 1)
    return result


def summary(result: dict[str, Any]) -> str:
    """One line per check, PASS/FAIL with its figure: what a reader wants first."""
    lines = [f"scale run {result['started_at']} commit {result['commit']} size {result['size']}"]
    for name, found in result["workloads"].items():
        if found.get("failed"):
            lines.append(f"  FAILED {name}: {found['failed']}")
    for c in result["checks"]:
        lines.append(f"  {'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}")
    lines.append(f"  elapsed {result['elapsed_s']}s")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description="Scale workloads of the snapstore bench; prints the result JSON on stdout, "
        "progress and a PASS/FAIL summary on stderr.",
    )
    p.add_argument(
        "--dsn",
        default=os.environ.get(DSN_ENV),
        help=f"server to use (default ${DSN_ENV}; without either, an embedded PostgreSQL)",
    )
    p.add_argument("--size", choices=SIZES, default="default")
    p.add_argument(
        "--only", type=choices(WORKLOADS), help="comma-separated: " + ",".join(WORKLOADS)
    )
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="windows per figure")
    p.add_argument("--schema-prefix", default=db.SCHEMA_PREFIX)
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    return p


@contextmanager
def _server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    with database_url() as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with _server(args.dsn) as dsn:
        result = run_all(dsn, args.schema_prefix, args.size, args.repeats, args.only, progress)
    text = json.dumps(result, indent=2, default=str)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    print(summary(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
