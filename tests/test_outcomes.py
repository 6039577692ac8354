"""Resolved commit outcomes: after a lost connection the store asks a fresh one whether
the saves it had sent committed (their version and exact data_hash in history)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from snapstore import (
    AtFork,
    AtSignal,
    AtTask,
    BranchDone,
    Claim,
    EventOutcome,
    JsonCodec,
    ParkResult,
    PostgresBackend,
    SaveRequest,
    SignalOutcome,
    TaskResult,
    WorkflowStatus,
    programs,
)
from snapstore.sql_catalog import bind_schema
from tests.twins import advance, snap, with_tasks


def test_a_committed_save_is_found_by_its_version_and_data_hash(
    backend: PostgresBackend[JsonCodec],
) -> None:
    first = with_tasks("wf-1")
    item = programs.prepare(backend.ctx, first, None, None)
    assert backend._runner.run(programs.committed(backend.ctx, [item]), writes=False) == {}
    assert backend.save(first) == 1
    found = backend._runner.run(programs.committed(backend.ctx, [item]), writes=False)
    assert [(i, r.instance_id, r.version, r.error) for i, r in found.items()] == [
        (0, "wf-1", 1, None)
    ]


def test_other_bytes_at_that_version_are_not_this_save(backend: PostgresBackend[JsonCodec]) -> None:
    assert backend.save(snap("wf-1")) == 1
    mine = programs.prepare(backend.ctx, advance(snap("wf-1"), error="mine"), 1, None)
    assert backend.save(advance(snap("wf-1"), error="theirs"), 1) == 2
    assert backend._runner.run(programs.committed(backend.ctx, [mine]), writes=False) == {}


def test_a_batch_commits_whole_so_its_missing_items_were_refused(
    backend: PostgresBackend[JsonCodec],
) -> None:
    """One commit is all or nothing: finding one item means the batch committed, and an
    item not found was refused by it (sent again, it gets its precise error). Two items
    for one version can both match one history row: only the first is the save that
    wrote it."""
    a = programs.prepare(backend.ctx, snap("a"), None, None)
    b = programs.prepare(backend.ctx, snap("b"), None, None)
    twin_of_a = programs.prepare(backend.ctx, snap("a"), None, None)
    backend.save(snap("a"))
    found = backend._runner.run(programs.committed(backend.ctx, [a, b, twin_of_a]), writes=False)
    assert list(found) == [0]


@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "group-commit"])
def test_a_save_whose_connection_is_killed_is_sent_again_once(
    dsn: str, fresh_schema: str, grouped: bool
) -> None:
    """Killed before it committed: resolved as not committed, sent again, acknowledged
    with its version; nothing lost, nothing written twice."""
    from psycopg_pool import ConnectionPool

    with ConnectionPool(dsn, kwargs={"autocommit": True}, min_size=1, max_size=1) as pool:
        store = PostgresBackend[JsonCodec].from_pool(
            pool, schema=fresh_schema, group_commit=grouped
        )
        assert store.save(snap()) == 1
        with pool.connection() as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        assert store.save(advance(snap(), error="resent"), 1) == 2
        assert [e.version for e in store.history("wf-1")] == [1, 2]


def test_a_lost_save_still_running_on_the_server_is_awaited_not_sent_again(
    dsn: str, fresh_schema: str
) -> None:
    """The client loses its socket while the server is still running the save (waiting
    for a row lock). Asking history at once would say "not committed", and sending it
    again would make its own success a conflict: the store waits for that server
    process to finish, finds the commit and returns its version."""
    from psycopg_pool import ConnectionPool

    with ConnectionPool(dsn, kwargs={"autocommit": True}, min_size=1, max_size=1) as pool:
        store = PostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema)
        assert store.save(snap()) == 1
        with pool.connection() as conn:
            fd, pid = conn.pgconn.socket, conn.info.backend_pid
        with psycopg.connect(dsn) as admin:  # holds the row lock the save will wait for
            lock = "SELECT 1 FROM @schema@.snapshots WHERE instance_id = %s FOR UPDATE"
            admin.execute(bind_schema(lock, fresh_schema).encode(), ("wf-1",))
            outcome: list[object] = []
            saver = threading.Thread(
                target=lambda: outcome.append(store.save(advance(snap(), error="mine"), 1))
            )
            saver.start()
            with psycopg.connect(dsn, autocommit=True) as watch:
                waiting = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s"
                while watch.execute(waiting, (pid,)).fetchone() != (True,):
                    time.sleep(0.01)
            socket.socket(fileno=os.dup(fd)).shutdown(socket.SHUT_RDWR)  # the client's side
            time.sleep(0.3)  # the store is now waiting for the server process
        saver.join(10)  # leaving the block committed the lock holder: the save went on
        assert outcome == [2]
        assert [e.version for e in store.history("wf-1")] == [1, 2]
        stored = store.load("wf-1")
        assert stored is not None
        assert stored.snapshot.error == "mine"


# --- every write: committed on the server, reply lost ------------------------------------

WAIT_AT_COMMIT = """
CREATE FUNCTION @schema@.wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER wait_at_commit AFTER INSERT OR UPDATE ON @schema@.{table}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @schema@.wait_at_commit();
"""


def lose_the_reply(
    dsn: str, schema: str, store: PostgresBackend[JsonCodec], table: str, call: Any
) -> list[object]:
    """Run ``call`` on the store's only connection so that its write commits on the
    server while the client has already lost the socket: a deferred trigger on
    ``table`` makes the commit wait for a lock this test holds, the client's socket is
    shut meanwhile, then the lock is let go and the server commits."""
    with store.pool.connection() as conn:
        fd, pid = conn.pgconn.socket, conn.info.backend_pid
    outcome: list[object] = []
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(bind_schema(WAIT_AT_COMMIT.format(table=table), schema).encode())
        admin.execute("SELECT pg_advisory_lock(4242)")
        worker = threading.Thread(target=lambda: outcome.append(call()))
        worker.start()
        waiting = "SELECT wait_event = 'advisory' FROM pg_stat_activity WHERE pid = %s"
        deadline = time.monotonic() + 10
        while admin.execute(waiting, (pid,)).fetchone() != (True,):
            assert time.monotonic() < deadline, "the write never reached its commit"
            time.sleep(0.01)
        socket.socket(fileno=os.dup(fd)).shutdown(socket.SHUT_RDWR)
        time.sleep(0.2)
        admin.execute("SELECT pg_advisory_unlock(4242)")
        worker.join(15)
        admin.execute(
            bind_schema("DROP FUNCTION @schema@.wait_at_commit() CASCADE", schema).encode()
        )
    assert len(outcome) == 1, "the call did not return"
    return outcome


@pytest.fixture
def lone(dsn: str, fresh_schema: str) -> Iterator[PostgresBackend[JsonCodec]]:
    """A store on a pool of one connection, so the test knows which one a call uses."""
    from psycopg_pool import ConnectionPool

    with ConnectionPool(dsn, kwargs={"autocommit": True}, min_size=1, max_size=1) as pool:
        yield PostgresBackend[JsonCodec].from_pool(pool, schema=fresh_schema)


PARKED = snap(position=AtSignal(task_id="approve", signal_name="go"))


def test_a_cancel_that_committed_unseen_reports_applied(
    dsn: str,
    fresh_schema: str,
    lone: PostgresBackend[JsonCodec],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="snapstore")
    lone.save(snap())
    call = lambda: lone.cancel("wf-1", "stop")  # noqa: E731
    assert lose_the_reply(dsn, fresh_schema, lone, "snapshots", call) == [SignalOutcome.APPLIED]
    (said,) = [r.getMessage() for r in caplog.records if r.name == "snapstore.store"]
    assert said == "connection lost during a write; it had committed"
    assert [e.version for e in lone.history("wf-1")] == [1, 2]
    stored = lone.load("wf-1")
    assert stored is not None
    assert stored.snapshot.status is WorkflowStatus.CANCELLED


def test_an_event_that_resumed_unseen_reports_resumed_and_is_not_buffered_too(
    dsn: str, fresh_schema: str, lone: PostgresBackend[JsonCodec]
) -> None:
    lone.save(PARKED)
    call = lambda: lone.send_event("wf-1", "go", "yes")  # noqa: E731
    assert lose_the_reply(dsn, fresh_schema, lone, "snapshots", call) == [EventOutcome.RESUMED]
    assert [e.version for e in lone.history("wf-1")] == [1, 2]
    assert lone.peek_events("wf-1") == []


def test_an_event_buffered_unseen_reports_buffered_and_is_there_once(
    dsn: str, fresh_schema: str, lone: PostgresBackend[JsonCodec]
) -> None:
    lone.save(snap())
    call = lambda: lone.send_event("wf-1", "go", "yes")  # noqa: E731
    assert lose_the_reply(dsn, fresh_schema, lone, "events", call) == [EventOutcome.BUFFERED]
    assert [e.payload for e in lone.peek_events("wf-1")] == ["yes"]


def test_a_park_that_committed_unseen_reports_its_version(
    dsn: str, fresh_schema: str, lone: PostgresBackend[JsonCodec]
) -> None:
    lone.save(snap())
    call = lambda: lone.park(PARKED, 1)  # noqa: E731
    (result,) = lose_the_reply(dsn, fresh_schema, lone, "snapshots", call)
    assert isinstance(result, ParkResult)
    assert (result.version, result.event) == (2, None)
    assert [e.version for e in lone.history("wf-1")] == [1, 2]


def test_a_claim_that_committed_unseen_returns_its_lease(
    dsn: str, fresh_schema: str, lone: PostgresBackend[JsonCodec]
) -> None:
    lone.save(snap())
    call = lambda: lone.claim("wf-1", "w1", 60)  # noqa: E731
    (claim,) = lose_the_reply(dsn, fresh_schema, lone, "claims", call)
    assert isinstance(claim, Claim)
    assert lone.extend(claim, 60).token == claim.token  # the stored lease is this one
    with lone.pool.connection() as conn:
        assert conn.execute(
            bind_schema("SELECT count(*) FROM @schema@.claims", fresh_schema).encode()
        ).fetchone() == (1,)


def test_a_dispatch_that_committed_unseen_drops_its_leases_and_runs_again(
    dsn: str, fresh_schema: str, lone: PostgresBackend[JsonCodec]
) -> None:
    lone.save(snap())
    call = lambda: lone.find_available_tasks("w1", limit=5, ttl=60)  # noqa: E731
    (tasks,) = lose_the_reply(dsn, fresh_schema, lone, "claims", call)
    assert isinstance(tasks, list)
    (task,) = tasks
    assert task.snapshot.instance_id == "wf-1"
    assert lone.extend(task.claim, 60).token == task.claim.token
    assert lone.find_available_tasks("w2", limit=5) == []


@pytest.mark.parametrize("how", ["save", "group-commit", "save_many"])
def test_a_save_that_committed_unseen_returns_its_version(
    dsn: str, fresh_schema: str, lone: PostgresBackend[JsonCodec], how: str
) -> None:
    lone.save(snap())
    store = PostgresBackend[JsonCodec].from_pool(
        lone.pool, schema=fresh_schema, group_commit=how == "group-commit", run_migrations=False
    )
    nxt = advance(snap(), error="two")

    def call() -> object:
        if how == "save_many":
            return [r.version for r in store.save_many([SaveRequest(nxt, 1)])]
        return store.save(nxt, 1)

    expected: object = [2] if how == "save_many" else 2
    assert lose_the_reply(dsn, fresh_schema, store, "snapshots", call) == [expected]
    assert [e.version for e in store.history("wf-1")] == [1, 2]


def forked_branches(store: PostgresBackend[JsonCodec], branches: tuple[str, ...]) -> None:
    store.save(snap(position=AtTask("start")))
    store.start_branches(snap(position=AtFork("fan", branches=branches)), 1)


@pytest.mark.parametrize("last", [False, True], ids=["sibling", "last"])
def test_a_branch_result_that_committed_unseen_reports_it_once(
    dsn: str, fresh_schema: str, lone: PostgresBackend[JsonCodec], last: bool
) -> None:
    forked_branches(lone, ("a",) if last else ("a", "b"))
    (branch, *_) = lone.find_available_branches("w1", limit=2, ttl=60)
    call = lambda: lone.complete_branch(branch.claim, TaskResult(output=1))  # noqa: E731
    (done,) = lose_the_reply(dsn, fresh_schema, lone, "branches", call)
    assert done == BranchDone(joined=last, version=3 if last else 2)
    assert [e.version for e in lone.history("wf-1")] == ([1, 2, 3] if last else [1, 2])


def test_a_branch_dispatch_that_committed_unseen_gives_back_its_leases_and_runs_again(
    dsn: str, fresh_schema: str, lone: PostgresBackend[JsonCodec]
) -> None:
    forked_branches(lone, ("a", "b"))
    call = lambda: lone.find_available_branches("w1", limit=1, ttl=60)  # noqa: E731
    (branches,) = lose_the_reply(dsn, fresh_schema, lone, "branches", call)
    assert isinstance(branches, list)
    (branch,) = branches
    assert lone.extend_branch(branch.claim, 60).token == branch.claim.token
    assert [b.branch_id for b in lone.find_available_branches("w2", limit=5)] == ["b"]
