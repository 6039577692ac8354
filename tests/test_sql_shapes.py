"""Every statement in sql/ has a shape a distributed planner can route (issue #13).

Statements on one instance (the default) filter every table by ``instance_id =
<parameter>``; the few that work across instances are named in `ACROSS_INSTANCES` with
why, and must still avoid the shapes Citus refuses or runs over every shard with a
two-phase commit (see `tests.sql_shapes`).
"""

from __future__ import annotations

import pytest

from snapstore.migrations import load_migrations
from snapstore.sql_catalog import _raw_queries, compact
from tests.sql_shapes import function_statements, unroutable

ACROSS_INSTANCES = {
    # scans and reports over the whole store: multi-shard reads, no lock, no write
    "dispatch_candidates": "the queue's head, a report (no lock)",
    "dispatch": "the queue's head read unlocked, then lease_instances leases each by key",
    "dispatch_branches": "the open branches' head read unlocked, then leased each by key",
    "next_dispatch_at": "the next timer or lease expiry of the store",
    "wakeup_poll": "the fallback poll over the due set",
    "list_snapshots": "keyset pagination over instances",
    "store_stats": "counts over the store",
    "store_gauges": "counts over the store",
    "stuck_instances": "an operator's report",
    "expired_leases": "an operator's report",
    "stray_events": "an operator's report",
    "prune_count": "a dry run over history",
    "purge_count": "a dry run over finished instances",
    "prune_history": "one batch of history in key order (history only)",
    "terminal_ids": "a batch of finished instances",
    "applied_migrations": "the migrations table (a reference table)",
    "migrations_exist": "the catalog",
    "truncate_all": "tests only",
    # several instances named by the caller (each shard gets its own ids)
    "save_checkpoints": "one save_checkpoint call per item, each by its key",
    "load_snapshots": "the instances a dispatch leased, by = ANY",
    "current_states": "why saves of several instances failed, by = ANY",
    "committed_saves": "which saves of several instances committed, by = ANY",
    "live_leases": "which of several instances a worker holds, by = ANY",
    "quarantine": "the unreadable instances of one dispatch, by = ANY",
    "undo_dispatch": "a lost dispatch's leases, by token (rare)",
    "undo_branch_dispatch": "a lost branch dispatch's leases, by token (rare)",
    "drop_snapshots": "the instances a delete or purge batch names, by = ANY",
    "drop_history_rows": "the instances a delete or purge batch names, by = ANY",
    "drop_task_rows": "the instances a delete or purge batch names, by = ANY",
    "drop_signal_rows": "the instances a delete or purge batch names, by = ANY",
    "drop_event_rows": "the instances a delete or purge batch names, by = ANY",
    "drop_claim_rows": "the instances a delete or purge batch names, by = ANY",
    "drop_dead_event_rows": "the instances a delete or purge batch names, by = ANY",
    "drop_applied_signal_rows": "the instances a delete or purge batch names, by = ANY",
    "drop_branch_rows": "the instances a delete or purge batch names, by = ANY",
    # no table
    "notify": "the client's own NOTIFY",
    "announce_branches": "the client's own NOTIFY",
    "server_pid": "no table",
    "set_statement_timeout": "no table",
    "backend_running": "pg_stat_activity, on the node the client is connected to",
}

STATEMENTS = _raw_queries()


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_statement_is_routable_by_instance(name: str) -> None:
    assert unroutable(STATEMENTS[name], keyed=name not in ACROSS_INSTANCES) == []


def _function_statements() -> list[tuple[str, str]]:
    found = []
    for migration in load_migrations():
        if migration.version >= 10:  # the single-key functions start with 0010
            found += list(function_statements(compact(migration.text)))
    return found


FUNCTIONS = _function_statements()


@pytest.mark.parametrize(("function", "statement"), FUNCTIONS)
def test_function_statement_is_routable_by_instance(function: str, statement: str) -> None:
    assert unroutable(statement, keyed=True) == []


def test_every_exception_names_a_statement_that_exists() -> None:
    assert sorted(set(ACROSS_INSTANCES) - set(STATEMENTS)) == []


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        (
            "UPDATE @schema@.x SET a=CASE WHEN b THEN now()END WHERE instance_id=%(i)s",
            "the clock read inside CASE",
        ),
        (
            "UPDATE @schema@.x SET a=COALESCE(%(a)s,now())WHERE instance_id=%(i)s",
            "the clock read inside COALESCE",
        ),
        (
            "INSERT INTO @schema@.x AS c(instance_id)VALUES(%(i)s)ON CONFLICT(instance_id)DO "
            "UPDATE SET a=1 WHERE c.t<=now()",
            "the clock read inside ON CONFLICT ... WHERE",
        ),
        (
            "SELECT CASE a WHEN 1 THEN 2 END FROM @schema@.x WHERE instance_id=%(i)s",
            "a simple CASE x WHEN (mis-deparsed to the workers)",
        ),
        (
            "WITH g AS(DELETE FROM @schema@.a WHERE instance_id=%(i)s RETURNING 1)"
            "SELECT 1 FROM @schema@.b WHERE instance_id=%(i)s",
            "a data-modifying CTE in a statement over ['a', 'b']",
        ),
        (
            "SELECT pg_notify(%(c)s,instance_id)FROM @schema@.x WHERE instance_id=%(i)s",
            "pg_notify in a statement that reads a table (it would fire on a worker)",
        ),
        (
            "SELECT 1 FROM @schema@.x WHERE a=1 LIMIT 5 FOR UPDATE SKIP LOCKED",
            "FOR UPDATE not keyed by instance_id (a multi-shard lock)",
        ),
        (
            "SELECT EXISTS(SELECT 1 FROM @schema@.x AS c WHERE c.instance_id=q.i)"
            "FROM unnest(%(ids)s::text[])AS q(i)",
            "a correlated EXISTS beside unnest()",
        ),
    ],
)
def test_each_unroutable_shape_is_refused(sql: str, problem: str) -> None:
    assert problem in unroutable(sql, keyed=False)


def test_a_keyed_statement_must_filter_every_table_by_its_key() -> None:
    sql = "SELECT 1 FROM @schema@.a AS s JOIN @schema@.b AS t ON t.x=s.x WHERE s.instance_id=%(i)s"
    assert unroutable(sql, keyed=True) == ["b read or written without instance_id = <parameter>"]
    assert unroutable(sql.replace("t.x=s.x", "t.instance_id=%(i)s"), keyed=True) == []
