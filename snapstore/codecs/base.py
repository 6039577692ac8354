"""The codec protocol: how a document becomes bytes and back."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@runtime_checkable
class Codec(Protocol):
    """A wire format for snapshots and values.

    ``codec_id`` is the byte written into every envelope, so it must never change
    once blobs exist; ``name`` is what operators see in the ``codec`` column.
    ``builtin_types`` lists the non-JSON types the format carries natively
    (see `msgspec.to_builtins`); everything else is lowered to JSON-like values.
    A codec may also set ``reads_views = True`` when its ``loads`` accepts a
    `memoryview` as well as bytes: the payload is then not copied out of the blob,
    and ``limits_depth = True`` when its ``dumps`` itself refuses documents nesting
    deeper than `envelope.MAX_DEPTH` (otherwise the envelope checks before encoding).
    """

    codec_id: ClassVar[int]
    name: ClassVar[str]
    builtin_types: ClassVar[tuple[type, ...]]

    def dumps(self, doc: Any) -> bytes:
        """Serialise a builtins document (dicts, lists, scalars, `builtin_types`)."""
        ...

    def loads(self, payload: bytes, type_: type[T]) -> T:
        """Parse ``payload`` and validate it as ``type_`` (use ``object`` for any value)."""
        ...
