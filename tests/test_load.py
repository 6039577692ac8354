"""Loads of big outputs: streamed in parts and put together in the client."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from snapstore import JsonCodec, PostgresBackend, TaskResult, WorkflowSnapshot, rows
from snapstore.rows import LoadedRows


def test_an_output_bigger_than_one_load_part_reads_back_whole(
    backend: PostgresBackend[JsonCodec],
) -> None:
    """load_snapshots sends an output in parts of LOAD_CHUNK bytes, streamed and put
    together in the client: the parts must join up exactly, compressible or not."""
    random_text = os.urandom(rows.LOAD_CHUNK // 2 + 12345).hex()  # > 1 part, incompressible
    repeated = "ab" * (rows.LOAD_CHUNK + 7)  # > 2 parts, compresses in TOAST
    results = {"r": TaskResult(output=random_text), "c": TaskResult(output=repeated)}
    results["small"] = TaskResult(output={"n": 1})
    snapshot = WorkflowSnapshot(instance_id="big", definition_hash="h", task_results=results)
    backend.save(snapshot)
    stored = backend.load("big")
    assert stored is not None
    assert stored.snapshot == snapshot


def test_load_parts_fold_into_one_buffer() -> None:
    fold = LoadedRows(chunk=4)
    born = datetime(2026, 1, 1, tzinfo=UTC)
    fold.add(("i", None, 1, None, None, b"blob", born))
    for part, data in enumerate([b"abcd", b"efgh", b"ij"]):
        fold.add(("i", "t", part, None, 10, data, None))
    fold.add(("i", "u", 0, None, 3, b"xyz", None))
    (loaded,) = fold.result().values()
    assert loaded.outputs == {"t": bytearray(b"abcdefghij"), "u": b"xyz"}
    assert loaded.chain == [(1, b"blob")]
    assert loaded.version == 1
    assert loaded.created_at == born
