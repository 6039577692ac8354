"""The open registry mapping envelope codec ids (and names) to codecs.

Decoding always goes through this registry by the id in the envelope, which is
why blobs stay readable after an application switches its write codec.
"""

from __future__ import annotations

import threading

from snapstore.codecs.base import Codec
from snapstore.errors import ConfigurationError, UnknownCodecError

_lock = threading.Lock()
_by_id: dict[int, Codec] = {}
_by_name: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    """Make ``codec`` available for decoding. Ids are 1-255 and permanent.

    Re-registering the same class under its id is a no-op; a different codec
    claiming a taken id or name raises `ConfigurationError`.
    """
    cid, name = codec.codec_id, codec.name
    if not isinstance(cid, int) or not 1 <= cid <= 255:
        raise ConfigurationError(f"codec id must be an int in 1..255, got {cid!r}")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"codec name must be a non-empty str, got {name!r}")
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


def codec_instance(codec_type: type[Codec]) -> Codec:
    """The registered instance of ``codec_type``, registering a fresh one if needed."""
    current = _by_id.get(codec_type.codec_id)
    if current is not None and type(current) is codec_type:
        return current
    return register_codec(codec_type())
