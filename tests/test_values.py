"""The value domain: every codec hands back exactly what was stored (same types, same
values), whatever codec wrote it; anything outside the domain is refused at save; a
caller can read values as its own types."""

from __future__ import annotations

import dataclasses
import enum
import struct
import zlib
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapstore import (
    DecodeError,
    EncodeError,
    JsonCodec,
    MemoryBackend,
    PostgresBackend,
    SaveRequest,
    TaskResult,
    ValidationError,
    WorkflowSnapshot,
    to_storable,
)
from snapstore.codecs import CborCodec, Codec, MsgpackCodec, codec_instance, open_value, seal_value
from snapstore.codecs.envelope import FLAG_TYPED, FLAG_VALUE, FLAGS_OFFSET, seal_lowered_value
from snapstore.limits import Limits
from tests.golden_cases import GOLDEN_CODECS, TYPED_VALUE, typed_value_path
from tests.twins import Twin, snap

CODECS = [codec_instance(c) for c in (JsonCodec, MsgpackCodec, CborCodec)]

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
aware = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), UTC]),
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | st.binary(max_size=16)
    | aware
    | st.dates()
    | st.uuids()
    | st.decimals(allow_nan=False, allow_infinity=False, places=4)
)
domain = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(text | st.sampled_from(["$uuid", "$dict", "$bytes"]), inner, max_size=3)
    ),
    max_leaves=10,
)


