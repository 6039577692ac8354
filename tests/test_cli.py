"""The snapstore CLI against a real store."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

import snapstore
from snapstore import AtSignal, AtTask, JsonCodec, PostgresBackend, TaskResult, WorkflowSnapshot
from snapstore.cli import CODEC_ENTRY_POINTS, main
from tests.conftest import TEST_SCHEMA as SCHEMA


@pytest.fixture
def seeded(backend: PostgresBackend[JsonCodec]) -> PostgresBackend[JsonCodec]:
    snap = WorkflowSnapshot(
        instance_id="wf-1",
        definition_hash="h",
        position=AtTask(task_id="b"),
        task_results={"a": TaskResult(output={"n": 1})},
    )
    version = backend.save(snap)
    backend.save(snap, expected_version=version)
    backend.save(WorkflowSnapshot(instance_id="wf-2", definition_hash="h"))
    return backend


def run(capsys: pytest.CaptureFixture[str], dsn: str, *args: str) -> tuple[int, str, str]:
    code = main([*args[:1], "--dsn", dsn, "--schema", SCHEMA, *args[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_show_history_task(
    seeded: PostgresBackend[JsonCodec], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, dsn, "ls")
    assert code == 0
    assert [line.split("\t")[0] for line in out.splitlines()] == ["wf-1", "wf-2"]
    code, out, _ = run(capsys, dsn, "ls", "--limit", "1", "--json")
    page = json.loads(out)
    assert [i["instance_id"] for i in page["items"]] == ["wf-1"]
    assert page["next_cursor"]
    code, out, _ = run(capsys, dsn, "show", "wf-1")
    shown = json.loads(out)
    assert shown["version"] == 2
    assert shown["snapshot"]["task_results"]["a"]["output"] == {"n": 1}
    code, out, _ = run(capsys, dsn, "history", "wf-1")
    assert [h["version"] for h in json.loads(out)] == [1, 2]
    code, out, _ = run(capsys, dsn, "task", "wf-1", "a")
    assert json.loads(out)["output"] == {"n": 1}


def test_ls_shows_where_a_fork_came_from(
    seeded: PostgresBackend[JsonCodec], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert seeded.fork("wf-1", 1, "wf-1-replay") == 1
    code, out, _ = run(capsys, dsn, "ls")
    assert code == 0
    (line,) = [line for line in out.splitlines() if line.startswith("wf-1-replay")]
    assert line.endswith("forked from wf-1@v1")
    code, out, _ = run(capsys, dsn, "ls", "--json")
    (item,) = [i for i in json.loads(out)["items"] if i["instance_id"] == "wf-1-replay"]
    assert (item["forked_from"], item["forked_from_version"]) == ("wf-1", 1)


def test_errors_are_reported_not_raised(
    seeded: PostgresBackend[JsonCodec], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, dsn, "show", "nope")
    assert (code, err) == (1, "snapstore: no instance 'nope'\n")
    code = main(["ls", "--dsn", dsn, "--schema", "Bad-Name"])
    assert code == 1
    assert "ConfigurationError" in capsys.readouterr().err


def test_print_sql_and_codecs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--print-sql", "--schema", "audit_x"]) == 0
    ddl = capsys.readouterr().out
    assert 'CREATE TABLE "audit_x".snapshots' in ddl
    assert "@schema@" not in ddl
    assert main(["codecs"]) == 0
    assert {c["name"] for c in json.loads(capsys.readouterr().out)} >= {"json", "msgpack", "cbor"}


# --- the installed script ---------------------------------------------------------------

SCRIPT = shutil.which("snapstore", path=str(Path(sys.executable).parent))


def script(dsn: str | None, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the installed ``snapstore`` as an operator would; (exit code, stdout, stderr)."""
    assert SCRIPT is not None, "the snapstore script is not installed next to python"
    full = [SCRIPT, *args] + ([] if dsn is None else ["--dsn", dsn])
    done = subprocess.run(
        full, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )
    return done.returncode, done.stdout, done.stderr


def one_line(err: str) -> str:
    assert err.endswith("\n")
    assert err.count("\n") == 1, err  # one line, never a traceback
    assert err.startswith("snapstore: ")
    return err


