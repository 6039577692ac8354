"""The versioned envelope around every stored blob.

Layout (big-endian), 10 bytes then the payload::

    magic "SNP" | format version (1) | codec id (1) | flags (1) | crc32 (4)

The CRC-32 covers the six bytes before it and the payload: a flipped codec-id
bit would otherwise hand the payload to another registered codec. The checksum
turns silent bit rot into a `DecodeError`; the kind flag stops a task output
from ever being decoded as a snapshot. See codecs/SPEC.md.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Final, TypeVar

import msgspec
import orjson

from snapstore.codecs.base import Codec
from snapstore.codecs.registry import codec_for_id
from snapstore.codecs.values import lower_value, raise_value
from snapstore.errors import DecodeError, EncodeError

T = TypeVar("T")

MAGIC: Final = b"SNP"
FORMAT_VERSION: Final = 1
FLAG_VALUE: Final = 0x01  # payload is a bare value (task output, event payload)
FLAG_DELTA: Final = 0x02  # a snapshot document holding only what changed since its version - 1
FLAG_TYPED: Final = 0x04  # holds tagged values (snapstore.codecs.values): read the tags back
KNOWN_FLAGS: Final = FLAG_VALUE | FLAG_DELTA | FLAG_TYPED
_HEADER: Final = struct.Struct(">3sBBBI")
_PREFIX: Final = struct.Struct(">3sBBB")  # the checksummed part of the header
_CRC: Final = struct.Struct(">I")
HEADER_SIZE: Final = _HEADER.size
FLAGS_OFFSET: Final = 5


MAX_DEPTH: Final = 254
"""Containers nested in one document, the same for every codec, checked before
encoding. Each library has limits of its own: cbor2 cannot decode past about 400
levels (and crashes the process encoding some 10,000), msgspec raises RecursionError
near 1000, orjson refuses more than 254 while encoding. A blob its reader cannot
read back must never be written, so every codec stops where orjson does. A
snapshot's own structure takes a few of these levels."""

_CONTAINERS: Final = (dict, list, tuple)
_DEEP: Final = "Recursion limit reached"  # orjson's message past MAX_DEPTH


def _too_deep() -> EncodeError:
    return EncodeError(f"value nests deeper than {MAX_DEPTH} levels")


def check_depth(doc: Any) -> None:
    """`EncodeError` if containers nest deeper than `MAX_DEPTH`.

    orjson walks the document in C and stops at exactly that depth, so it is the
    probe (anything it cannot encode counts as a leaf); a document it refuses for
    another reason (an integer past 64 bits, which CBOR carries) is walked in Python.
    """
    if type(doc) not in _CONTAINERS:
        return
    try:
        orjson.dumps(doc, default=_leaf, option=orjson.OPT_NON_STR_KEYS)
        return
    except orjson.JSONEncodeError as exc:
        if _DEEP in str(exc):
            raise _too_deep() from None
    level, current = 1, [doc]
    while current:
        if level > MAX_DEPTH:
            raise _too_deep()
        deeper: list[Any] = []
        for container in current:
            items = container.values() if type(container) is dict else container
            deeper.extend(v for v in items if type(v) in _CONTAINERS)
        level, current = level + 1, deeper


def _leaf(value: Any) -> None:
    return None


def _seal(codec: Codec, flags: int, doc: Any) -> bytes:
    if not getattr(codec, "limits_depth", False):
        check_depth(doc)
    try:
        payload = codec.dumps(doc)
    except EncodeError:
        raise
    except RecursionError:
        raise _too_deep() from None
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        if _DEEP in str(exc):
            raise _too_deep() from None
        raise EncodeError(f"{codec.name} cannot encode this value: {exc}") from exc
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, codec.codec_id, flags)
    return prefix + _CRC.pack(zlib.crc32(payload, zlib.crc32(prefix))) + payload


def seal_document(codec: Codec, doc: Any, *, delta: bool = False, typed: bool = False) -> bytes:
    """Envelope a snapshot document (``delta``: a checkpoint delta, see snapshot.py;
    ``typed``: its values hold tags, see `snapstore.codecs.values`)."""
    return _seal(codec, (FLAG_DELTA if delta else 0) | (FLAG_TYPED if typed else 0), doc)


