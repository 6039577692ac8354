"""Wire-format tests: golden vectors, round trips, codec switches, corruption, registry.

Everything here runs without PostgreSQL; tests/test_codec_postgres.py checks the
same guarantees through the real backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast, get_args

import cbor2
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapstore import MemoryBackend
from snapstore.codecs import (
    CborCodec,
    Codec,
    JsonCodec,
    MsgpackCodec,
    codec_for_id,
    codec_for_name,
    codec_instance,
    decode_snapshot,
    encode_checkpoint,
    encode_output,
    encode_snapshot,
    open_value,
    register_codec,
    registered_codecs,
    seal_value,
)
from snapstore.codecs.envelope import (
    FLAG_VALUE,
    HEADER_SIZE,
    MAX_DEPTH,
    seal_document,
    seal_lowered_value,
)
from snapstore.codecs.snapshot import strip_outputs
from snapstore.errors import ConfigurationError, DecodeError, EncodeError, UnknownCodecError
from snapstore.model import Position, TaskResult, WorkflowSnapshot, WorkflowStatus
from snapstore.rows import readable
from tests.codec_support import (
    CODEC_IDS,
    CODEC_PAIR_IDS,
    CODEC_PAIRS,
    CODECS,
    flip_bit,
    reseal,
    same,
)
from tests.golden_cases import (
    GOLDEN_CODECS,
    GOLDEN_DIR,
    RICH,
    SNAPSHOT_CASES,
    VALUE,
    golden_files,
    snapshot_path,
    value_path,
)
from tests.strategies import json_values, snapshots

T = TypeVar("T")
codecs = pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
pairs = pytest.mark.parametrize(("writer", "reader"), CODEC_PAIRS, ids=CODEC_PAIR_IDS)
fast = settings(max_examples=60, deadline=None)


def with_outputs(snapshot: WorkflowSnapshot, codec: Codec) -> dict[str, bytes]:
    """The sidecar blobs a store keeps next to ``snapshot``'s blob."""
    blobs = {k: encode_output(codec, r.output) for k, r in snapshot.task_results.items()}
    return {k: b for k, b in blobs.items() if b is not None}


# --- golden vectors -------------------------------------------------------------------------


def test_golden_directory_holds_exactly_the_generated_files() -> None:
    """A missing vector must fail, not skip; a stray one means a case was dropped."""
    assert set(GOLDEN_DIR.rglob("*.bin")) == set(golden_files())


@pytest.mark.parametrize("case", SNAPSHOT_CASES)
@pytest.mark.parametrize("codec_type", GOLDEN_CODECS, ids=lambda t: t.name)
def test_golden_snapshot_decodes_forever(codec_type: type[Codec], case: str) -> None:
    codec, snapshot = decode_snapshot(snapshot_path(codec_type, case).read_bytes())
    assert type(codec) is codec_type
    expected = strip_outputs(SNAPSHOT_CASES[case])
    assert same(snapshot, expected), f"{snapshot!r}\n!=\n{expected!r}"


@pytest.mark.parametrize("codec_type", GOLDEN_CODECS, ids=lambda t: t.name)
def test_golden_value_decodes_forever(codec_type: type[Codec]) -> None:
    value = open_value(value_path(codec_type).read_bytes())
    assert same(value, VALUE), f"{value!r} != {VALUE!r}"


@pytest.mark.parametrize(
    ("path", "blob"),
    [pytest.param(p, b, id=str(p.relative_to(GOLDEN_DIR))) for p, b in golden_files().items()],
)
def test_encoding_reproduces_golden_bytes(path: Path, blob: bytes) -> None:
    """Format drift detector: a failure means the wire format changed (see codecs/SPEC.md)."""
    assert blob == path.read_bytes()


def test_golden_cases_cover_every_position_kind_and_status() -> None:
    assert {type(s.position) for s in SNAPSHOT_CASES.values()} == set(get_args(Position))
    assert {s.status for s in SNAPSHOT_CASES.values()} == set(WorkflowStatus)


