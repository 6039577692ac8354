"""Pre-encoded binary array parameters: what the server reads back is what was sent."""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from snapstore import arrays
from snapstore.arrays import BinaryArray, Element, encode_column

EAST = timezone(timedelta(hours=5, minutes=30))
CASES: list[tuple[Element, list[Any]]] = [
    (arrays.TEXT, ["plain", "", "näive ünïcode ✓", None, "x" * 5000]),
    (arrays.JSONB, ['["a", "b"]', "[]", None, '{"k": [1, 2.5, null]}']),
    (arrays.BIGINT, [0, -1, 2**63 - 1, -(2**63), None]),
    (arrays.INTEGER, [0, -(2**31), 2**31 - 1, None]),
    (arrays.SMALLINT, [1, 5, -32768, 32767, None]),
    (arrays.BOOLEAN, [True, False, None]),
    (arrays.BYTEA, [b"", b"\x00\xff\x00", None, bytes(range(256))]),
    (arrays.UUID, [uuid.uuid4(), None, uuid.UUID(int=0)]),
    (
        arrays.TIMESTAMPTZ,
        [
            datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC),
            datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=EAST),  # before PG's epoch
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=UTC),
            None,
        ],
    ),
]


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def echo(conn: psycopg.Connection[Any], element: Element, values: list[Any]) -> Any:
    query = f"SELECT %(v)b::{element.name}[], pg_typeof(%(v)b)::oid"
    row = conn.execute(query.encode(), {"v": values}).fetchone()
    assert row is not None
    return row


@pytest.mark.parametrize(("element", "values"), CASES, ids=[e.name for e, _ in CASES])
def test_every_element_type_round_trips_through_the_server(
    conn: psycopg.Connection[Any], element: Element, values: list[Any]
) -> None:
    column = encode_column(element, values)
    assert isinstance(column, BinaryArray)
    got, sent_type = echo(conn, element, column)
    assert sent_type == element.array_oid  # bound as the exact type: no server-side cast
    if element is arrays.JSONB:  # psycopg loads jsonb into Python values
        assert got == [None if v is None else json.loads(v) for v in values]
    else:
        assert got == values


@pytest.mark.parametrize("element", [e for e, _ in CASES], ids=[e.name for e, _ in CASES])
def test_an_empty_column_is_an_empty_array(conn: psycopg.Connection[Any], element: Element) -> None:
    got, _ = echo(conn, element, encode_column(element, []))
    assert got == []


def test_the_encoding_is_byte_for_byte_what_the_server_sends(
    conn: psycopg.Connection[Any],
) -> None:
    """array_send of the same value, read in binary: the layout itself is PostgreSQL's."""
    for element, values in CASES:
        column = encode_column(element, values)
        assert isinstance(column, BinaryArray)
        row = conn.cursor(binary=True).execute(
            f"SELECT %(v)b::{element.name}[]".encode(), {"v": column}
        )
        raw = row.pgresult
        assert raw is not None
        assert raw.get_value(0, 0) == column.data, element.name


def test_a_naive_datetime_leaves_the_column_to_psycopg(conn: psycopg.Connection[Any]) -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    column = encode_column(arrays.TIMESTAMPTZ, [datetime.now(UTC), naive])
    assert type(column) is list  # psycopg's own rules, exactly as before this module
    plain = conn.execute("SELECT %(v)s::timestamptz[]", {"v": [naive]}).fetchone()
    fast = conn.execute(
        "SELECT %(v)b::timestamptz[]", {"v": encode_column(arrays.TIMESTAMPTZ, [naive])}
    ).fetchone()
    assert plain == fast


def test_text_goes_through_psycopg_on_a_non_utf8_connection(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True, client_encoding="LATIN1") as latin1:
        got, _ = echo(latin1, arrays.TEXT, ["café", None])
        assert got == ["café", None]


def test_an_element_outside_its_type_fails_before_any_io() -> None:
    """Validation keeps saves inside the column types; this is the backstop."""
    with pytest.raises(struct.error):
        encode_column(arrays.SMALLINT, [2**15])
