"""CBOR (RFC 8949) via cbor2: a standard binary format with wide tooling."""

from __future__ import annotations

import io
from typing import Any, ClassVar, TypeVar

import cbor2
import msgspec

from snapstore.errors import DecodeError

T = TypeVar("T")


class CborCodec:
    """CBOR. Bytes are native byte strings; datetimes are RFC 3339 text."""

    codec_id: ClassVar[int] = 3
    name: ClassVar[str] = "cbor"
    builtin_types: ClassVar[tuple[type, ...]] = (bytes, bytearray)

    def dumps(self, doc: Any) -> bytes:
        result: bytes = cbor2.dumps(doc)
        return result

    def loads(self, payload: bytes, type_: type[T]) -> T:
        # cbor2.loads ignores trailing bytes; the payload must be exactly one item.
        stream = io.BytesIO(payload)
        doc = cbor2.CBORDecoder(stream).decode()
        if stream.tell() != len(payload):
            raise DecodeError(f"{len(payload) - stream.tell()} trailing bytes after the CBOR item")
        return msgspec.convert(doc, type_)