@pytest.mark.parametrize(("snapshot_codec", "value_codec"), CODEC_PAIRS, ids=CODEC_PAIR_IDS)
def test_golden_outputs_rehydrate_across_codecs(snapshot_codec: Codec, value_codec: Codec) -> None:
    """A store keeps blob and outputs apart, possibly from different codecs after a switch."""
    blob = snapshot_path(type(snapshot_codec), "at_fork").read_bytes()
    output = value_path(type(value_codec)).read_bytes()
    _, snapshot = decode_snapshot(blob, {"audit": output, "not-in-snapshot": output})
    stripped = strip_outputs(RICH)
    audit = msgspec.structs.replace(stripped.task_results["audit"], output=VALUE)
    expected = msgspec.structs.replace(
        stripped, task_results={**stripped.task_results, "audit": audit}
    )
    assert same(snapshot, expected)


# --- round trips ----------------------------------------------------------------------------


@codecs
@fast
@given(snapshot=snapshots())
def test_snapshot_round_trip(codec: Codec, snapshot: WorkflowSnapshot) -> None:
    """The blob drops outputs; hydrating the sidecar blobs restores the snapshot exactly."""
    blob = encode_snapshot(codec, snapshot)
    got_codec, bare = decode_snapshot(blob)
    assert got_codec is codec
    assert same(bare, strip_outputs(snapshot))
    _, full = decode_snapshot(blob, with_outputs(snapshot, codec))
    assert same(full, snapshot)


@codecs
@fast
@given(snapshot=snapshots())
def test_one_pass_checkpoint_encoding_matches_the_separate_encoders(
    codec: Codec, snapshot: WorkflowSnapshot
) -> None:
    """What a save sends (one lowering of the snapshot) is byte for byte what encoding the
    blob and each output on its own gives: the sidecar format has one definition."""
    blob, outputs = encode_checkpoint(codec, snapshot)
    assert blob == encode_snapshot(codec, snapshot)
    assert outputs == {k: encode_output(codec, r.output) for k, r in snapshot.task_results.items()}


@codecs
@fast
@given(value=json_values)
def test_value_round_trip(codec: Codec, value: Any) -> None:
    assert same(open_value(seal_value(codec, value)), value)


@codecs
def test_readers_ignore_fields_they_do_not_know(codec: Codec) -> None:
    """Compatibility rule 2: a newer writer's extra field does not break an older reader."""
    doc = msgspec.to_builtins(strip_outputs(RICH), builtin_types=codec.builtin_types)
    doc["field_from_the_future"] = {"x": [1, 2]}
    doc["task_results"]["validate"]["also_new"] = True
    _, snapshot = decode_snapshot(seal_document(codec, doc))
    assert same(snapshot, strip_outputs(RICH))


@pairs
def test_memory_backend_reads_blobs_of_the_previous_codec(writer: Codec, reader: Codec) -> None:
    """After a codec switch, old blobs decode by their envelope id and report their codec."""
    store = MemoryBackend(writer)
    store.save(RICH)
    store.codec = reader
    stored = store.load(RICH.instance_id)
    assert stored is not None
    assert stored.codec == writer.name
    assert same(stored.snapshot, RICH)
    store.save(RICH, expected_version=1)
    latest = store.load(RICH.instance_id)
    assert latest is not None
    assert latest.codec == reader.name
    assert same(latest.snapshot, RICH)
    history = store.history(RICH.instance_id)
    assert [h.codec for h in history] == [writer.name, reader.name]
    assert all(same(h.snapshot, strip_outputs(RICH)) for h in history)


# --- corrupt and foreign blobs --------------------------------------------------------------

Corruption = Callable[[bytes], bytes]
CORRUPTIONS: dict[str, tuple[Corruption, type[DecodeError]]] = {
    "empty": (lambda b: b"", DecodeError),
    "header-only": (lambda b: b[:HEADER_SIZE], DecodeError),
    "short-header": (lambda b: b[: HEADER_SIZE - 1], DecodeError),
    "truncated": (lambda b: b[:-1], DecodeError),
    "extended": (lambda b: b + b"\x00", DecodeError),
    "payload-bit": (lambda b: flip_bit(b, 8 * HEADER_SIZE + 3), DecodeError),
    "crc-bit": (lambda b: flip_bit(b, 8 * 6), DecodeError),
    "wrong-magic": (lambda b: reseal(b, magic=b"SNQ"), DecodeError),
    "format-version-0": (lambda b: reseal(b, version=0), DecodeError),
    "format-version-2": (lambda b: reseal(b, version=2), DecodeError),
    "unknown-flag": (lambda b: reseal(b, flags=b[5] | 0x80), DecodeError),
    "other-kind": (lambda b: reseal(b, flags=b[5] ^ FLAG_VALUE), DecodeError),
    "unknown-codec-id": (lambda b: reseal(b, codec_id=250), UnknownCodecError),
    "codec-id-0": (lambda b: reseal(b, codec_id=0), UnknownCodecError),
    "garbage-payload": (lambda b: reseal(b, payload=b"\xff\xc1{["), DecodeError),
    "empty-payload": (lambda b: reseal(b, payload=b""), DecodeError),
    "trailing-payload-byte": (lambda b: reseal(b, payload=b[HEADER_SIZE:] + b"\x00"), DecodeError),
}
corruptions = pytest.mark.parametrize(
    ("corrupt", "error"), CORRUPTIONS.values(), ids=list(CORRUPTIONS)
)


