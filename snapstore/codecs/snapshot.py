"""Snapshot <-> blob, with task outputs kept out of the blob.

Outputs are stored once each in the tasks sidecar; the checkpoint blob only
records task metadata, so a long workflow does not rewrite every earlier output
on every save.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from snapstore.codecs.base import Codec
from snapstore.codecs.envelope import (
    open_document,
    open_value,
    seal_document,
    seal_lowered_value,
    seal_value,
)
from snapstore.errors import DecodeError, EncodeError
from snapstore.model import WorkflowSnapshot


def _lower(codec: Codec, snapshot: WorkflowSnapshot) -> tuple[dict[str, Any], dict[str, Any]]:
    """``snapshot`` as the codec's builtins without task outputs, and the outputs (lowered
    in the same pass) by task id."""
    try:
        doc = msgspec.to_builtins(snapshot, builtin_types=codec.builtin_types)
    except (TypeError, msgspec.EncodeError) as exc:
        raise EncodeError(f"{codec.name} cannot encode snapshot: {exc}") from exc
    results: dict[str, dict[str, Any]] = doc.get("task_results", {})
    return doc, {task_id: result.pop("output", None) for task_id, result in results.items()}


def encode_snapshot(codec: Codec, snapshot: WorkflowSnapshot) -> bytes:
    """The envelope blob for ``snapshot`` without its task outputs."""
    return seal_document(codec, _lower(codec, snapshot)[0])


def encode_checkpoint(
    codec: Codec, snapshot: WorkflowSnapshot
) -> tuple[bytes, dict[str, bytes | None]]:
    """`encode_snapshot` and every task output's sidecar blob (`encode_output`), from
    one lowering of the snapshot."""
    doc, outputs = _lower(codec, snapshot)
    blobs = {
        t: None if out is None else seal_lowered_value(codec, out) for t, out in outputs.items()
    }
    return seal_document(codec, doc), blobs


def encode_output(codec: Codec, output: Any) -> bytes | None:
    """The sidecar blob of one task output; None stays SQL NULL."""
    return None if output is None else seal_value(codec, output)


def decode_snapshot(
    blob: bytes,
    outputs: Mapping[str, bytes] | None = None,
    *,
    instance_id: str | None = None,
    version: int | None = None,
) -> tuple[Codec, WorkflowSnapshot]:
    """Decode a blob from any registered codec and re-attach the stored outputs."""
    try:
        codec, snapshot = open_document(blob, WorkflowSnapshot)
        if outputs:
            snapshot = hydrate_outputs(snapshot, outputs)
    except DecodeError as exc:
        # Keep the subclass: callers catch UnknownCodecError to tell "register a codec" apart.
        raise exc.located(instance_id=instance_id, version=version) from exc
    return codec, snapshot


def hydrate_outputs(snapshot: WorkflowSnapshot, outputs: Mapping[str, bytes]) -> WorkflowSnapshot:
    """Put sidecar outputs back into the task results that the blob names."""
    results = dict(snapshot.task_results)
    for task_id, blob in outputs.items():
        result = results.get(task_id)
        if result is not None:
            results[task_id] = msgspec.structs.replace(result, output=open_value(blob))
    return msgspec.structs.replace(snapshot, task_results=results)


def strip_outputs(snapshot: WorkflowSnapshot) -> WorkflowSnapshot:
    """``snapshot`` as its history blob records it: task outputs removed."""
    if not any(r.output is not None for r in snapshot.task_results.values()):
        return snapshot
    results = {k: msgspec.structs.replace(r, output=None) for k, r in snapshot.task_results.items()}
    return msgspec.structs.replace(snapshot, task_results=results)
