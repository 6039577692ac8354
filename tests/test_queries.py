"""The named statements as sent: compacted, schema-bound, parse-cacheable."""

from __future__ import annotations

import pytest
from psycopg import _queries

from snapstore.queries import DEFAULT_SCHEMA, compact, queries_for


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
        assert text and "\n" not in text and "--" not in text, name


@pytest.mark.parametrize("schema", [DEFAULT_SCHEMA, "snapstore_test_4194304"])
def test_the_save_statement_stays_within_psycopgs_parse_cache_limit(schema: str) -> None:
    """Longer statements are re-parsed by psycopg on every save (about 8% of a
    batched save's client time, measured): keep the hot statement under it."""
    statement = queries_for(schema)["save_snapshots"]
    assert len(statement) <= _queries.MAX_CACHED_STATEMENT_LENGTH, len(statement)
