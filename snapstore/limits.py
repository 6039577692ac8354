"""How big one value and one checkpoint may be, checked before anything is written.

PostgreSQL refuses any single allocation over 1 GB (MaxAllocSize): a value, a row, a
bytea rendered as text (which doubles it). A checkpoint the store accepted but could
not hand back would be a poison instance, so the defaults stay well under that line:
256 MiB for one encoded value (a task output, an event payload, the checkpoint
document itself) and 512 MiB for a checkpoint's document plus all its outputs, which
a load returns together (in 16 MiB parts, but held by the client at once).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from snapstore.errors import ConfigurationError, EncodeError

MIB: Final = 2**20
MAX_LIMIT: Final = 1024 * MIB - 1  # PostgreSQL's MaxAllocSize


class Limits(NamedTuple):
    """Encoded sizes, in bytes (see the module docstring for the defaults)."""

    max_value_bytes: int = 256 * MIB
    max_checkpoint_bytes: int = 512 * MIB
    strict_values: bool = True
    """Refuse values outside the value domain (`snapstore.codecs.values`). False: what
    the codec can write is written as before the domain existed (for a store holding
    such values from then: int keys, NaN or big ints in msgpack/CBOR, tuples...)."""

    @classmethod
    def build(
        cls,
        max_value_bytes: object = None,
        max_checkpoint_bytes: object = None,
        strict_values: object = True,
    ) -> Limits:
        """Validated limits (None: the default)."""
        default = cls()
        value = _bytes("max_value_bytes", max_value_bytes, default.max_value_bytes)
        total = _bytes("max_checkpoint_bytes", max_checkpoint_bytes, default.max_checkpoint_bytes)
        if value > total:
            raise ConfigurationError("max_value_bytes must not exceed max_checkpoint_bytes")
        if not isinstance(strict_values, bool):
            raise ConfigurationError(f"strict_values must be a bool, got {strict_values!r}")
        return cls(value, total, strict_values)

    def value(self, size: int, what: str) -> None:
        """`EncodeError` if one encoded value of ``size`` bytes is too big."""
        if size > self.max_value_bytes:
            raise EncodeError(
                f"{what} encodes to {size:,} bytes, over max_value_bytes ({self.max_value_bytes:,})"
            )

    def checkpoint(self, size: int, instance_id: str) -> None:
        """`EncodeError` if a checkpoint's document and outputs add up to too much."""
        if size > self.max_checkpoint_bytes:
            raise EncodeError(
                f"checkpoint of {instance_id!r} adds up to {size:,} bytes, over "
                f"max_checkpoint_bytes ({self.max_checkpoint_bytes:,})"
            )


def _bytes(name: str, size: object, default: int) -> int:
    if size is None:
        return default
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_LIMIT:
        raise ConfigurationError(f"{name} must be an int in 1..{MAX_LIMIT}, got {size!r}")
    return size


DEFAULT_LIMITS: Final = Limits()
