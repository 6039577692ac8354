"""CBOR (RFC 8949) via cbor2: a standard binary format with wide tooling."""

from __future__ import annotations

import io
from typing import IO, Any, ClassVar, TypeVar, cast

import cbor2
import msgspec

from snapstore.errors import DecodeError

T = TypeVar("T")


class CborCodec:
    """CBOR. Bytes are native byte strings; datetimes are RFC 3339 text."""

    codec_id: ClassVar[int] = 3
    name: ClassVar[str] = "cbor"
    builtin_types: ClassVar[tuple[type, ...]] = (bytes, bytearray)
    reads_views: ClassVar[bool] = True

    def dumps(self, doc: Any) -> bytes:
        result: bytes = cbor2.dumps(doc)
        return result

    def loads(self, payload: bytes | memoryview, type_: type[T]) -> T:
        # cbor2.loads ignores trailing bytes; the payload must be exactly one item.
        reader = _Reader(payload)
        doc = cbor2.CBORDecoder(cast(IO[bytes], reader)).decode()  # it only calls read()
        if reader.pos != len(reader.view):
            raise DecodeError(f"{len(reader.view) - reader.pos} trailing bytes after the CBOR item")
        return msgspec.convert(doc, type_)


class _Reader(io.RawIOBase):
    """A read-only stream over a buffer: `io.BytesIO` would first copy a memoryview
    whole, this copies only what the decoder reads (and so keeps)."""

    def __init__(self, payload: bytes | memoryview) -> None:
        super().__init__()
        self.view = memoryview(payload)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        end = len(self.view) if size < 0 else min(self.pos + size, len(self.view))
        chunk = self.view[self.pos : end].tobytes()
        self.pos = end
        return chunk
