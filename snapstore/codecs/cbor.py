"""CBOR (RFC 8949) via cbor2: a standard binary format with wide tooling."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import cbor2
import msgspec

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
        return msgspec.convert(cbor2.loads(payload), type_)
