"""Snapshot <-> blob, with task outputs kept out of the blob.

Outputs are stored once each in the tasks sidecar; the checkpoint blob only
records task metadata, so a long workflow does not rewrite every earlier output
on every save.

Nor does it rewrite every earlier task's metadata: a checkpoint may be a *delta*
(envelope flag ``FLAG_DELTA``), a document whose ``task_results`` holds only the
tasks that changed since the version before it and whose ``removed_tasks`` names
those that were dropped; every other field is whole. A delta is read by applying
it to the checkpoint before it (`apply_delta`), back to the last whole checkpoint of
its chain (the writer's rule, in rows.py, keeps chains short).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import msgspec

from snapstore.codecs.base import Codec
from snapstore.codecs.envelope import (
    FLAG_DELTA,
    FLAGS_OFFSET,
    open_document,
    open_value,
    seal_document,
    seal_lowered_value,
    seal_value,
)
from snapstore.codecs.values import lower_value, plain_value
from snapstore.errors import DecodeError, EncodeError
from snapstore.model import WorkflowSnapshot


class CheckpointDelta(WorkflowSnapshot, frozen=True, kw_only=True, omit_defaults=True):
    """A delta checkpoint's document: a snapshot with only the changed task results,
    and the ids of the tasks removed since the version before."""

    removed_tasks: tuple[str, ...] = ()


_SNAPSHOT_FIELDS: tuple[str, ...] = WorkflowSnapshot.__struct_fields__


class Lowered(NamedTuple):
    """One snapshot lowered for a codec: the document (without outputs), each task
    output lowered, and which of them hold tags (`snapstore.codecs.values`)."""

    doc: dict[str, Any]
    typed: bool
    outputs: dict[str, Any]
    typed_outputs: frozenset[str]


def _lower(codec: Codec, snapshot: WorkflowSnapshot, strict: bool = True) -> Lowered:
    """``snapshot`` as the codec's builtins: the engine's values (input, output, task
    outputs) checked against the value domain and tagged where the codec lacks a type,
    the rest by the model's own types."""
    native = codec.builtin_types
    input_, typed_in = lower_value(native, snapshot.input, "input", strict=strict)
    output, typed_out = lower_value(native, snapshot.output, "output", strict=strict)
    outputs: dict[str, Any] = {}
    typed_outputs: set[str] = set()
    for task_id, result in snapshot.task_results.items():
        out = result.output
        if plain_value(out, native):  # the common case: no message built, nothing copied
            outputs[task_id] = out
            continue
        where = f"output of task {task_id!r}"
        outputs[task_id], tagged = lower_value(native, out, where, strict=strict)
        if tagged:
            typed_outputs.add(task_id)
    if input_ is not snapshot.input or output is not snapshot.output:
        snapshot = msgspec.structs.replace(snapshot, input=input_, output=output)
    try:  # lowered values are builtins: the model's lowering passes them through
        doc = msgspec.to_builtins(snapshot, builtin_types=native)
    except (TypeError, msgspec.EncodeError) as exc:
        raise EncodeError(f"{codec.name} cannot encode snapshot: {exc}") from exc
    for result in doc.get("task_results", {}).values():
        result.pop("output", None)  # stored in the sidecar, lowered above
    return Lowered(doc, typed_in or typed_out, outputs, frozenset(typed_outputs))


def lower_document(
    codec: Codec, snapshot: WorkflowSnapshot, *, strict: bool = True
) -> tuple[dict[str, Any], bool]:
    """The snapshot document without outputs, to seal with `seal_document`, and whether
    it holds tags (its ``typed``)."""
    lowered = _lower(codec, snapshot, strict)
    return lowered.doc, lowered.typed


def encode_snapshot(codec: Codec, snapshot: WorkflowSnapshot) -> bytes:
    """The envelope blob for ``snapshot`` without its task outputs."""
    doc, typed = lower_document(codec, snapshot)
    return seal_document(codec, doc, typed=typed)


