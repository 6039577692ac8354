"""Codec microbenchmarks: what one save encodes and one load decodes, per codec.

``make bench-micro`` times them; in the normal test run (``--benchmark-disable``)
each body runs once, so the round-trip assertions still guard correctness.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from snapstore.codecs import Codec, decode_snapshot, encode_output, encode_snapshot
from snapstore.model import AtTask, TaskResult, WorkflowSnapshot
from tests.codec_support import CODEC_IDS, CODECS, same

_T0 = datetime(2024, 5, 17, 8, 30, tzinfo=UTC)

# A mid-run workflow: 10 finished tasks with small dict outputs, ordinary metadata.
SNAPSHOT = WorkflowSnapshot(
    instance_id="order-000042",
    definition_hash="sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
    position=AtTask(task_id="step-10"),
    task_results={
        f"step-{i}": TaskResult(
            output={
                "id": i,
                "ok": True,
                "score": i / 7,
                "label": f"result {i}",
                "tags": ["a", "b"],
            },
            worker_id=f"worker-{i % 3}",
            started_at=_T0 + timedelta(seconds=2 * i),
            completed_at=_T0 + timedelta(seconds=2 * i + 1),
        )
        for i in range(10)
    },
    tags=("eu-west", "standard"),
    input={"customer": "c-981", "items": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-7", "qty": 1}]},
    trace_parent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    created_at=_T0,
)

Checkpoint = tuple[bytes, dict[str, bytes]]


def encode_checkpoint(codec: Codec, snapshot: WorkflowSnapshot) -> Checkpoint:
    """Everything a save encodes: the snapshot blob and one blob per task output."""
    outputs = {k: encode_output(codec, r.output) for k, r in snapshot.task_results.items()}
    return encode_snapshot(codec, snapshot), {k: b for k, b in outputs.items() if b is not None}


def decode_checkpoint(checkpoint: Checkpoint) -> WorkflowSnapshot:
    """Everything a load decodes: the blob plus the hydrated outputs."""
    blob, outputs = checkpoint
    return decode_snapshot(blob, outputs)[1]


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_encode(benchmark: BenchmarkFixture, codec: Codec) -> None:
    benchmark.group = "codec encode (snapshot + 10 outputs)"
    checkpoint: Checkpoint = benchmark(encode_checkpoint, codec, SNAPSHOT)
    benchmark.extra_info["blob_bytes"] = len(checkpoint[0])
    benchmark.extra_info["output_bytes"] = sum(map(len, checkpoint[1].values()))
    assert len(checkpoint[1]) == 10
    assert same(decode_checkpoint(checkpoint), SNAPSHOT)


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_decode(benchmark: BenchmarkFixture, codec: Codec) -> None:
    benchmark.group = "codec decode (snapshot + 10 outputs)"
    checkpoint = encode_checkpoint(codec, SNAPSHOT)
    snapshot: WorkflowSnapshot = benchmark(decode_checkpoint, checkpoint)
    assert same(snapshot, SNAPSHOT)
