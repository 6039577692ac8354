"""The value domain: what an engine may store as input, output, task output or event
payload, and reads back as the same type from every codec.

The domain: None, bool, int (64-bit signed), float (finite), str, bytes, list, dict
with str keys, timezone-aware datetime (read back in UTC), date, UUID and Decimal
(finite). Anything else (a tuple, a set, a naive datetime, a dataclass, a msgspec
Struct, a pydantic model...) is an `EncodeError` at save: it would come back as
something else. Store builtins and read typed: ``load(..., input_type=MyStruct)``.

A codec carries some of these types natively (`Codec.builtin_types`: msgpack has bytes
and datetime, CBOR bytes); the others travel as a one-key tag object, e.g.
``{"$uuid": "…"}``, and a stored dict of one key that could be taken for a tag is
escaped as ``{"$dict": {…}}``. A blob holding any tag or escape has the envelope flag
``FLAG_TYPED``, and only then are tags read back: a blob written before the domain
existed decodes exactly as it did, and one without tags stays readable by older
readers (codecs/SPEC.md).
"""

from __future__ import annotations

import base64
import math
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

import msgspec

from snapstore.errors import DecodeError, EncodeError

MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**63 - 1
ESCAPE: Final = "$dict"
TAGS: Final = ("$bytes", "$datetime", "$date", "$uuid", "$decimal")
_RESERVED: Final = frozenset((*TAGS, ESCAPE))


def _refused(value: object, where: str) -> EncodeError:
    kind = type(value).__name__
    hint = {
        "tuple": "store a list",
        "set": "store a sorted list",
        "frozenset": "store a sorted list",
        "bytearray": "store bytes",
        "memoryview": "store bytes",
        "time": "store a str or a datetime",
    }.get(kind, "store snapstore.to_storable(it) and read it typed (load(..., input_type=))")
    return EncodeError(
        f"{where}: a {kind} is not a storable value (it would come back as another type):"
        f" {hint}; see snapstore.codecs.values"
    )


class _Lowering:
    """One value lowered for one codec: tags where the codec lacks a type."""

    def __init__(self, native: tuple[type, ...]) -> None:
        self.native = native
        self.tagged = False

    def lower(self, value: Any, where: str) -> Any:
        if value is None or value is True or value is False or type(value) is str:
            return value
        kind = type(value)
        if kind is int:
            if not MIN_INT <= value <= MAX_INT:
                raise EncodeError(f"{where}: int {value} is outside the 64-bit range")
            return value
        if kind is float:
            if not math.isfinite(value):
                raise EncodeError(f"{where}: the float {value!r} is not finite")
            return value
        if kind is list:
            return [self.lower(v, where) for v in value]
        if kind is dict:
            out = {}
            for k, v in value.items():
                if type(k) is not str:
                    raise EncodeError(f"{where}: dict keys must be str, not {type(k).__name__}")
                out[k] = self.lower(v, where)
            if len(out) == 1 and next(iter(out)) in _RESERVED:  # would read as a tag
                self.tagged = True
                return {ESCAPE: out}
            return out
        if kind is bytes:
            return value if bytes in self.native else self._tag("$bytes", _b64(value))
        if kind is datetime:
            if value.utcoffset() is None:
                raise EncodeError(f"{where}: a naive datetime is not storable: give it a tz")
            try:
                utc = value.astimezone(UTC)
            except OverflowError:
                raise EncodeError(f"{where}: {value.isoformat()} is out of range in UTC") from None
            return utc if datetime in self.native else self._tag("$datetime", utc.isoformat())
        if kind is date:
            return self._tag("$date", value.isoformat())
        if kind is UUID:
            return self._tag("$uuid", str(value))
        if kind is Decimal:
            if not value.is_finite():
                raise EncodeError(f"{where}: the Decimal {value} is not finite")
            return self._tag("$decimal", str(value))
        raise _refused(value, where)

    def _tag(self, tag: str, text: str) -> dict[str, str]:
        self.tagged = True
        return {tag: text}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_PLAIN: Final = frozenset({type(None), bool, str})