def lower_checkpoint(
    codec: Codec, snapshot: WorkflowSnapshot, *, strict: bool = True
) -> tuple[dict[str, Any], dict[str, bytes | None], bool]:
    """The snapshot document without outputs (seal it whole with `seal_document`, or as
    a delta with `seal_delta`), every task output's sidecar blob (`encode_output`), and
    whether the document holds tags, from one lowering of the snapshot (``strict``: see
    `Limits.strict_values`)."""
    lowered = _lower(codec, snapshot, strict)
    blobs = {
        t: None if out is None else seal_lowered_value(codec, out, typed=t in lowered.typed_outputs)
        for t, out in lowered.outputs.items()
    }
    return lowered.doc, blobs, lowered.typed


def encode_checkpoint(
    codec: Codec, snapshot: WorkflowSnapshot
) -> tuple[bytes, dict[str, bytes | None]]:
    """`encode_snapshot` and every task output's sidecar blob, from one lowering."""
    doc, blobs, typed = lower_checkpoint(codec, snapshot)
    return seal_document(codec, doc, typed=typed), blobs


def seal_delta(
    codec: Codec,
    doc: dict[str, Any],
    changed: Iterable[str],
    removed: Iterable[str],
    *,
    typed: bool = False,
) -> bytes:
    """The delta blob of a lowered snapshot ``doc``: only the ``changed`` task results,
    and the ``removed`` task ids (``typed``: the document holds tags)."""
    results = doc.get("task_results", {})
    delta = {k: v for k, v in doc.items() if k != "task_results"}
    kept = {t: results[t] for t in changed}
    if kept:
        delta["task_results"] = kept
    gone = list(removed)
    if gone:
        delta["removed_tasks"] = gone
    return seal_document(codec, delta, delta=True, typed=typed)


def apply_delta(base: WorkflowSnapshot, delta: CheckpointDelta) -> WorkflowSnapshot:
    """The checkpoint ``delta`` describes, given the one before it."""
    results = {t: r for t, r in base.task_results.items() if t not in delta.removed_tasks}
    results.update(delta.task_results)
    fields = {name: getattr(delta, name) for name in _SNAPSHOT_FIELDS}
    fields["task_results"] = results
    return WorkflowSnapshot(**fields)


def is_delta(blob: bytes) -> bool:
    """Whether ``blob`` is a checkpoint delta (the envelope's CRC vouches for the flag)."""
    return len(blob) > FLAGS_OFFSET and bool(blob[FLAGS_OFFSET] & FLAG_DELTA)


def decode_chain(
    blobs: Iterable[tuple[int, bytes]],
    *,
    instance_id: str | None = None,
    check: Callable[[WorkflowSnapshot], object] | None = None,
    skip_corrupt: bool = False,
) -> Iterator[tuple[int, Codec, WorkflowSnapshot]]:
    """Decode consecutive checkpoints (version, blob) in version order, the first of
    them whole, yielding each as its snapshot (outputs not hydrated) once ``check``
    accepted it.

    ``skip_corrupt``: a version that cannot be decoded is left out instead of raising,
    and so are the deltas after it until the next whole checkpoint (they apply to it)."""
    previous: WorkflowSnapshot | None = None
    for version, blob in blobs:
        try:
            if not is_delta(blob):
                codec, current = open_document(blob, WorkflowSnapshot)
            elif previous is None:
                raise DecodeError("checkpoint delta without the checkpoint before it")
            else:
                codec, delta = open_document(blob, CheckpointDelta, delta=True)
                current = apply_delta(previous, delta)
            if check is not None:
                check(current)
        except DecodeError as exc:
            if skip_corrupt:
                previous = None
                continue
            raise exc.located(instance_id=instance_id, version=version) from exc
        previous = current
        yield version, codec, current


def encode_output(codec: Codec, output: Any, *, strict: bool = True) -> bytes | None:
    """The sidecar blob of one task output; None stays SQL NULL."""
    return None if output is None else seal_value(codec, output, "output", strict=strict)


def decode_snapshot(
    blob: bytes,
    outputs: Mapping[str, bytes | bytearray] | None = None,
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


def hydrate_outputs(
    snapshot: WorkflowSnapshot, outputs: Mapping[str, bytes | bytearray]
) -> WorkflowSnapshot:
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
