"""Codecs, the envelope and the codec registry.

The three built-in codecs are registered on import, so any blob they wrote can
be decoded in any process that imports snapstore.
"""

from snapstore.codecs.base import Codec
from snapstore.codecs.cbor import CborCodec
from snapstore.codecs.envelope import open_value, seal_value
from snapstore.codecs.json import JsonCodec
from snapstore.codecs.msgpack import MsgpackCodec
from snapstore.codecs.registry import (
    codec_for_id,
    codec_for_name,
    codec_instance,
    register_codec,
    registered_codecs,
)
from snapstore.codecs.snapshot import (
    decode_chain,
    decode_snapshot,
    encode_checkpoint,
    encode_output,
    encode_snapshot,
    lower_checkpoint,
    lower_document,
    seal_delta,
)

for _codec_type in (JsonCodec, MsgpackCodec, CborCodec):
    register_codec(_codec_type())

__all__ = [
    "CborCodec",
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "codec_for_id",
    "codec_for_name",
    "codec_instance",
    "decode_chain",
    "decode_snapshot",
    "encode_checkpoint",
    "encode_output",
    "encode_snapshot",
    "lower_checkpoint",
    "lower_document",
    "open_value",
    "register_codec",
    "registered_codecs",
    "seal_delta",
    "seal_value",
]
