"""Command line: ``python -m bench [options]`` runs; ``python -m bench compare`` gates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench import compare, engine, report, suite, verdicts
from bench.args import choices
from bench.db import CODECS
from bench.scale_common import SIZES, scale_schema
from snapstore.testing import database_url

# --quick: a smoke run of every part, about 2 minutes on 2 cores.
QUICK_SECONDS = 1.0
QUICK_WARMUP = 0.3
QUICK_REPEATS = 3
QUICK_REPEAT_SECONDS = 1.0
QUICK_SCALE_SIZE = "small"
QUICK_SCALE_REPEATS = 2


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
        type=choices(tuple(CODECS)),
        default=defaults.codecs,
        help="comma-separated: " + ",".join(CODECS),
    )
    p.add_argument(
        "--workloads",
        type=choices(engine.ALL_WORKLOADS),
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
        "--repeats",
        type=int,
        help="single-save verdict: store windows and as many raw-replay windows, alternating "
        f"(default {defaults.repeats}, --quick {QUICK_REPEATS})",
    )
    p.add_argument(
        "--repeat-duration",
        type=float,
        help="seconds per single-save window "
        f"(default {defaults.repeat_duration}, --quick {QUICK_REPEAT_SECONDS})",
    )
    p.add_argument(
        "--scale",
        type=choices(suite.SCALE_WORKLOADS),
        default=defaults.scale,
        help="scale workloads, comma-separated: " + ",".join(suite.SCALE_WORKLOADS),
    )
    p.add_argument("--no-scale", action="store_true", help="skip the scale workloads")
    p.add_argument(
        "--scale-size",
        choices=SIZES,
        help=f"scale table sizes (default {defaults.scale_size}: 1M-row dispatch backlog; "
        f"--quick {QUICK_SCALE_SIZE}; large: 3M)",
    )
    p.add_argument(
        "--scale-repeats",
        type=int,
        help=f"windows per scale figure (default {defaults.scale_repeats}, "
        f"--quick {QUICK_SCALE_REPEATS})",
    )
    p.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="PgQueuer and LangGraph references from throwaway venvs in .venv-peers/ "
        "(default on; off with --quick)",
    )
    p.add_argument(
        "--peer-duration",
        type=float,
        default=defaults.peer_duration,
        help="seconds of each peer window (default %(default)s)",
    )
    p.add_argument(
        "--peer-windows",
        type=int,
        default=defaults.peer_windows,
        help="consecutive windows per peer measurement; its rate is their median "
        "(default %(default)s)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when an acceptance check fails or a workload crashed",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run (~2 min): {QUICK_SECONDS:g} s per run, {QUICK_REPEATS} single-save "
        f"pairs, scale size {QUICK_SCALE_SIZE}, no peers",
    )
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


def _pick(value: Any, quick: bool, quick_value: Any, default: Any) -> Any:
    if value is not None:
        return value
    return quick_value if quick else default


def config_from(args: argparse.Namespace) -> suite.Config:
    duration = args.duration or (QUICK_SECONDS if args.quick else suite.Config.duration)
    quick = bool(args.quick)
    d = suite.Config()
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
        repeats=_pick(args.repeats, quick, QUICK_REPEATS, d.repeats),
        repeat_duration=_pick(args.repeat_duration, quick, QUICK_REPEAT_SECONDS, d.repeat_duration),
        scale=() if args.no_scale else args.scale,
        scale_size=_pick(args.scale_size, quick, QUICK_SCALE_SIZE, d.scale_size),
        scale_repeats=_pick(args.scale_repeats, quick, QUICK_SCALE_REPEATS, d.scale_repeats),
        peers=_pick(args.peers, quick, False, d.peers),
        peer_duration=args.peer_duration,
        peer_windows=args.peer_windows,
        schema_prefix=args.schema_prefix,
        out=args.out,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        cargs = compare_parser().parse_args(argv[1:])
        return compare.main(cargs.result, cargs.baseline, cargs.threshold)
    parser = run_parser()
    args = parser.parse_args(argv)
    config = config_from(args)
    if config.scale:
        try:  # the longest scale schema name; refused up front, not after minutes of runs
            scale_schema(config.schema_prefix, "async")
        except ValueError as exc:
            parser.error(f"--schema-prefix too long for the scale workloads: {exc}")
    with database_url() as dsn:
        result = suite.run_suite(config, dsn)
    stem = "run-" + result["started_at"].replace(":", "").replace("-", "")
    paths = report.write(result, config.out, stem)
    print(report.summary(result, paths))
    failed = any(verdicts.label(c) != verdicts.PASS for c in result["acceptance"]) or any(
        r.get("failed") for r in result["runs"]
    )
    return 1 if args.strict and failed else 0