@codecs
@corruptions
def test_corrupt_snapshot_blob_raises_decode_error_naming_the_checkpoint(
    codec: Codec, corrupt: Corruption, error: type[DecodeError]
) -> None:
    blob = corrupt(encode_snapshot(codec, RICH))
    with pytest.raises(error) as caught:
        decode_snapshot(blob, instance_id="inst-ü", version=7)
    assert type(caught.value) is error
    assert (caught.value.instance_id, caught.value.version) == ("inst-ü", 7)
    assert "'inst-ü'" in str(caught.value)
    assert "version 7" in str(caught.value)


@codecs
@corruptions
def test_corrupt_value_blob_raises_decode_error(
    codec: Codec, corrupt: Corruption, error: type[DecodeError]
) -> None:
    with pytest.raises(error) as caught:
        open_value(corrupt(seal_value(codec, VALUE)))
    assert type(caught.value) is error


@codecs
def test_corrupt_output_blob_names_the_checkpoint(codec: Codec) -> None:
    blob = encode_snapshot(codec, RICH)
    bad = {"audit": flip_bit(seal_value(codec, VALUE), 100)}
    with pytest.raises(DecodeError, match=r"instance 'i', version 3"):
        decode_snapshot(blob, bad, instance_id="i", version=3)


@codecs
@pytest.mark.parametrize(
    "payload_doc",
    [[1, 2], "text", {"instance_id": "i"}, {"instance_id": "i", "definition_hash": 5}],
    ids=["array", "text", "missing-field", "wrong-type"],
)
def test_well_formed_payload_of_the_wrong_shape_raises_decode_error(
    codec: Codec, payload_doc: Any
) -> None:
    with pytest.raises(DecodeError):
        decode_snapshot(seal_document(codec, payload_doc))


@codecs
def test_unknown_position_kind_raises_decode_error(codec: Codec) -> None:
    """An older reader meeting a newer position kind fails loudly (compatibility rule 2)."""
    doc = msgspec.to_builtins(strip_outputs(RICH), builtin_types=codec.builtin_types)
    doc["position"] = {"kind": "AtTeleport", "task_id": "x"}
    with pytest.raises(DecodeError, match="AtTeleport"):
        decode_snapshot(seal_document(codec, doc))


SMALL_VALUES: list[Any] = [None, True, 7, -3, 1.5, "hello", [1, 2], {"a": 1}]


def _small_blobs() -> dict[str, bytes]:
    """Small blobs, cheap enough to corrupt at every bit and every length. Small values
    matter most: a short payload often still parses when handed to another codec."""
    blobs = {f"{c.name}/value-{v!r}": seal_value(c, v) for c in CODECS for v in SMALL_VALUES}
    for path in [snapshot_path(t, "not_started") for t in GOLDEN_CODECS] + [
        value_path(t) for t in GOLDEN_CODECS
    ]:
        blobs[f"golden/{path.parent.name}/{path.name}"] = path.read_bytes()
    return blobs


SMALL_BLOBS = _small_blobs()


@pytest.mark.parametrize("blob", SMALL_BLOBS.values(), ids=list(SMALL_BLOBS))
def test_every_single_bit_flip_and_truncation_is_detected(blob: bytes) -> None:
    decode = cast(Callable[[bytes], object], open_value if blob[5] & FLAG_VALUE else _snap)
    for bit in range(8 * len(blob)):
        with pytest.raises(DecodeError):
            decode(flip_bit(blob, bit))
    for length in range(len(blob)):
        with pytest.raises(DecodeError):
            decode(blob[:length])


def _snap(blob: bytes) -> WorkflowSnapshot:
    return decode_snapshot(blob)[1]


