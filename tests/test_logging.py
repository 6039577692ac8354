"""What snapstore logs (stdlib logging, under ``snapstore``): quiet on the hot path at
INFO; conflicts at DEBUG, lost claims and migrations at INFO, slow statements as
WARNING, each with its facts as extras."""

from __future__ import annotations

import logging

import pytest

from snapstore import AtSignal, ClaimLostError, ConflictError, JsonCodec, PostgresBackend
from tests.twins import snap


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="snapstore")
    return caplog


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("snapstore") and r.levelno >= level]


def test_a_healthy_hot_path_logs_nothing_at_info(
    backend: PostgresBackend[JsonCodec], logged: pytest.LogCaptureFixture
) -> None:
    backend.save(snap("wf"))
    (task,) = backend.find_available_tasks("w")
    backend.save(snap("wf", input=1), 1, claim=task.claim)
    backend.load("wf")
    backend.history("wf")
    backend.release(task.claim)
    backend.send_event("wf", "go", 1)
    parked = snap("wf", position=AtSignal("t", "go"))
    backend.park(parked, 2)
    backend.save_many([])
    assert records(logged, logging.INFO) == []


def test_a_conflict_is_logged_at_debug_with_its_facts(
    backend: PostgresBackend[JsonCodec], logged: pytest.LogCaptureFixture
) -> None:
    backend.save(snap("wf"))
    with pytest.raises(ConflictError):
        backend.save(snap("wf"), 7)
    (record,) = records(logged, logging.DEBUG)
    assert record.levelno == logging.DEBUG
    assert record.name == "snapstore.store"
    assert (record.instance_id, record.version, record.schema) == ("wf", 7, backend.schema)  # type: ignore[attr-defined]


def test_a_lost_claim_is_logged_at_info(
    backend: PostgresBackend[JsonCodec], logged: pytest.LogCaptureFixture
) -> None:
    backend.save(snap("wf"))
    claim = backend.claim("wf", "w1")
    assert claim is not None
    backend.release(claim)
    with pytest.raises(ClaimLostError):
        backend.save(snap("wf", input=2), 1, claim=claim)
    with pytest.raises(ClaimLostError):
        backend.extend(claim)
    lost = records(logged, logging.INFO)
    assert [r.levelno for r in lost] == [logging.INFO, logging.INFO]
    assert all(r.instance_id == "wf" for r in lost)  # type: ignore[attr-defined]


def test_migrations_are_logged_with_their_version(
    dsn: str, fresh_schema: str, logged: pytest.LogCaptureFixture
) -> None:
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema):
        pass
    applied = [r for r in records(logged, logging.INFO) if r.name == "snapstore.migrate"]
    assert [r.version for r in applied][:2] == [1, 2]  # type: ignore[attr-defined]
    assert all(r.schema == fresh_schema and r.duration_ms >= 0 for r in applied)  # type: ignore[attr-defined]
    logged.clear()
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema):
        pass  # nothing left to apply: nothing said
    assert records(logged, logging.INFO) == []


def test_slow_statements_are_logged_as_warnings(
    dsn: str, fresh_schema: str, logged: pytest.LogCaptureFixture
) -> None:
    with PostgresBackend[JsonCodec].connect(
        dsn, schema=fresh_schema, slow_statement=1e-6
    ) as touchy:
        logged.clear()
        touchy.save(snap("wf"))
    (slow, *_) = records(logged, logging.WARNING)
    # a create of a due instance: the save and its NOTIFY, pipelined
    assert slow.statement == "save_checkpoint+notify"  # type: ignore[attr-defined]
    assert slow.duration_ms >= 0  # type: ignore[attr-defined]
    assert slow.schema == fresh_schema  # type: ignore[attr-defined]