def plain_value(value: Any, native: tuple[type, ...]) -> bool:
    """Whether ``value`` needs no lowering: builtins the codec writes as they are, in
    range, no dict that could read as a tag. A walk that copies nothing, for the common
    case; False sends the value through `_Lowering`, which also names what is wrong."""
    stack = [value]
    pop, push = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind in _PLAIN:
            continue
        if kind is int:
            if not MIN_INT <= item <= MAX_INT:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is list:
            push(item)
        elif kind is dict:
            if len(item) == 1 and next(iter(item)) in _RESERVED:
                return False
            for key in item:
                if type(key) is not str:
                    return False
            push(item.values())
        elif kind is bytes:
            if bytes not in native:
                return False
        else:
            return False
    return True


def lower_value(
    native: tuple[type, ...], value: Any, where: str, *, strict: bool = True
) -> tuple[Any, bool]:
    """``value`` as builtins a codec carrying ``native`` types can write, and whether it
    holds a tag (so its blob must be flagged); `EncodeError` outside the domain. A value
    that needs nothing is returned as it is. Not ``strict`` (`Limits.strict_values`): a
    value outside the domain is lowered as before the domain existed, untagged."""
    if plain_value(value, native):
        return value, False
    lowering = _Lowering(native)
    try:
        return lowering.lower(value, where), lowering.tagged
    except EncodeError:
        if strict:
            raise
    try:
        return msgspec.to_builtins(value, builtin_types=native), False
    except (TypeError, msgspec.EncodeError) as exc:
        raise EncodeError(f"{where}: cannot be encoded: {exc}") from exc


def to_storable(value: Any) -> Any:
    """``value`` as values of the domain: msgspec Structs, dataclasses and attrs objects
    as dicts of their fields, enums as their values, tuples as lists, sets as lists (in
    iteration order: sort them first where order matters); datetime, date, UUID, Decimal
    and bytes kept. Store that, and read your type
    back with ``load(..., input_type=...)``. A naive datetime stays naive (and is
    refused at save): give it a time zone."""
    kept = (bytes, datetime, date, UUID, Decimal)
    return _lists(msgspec.to_builtins(value, builtin_types=kept))


def _lists(value: Any) -> Any:
    """to_builtins keeps tuples (and lists sets): lists all the way down."""
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _read_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.utcoffset() is None:  # never written so: not read in the host's zone
        raise ValueError("a $datetime without an offset")
    return value.astimezone(UTC)


def _read_decimal(text: str) -> Decimal:
    value = Decimal(text)
    if not value.is_finite():
        raise ValueError("a $decimal that is not finite")
    return value


_READERS: Final = {
    "$bytes": lambda text: base64.b64decode(text, validate=True),
    "$datetime": _read_datetime,
    "$date": date.fromisoformat,
    "$uuid": UUID,
    "$decimal": _read_decimal,
}


def raise_value(value: Any) -> Any:
    """A value read from a flagged blob, its tags turned back into their types."""
    try:
        return _raised(value)
    except RecursionError:
        raise DecodeError("tagged value nests too deep to read") from None


def _raised(value: Any) -> Any:
    if type(value) is list:
        return [_raised(v) for v in value]
    if type(value) is not dict:
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key == ESCAPE and type(inner) is dict:
            return {k: _raised(v) for k, v in inner.items()}
        reader = _READERS.get(key)
        if reader is not None:
            if type(inner) is not str:
                raise DecodeError(f"tag {key} holds a {type(inner).__name__}, not a str")
            try:
                return reader(inner)
            except (ValueError, ArithmeticError) as exc:
                raise DecodeError(f"tag {key} does not read: {exc}") from exc
    return {k: _raised(v) for k, v in value.items()}
