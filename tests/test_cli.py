"""The snapstore CLI against a real store."""

from __future__ import annotations

import json

import pytest

from snapstore import AtTask, JsonCodec, PostgresBackend, TaskResult, WorkflowSnapshot
from snapstore.cli import main
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
    with pytest.raises(SystemExit, match="no instance"):
        run(capsys, dsn, "show", "nope")
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
