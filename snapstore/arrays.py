"""Array parameters encoded in PostgreSQL's binary array format ahead of time.

The save statement takes one array per column. psycopg's generic list dumper
inspects every list to pick an element type and then dumps element by element
through the adapter machinery: about a third of a grouped save's client CPU.
Here each column knows its element type, so `encode_column` builds the wire
bytes (``array_send``'s layout) with a few struct packs, and `BinaryArray`
carries them to the dumper, which just hands them over.

`BinaryArray` is still a list of the original values. Where the fast path does
not apply, psycopg's own list dumper takes over and behaves exactly as before:
on a connection whose client encoding is not UTF-8, on a connection whose
adapters were copied before this module registered its dumper, and for a
timestamp column holding a naive datetime (`encode_column` returns a plain list).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import psycopg
from psycopg import abc, pq
from psycopg.adapt import Dumper
from psycopg.types.array import ListBinaryDumper

_HEADER: Final = struct.Struct(">iiiii")  # ndim, has-nulls, element oid, length, lower bound
_EMPTY: Final = struct.Struct(">iii")  # ndim 0, no nulls, element oid
_LENGTH: Final = struct.Struct(">i")
_NULL: Final = _LENGTH.pack(-1)
_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_JSONB_VERSION: Final = b"\x01"
_INT8: Final = struct.Struct(">q")
_INT4: Final = struct.Struct(">i")
_INT2: Final = struct.Struct(">h")


class NaiveDatetime(Exception):
    """A timestamptz element without a time zone: leave the column to psycopg."""


def _timestamptz(value: datetime) -> bytes:
    """Microseconds since 2000-01-01 UTC, as ``timestamptz_send`` writes them."""
    if value.utcoffset() is None:
        raise NaiveDatetime
    delta = value - _PG_EPOCH
    return _INT8.pack((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


class BinaryArray(list[Any]):
    """The values of one array parameter together with their binary encoding.

    One subclass per element type (`Element.array_type`), so psycopg picks and
    caches the dumper, oid included, by class alone.
    """

    __slots__ = ("data",)

    element: ClassVar[Element]
    data: bytes


class Element:
    """A PostgreSQL element type: its oids and how one non-NULL value goes on the wire."""

    __slots__ = (
        "array_oid",
        "array_type",
        "empty",
        "name",
        "oid",
        "send",
        "single_null",
        "textual",
    )

    def __init__(
        self,
        name: str,
        oid: int,
        array_oid: int,
        send: Callable[[Any], bytes],
        *,
        textual: bool = False,  # encoded as UTF-8: the client encoding psycopg defaults to
    ) -> None:
        self.name = name
        self.oid = oid
        self.array_oid = array_oid
        self.send = send
        self.textual = textual
        namespace = {"__slots__": (), "element": self}
        self.array_type: type[BinaryArray] = type(f"{name.title()}Array", (BinaryArray,), namespace)
        # The two columns a save sends most: shared, never mutated (psycopg only reads).
        self.empty = self._encoded(())
        self.single_null = self._encoded((None,))

    def _encoded(self, values: Sequence[Any]) -> BinaryArray:
        array = self.array_type(values)
        array.data = encode_array(self, values)
        return array

    def __repr__(self) -> str:
        return f"Element({self.name!r})"


def encode_array(element: Element, values: Sequence[Any]) -> bytes:
    """``values`` in ``array_send``'s layout: a one-dimensional array, NULL for None."""
    if not values:
        return _EMPTY.pack(0, 0, element.oid)
    send, pack_length = element.send, _LENGTH.pack
    parts: list[bytes] = []
    has_nulls = 0
    for value in values:
        if value is None:
            parts.append(_NULL)
            has_nulls = 1
        else:
            data = send(value)
            parts.append(pack_length(len(data)))
            parts.append(data)
    return _HEADER.pack(1, has_nulls, element.oid, len(values), 1) + b"".join(parts)


def encode_column(element: Element, values: Sequence[Any]) -> list[Any]:
    """A list psycopg binds as ``element[]``: a `BinaryArray` when it can be pre-encoded,
    else a plain list of ``values`` (a naive datetime: psycopg keeps its own rules)."""
    if len(values) <= 1:
        if not values:
            return element.empty
        if values[0] is None:
            return element.single_null
    try:
        return element._encoded(values)
    except NaiveDatetime:
        return list(values)


TEXT: Final = Element("text", 25, 1009, str.encode, textual=True)
JSONB: Final = Element("jsonb", 3802, 3807, lambda v: _JSONB_VERSION + v.encode(), textual=True)
BIGINT: Final = Element("bigint", 20, 1016, _INT8.pack)
INTEGER: Final = Element("integer", 23, 1007, _INT4.pack)
SMALLINT: Final = Element("smallint", 21, 1005, _INT2.pack)
BOOLEAN: Final = Element("boolean", 16, 1000, lambda v: b"\x01" if v else b"\x00")
BYTEA: Final = Element("bytea", 17, 1001, bytes)
UUID: Final = Element("uuid", 2950, 2951, lambda v: v.bytes)
TIMESTAMPTZ: Final = Element("timestamptz", 1184, 1185, _timestamptz)


class BinaryArrayDumper(Dumper):
    """Hands a `BinaryArray`'s bytes to libpq, with the array type's oid.

    Text is encoded as UTF-8 ahead of time; on a connection with another client
    encoding, text arrays go through psycopg's list dumper instead.
    """

    format = pq.Format.BINARY

    def __init__(self, cls: type, context: abc.AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        if not issubclass(cls, BinaryArray) or cls is BinaryArray:
            raise TypeError(f"{cls.__name__} is not an Element.array_type")
        self.oid = cls.element.array_oid
        self._fallback: ListBinaryDumper | None = None
        if cls.element.textual and self.connection is not None:
            encoding = self.connection.info.encoding.replace("_", "-").lower()
            if encoding not in ("utf-8", "utf8"):
                self._fallback = ListBinaryDumper(list, context)

    def get_key(self, obj: BinaryArray, format: abc.PyFormat) -> abc.DumperKey:
        return self.cls if self._fallback is None else self._fallback.get_key(obj, format)

    def upgrade(self, obj: BinaryArray, format: abc.PyFormat) -> Dumper:
        return self if self._fallback is None else self._fallback.upgrade(obj, format)

    def dump(self, obj: BinaryArray) -> bytes:
        return obj.data


# Our own types only, so registering globally changes nothing for anyone else; connections
# created before this import still bind a BinaryArray correctly, as the list it is.
psycopg.adapters.register_dumper(BinaryArray, BinaryArrayDumper)
