"""A bounded-time fuzz of the decoders: whatever bytes sit in a blob with a valid
envelope (checksum included), reading it raises `DecodeError` or returns what the
writer could have written; never another exception."""

from __future__ import annotations

import contextlib

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapstore.codecs import Codec, encode_snapshot, open_value, seal_value
from snapstore.codecs.snapshot import decode_chain, lower_document, seal_delta
from snapstore.errors import DecodeError
from snapstore.rows import readable
from tests.codec_support import CODECS, reseal
from tests.golden_cases import RICH

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
WHOLE = [encode_snapshot(c, RICH) for c in CODECS]
VALUES = [seal_value(c, {"rows": [1, 2.5, "x", None, True], "nested": {"k": [[]]}}) for c in CODECS]


def _delta(codec: Codec) -> bytes:
    changed = msgspec.structs.replace(RICH, error="later")
    doc, typed = lower_document(codec, changed)
    return seal_delta(codec, doc, [], [], typed=typed)


DELTAS = [_delta(c) for c in CODECS]


@st.composite
def mutated(draw: st.DrawFn, blobs: list[bytes]) -> bytes:
    """A real blob whose payload had bytes replaced, inserted or cut, resealed."""
    blob = draw(st.sampled_from(blobs))
    payload = bytearray(blob[10:])
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, max(len(payload) - 1, 0)))
        action = draw(st.sampled_from(["replace", "insert", "cut"]))
        byte = draw(st.integers(0, 255))
        if action == "replace" and payload:
            payload[where] = byte
        elif action == "insert":
            payload.insert(where, byte)
        elif payload:
            del payload[where : where + draw(st.integers(1, 16))]
    return reseal(blob, payload=bytes(payload))


def _reads(blob: bytes) -> None:
    with contextlib.suppress(DecodeError):
        ((_, _, snapshot),) = decode_chain([(1, blob)])
        readable(snapshot)


@FUZZ
@given(mutated(WHOLE))
def test_mutated_checkpoints_decode_or_raise_decode_error(blob: bytes) -> None:
    _reads(blob)


@FUZZ
@given(st.sampled_from(WHOLE), mutated(DELTAS))
def test_mutated_deltas_decode_or_raise_decode_error(base: bytes, delta: bytes) -> None:
    with contextlib.suppress(DecodeError):
        for _, _, snapshot in decode_chain([(1, base), (2, delta)]):
            readable(snapshot)


@FUZZ
@given(mutated(VALUES))
def test_mutated_values_decode_or_raise_decode_error(blob: bytes) -> None:
    with contextlib.suppress(DecodeError):
        open_value(blob)


@FUZZ
@given(st.sampled_from(WHOLE), st.binary(max_size=200))
def test_arbitrary_payloads_decode_or_raise_decode_error(blob: bytes, payload: bytes) -> None:
    _reads(reseal(blob, payload=payload))
