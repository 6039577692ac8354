"""The named statements as sent: compacted, schema-bound, parse-cacheable."""

from __future__ import annotations

import pytest
from psycopg import _queries

from snapstore.queries import DEFAULT_SCHEMA, compact, queries_for


def test_compact_drops_comment_lines_and_indentation_but_keeps_statement_text() -> None:
    body = """
    -- a comment line
    SELECT 1,   -- trailing comments stay
        'a -- not a comment'

    FROM t  -- end
    """
    assert (
        compact(body)
        == "SELECT 1,   -- trailing comments stay\n'a -- not a comment'\nFROM t  -- end"
    )


def test_every_statement_is_sent_without_comment_lines() -> None:
    queries = queries_for(DEFAULT_SCHEMA)
    for name in queries.names():
        lines = queries[name].decode().splitlines()
        assert lines, name
        assert not [line for line in lines if line.lstrip().startswith("--")], name


@pytest.mark.parametrize("schema", [DEFAULT_SCHEMA, "snapstore_test_4194304"])
def test_the_save_statement_stays_within_psycopgs_parse_cache_limit(schema: str) -> None:
    """Longer statements are re-parsed by psycopg on every save (about 8% of a
    batched save's client time, measured): keep the hot statement under it."""
    statement = queries_for(schema)["save_snapshots"]
    assert len(statement) <= _queries.MAX_CACHED_STATEMENT_LENGTH, len(statement)
