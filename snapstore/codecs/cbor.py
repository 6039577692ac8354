"""CBOR (RFC 8949) via cbor2: a standard binary format with wide tooling."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import IO, Any, ClassVar, Final, TypeVar, cast

import cbor2
import msgspec

from snapstore.codecs.envelope import MAX_DEPTH
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
        decoder = cbor2.CBORDecoder(
            cast(IO[bytes], reader),  # it only calls read()
            semantic_decoders=_REFUSED_TAGS,
            max_depth=MAX_DEPTH + 1,  # cbor2 counts a tag as a level: a bignum leaf
        )
        try:
            doc = decoder.decode()
        except cbor2.CBORDecodeError as exc:
            if isinstance(exc.__cause__, DecodeError):  # ours, from a refused tag
                raise exc.__cause__ from None
            raise
        if reader.pos != len(reader.view):
            raise DecodeError(f"{len(reader.view) - reader.pos} trailing bytes after the CBOR item")
        return msgspec.convert(doc, type_)


def _refuse(*_: object) -> Any:
    raise DecodeError("CBOR tag for shared or referenced values, which snapstore never writes")


_REFUSED_TAGS: Final[dict[int, Callable[..., Any]]] = dict.fromkeys((25, 28, 29, 256), _refuse)
"""Value sharing (28, 29) and string references (25, 256): cbor2 would build shared and
even self-referencing objects from them, which no snapshot holds and the writer never
emits."""


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
