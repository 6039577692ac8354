"""MessagePack via msgspec: the smallest and fastest format."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, TypeVar

import msgspec

T = TypeVar("T")


class MsgpackCodec:
    """MessagePack. Datetimes use the timestamp extension; bytes are bin."""

    codec_id: ClassVar[int] = 2
    name: ClassVar[str] = "msgpack"
    builtin_types: ClassVar[tuple[type, ...]] = (bytes, bytearray, datetime)
    reads_views: ClassVar[bool] = True

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}

    def dumps(self, doc: Any) -> bytes:
        return self._encoder.encode(doc)

    def loads(self, payload: bytes | memoryview, type_: type[T]) -> T:
        decoder = self._decoders.get(type_)
        if decoder is None:
            decoder = self._decoders[type_] = msgspec.msgpack.Decoder(type_)
        result: T = decoder.decode(payload)
        return result
