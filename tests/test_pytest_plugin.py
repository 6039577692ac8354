"""The pytest plugin users test their engines with, run as a user's test session would
be (pytester, with the plugin found by its entry point)."""

from __future__ import annotations

import psycopg
import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
from datetime import timedelta

import pytest

from snapstore import AtDelay, AtTask, WorkflowSnapshot


def first(instance_id):
    return WorkflowSnapshot(instance_id=instance_id, definition_hash="d", position=AtTask("a"))


def test_sync_backend(snapstore_backend):
    assert snapstore_backend.save(first("wf")) == 1
    assert snapstore_backend.schema.startswith("snapstore_test_")
    (task,) = snapstore_backend.find_available_tasks("engine")
    assert task.stored.version == 1


async def test_async_backend(snapstore_async_backend):
    assert await snapstore_async_backend.save(first("wf")) == 1
    assert (await snapstore_async_backend.load("wf")).version == 1


def test_memory_with_its_clock(snapstore_memory, snapstore_clock):
    wake = snapstore_clock.now + timedelta(minutes=5)
    snapstore_memory.save(first("wf").__class__(
        instance_id="wf", definition_hash="d", position=AtDelay("a", wake_at=wake)))
    assert snapstore_memory.find_available_tasks("engine") == []
    snapstore_clock.advance(minutes=5)
    assert len(snapstore_memory.find_available_tasks("engine")) == 1


def test_each_test_has_its_own_schema(snapstore_backend):
    assert snapstore_backend.load("wf") is None
"""


def test_users_get_backends_on_fresh_schemas_and_a_clocked_memory_store(
    pytester: pytest.Pytester, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAPSTORE_DSN", dsn)  # the running server, not a second one
    pytester.makepyfile(test_engine=USER_TESTS)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    with psycopg.connect(dsn) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'snapstore\\_test\\_%%'"
            " AND length(nspname) = 27"
        ).fetchone()
    assert left == (0,)  # every schema the plugin made is gone
