"""Helpers shared by the codec tests: an independent envelope writer and strict equality."""

from __future__ import annotations

import math
import struct
import zlib
from datetime import datetime

import msgspec

from snapstore.codecs import CborCodec, Codec, JsonCodec, MsgpackCodec, codec_instance

CODECS: list[Codec] = [codec_instance(t) for t in (JsonCodec, MsgpackCodec, CborCodec)]
CODEC_IDS = [c.name for c in CODECS]
CODEC_PAIRS = [(a, b) for a in CODECS for b in CODECS if a is not b]
CODEC_PAIR_IDS = [f"{a.name}->{b.name}" for a, b in CODEC_PAIRS]


def reseal(
    blob: bytes,
    *,
    magic: bytes | None = None,
    version: int | None = None,
    codec_id: int | None = None,
    flags: int | None = None,
    payload: bytes | None = None,
) -> bytes:
    """``blob`` with some envelope fields replaced and a valid CRC, written from SPEC.md
    rather than with snapstore's own code, so the tests also check the spec."""
    prefix = bytearray(blob[:6])
    if magic is not None:
        prefix[0:3] = magic
    if version is not None:
        prefix[3] = version
    if codec_id is not None:
        prefix[4] = codec_id
    if flags is not None:
        prefix[5] = flags
    body = blob[10:] if payload is None else payload
    return bytes(prefix) + struct.pack(">I", zlib.crc32(bytes(prefix) + body)) + body


def flip_bit(blob: bytes, bit: int) -> bytes:
    """``blob`` with bit number ``bit`` (0 = lowest bit of the first byte) inverted."""
    out = bytearray(blob)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def same(a: object, b: object) -> bool:
    """Equality that also compares types, key order, float signs and tz-awareness.

    Plain ``==`` would hide codec bugs: ``1 == 1.0 == True`` and ``0.0 == -0.0``.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, msgspec.Struct):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__struct_fields__)
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert isinstance(b, float)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, datetime):
        assert isinstance(b, datetime)
        return a == b and (a.tzinfo is None) == (b.tzinfo is None)
    return a == b
