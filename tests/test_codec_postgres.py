"""The wire format through the real PostgreSQL backend.

One migrated schema per module, shared by a `PostgresBackend[C]` per codec: this
is exactly an application that switched its write codec while old rows remain.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from snapstore import (
    CborCodec,
    DecodeError,
    EncodeError,
    JsonCodec,
    MsgpackCodec,
    PostgresBackend,
    UnknownCodecError,
)
from snapstore.codecs import Codec, encode_snapshot, open_value
from snapstore.codecs.envelope import FLAG_VALUE
from snapstore.codecs.snapshot import strip_outputs
from snapstore.model import WorkflowSnapshot
from tests.codec_support import (
    CODEC_IDS,
    CODEC_PAIR_IDS,
    CODEC_PAIRS,
    CODECS,
    flip_bit,
    reseal,
    same,
)
from tests.golden_cases import RICH, VALUE
from tests.strategies import snapshots

Stores = dict[str, PostgresBackend[Any]]
codecs = pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)


@pytest.fixture(scope="module")
def stores(dsn: str, schema: str) -> Iterator[Stores]:
    """One backend per codec on the same schema, built the documented way."""
    opened: Stores = {
        "json": PostgresBackend[JsonCodec].connect(dsn, schema=schema, max_size=2),
        "msgpack": PostgresBackend[MsgpackCodec].connect(dsn, schema=schema, max_size=2),
        "cbor": PostgresBackend[CborCodec].connect(dsn, schema=schema, max_size=2),
    }
    yield opened
    for backend in opened.values():
        backend.close()


@pytest.fixture(scope="module")
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A raw connection to inspect and damage rows behind the backend's back."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def fresh(snapshot: WorkflowSnapshot = RICH) -> WorkflowSnapshot:
    """``snapshot`` under a new instance id, so tests share the module schema safely."""
    return msgspec.structs.replace(snapshot, instance_id=f"{snapshot.instance_id}-{uuid.uuid4()}")


def query(db: psycopg.Connection[Any], schema: str, text: str, *params: Any) -> Any:
    """Run ``text`` with ``{}`` replaced by the quoted schema; return the first row."""
    stmt = sql.SQL(text).format(sql.Identifier(schema))
    return db.execute(stmt, params).fetchone()


@codecs
def test_backend_writes_its_codec_as_bytea_envelopes(
    stores: Stores, db: psycopg.Connection[Any], schema: str, codec: Codec
) -> None:
    backend = stores[codec.name]
    assert backend.codec is codec
    snapshot = fresh()
    backend.save(snapshot)
    name, data, kind = query(
        db,
        schema,
        "SELECT codec, data, pg_typeof(data)::text FROM {}.history WHERE instance_id = %s",
        snapshot.instance_id,
    )
    assert (name, kind) == (codec.name, "bytea")
    assert isinstance(data, bytes)
    assert data[:3] == b"SNP"
    assert data[4] == codec.codec_id
    assert data == encode_snapshot(codec, snapshot)  # the envelope, byte for byte
    (summary_codec,) = query(
        db, schema, "SELECT codec FROM {}.snapshots WHERE instance_id = %s", snapshot.instance_id
    )
    assert summary_codec == codec.name
    output, kind = query(
        db,
        schema,
        "SELECT output, pg_typeof(output)::text FROM {}.tasks"
        " WHERE instance_id = %s AND task_id = 'audit'",
        snapshot.instance_id,
    )
    assert kind == "bytea"
    assert output[4] == codec.codec_id
    assert output[5] == FLAG_VALUE
    assert same(open_value(output), VALUE)
    stored = backend.load(snapshot.instance_id)
    assert stored is not None
    assert stored.codec == codec.name
    assert same(stored.snapshot, snapshot)


def test_blob_columns_are_bytea(db: psycopg.Connection[Any], schema: str, stores: Stores) -> None:
    """Bytes are never stored as JSON integer arrays: every blob column is bytea."""
    rows = db.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = %s AND column_name IN ('data', 'output')",
        (schema,),
    ).fetchall()
    assert sorted(rows) == [("history", "data", "bytea"), ("tasks", "output", "bytea")]


@pytest.mark.parametrize(("writer", "reader"), CODEC_PAIRS, ids=CODEC_PAIR_IDS)
def test_blob_written_by_one_codec_loads_with_another(
    stores: Stores, writer: Codec, reader: Codec
) -> None:
    """The codec switch: rows keep their writer's codec until rewritten."""
    snapshot = fresh()
    stores[writer.name].save(snapshot)
    old = stores[reader.name].load(snapshot.instance_id)
    assert old is not None
    assert old.codec == writer.name
    assert same(old.snapshot, snapshot)
    task = stores[reader.name].load_task_result(snapshot.instance_id, "audit")
    assert task is not None
    assert same(task.output, VALUE)

    stores[reader.name].save(snapshot, expected_version=1)
    new = stores[writer.name].load(snapshot.instance_id)
    assert new is not None
    assert new.codec == reader.name
    assert same(new.snapshot, snapshot)
    history = stores[writer.name].history(snapshot.instance_id)
    assert [h.codec for h in history] == [writer.name, reader.name]
    assert all(same(h.snapshot, strip_outputs(snapshot)) for h in history)
    listed = {s.instance_id: s.codec for s in _all_summaries(stores[writer.name])}
    assert listed[snapshot.instance_id] == reader.name


