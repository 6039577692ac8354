"""Resolved commit outcomes: after a lost connection the store asks a fresh one whether
the saves it had sent committed (their version and exact data_hash in history)."""

from __future__ import annotations

import psycopg
import pytest

from snapstore import JsonCodec, PostgresBackend, programs
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
