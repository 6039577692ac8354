"""Resolved commit outcomes: after a lost connection the store asks a fresh one whether
the saves it had sent committed (their version and exact data_hash in history)."""

from __future__ import annotations

import os
import socket
import threading
import time

import psycopg
import pytest

from snapstore import JsonCodec, PostgresBackend, programs
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