def test_operator_commands_through_the_script(dsn: str, fresh_schema: str) -> None:
    code, out, _ = script(dsn, "migrate", "--schema", fresh_schema)
    assert code == 0
    assert json.loads(out)["applied"][:2] == [1, 2]
    assert json.loads(script(dsn, "migrate", "--schema", fresh_schema)[1])["applied"] == []
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema) as store:
        store.save(WorkflowSnapshot(instance_id="wf", definition_hash="h"))
        store.save(WorkflowSnapshot(instance_id="wf", definition_hash="h", input=1), 1)
        parked = WorkflowSnapshot(
            instance_id="waits", definition_hash="h", position=AtSignal("t", "go")
        )
        store.save(parked)
    on = ("--schema", fresh_schema)
    code, out, _ = script(dsn, "stats", *on)
    assert (code, json.loads(out)["instances"]) == (0, {"InProgress": 2})
    assert script(dsn, "check", *on)[0] == 0  # nothing has been wrong for 5 minutes
    code, out, _ = script(dsn, "check", *on, "--older-than", "0")
    assert code == 3
    assert [p["kind"] for p in json.loads(out)["problems"]] == ["stuck"]
    code, out, _ = script(dsn, "send-event", "waits", "go", "--payload", '{"ok": true}', *on)
    assert json.loads(out)["outcome"] == "resumed"
    code, out, _ = script(dsn, "history", "waits", *on)
    (first, _) = json.loads(out)
    assert first["snapshot"]["position"] == {
        "kind": "AtSignal",
        "task_id": "t",
        "signal_name": "go",
        "timeout_at": None,
    }
    code, out, _ = script(dsn, "pause", "wf", "--reason", "maintenance", *on)
    assert json.loads(out)["pause"] == "applied"
    code, out, _ = script(dsn, "ls", "--status", "paused", *on)
    assert [line.split("\t")[0] for line in out.splitlines()] == ["wf"]
    assert json.loads(script(dsn, "unpause", "wf", *on)[1])["unpause"] == "applied"
    code, out, _ = script(dsn, "prune", "--dry-run", *on)
    assert json.loads(out) == {"schema": fresh_schema, "dry_run": True, "checkpoints": 4}
    assert json.loads(script(dsn, "prune", *on)[1])["checkpoints"] == 4
    assert json.loads(script(dsn, "prune", "--dry-run", *on)[1])["checkpoints"] == 0
    assert json.loads(script(dsn, "cancel", "wf", *on)[1])["cancel"] == "applied"
    code, out, _ = script(dsn, "purge", "--older-than", "0", "--dry-run", *on)
    assert json.loads(out)["instances"] == 1
    assert json.loads(script(dsn, "purge", "--older-than", "0", *on)[1])["instances"] == 1


def test_every_error_is_one_line_and_exit_1(dsn: str, fresh_schema: str) -> None:
    code, _, err = script(None, "ls", "--bogus")
    assert code == 1
    one_line(err)
    code, _, err = script(dsn, "show", "wf", "--schema", fresh_schema)  # never migrated
    assert code == 1
    assert "not migrated" in one_line(err)
    started = time.monotonic()
    code, _, err = script("postgresql://postgres@127.0.0.1:9/none", "ls")
    assert code == 1
    assert "cannot connect" in one_line(err)  # the server's reason...
    assert time.monotonic() - started < 10  # ...within seconds
    code, _, err = script(None, "ls", env={"SNAPSTORE_DSN": ""})
    assert code == 1
    assert "--dsn" in one_line(err)
    code, out, _ = script(None, "--version")
    assert (code, out.strip()) == (0, f"snapstore {snapstore.__version__}")
    code, out, _ = script(None, "--help")
    assert code == 0
    assert "``" not in out  # plain text, no markup


CUSTOM_CODEC = """
import msgspec
from snapstore import register_codec


class Backwards:
    codec_id = 201
    name = "backwards-cli-test"
    builtin_types = ()

    def dumps(self, doc):
        return msgspec.json.encode(doc)[::-1]

    def loads(self, payload, type_):
        return msgspec.json.decode(payload[::-1], type=type_)


CODEC = register_codec(Backwards())
"""


def test_show_decodes_custom_codecs_given_their_module(
    dsn: str, fresh_schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "backwards_codec.py").write_text(CUSTOM_CODEC)
    monkeypatch.syspath_prepend(str(tmp_path))
    codec = importlib.import_module("backwards_codec").CODEC
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema, codec=codec) as store:
        store.save(WorkflowSnapshot(instance_id="wf", definition_hash="h", input="secret"))
    env = {"PYTHONPATH": str(tmp_path)}
    code, _, err = script(dsn, "show", "wf", "--schema", fresh_schema, env=env)
    assert code == 1
    assert "backwards" in one_line(err) or "201" in err
    code, out, _ = script(
        dsn, "show", "wf", "--schema", fresh_schema, "--codec-module", "backwards_codec", env=env
    )
    assert code == 0
    assert json.loads(out)["snapshot"]["input"] == "secret"


def test_codecs_named_by_entry_points_are_registered_for_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A package that ships a codec declares it in the snapstore.codecs group."""
    source = CUSTOM_CODEC.replace("201", "202").replace("backwards-cli-test", "entry-point-test")
    (tmp_path / "shipped_codec.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    point = metadata.EntryPoint(name="shipped", value="shipped_codec", group=CODEC_ENTRY_POINTS)

    def entry_points(*, group: str) -> list[metadata.EntryPoint]:
        return [point] if group == CODEC_ENTRY_POINTS else []

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    assert main(["codecs"]) == 0
    assert "entry-point-test" in {c["name"] for c in json.loads(capsys.readouterr().out)}
