"""A real PgBouncer in transaction mode in front of the test server, for the tests that
check the store behind it. Skips, saying why, where the binary is missing."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

STARTUP_DEADLINE = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def pgbouncer(dsn: str, pool_mode: str = "transaction") -> Iterator[str]:
    """Start PgBouncer in front of ``dsn``'s server; yield the conninfo through it."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        pytest.skip("pgbouncer not installed (Debian package pgbouncer; .ci/run installs it)")
    target = conninfo_to_dict(dsn)
    user = str(target.get("user") or os.environ.get("USER") or "postgres")
    host = str(target.get("host") or "127.0.0.1")
    port = _free_port()
    root = Path(tempfile.mkdtemp(prefix="snapstore-pgbouncer-"))
    root.chmod(0o755)
    (root / "users.txt").write_text(f'"{user}" ""\n')
    config = root / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={host} port={target.get('port', 5432)}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {root / 'users.txt'}\n"
        f"pool_mode = {pool_mode}\ndefault_pool_size = 4\nmax_client_conn = 200\n"
        f"logfile = {root / 'pgbouncer.log'}\npidfile = {root / 'pgbouncer.pid'}\n"
    )
    command = [binary, str(config)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: it runs as the server's
        # socket owner (it must reach the socket), or as postgres for a TCP server.
        owner = (
            pwd.getpwuid(os.stat(host).st_uid) if host.startswith("/") else pwd.getpwnam("postgres")
        )
        command[1:1] = ["-u", owner.pw_name]
        for path in (root, *root.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    through = make_conninfo(dsn, host="127.0.0.1", port=port, user=user)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            try:
                with psycopg.connect(through, connect_timeout=2, prepare_threshold=None):
                    break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    logfile = root / "pgbouncer.log"
                    log = logfile.read_text(errors="replace") if logfile.exists() else ""
                    pytest.fail(f"pgbouncer did not start: {log[-2000:]}")
                time.sleep(0.1)
        yield through
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        if process.poll() is None:
            process.kill()
        shutil.rmtree(root, ignore_errors=True)