def _all_summaries(backend: PostgresBackend[Any]) -> list[Any]:
    items, cursor = [], None
    while True:
        page = backend.list(limit=1000, cursor=cursor)
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor


@settings(max_examples=25, deadline=None)
@given(
    snapshot=snapshots(),
    writer=st.sampled_from(CODECS),
    reader=st.sampled_from(CODECS),
)
def test_any_snapshot_survives_postgres_and_a_codec_switch(
    stores: Stores, snapshot: WorkflowSnapshot, writer: Codec, reader: Codec
) -> None:
    snapshot = fresh(snapshot)
    stores[writer.name].save(snapshot)
    stored = stores[reader.name].load(snapshot.instance_id)
    assert stored is not None
    assert stored.codec == writer.name
    assert same(stored.snapshot, snapshot), f"{stored.snapshot!r}\n!=\n{snapshot!r}"


DAMAGE = {
    "bit-flip": (lambda b: flip_bit(b, 8 * len(b) - 1), DecodeError),
    "truncated": (lambda b: b[: len(b) // 2], DecodeError),
    "empty": (lambda b: b"", DecodeError),
    "unknown-codec-id": (lambda b: reseal(b, codec_id=250), UnknownCodecError),
    "other-kind": (lambda b: reseal(b, flags=b[5] ^ FLAG_VALUE), DecodeError),
}
damages = pytest.mark.parametrize(("damage", "error"), DAMAGE.values(), ids=list(DAMAGE))


@damages
def test_corrupt_history_row_raises_decode_error_naming_instance_and_version(
    stores: Stores,
    db: psycopg.Connection[Any],
    schema: str,
    damage: Any,
    error: type[DecodeError],
) -> None:
    backend = stores["msgpack"]
    snapshot = fresh()
    backend.save(snapshot)
    backend.save(snapshot, expected_version=1)
    (data,) = query(
        db,
        schema,
        "SELECT data FROM {}.history WHERE instance_id = %s AND version = 2",
        snapshot.instance_id,
    )
    query(
        db,
        schema,
        "UPDATE {}.history SET data = %s WHERE instance_id = %s AND version = 2 RETURNING 1",
        damage(data),
        snapshot.instance_id,
    )
    with pytest.raises(error) as caught:
        backend.load(snapshot.instance_id)
    assert type(caught.value) is error
    assert (caught.value.instance_id, caught.value.version) == (snapshot.instance_id, 2)
    assert repr(snapshot.instance_id) in str(caught.value)
    assert "version 2" in str(caught.value)
    with pytest.raises(error, match="version 2"):
        backend.history(snapshot.instance_id)
    assert len(backend.history(snapshot.instance_id, limit=1)) == 1  # version 1 is intact


@damages
def test_corrupt_task_output_raises_decode_error_naming_the_instance(
    stores: Stores,
    db: psycopg.Connection[Any],
    schema: str,
    damage: Any,
    error: type[DecodeError],
) -> None:
    backend = stores["cbor"]
    snapshot = fresh()
    backend.save(snapshot)
    (output,) = query(
        db,
        schema,
        "SELECT output FROM {}.tasks WHERE instance_id = %s AND task_id = 'audit'",
        snapshot.instance_id,
    )
    query(
        db,
        schema,
        "UPDATE {}.tasks SET output = %s WHERE instance_id = %s AND task_id = 'audit' RETURNING 1",
        damage(output),
        snapshot.instance_id,
    )
    with pytest.raises(error) as caught:
        backend.load(snapshot.instance_id)
    assert type(caught.value) is error
    assert (caught.value.instance_id, caught.value.version) == (snapshot.instance_id, 1)
    with pytest.raises(DecodeError, match="audit") as caught:
        backend.load_task_result(snapshot.instance_id, "audit")
    assert caught.value.instance_id == snapshot.instance_id


def test_encode_error_writes_nothing(
    stores: Stores, db: psycopg.Connection[Any], schema: str
) -> None:
    snapshot = fresh(msgspec.structs.replace(RICH, input={"x": float("nan")}))
    with pytest.raises(EncodeError):
        stores["json"].save(snapshot)
    assert stores["json"].load(snapshot.instance_id) is None
    (count,) = query(
        db, schema, "SELECT count(*) FROM {}.history WHERE instance_id = %s", snapshot.instance_id
    )
    assert count == 0