def seal_value(codec: Codec, value: Any, where: str = "value", *, strict: bool = True) -> bytes:
    """Envelope a value of the value domain (`snapstore.codecs.values`); anything outside
    it is an `EncodeError` naming ``where`` (unless not ``strict``)."""
    try:
        lowered, typed = lower_value(codec.builtin_types, value, where, strict=strict)
    except RecursionError:
        raise _too_deep() from None
    return seal_lowered_value(codec, lowered, typed=typed)


def seal_lowered_value(codec: Codec, value: Any, *, typed: bool = False) -> bytes:
    """`seal_value` of a value already lowered (`snapstore.codecs.values.lower_value`)."""
    return _seal(codec, FLAG_VALUE | (FLAG_TYPED if typed else 0), value)


def open_envelope(
    blob: bytes | bytearray, *, expect_value: bool, expect_delta: bool = False
) -> tuple[Codec, memoryview]:
    """Check the header and checksum; return the codec named by the blob and its payload
    (a view into ``blob``: a 100 MB output is not copied once more to be decoded).
    Whether its values hold tags: `is_typed`."""
    if len(blob) < HEADER_SIZE:
        raise DecodeError(f"blob of {len(blob)} bytes is shorter than the envelope header")
    magic, version, codec_id, flags, crc = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise DecodeError(f"not a snapstore blob (magic {bytes(magic)!r})")
    if version != FORMAT_VERSION:
        raise DecodeError(f"unsupported envelope format version {version}")
    if flags & ~KNOWN_FLAGS:
        raise DecodeError(f"unknown envelope flags {flags:#04x}")
    if bool(flags & FLAG_VALUE) != expect_value or (flags & FLAG_VALUE and flags & FLAG_DELTA):
        kind = "value" if flags & FLAG_VALUE else "snapshot"
        raise DecodeError(f"blob holds a {kind}, not what was asked for")
    if bool(flags & FLAG_DELTA) != expect_delta:
        kind = "checkpoint delta" if flags & FLAG_DELTA else "whole checkpoint"
        raise DecodeError(f"blob holds a {kind}, not what was asked for")
    payload = memoryview(blob)[HEADER_SIZE:]
    if zlib.crc32(payload, zlib.crc32(blob[: _PREFIX.size])) != crc:
        raise DecodeError("checksum mismatch: blob is corrupt or truncated")
    return codec_for_id(codec_id), payload


def _parse(codec: Codec, payload: memoryview, type_: type[T]) -> T:
    # Codecs that say so parse the view itself; others get the bytes they were promised.
    data: Any = payload if getattr(codec, "reads_views", False) else payload.tobytes()
    try:
        return codec.loads(data, type_)
    except DecodeError:
        raise
    except Exception as exc:  # third-party parsers raise assorted types on bad input
        raise DecodeError(f"{codec.name} payload does not decode: {exc}") from exc


def is_typed(blob: bytes | bytearray | memoryview) -> bool:
    """Whether a blob (checked by `open_envelope`) holds tagged values."""
    return bool(blob[FLAGS_OFFSET] & FLAG_TYPED)


def open_document(blob: bytes, type_: type[T], *, delta: bool = False) -> tuple[Codec, T]:
    """Decode a snapshot document blob (``delta``: a checkpoint delta) written by any
    registered codec; its input and output read back typed when the blob is flagged."""
    codec, payload = open_envelope(blob, expect_value=False, expect_delta=delta)
    doc = _parse(codec, payload, type_)
    if is_typed(blob):
        doc = msgspec.structs.replace(  # type: ignore[type-var]
            doc,
            input=raise_value(doc.input),  # type: ignore[attr-defined]
            output=raise_value(doc.output),  # type: ignore[attr-defined]
        )
    return codec, doc


def open_value(blob: bytes | bytearray) -> Any:
    """Decode a value blob written by any registered codec."""
    codec, payload = open_envelope(blob, expect_value=True)
    value = _parse(codec, payload, object)
    return raise_value(value) if is_typed(blob) else value
