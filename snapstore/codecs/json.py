"""JSON, written by orjson and read by msgspec: the most portable and debuggable format."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final, TypeVar

import msgspec
import orjson

from snapstore.errors import EncodeError

T = TypeVar("T")

_PARSER: Final = msgspec.json.Decoder()
"""Reads the payload view in place: orjson's parser copies its input first (a 100 MB
output held twice over while it is read) and is about half as fast on long strings. Both
parse what orjson writes to the same values."""


def _reject_non_finite(doc: Any) -> None:
    """orjson writes NaN/Infinity as null; refuse instead of losing the value."""
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                raise EncodeError(f"JSON cannot represent the float {value!r}")
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)


class JsonCodec:
    """UTF-8 JSON. Datetimes travel as RFC 3339 strings, bytes as base64."""

    codec_id: ClassVar[int] = 1
    name: ClassVar[str] = "json"
    builtin_types: ClassVar[tuple[type, ...]] = ()
    reads_views: ClassVar[bool] = True
    limits_depth: ClassVar[bool] = True  # orjson itself refuses more than MAX_DEPTH levels

    def dumps(self, doc: Any) -> bytes:
        payload = orjson.dumps(doc)
        if b"null" in payload:  # NaN/Infinity come out as null; only then is a walk needed
            _reject_non_finite(doc)
        return payload

    def loads(self, payload: bytes | memoryview, type_: type[T]) -> T:
        return msgspec.convert(_PARSER.decode(payload), type_)
