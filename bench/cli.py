"""Command line: ``python -m bench [options]`` runs; ``python -m bench compare`` gates."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bench import compare, engine, report, suite
from bench.db import CODECS
from snapstore.testing import database_url

QUICK_SECONDS = 2.0
QUICK_WARMUP = 0.5


def _csv(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        unknown = [x for x in items if x not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (got {text!r})")
        return items

    return parse


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark snapstore against PostgreSQL (SNAPSTORE_DSN or an embedded "
        "server). Subcommand: 'compare RESULT.json BASELINE.json [--threshold 0.1]'.",
    )
    defaults = suite.Config()
    p.add_argument(
        "--duration",
        type=float,
        help=f"seconds per workload per codec "
        f"(default {defaults.duration}, --quick {QUICK_SECONDS})",
    )
    p.add_argument(
        "--ceiling-duration",
        type=float,
        help="seconds per ceiling run (default: same as --duration)",
    )
    p.add_argument(
        "--codecs",
        type=_csv(tuple(CODECS)),
        default=defaults.codecs,
        help="comma-separated: " + ",".join(CODECS),
    )
    p.add_argument(
        "--workloads",
        type=_csv(engine.ALL_WORKLOADS),
        default=defaults.workloads,
        help="comma-separated: " + ",".join(engine.ALL_WORKLOADS),
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=defaults.concurrency,
        help="worker threads (and raw-ceiling threads / pgbench clients)",
    )
    p.add_argument(
        "--group-threads",
        type=int,
        default=defaults.group_threads,
        help="threads calling save() in the group_commit workload",
    )
    p.add_argument("--batch", type=int, default=defaults.batch, help="items per save_many call")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=defaults.poll_interval,
        help="wakeup listener fallback poll, seconds (bounds how late a due timer is seen)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        help=f"unmeasured seconds of load before each window, then ANALYZE "
        f"(default {defaults.warmup}, --quick {QUICK_WARMUP})",
    )
    p.add_argument(
        "--no-wakeups",
        action="store_true",
        help="flow workers poll find_available_tasks instead of waiting on LISTEN/NOTIFY",
    )
    p.add_argument("--no-pgbench", action="store_true", help="skip the pgbench reference")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when an acceptance check fails or a workload crashed",
    )
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:.0f}s per run (~1 min)")
    p.add_argument(
        "--schema-prefix",
        default=defaults.schema_prefix,
        help="prefix of the schemas the run creates and drops (default %(default)s)",
    )
    p.add_argument("--out", type=Path, default=defaults.out, help="results directory")
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench compare")
    p.add_argument("result", type=Path)
    p.add_argument("baseline", type=Path)
    p.add_argument(
        "--threshold",
        type=float,
        default=0.1,
        help="relative change counted as a regression (default 0.1 = 10%%)",
    )
    return p


def config_from(args: argparse.Namespace) -> suite.Config:
    duration = args.duration or (QUICK_SECONDS if args.quick else suite.Config.duration)
    return suite.Config(
        duration=duration,
        ceiling_duration=args.ceiling_duration or duration,
        codecs=args.codecs,
        workloads=args.workloads,
        concurrency=args.concurrency,
        group_threads=args.group_threads,
        batch=args.batch,
        poll_interval=args.poll_interval,
        wakeups=not args.no_wakeups,
        warmup=args.warmup
        if args.warmup is not None
        else (QUICK_WARMUP if args.quick else suite.Config.warmup),
        pgbench=not args.no_pgbench,
        schema_prefix=args.schema_prefix,
        out=args.out,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        cargs = compare_parser().parse_args(argv[1:])
        return compare.main(cargs.result, cargs.baseline, cargs.threshold)
    args = run_parser().parse_args(argv)
    config = config_from(args)
    with database_url() as dsn:
        result = suite.run_suite(config, dsn)
    stem = "run-" + result["started_at"].replace(":", "").replace("-", "")
    paths = report.write(result, config.out, stem)
    print(report.summary(result, paths))
    failed = any(not c["passed"] for c in result["acceptance"]) or any(
        r.get("failed") for r in result["runs"]
    )
    return 1 if args.strict and failed else 0