def as_read(value: Any) -> Any:
    """What reading ``value`` back gives: aware datetimes in UTC, the rest as it is."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, list):
        return [as_read(v) for v in value]
    if isinstance(value, dict):
        return {k: as_read(v) for k, v in value.items()}
    return value


def shape(value: Any) -> Any:
    """``value`` with every leaf's type beside it: equal values of other types differ."""
    if isinstance(value, list):
        return ["list", [shape(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", {k: shape(v) for k, v in value.items()}]
    if isinstance(value, Decimal):
        return ["Decimal", str(value)]  # Decimal("1.0") == Decimal("1.00"): compare the text
    if isinstance(value, datetime):
        return ["datetime", value.isoformat()]
    return [type(value).__name__, value]


@settings(max_examples=300, deadline=None)
@given(value=domain)
def test_every_codec_hands_back_the_same_value_of_the_same_type(value: Any) -> None:
    expected = shape(as_read(value))
    for codec in CODECS:
        assert shape(open_value(seal_value(codec, value))) == expected, codec.name


@pytest.mark.parametrize("codec_type", GOLDEN_CODECS, ids=lambda t: t.name)
def test_golden_typed_value_decodes_forever(codec_type: type[Codec]) -> None:
    assert shape(open_value(typed_value_path(codec_type).read_bytes())) == shape(TYPED_VALUE)


def test_only_a_blob_with_tags_is_flagged_and_an_old_blob_reads_as_it_was() -> None:
    json = codec_instance(JsonCodec)
    assert not seal_value(json, {"plain": [1, "two"]})[FLAGS_OFFSET] & FLAG_TYPED
    assert seal_value(json, {"id": UUID(int=1)})[FLAGS_OFFSET] & FLAG_TYPED
    written_before = seal_lowered_value(json, {"$uuid": "00000000-0000-0000-0000-000000000001"})
    assert open_value(written_before) == {"$uuid": "00000000-0000-0000-0000-000000000001"}


@dataclasses.dataclass
class Point:
    x: int


class Item(msgspec.Struct):
    sku: str


OUTSIDE = {
    "tuple": (1, 2),
    "set": {1},
    "naive datetime": datetime(2024, 1, 1),
    "time": time(12, 0),
    "dataclass": Point(1),
    "struct": Item("a"),
    "bytearray": bytearray(b"x"),
    "bignum": 2**64,
    "nan": float("nan"),
    "decimal nan": Decimal("NaN"),
    "int key": {1: "a"},
    "object": object(),
}


@pytest.mark.parametrize("value", OUTSIDE.values(), ids=list(OUTSIDE))
@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_a_value_outside_the_domain_is_refused_at_save_and_nothing_is_written(
    codec: Codec, value: Any
) -> None:
    store = MemoryBackend(codec)
    for bad in (
        snap("wf", input={"nested": [value]}),
        snap("wf", output=value),
        snap("wf", task_results={"t": TaskResult(output=value)}),
    ):
        with pytest.raises(EncodeError, match=r"not a storable value|outside|finite|keys|naive"):
            store.save(bad)
    assert store.load("wf") is None
    store.save(snap("wf"))
    with pytest.raises(EncodeError):
        store.send_event("wf", "go", value)


async def test_a_codec_switch_never_changes_what_the_engine_reads(
    store: Twin, dsn: str, schema: str
) -> None:
    """Checkpoints written by each codec in turn, read back by one backend: the same
    values, the same types."""
    version = None
    for codec_type in (JsonCodec, MsgpackCodec, CborCodec):
        with PostgresBackend[codec_type].connect(dsn, schema=store.schema) as writer:  # type: ignore[valid-type]
            version = writer.save(
                snap("wf", input=TYPED_VALUE, task_results={"t": TaskResult(output=TYPED_VALUE)}),
                version,
            )
            for entry in await store.history("wf"):
                assert shape(entry.snapshot.input) == shape(TYPED_VALUE), (codec_type, entry.codec)
            stored = await store.load("wf")
            assert stored.codec == codec_type.name
            assert shape(stored.snapshot.task_results["t"].output) == shape(TYPED_VALUE)


class Order(msgspec.Struct):
    id: UUID
    placed: datetime
    total: Decimal
    lines: list[Item]
    day: date | None = None


@dataclasses.dataclass
class Receipt:
    total: Decimal
    scan: bytes


async def test_values_read_as_the_callers_types(store: Twin) -> None:
    order = Order(
        id=UUID(int=7),
        placed=datetime(2024, 5, 17, 8, 30, tzinfo=UTC),
        total=Decimal("12.50"),
        lines=[Item("a"), Item("b")],
    )
    stored_form = msgspec.to_builtins(order, builtin_types=(datetime, date, UUID, Decimal, bytes))
    receipt = {"total": Decimal("12.50"), "scan": b"\x89PNG"}
    task = TaskResult(output=receipt)
    await store.save(snap("wf", input=stored_form, output=receipt, task_results={"t": task}))
    loaded = await store.load("wf", input_type=Order, output_type=Receipt)
    assert loaded.snapshot.input == order
    assert loaded.snapshot.output == Receipt(Decimal("12.50"), b"\x89PNG")
    result = await store.load_task_result("wf", "t", output_type=Receipt)
    assert result.output == Receipt(Decimal("12.50"), b"\x89PNG")
    with pytest.raises(DecodeError, match="input of instance 'wf' v1 does not fit Item"):
        await store.load("wf", input_type=Item)
    with pytest.raises(ValidationError, match="input_type"):
        await store.load("wf", input_type=object())
    assert await store.load("absent", input_type=Order) is None


def test_the_memory_store_reads_typed_too() -> None:
    memory = MemoryBackend()
    memory.save(WorkflowSnapshot(instance_id="wf", definition_hash="d", input={"sku": "a"}))
    loaded = memory.load("wf", input_type=Item)
    assert loaded is not None
    assert loaded.snapshot.input == Item("a")


def test_a_datetime_out_of_range_in_utc_is_an_encode_error() -> None:
    edge = datetime(9999, 12, 31, 22, tzinfo=timezone(timedelta(hours=-5)))
    for codec in CODECS:
        with pytest.raises(EncodeError, match="out of range"):
            seal_value(codec, {"at": edge})
    results = MemoryBackend().save_many(
        [SaveRequest(snap("ok")), SaveRequest(snap("bad", input=edge))]
    )
    assert results[0].ok
    assert isinstance(results[1].error, EncodeError)  # that item only


@pytest.mark.parametrize(
    "doc",
    [
        {"$datetime": "2024-01-01T00:00:00"},  # no offset: never written so
        {"$decimal": "NaN"},
        {"$uuid": 5},
    ],
    ids=["naive-datetime", "decimal-nan", "not-text"],
)
def test_a_malformed_tag_is_a_decode_error(doc: dict[str, Any]) -> None:
    blob = seal_lowered_value(codec_instance(JsonCodec), doc, typed=True)
    with pytest.raises(DecodeError):
        open_value(blob)


def test_tagged_values_too_deep_to_read_are_a_decode_error() -> None:
    """Another writer's flagged blob nested deeper than Python recurses (orjson parses up
    to 1024 levels): a DecodeError, like any unreadable blob, not a RecursionError."""
    payload = b"[" * 1020 + b'{"$date":"2024-01-01"}' + b"]" * 1020
    prefix = struct.pack(">3sBBB", b"SNP", 1, JsonCodec.codec_id, FLAG_VALUE | FLAG_TYPED)
    blob = prefix + struct.pack(">I", zlib.crc32(payload, zlib.crc32(prefix))) + payload
    with pytest.raises(DecodeError):
        open_value(blob)


class Colour(enum.StrEnum):
    RED = "red"


class Line(msgspec.Struct):
    sku: str
    sizes: tuple[int, ...]
    colour: Colour
    tags: frozenset[str]


def test_to_storable_turns_the_callers_objects_into_domain_values() -> None:
    line = Line("a", (1, 2), Colour.RED, frozenset({"b", "a"}))
    memory = MemoryBackend()
    memory.save(snap("wf", input=to_storable(line)))
    loaded = memory.load("wf", input_type=Line)
    assert loaded is not None
    assert loaded.snapshot.input == line
    stored = memory.load("wf").snapshot.input  # type: ignore[union-attr]
    assert {**stored, "tags": sorted(stored["tags"])} == {
        "sku": "a",
        "sizes": [1, 2],
        "colour": "red",
        "tags": ["a", "b"],
    }


@pytest.mark.parametrize("codec_type", [MsgpackCodec, CborCodec], ids=lambda t: t.name)
def test_strict_values_off_writes_what_the_codec_can_as_before(codec_type: type[Codec]) -> None:
    """For a store holding values from before the domain (int keys, NaN): its instances
    can be saved again."""
    legacy = MemoryBackend(codec_instance(codec_type), limits=Limits(strict_values=False))
    value = {1: "int key", "n": [float("inf")]}
    legacy.save(snap("wf", input=value, task_results={"t": TaskResult(output=value)}))
    stored = legacy.load("wf")
    assert stored is not None
    assert stored.snapshot.input == value
    assert legacy.load_task_result("wf", "t").output == value  # type: ignore[union-attr]
    with pytest.raises(EncodeError):
        MemoryBackend(codec_instance(codec_type)).save(snap("wf", input=value))


def test_strict_values_is_a_connect_option(dsn: str, fresh_schema: str) -> None:
    with PostgresBackend[MsgpackCodec].connect(
        dsn, schema=fresh_schema, strict_values=False
    ) as legacy:
        legacy.save(snap("wf", input={1: "int key"}))
        assert legacy.load("wf").snapshot.input == {1: "int key"}  # type: ignore[union-attr]
