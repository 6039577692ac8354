"""snapstore: look inside a store and operate it from the shell.

Reads: ls, show, history, task, stats, check, codecs, metrics (serves them over HTTP).
Writes: cancel, pause, unpause,
send-event, prune and purge (both with --dry-run), migrate. Output is JSON (one
document per command, for jq), except ls, which prints a table unless given --json.
The database is --dsn or $SNAPSTORE_DSN; the schema --schema (default: snapstore).
ls, show, history and task also take --replica DSN (repeatable): a hot standby that
answers them, as of a moment ago, with the --dsn server answering while it cannot.
Exit status: 0 on success, 1 on any error (one line on stderr), 3 when check finds a
problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from importlib import metadata
from typing import Any, NoReturn

import msgspec

from snapstore import __version__
from snapstore.backend import PostgresBackend
from snapstore.codecs import JsonCodec, registered_codecs
from snapstore.errors import ServerError, SnapstoreError
from snapstore.migrations import print_sql
from snapstore.model import WorkflowStatus
from snapstore.sql_catalog import DEFAULT_SCHEMA
from snapstore.testing import DSN_ENV

Backend = PostgresBackend[JsonCodec]
CODEC_ENTRY_POINTS = "snapstore.codecs"
"""Entry-point group of modules that register codecs (`register_codec`) on import, so
the CLI can decode blobs they wrote."""
CONNECT_TIMEOUT = 3.0  # seconds: a server that cannot be reached is said so quickly
PROBLEM_EXIT = 3


class CliError(Exception):
    """A one-line error for the user (exit 1)."""


def _spelled_out(value: Any) -> Any:
    """``value`` with every field of every struct shown, defaults included: an operator
    reading a task result wants its status and attempts, not ``{}``."""
    if isinstance(value, msgspec.Struct):
        config = value.__struct_config__
        fields = {} if config.tag is None else {str(config.tag_field): config.tag}
        for name in value.__struct_fields__:
            fields[name] = _spelled_out(getattr(value, name))
        return fields
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _spelled_out(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _spelled_out(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_spelled_out(v) for v in value]
    return value


def _dump(value: Any) -> None:
    encoded = msgspec.json.encode(_spelled_out(value))
    sys.stdout.write(msgspec.json.format(encoded, indent=2).decode() + "\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _load_codecs(modules: Sequence[str]) -> None:
    """Import what registers custom codecs: the entry-point group, then --codec-module."""
    for entry in metadata.entry_points(group=CODEC_ENTRY_POINTS):
        try:
            entry.load()
        except Exception as exc:
            raise CliError(f"codec entry point {entry.name!r} failed to load: {exc}") from exc
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise CliError(f"--codec-module {name}: {exc}") from exc


def _open(args: argparse.Namespace) -> Backend:
    dsn = args.dsn or os.environ.get(DSN_ENV)
    if not dsn:
        raise CliError(f"give --dsn or set {DSN_ENV}")
    return PostgresBackend[JsonCodec].connect(
        dsn,
        schema=args.schema,
        min_size=0,
        max_size=1,
        run_migrations=False,
        connect_timeout=CONNECT_TIMEOUT,
        open_timeout=CONNECT_TIMEOUT,
        checkout_timeout=CONNECT_TIMEOUT + 2,
        replicas=getattr(args, "replica", None) or [],
    )


def _ls(b: Backend, args: argparse.Namespace) -> int:
    page = b.list(args.status, limit=args.limit, cursor=args.cursor)
    if args.json:
        _dump(page)
        return 0
    for s in page.items:
        forked = f"\tforked from {s.forked_from}@v{s.forked_from_version}" if s.forked_from else ""
        print(
            f"{s.instance_id}\t{s.status.value}\tv{s.version}\t{s.codec}\t"
            f"{s.current_task_id or '-'}\t{s.completed_task_count} done{forked}"
        )
    if page.next_cursor:
        print(f"# more: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def _show(b: Backend, args: argparse.Namespace) -> int:
    stored = b.load(args.instance_id)
    if stored is None:
        raise CliError(f"no instance {args.instance_id!r}")
    _dump(stored)
    return 0


def _history(b: Backend, args: argparse.Namespace) -> int:
    _dump(b.history(args.instance_id, after_version=args.after, limit=args.limit))
    return 0


def _task(b: Backend, args: argparse.Namespace) -> int:
    result = b.load_task_result(args.instance_id, args.task_id)
    if result is None:
        raise CliError(f"no task {args.task_id!r} in {args.instance_id!r}")
    _dump(result)
    return 0


def _migrate(b: Backend, args: argparse.Namespace) -> int:
    _dump({"schema": b.schema, "applied": b.migrate()})
    return 0


def _stats(b: Backend, args: argparse.Namespace) -> int:
    _dump(b.stats())
    return 0


def _check(b: Backend, args: argparse.Namespace) -> int:
    problems = b.check(older_than=args.older_than)
    _dump({"schema": b.schema, "healthy": not problems, "problems": problems})
    return PROBLEM_EXIT if problems else 0


def _signal(kind: str) -> Callable[[Backend, argparse.Namespace], int]:
    def run(b: Backend, args: argparse.Namespace) -> int:
        call = getattr(b, kind)
        outcome = call(args.instance_id, args.reason, requested_by=args.requested_by)
        _dump({"instance_id": args.instance_id, kind: outcome})
        return 0

    return run


def _unpause(b: Backend, args: argparse.Namespace) -> int:
    _dump({"instance_id": args.instance_id, "unpause": b.unpause(args.instance_id)})
    return 0


def _send_event(b: Backend, args: argparse.Namespace) -> int:
    try:
        payload = None if args.payload is None else msgspec.json.decode(args.payload)
    except msgspec.DecodeError as exc:
        raise CliError(f"--payload must be JSON: {exc}") from exc
    outcome = b.send_event(args.instance_id, args.name, payload)
    _dump({"instance_id": args.instance_id, "event": args.name, "outcome": outcome})
    return 0


def _prune(b: Backend, args: argparse.Namespace) -> int:
    older = None if args.older_than is None else timedelta(seconds=args.older_than)
    count = b.prune_history(
        keep_last=args.keep_last, older_than=older, instance_id=args.instance, dry_run=args.dry_run
    )
    _dump({"schema": b.schema, "dry_run": args.dry_run, "checkpoints": count})
    return 0


def _purge(b: Backend, args: argparse.Namespace) -> int:
    count = b.purge_terminal(older_than=args.older_than, dry_run=args.dry_run)
    _dump({"schema": b.schema, "dry_run": args.dry_run, "instances": count})
    return 0


def _metrics(b: Backend, args: argparse.Namespace) -> int:
    """Serve the store's metrics until interrupted (SIGINT or SIGTERM)."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from snapstore import metrics
    except ImportError as exc:
        extra = "pip install snapstore[metrics]"
        raise CliError(f"metrics need the 'metrics' extra ({extra}): {exc}") from exc
    host, _, port = args.serve.rpartition(":")
    if not port.isdigit():
        raise CliError(f"--serve takes HOST:PORT, got {args.serve!r}")
    registry = CollectorRegistry()
    metrics.instrument(b, registry=registry)
    server, _ = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    print(f"serving metrics on http://{host or '0.0.0.0'}:{server.server_port}/metrics", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:  # Ctrl-C ends serving as SIGTERM does
        pass
    finally:
        server.shutdown()
    return 0


COMMANDS: dict[str, Callable[[Backend, argparse.Namespace], int]] = {
    "metrics": _metrics,
    "ls": _ls,
    "show": _show,
    "history": _history,
    "task": _task,
    "migrate": _migrate,
    "stats": _stats,
    "check": _check,
    "cancel": _signal("cancel"),
    "pause": _signal("pause"),
    "unpause": _unpause,
    "send-event": _send_event,
    "prune": _prune,
    "purge": _purge,
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit 1, like every other error."""

    def error(self, message: str) -> NoReturn:
        print(f"snapstore: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(1)


def _status(text: str) -> WorkflowStatus:
    """A status filter, whatever its case (failed, FAILED, Failed, in_progress...)."""
    wanted = text.replace("_", "").replace("-", "").lower()
    for status in WorkflowStatus:
        if status.value.lower() == wanted:
            return status
    names = ", ".join(s.value for s in WorkflowStatus)
    raise argparse.ArgumentTypeError(f"unknown status {text!r} (one of {names})")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be finite and >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--dsn", help=f"PostgreSQL URL (default: ${DSN_ENV})")
    common.add_argument(
        "--schema", default=DEFAULT_SCHEMA, help=f"store schema (default: {DEFAULT_SCHEMA})"
    )
    common.add_argument(
        "--codec-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first, so blobs of the codecs it registers can be decoded",
    )
    parser = _Parser(
        prog="snapstore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"snapstore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    reads = _Parser(add_help=False)
    reads.add_argument(
        "--replica",
        action="append",
        metavar="DSN",
        help="a read replica to ask first (repeatable); --dsn answers while it cannot",
    )

    def add(name: str, help: str, *, read: bool = False) -> argparse.ArgumentParser:
        parents = [common, reads] if read else [common]
        return sub.add_parser(name, help=help, description=help, parents=parents)

    ls = add("ls", "list instances (no blob decoding)", read=True)
    ls.add_argument("--status", action="append", type=_status, help="any case; repeatable")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--cursor")
    ls.add_argument("--json", action="store_true")
    show = add("show", "latest checkpoint of an instance, decoded", read=True)
    show.add_argument("instance_id")
    hist = add("history", "all checkpoints of an instance, decoded", read=True)
    hist.add_argument("instance_id")
    hist.add_argument("--after", type=int, default=0, help="only versions after this")
    hist.add_argument("--limit", type=int)
    task = add("task", "one task's stored result", read=True)
    task.add_argument("instance_id")
    task.add_argument("task_id")
    mig = add("migrate", "apply pending migrations")
    mig.add_argument("--print-sql", action="store_true", help="print the DDL, touch nothing")
    add("codecs", "registered codecs and their envelope ids")
    add("stats", "instances by status, due backlog, leases, events")
    check = add("check", f"what looks wrong (exit {PROBLEM_EXIT} if anything)")
    check.add_argument(
        "--older-than",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="how long something must have been wrong to count (default 300)",
    )
    for kind in ("cancel", "pause"):
        cmd = add(kind, f"{kind} an instance (now, or pending for the worker holding it)")
        cmd.add_argument("instance_id")
        cmd.add_argument("--reason")
        cmd.add_argument("--requested-by", default=os.environ.get("USER"))
    unpause = add("unpause", "resume a paused instance, or withdraw a pending pause")
    unpause.add_argument("instance_id")
    event = add("send-event", "send an event (resumes an instance parked on it)")
    event.add_argument("instance_id")
    event.add_argument("name")
    event.add_argument("--payload", help="a JSON value (default: null)")
    prune = add("prune", "delete old checkpoints from history")
    prune.add_argument("--keep-last", type=int, default=1)
    prune.add_argument("--older-than", type=_seconds, metavar="SECONDS")
    prune.add_argument("--instance", help="only this instance")
    prune.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    served = add("metrics", "serve Prometheus metrics of the store (the 'metrics' extra)")
    served.add_argument("--serve", required=True, metavar="HOST:PORT", help="e.g. 0.0.0.0:9464")
    purge = add("purge", "delete finished instances")
    purge.add_argument("--older-than", type=_seconds, required=True, metavar="SECONDS")
    purge.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    return parser


def _explain(exc: SnapstoreError, args: argparse.Namespace) -> str:
    if isinstance(exc, ServerError) and exc.sqlstate == "42P01":  # undefined table
        return (
            f"schema {args.schema!r} lacks a snapstore table: not migrated, or not to this"
            f" version (snapstore check, snapstore migrate), or another --schema ({exc})"
        )
    return f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _load_codecs(args.codec_module)
        if args.command == "codecs":
            _dump([{"id": c.codec_id, "name": c.name} for c in registered_codecs()])
            return 0
        if args.command == "migrate" and args.print_sql:
            sys.stdout.write(print_sql(args.schema))
            return 0
        with _open(args) as backend:
            return COMMANDS[args.command](backend, args)
    except CliError as exc:
        message = str(exc)
    except SnapstoreError as exc:
        message = _explain(exc, args)
    except KeyboardInterrupt:
        message = "interrupted"
    except Exception as exc:  # one line, never a traceback: say what it was
        message = f"unexpected {type(exc).__name__}: {exc}"
    print(f"snapstore: {_one_line(message)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
