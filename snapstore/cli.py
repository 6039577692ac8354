"""``snapstore``: look inside a store from the shell.

Read-only except ``migrate``. Output is JSON (one document per command) so it
pipes into jq; ``ls`` prints a table unless ``--json`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from snapstore.backend import PostgresBackend
from snapstore.codecs import JsonCodec, registered_codecs
from snapstore.errors import SnapstoreError
from snapstore.migrations import print_sql
from snapstore.model import WorkflowStatus
from snapstore.sql_catalog import DEFAULT_SCHEMA
from snapstore.testing import DSN_ENV

Backend = PostgresBackend[JsonCodec]


def _dump(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def _open(args: argparse.Namespace) -> Backend:
    dsn = args.dsn or os.environ.get(DSN_ENV)
    if not dsn:
        raise SystemExit(f"snapstore: give --dsn or set {DSN_ENV}")
    return PostgresBackend[JsonCodec].connect(
        dsn, schema=args.schema, min_size=0, max_size=1, run_migrations=args.command == "migrate"
    )


def _ls(b: Backend, args: argparse.Namespace) -> None:
    page = b.list(args.status, limit=args.limit, cursor=args.cursor)
    if args.json:
        _dump(page)
        return
    for s in page.items:
        forked = f"\tforked from {s.forked_from}@v{s.forked_from_version}" if s.forked_from else ""
        print(
            f"{s.instance_id}\t{s.status.value}\tv{s.version}\t{s.codec}\t"
            f"{s.current_task_id or '-'}\t{s.completed_task_count} done{forked}"
        )
    if page.next_cursor:
        print(f"# more: --cursor {page.next_cursor}", file=sys.stderr)


def _show(b: Backend, args: argparse.Namespace) -> None:
    stored = b.load(args.instance_id)
    if stored is None:
        raise SystemExit(f"snapstore: no instance {args.instance_id!r}")
    _dump(stored)


def _history(b: Backend, args: argparse.Namespace) -> None:
    _dump(b.history(args.instance_id, after_version=args.after, limit=args.limit))


def _task(b: Backend, args: argparse.Namespace) -> None:
    result = b.load_task_result(args.instance_id, args.task_id)
    if result is None:
        raise SystemExit(f"snapstore: no task {args.task_id!r} in {args.instance_id!r}")
    _dump(result)


def _migrate(b: Backend, args: argparse.Namespace) -> None:
    _dump({"schema": b.schema, "applied": b.migrate()})


COMMANDS: dict[str, Callable[[Backend, argparse.Namespace], None]] = {
    "ls": _ls,
    "show": _show,
    "history": _history,
    "task": _task,
    "migrate": _migrate,
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", help=f"PostgreSQL URL (default: ${DSN_ENV})")
    common.add_argument("--schema", default=DEFAULT_SCHEMA, help="store schema name")
    parser = argparse.ArgumentParser(prog="snapstore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    ls = add("ls", "list instances (no blob decoding)")
    ls.add_argument("--status", action="append", choices=[s.value for s in WorkflowStatus])
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--cursor")
    ls.add_argument("--json", action="store_true")
    show = add("show", "latest checkpoint of an instance, decoded")
    show.add_argument("instance_id")
    hist = add("history", "all checkpoints of an instance, decoded")
    hist.add_argument("instance_id")
    hist.add_argument("--after", type=int, default=0, help="only versions after this")
    hist.add_argument("--limit", type=int)
    task = add("task", "one task's stored result")
    task.add_argument("instance_id")
    task.add_argument("task_id")
    mig = add("migrate", "apply pending migrations")
    mig.add_argument("--print-sql", action="store_true", help="print the DDL, touch nothing")
    add("codecs", "registered codecs and their envelope ids")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "codecs":
            _dump([{"id": c.codec_id, "name": c.name} for c in registered_codecs()])
        elif args.command == "migrate" and args.print_sql:
            sys.stdout.write(print_sql(args.schema))
        else:
            with _open(args) as backend:
                COMMANDS[args.command](backend, args)
    except SnapstoreError as exc:
        print(f"snapstore: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