@codecs
@fast
@given(snapshot=snapshots(), data=st.data())
def test_any_single_bit_flip_of_a_snapshot_blob_is_detected(
    codec: Codec, snapshot: WorkflowSnapshot, data: st.DataObject
) -> None:
    blob = encode_snapshot(codec, snapshot)
    bit = data.draw(st.integers(0, 8 * len(blob) - 1), label="bit")
    with pytest.raises(DecodeError):
        decode_snapshot(flip_bit(blob, bit))


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=64) | st.binary(max_size=32).map(lambda b: b"SNP\x01" + b))
def test_any_byte_string_raises_only_decode_error(blob: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_snapshot(blob)
    with pytest.raises(DecodeError):
        open_value(blob)


def _decodes_or_raises_decode_error(decode: Callable[[bytes], T], blob: bytes) -> T | None:
    """Run ``decode``; any exception other than DecodeError escapes and fails the test."""
    try:
        return decode(blob)
    except DecodeError:
        return None


@settings(max_examples=300, deadline=None)
@given(
    codec=st.sampled_from(CODECS),
    flags=st.sampled_from([0, FLAG_VALUE]),
    payload=st.binary(max_size=96),
)
def test_any_payload_behind_a_valid_header_raises_only_decode_error(
    codec: Codec, flags: int, payload: bytes
) -> None:
    """Fuzz the codec parsers themselves: the CRC is valid, so the payload is parsed."""
    blob = reseal(b"SNP\x01\x00\x00", codec_id=codec.codec_id, flags=flags, payload=payload)
    if flags:
        _decodes_or_raises_decode_error(open_value, blob)
    else:
        result = _decodes_or_raises_decode_error(_snap, blob)
        assert result is None or isinstance(result, WorkflowSnapshot)


@codecs
@fast
@given(snapshot=snapshots(), data=st.data())
def test_mutated_payload_with_valid_crc_raises_only_decode_error(
    codec: Codec, snapshot: WorkflowSnapshot, data: st.DataObject
) -> None:
    """Near-valid documents reach deeper parser and validation paths than random bytes."""
    blob = encode_snapshot(codec, snapshot)
    payload = bytearray(blob[HEADER_SIZE:])
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        at = data.draw(st.integers(0, len(payload) - 1), label="at")
        payload[at] = data.draw(st.integers(0, 255), label="byte")
    result = _decodes_or_raises_decode_error(_snap, reseal(blob, payload=bytes(payload)))
    assert result is None or isinstance(result, WorkflowSnapshot)


# --- registry -------------------------------------------------------------------------------


class ReversedJsonCodec:
    """A third-party codec (JSON written backwards), registered under an application id."""

    codec_id: ClassVar[int] = 200
    name: ClassVar[str] = "reversed-json-test"
    builtin_types: ClassVar[tuple[type, ...]] = ()

    def dumps(self, doc: Any) -> bytes:
        return msgspec.json.encode(doc)[::-1]

    def loads(self, payload: bytes, type_: type[T]) -> T:
        return msgspec.json.decode(payload[::-1], type=type_)


def _fake_codec(codec_id: Any, name: Any) -> Codec:
    """A fresh codec class (so the registry sees a different codec) with any id and name."""
    attrs = {"codec_id": codec_id, "name": name}
    return cast(Codec, type("FakeCodec", (ReversedJsonCodec,), attrs)())


def test_registered_custom_codec_blobs_are_decodable() -> None:
    custom = register_codec(ReversedJsonCodec())
    assert register_codec(ReversedJsonCodec()) is custom  # idempotent per class
    assert codec_for_id(200) is custom
    assert codec_for_name("reversed-json-test") is custom
    blob = encode_snapshot(custom, RICH)
    assert blob[4] == 200
    codec, snapshot = decode_snapshot(blob, with_outputs(RICH, custom))
    assert codec is custom
    assert same(snapshot, RICH)
    store = MemoryBackend(codec_instance(JsonCodec))
    store.codec = custom
    store.save(RICH)
    store.codec = codec_instance(JsonCodec)
    stored = store.load(RICH.instance_id)
    assert stored is not None
    assert stored.codec == "reversed-json-test"
    assert same(stored.snapshot, RICH)


@pytest.mark.parametrize(
    ("codec_id", "name"),
    [(1, "other-json"), (3, "cbor"), (201, "json"), (202, "msgpack")],
    ids=["taken-id", "taken-id-and-name", "taken-name", "taken-name-2"],
)
def test_clashing_codec_ids_and_names_are_refused(codec_id: int, name: str) -> None:
    before = registered_codecs()
    with pytest.raises(ConfigurationError, match="clashes"):
        register_codec(_fake_codec(codec_id, name))
    assert registered_codecs() == before  # a refused codec leaves no half registration


@pytest.mark.parametrize(
    ("codec_id", "name"),
    [(0, "zero"), (256, "too-big"), (-1, "negative"), ("7", "str-id"), (203, ""), (204, None)],
)
def test_invalid_codec_ids_and_names_are_refused(codec_id: Any, name: Any) -> None:
    with pytest.raises(ConfigurationError):
        register_codec(_fake_codec(codec_id, name))


def test_unknown_codec_lookups_raise() -> None:
    with pytest.raises(UnknownCodecError):
        codec_for_id(251)
    with pytest.raises(ConfigurationError, match="json"):
        codec_for_name("yaml")


# --- encode errors --------------------------------------------------------------------------

NON_FINITE = [float("nan"), float("inf"), float("-inf")]
PLACES: dict[str, Callable[[Codec, float], object]] = {
    "input": lambda c, x: encode_snapshot(c, msgspec.structs.replace(RICH, input=x)),
    "nested-output": lambda c, x: encode_snapshot(
        c, msgspec.structs.replace(RICH, output={"a": [1, {"b": x}]})
    ),
    "task-output": lambda c, x: encode_output(c, TaskResult(output=[x]).output),
    "value": lambda c, x: seal_value(c, {"k": [x]}),
}


@pytest.mark.parametrize("place", PLACES.values(), ids=list(PLACES))
@pytest.mark.parametrize("number", NON_FINITE, ids=str)
@pytest.mark.parametrize("codec_type", [JsonCodec, MsgpackCodec, CborCodec])
def test_every_codec_refuses_non_finite_floats(
    place: Callable[[Codec, float], object], number: float, codec_type: type[Codec]
) -> None:
    """Outside the value domain for all of them: JSON has no way to write one, so no
    codec stores one (a codec switch would otherwise start refusing data)."""
    with pytest.raises(EncodeError, match="not finite"):
        place(codec_instance(codec_type), number)


def test_failed_encode_writes_nothing() -> None:
    store = MemoryBackend(codec_instance(JsonCodec))
    with pytest.raises(EncodeError):
        store.save(msgspec.structs.replace(RICH, input=float("nan")))
    assert store.load(RICH.instance_id) is None


class _Opaque:
    pass


UNSUPPORTED = {"object": object(), "complex": 1 + 2j, "class": _Opaque(), "surrogate": "\ud800"}


@codecs
@pytest.mark.parametrize("value", UNSUPPORTED.values(), ids=list(UNSUPPORTED))
def test_unsupported_values_raise_encode_error(codec: Codec, value: Any) -> None:
    with pytest.raises(EncodeError):
        seal_value(codec, value)
    with pytest.raises(EncodeError):
        encode_snapshot(codec, msgspec.structs.replace(RICH, input={"x": [value]}))


@pytest.mark.parametrize("codec", [c for c in CODECS if c.name != "cbor"], ids=lambda c: c.name)
@pytest.mark.parametrize("number", [2**64, -(2**63) - 1], ids=["2^64", "-2^63-1"])
def test_json_and_msgpack_refuse_ints_beyond_64_bits(codec: Codec, number: int) -> None:
    with pytest.raises(EncodeError):
        seal_value(codec, number)


# --- limits the writer shares with every reader ---------------------------------------------


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_one_nesting_limit_for_every_codec_and_what_it_writes_it_reads(codec: Codec) -> None:
    deepest = nested(MAX_DEPTH - 1)  # the list holding the output adds no level: values
    assert open_value(seal_value(codec, deepest)) == deepest
    for too_deep in (MAX_DEPTH + 1, 2_000, 20_000):  # cbor2 crashed the process at 10,000
        with pytest.raises(EncodeError, match="nests deeper"):
            seal_value(codec, nested(too_deep))
    with pytest.raises(EncodeError, match="nests deeper"):
        encode_snapshot(codec, msgspec.structs.replace(RICH, input=nested(MAX_DEPTH)))


def test_the_depth_probe_falls_back_for_what_orjson_cannot_encode() -> None:
    """CBOR carries integers past 64 bits (blobs written before the value domain hold
    them; a lowered document may still): the C probe refuses them, the walk does not."""
    (cbor,) = (c for c in CODECS if c.name == "cbor")
    assert open_value(seal_lowered_value(cbor, [[2**100]])) == [[2**100]]
    with pytest.raises(EncodeError, match="nests deeper"):
        seal_lowered_value(cbor, [2**100, nested(MAX_DEPTH + 5)])
    with pytest.raises(EncodeError, match="64-bit"):  # outside the domain for every codec
        seal_value(cbor, [[2**100]])


@pytest.mark.parametrize(
    "change",
    [{"priority": 9}, {"instance_id": "a\x00b"}, {"tags": ("t\x00",)}],
    ids=["priority-9", "nul-in-id", "nul-in-tag"],
)
def test_the_reader_refuses_what_the_writer_refuses(change: dict[str, Any]) -> None:
    """A blob another tool wrote (checksum intact) cannot hand the engine a checkpoint
    broken where it relies on it (ids, priority, tags)."""
    bad = msgspec.structs.replace(RICH, **change)
    blob = encode_snapshot(codec_instance(JsonCodec), bad)
    _, decoded = decode_snapshot(blob, with_outputs(bad, codec_instance(JsonCodec)))
    with pytest.raises(DecodeError, match="not one snapstore writes"):
        readable(decoded)


class _Shapeless:
    codec_id = 210
    name = "shapeless-test"

    def dumps(self, doc: Any) -> bytes:
        return b""


@pytest.mark.parametrize(
    "make",
    [
        lambda: _fake_codec(7, "reserved-id-test"),
        lambda: _Shapeless(),
        lambda: _fake_codec(205, "bad\nname"),
    ],
    ids=["reserved-id", "no-builtin-types-or-loads", "unprintable-name"],
)
def test_codecs_are_validated_when_registered(make: Callable[[], Any]) -> None:
    before = registered_codecs()
    with pytest.raises(ConfigurationError):
        register_codec(make())
    assert registered_codecs() == before


def test_the_reader_keeps_what_an_earlier_release_could_write() -> None:
    """Write-side limits added later (text length, schedule range) do not make stored
    checkpoints unreadable."""
    old = msgspec.structs.replace(RICH, error="x" * (2**20 + 1))
    blob = encode_snapshot(codec_instance(JsonCodec), old)
    _, decoded = decode_snapshot(blob, with_outputs(old, codec_instance(JsonCodec)))
    assert readable(decoded) is decoded


class RawCbor:
    """Writes a given CBOR payload under the CBOR codec's id: a blob another tool wrote."""

    codec_id = 3
    name = "cbor"
    limits_depth = True
    builtin_types = (bytes, bytearray)

    def dumps(self, doc: Any) -> bytes:
        assert isinstance(doc, bytes)
        return doc


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("d81c82d81c8101d81d01"),  # [shared [1], reference to it]
        bytes.fromhex("d81c81d81d00"),  # a list holding itself
        bytes.fromhex("d90100826161d81900"),  # string reference namespace
    ],
    ids=["shared", "self-reference", "string-reference"],
)
def test_the_cbor_reader_refuses_tags_snapstore_never_writes(payload: bytes) -> None:
    blob = seal_value(RawCbor(), payload)  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="shared or referenced"):
        open_value(blob)


def test_the_cbor_reader_refuses_what_nests_deeper_than_the_writer_writes() -> None:
    (cbor,) = (c for c in CODECS if c.name == "cbor")
    assert open_value(seal_value(cbor, nested(MAX_DEPTH - 1))) == nested(MAX_DEPTH - 1)
    # One level more than the writer nests is allowed for a bignum's tag (below).
    blob = seal_value(RawCbor(), cbor2.dumps(nested(MAX_DEPTH + 2)))  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        open_value(blob)


def test_a_bignum_at_the_deepest_nesting_the_writer_allows_reads_back() -> None:
    """cbor2 counts the bignum's tag as one more level: the reader allows for it (in
    blobs written before the value domain refused bignums)."""
    (cbor,) = (c for c in CODECS if c.name == "cbor")
    deepest: object = 2**100
    for _ in range(MAX_DEPTH - 1):
        deepest = [deepest]
    assert open_value(seal_lowered_value(cbor, deepest)) == deepest
