"""The open registry mapping envelope codec ids (and names) to codecs.

Decoding always goes through this registry by the id in the envelope, which is
why blobs stay readable after an application switches its write codec.
"""

from __future__ import annotations

import threading
from typing import Final

from snapstore.codecs.base import Codec
from snapstore.errors import ConfigurationError, UnknownCodecError

_lock = threading.Lock()
_by_id: dict[int, Codec] = {}
_by_name: dict[str, Codec] = {}


RESERVED_IDS: Final = range(1, 128)
"""Ids of snapstore's own codecs, present and future; other codecs take 128-255."""
_OWN_MODULES: Final = "snapstore.codecs."
MAX_NAME_LENGTH: Final = 63


def _check_shape(codec: object) -> None:
    """What every codec must have, checked when it registers rather than at its first
    save (or, worse, at its first load)."""
    cid = getattr(codec, "codec_id", None)
    name = getattr(codec, "name", None)
    if isinstance(cid, bool) or not isinstance(cid, int) or not 1 <= cid <= 255:
        raise ConfigurationError(f"codec id must be an int in 1..255, got {cid!r}")
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_NAME_LENGTH
        or not name.isascii()
        or not name.isprintable()
    ):
        raise ConfigurationError(
            f"codec name must be printable ASCII, 1-{MAX_NAME_LENGTH} chars, got {name!r}"
        )
    types = getattr(codec, "builtin_types", None)
    if not isinstance(types, tuple) or not all(isinstance(t, type) for t in types):
        raise ConfigurationError(f"codec {name!r}: builtin_types must be a tuple of types")
    for method in ("dumps", "loads"):
        if not callable(getattr(codec, method, None)):
            raise ConfigurationError(f"codec {name!r} has no {method}() method")


def register_codec(codec: Codec) -> Codec:
    """Make ``codec`` available for decoding. Ids are permanent: 1-127 are snapstore's
    own, custom codecs take 128-255.

    Re-registering the same class under its id is a no-op; a different codec
    claiming a taken id or name raises `ConfigurationError`, and so does a codec
    missing what `Codec` requires.
    """
    _check_shape(codec)
    cid, name = codec.codec_id, codec.name
    with _lock:
        for taken in (_by_id.get(cid), _by_name.get(name)):
            if taken is not None and type(taken) is not type(codec):
                raise ConfigurationError(
                    f"codec {type(codec).__name__} ({cid}, {name!r}) clashes with "
                    f"{type(taken).__name__} ({taken.codec_id}, {taken.name!r})"
                )
        current = _by_id.get(cid)
        if current is not None:
            return current
        if cid in RESERVED_IDS and not type(codec).__module__.startswith(_OWN_MODULES):
            raise ConfigurationError(
                f"codec id {cid} is reserved for snapstore's own codecs; use 128..255"
            )
        _by_id[cid] = codec
        _by_name[name] = codec
        return codec


def codec_for_id(codec_id: int) -> Codec:
    """The registered codec for an envelope id; `UnknownCodecError` if none."""
    try:
        return _by_id[codec_id]
    except KeyError:
        raise UnknownCodecError(f"no codec registered with id {codec_id}") from None


def codec_for_name(name: str) -> Codec:
    """The registered codec called ``name`` (``json``, ``msgpack``, ``cbor``...)."""
    try:
        return _by_name[name]
    except KeyError:
        known = ", ".join(sorted(_by_name))
        raise ConfigurationError(f"unknown codec {name!r}; registered: {known}") from None


def registered_codecs() -> list[Codec]:
    """All registered codecs, by id."""
    return [_by_id[k] for k in sorted(_by_id)]


def require_registered(codec: Codec) -> Codec:
    """``codec`` if it is the registered codec of its id: a backend writing blobs with
    a codec its own process cannot look up would write what it cannot read."""
    _check_shape(codec)
    current = _by_id.get(codec.codec_id)
    if current is None or type(current) is not type(codec):
        raise ConfigurationError(
            f"codec {codec.name!r} (id {codec.codec_id}) is not registered: "
            "call register_codec() with it first"
        )
    return codec


def codec_instance(codec_type: type[Codec]) -> Codec:
    """The registered instance of ``codec_type``, registering a fresh one if needed."""
    current = _by_id.get(codec_type.codec_id)
    if current is not None and type(current) is codec_type:
        return current
    return register_codec(codec_type())
