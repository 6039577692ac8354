"""The named statements as sent: compacted, schema-bound, parse-cacheable."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from snapstore import JsonCodec, PostgresBackend
from snapstore.sql_catalog import DEFAULT_SCHEMA, Positional, compact, positional, queries_for
from tests.twins import drop_schema, snap


def test_compact_drops_comments_and_spare_whitespace_but_never_touches_literals() -> None:
    body = """
    -- a comment line: the instance's tags
    SELECT 1,   -- trailing comments go too
        'a -- not a comment, ( kept )' ,  f( a , b )

    FROM t  -- end
    WHERE x = 'it''s' AND y <= -1 AND z <> 2
    """
    assert compact(body) == (
        "SELECT 1,'a -- not a comment, ( kept )',f(a,b)FROM t WHERE x='it''s' AND y<=-1 AND z<>2"
    )


def test_every_statement_is_sent_on_one_line_without_comments() -> None:
    queries = queries_for(DEFAULT_SCHEMA)
    for name in queries.names():
        text = queries[name].decode()
        assert text, name
        assert "\n" not in text, name
        assert "--" not in text, name


LONGEST_SCHEMA = "s" * 63


@pytest.mark.parametrize("schema", [DEFAULT_SCHEMA, LONGEST_SCHEMA])
def test_every_statement_has_a_positional_form_psycopg_need_not_parse(schema: str) -> None:
    """psycopg re-parses a named statement longer than it caches on every execution
    (about 8% of a batched save's client time, measured), and a long schema name could
    push a statement past that: the hot path sends the `$n` form instead."""
    queries = queries_for(schema)
    for name in queries.names():
        statement = queries.positional(name)
        text = statement.sql.decode()
        assert "%(" not in text, name
        assert len(set(statement.names)) == len(statement.names), name
        assert text.count("$") >= len(statement.names), name


def test_positional_numbers_each_name_once() -> None:
    got = positional("SELECT %(a)s, %(b)b, %(a)s")
    assert got == Positional(b"SELECT $1, $2, $1", ("a", "b"))
    assert got.args({"b": 2, "a": 1}) == [1, 2]
    assert got.args(None) is None


def test_a_store_on_the_longest_schema_name_saves_and_loads(dsn: str) -> None:
    with (
        isolated_schema_named(dsn, LONGEST_SCHEMA),
        PostgresBackend[JsonCodec].connect(dsn, schema=LONGEST_SCHEMA) as backend,
    ):
        version = backend.save(snap("long-schema"))
        for _ in range(6):  # past psycopg's prepare threshold
            version = backend.save(snap("long-schema"), expected_version=version)
        stored = backend.load("long-schema")
        assert stored is not None
        assert stored.version == version == 7


@contextlib.contextmanager
def isolated_schema_named(dsn: str, schema: str) -> Iterator[None]:
    drop_schema(dsn, schema)
    try:
        yield
    finally:
        drop_schema(dsn, schema)


def test_shared_parts_are_spliced_in_and_are_no_statements() -> None:
    queries = queries_for(DEFAULT_SCHEMA)
    assert not [n for n in queries.names() if n.startswith("part_")]
    assert all(b"@part_" not in queries[n] for n in queries.names())
    upsert = b"ON CONFLICT(instance_id,task_id)DO UPDATE SET"
    assert upsert in queries["put_branch_result"]
