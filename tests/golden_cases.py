"""The snapshots and the value frozen in codecs/golden/, defined once.

Both the generator (codecs/make_golden.py) and tests/test_codecs.py import this
module, so the committed bytes and the expectations cannot drift apart. Editing
a case here changes what the committed blobs must decode to: add new cases
instead, and regenerate only the new files (see codecs/SPEC.md).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import msgspec

from snapstore.codecs import CborCodec, Codec, JsonCodec, MsgpackCodec, codec_instance, seal_value
from snapstore.codecs.snapshot import encode_snapshot
from snapstore.model import (
    AtDelay,
    AtFork,
    AtJoin,
    AtSignal,
    AtTask,
    InLoop,
    RetryState,
    TaskResult,
    TaskStatus,
    WorkflowSnapshot,
    WorkflowStatus,
)

GOLDEN_DIR: Final = Path(__file__).resolve().parent.parent / "codecs" / "golden"
GOLDEN_CODECS: Final[tuple[type[Codec], ...]] = (JsonCodec, MsgpackCodec, CborCodec)

_T0: Final = datetime(2024, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return _T0 + timedelta(seconds=seconds)


# The portable value domain at its edges: 64-bit int limits, -0.0, tiny and huge
# floats, unicode keys and text, empty and deeply nested containers.
VALUE: Final[dict[str, Any]] = {
    "ünïcødé ✓ 客户 🚀": "naïve café — «quoted» \u2028 line sep",
    "ints": [0, 1, -1, 2**31, 2**63 - 1, -(2**63)],
    "floats": [0.1, -0.0, 1.5e-300, 1.7976931348623157e308, -2.5],
    "flags": [True, False, None],
    "nested": {"deep": [[{"k": "v", "n": [1, [2, [3]]]}]], "empty_list": [], "empty_dict": {}},
    "": "empty key",
}

_OUTPUTS: Final[list[Any]] = [
    {"order_id": "A-1001", "total": 129.95, "items": 3},
    {"ok": True},
    ["sku-1", "sku-2"],
    "réservé",
    42,
    VALUE,
]

# One task result per TaskStatus, with every optional field exercised somewhere.
_TASK_RESULTS: Final = {
    "validate": TaskResult(
        output=_OUTPUTS[0], worker_id="w-1", started_at=_at(1), completed_at=_at(2)
    ),
    "reserve-stock": TaskResult(output=_OUTPUTS[1], attempts=3, worker_id="w-2"),
    "charge-card": TaskResult(
        status=TaskStatus.FAILED,
        error="card declined: «insufficient funds»",
        attempts=2,
        started_at=_at(3),
        completed_at=_at(4),
    ),
    "pick": TaskResult(output=_OUTPUTS[2]),
    "läbel": TaskResult(output=_OUTPUTS[3], completed_at=_at(5)),
    "count": TaskResult(output=_OUTPUTS[4], attempts=0),
    "audit": TaskResult(output=_OUTPUTS[5], worker_id="wörker-🚀"),
    "ship": TaskResult(status=TaskStatus.RUNNING, worker_id="w-3", started_at=_at(6)),
}

RICH: Final = WorkflowSnapshot(
    instance_id="order-2024-05-17/ünïcødé-🚀",
    definition_hash="sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    status=WorkflowStatus.IN_PROGRESS,
    position=AtFork(task_id="ship", branches=("pack", "label", "notify-客户")),
    task_results=_TASK_RESULTS,
    retries={
        "charge-card": RetryState(attempts=2, next_attempt_at=_at(60), last_error="timeout"),
        "reserve-stock": RetryState(attempts=3),
    },
    priority=5,
    tags=("eu-west", "vip", "länder"),
    input={"customer": {"name": "Zoë Ñúñez", "id": 2**53 + 1}, "lines": [VALUE, [], {}]},
    trace_parent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    # A non-UTC offset: msgpack keeps the instant (decodes as UTC), JSON and CBOR keep the text.
    created_at=datetime(2024, 5, 17, 10, 30, 0, 999999, tzinfo=timezone(timedelta(hours=2))),
)


def _variant(**changes: Any) -> WorkflowSnapshot:
    return msgspec.structs.replace(RICH, **changes)


# Every Position kind and every WorkflowStatus appears at least once.
SNAPSHOT_CASES: Final[dict[str, WorkflowSnapshot]] = {
    # Only the required fields: everything else is an omitted default.
    "not_started": WorkflowSnapshot(instance_id="minimal", definition_hash=""),
    "at_task": _variant(position=AtTask(task_id="validate")),
    "at_delay": _variant(position=AtDelay(task_id="ship", wake_at=_at(3600.000001))),
    "at_signal": _variant(
        status=WorkflowStatus.PAUSED,
        position=AtSignal(task_id="ship", signal_name="carrier.pickup✓"),
    ),
    "at_fork": RICH,
    "at_join": _variant(
        status=WorkflowStatus.CANCELLED, position=AtJoin(task_id="ship", waiting_for=("pack",))
    ),
    "in_loop_completed": _variant(
        status=WorkflowStatus.COMPLETED,
        position=InLoop(task_id="ship", iteration=7),
        output={"tracking": ["1Z999", "1Z998"], "cost": 12.5},
    ),
    "at_task_failed": _variant(
        status=WorkflowStatus.FAILED,
        position=AtTask(task_id="charge-card"),
        error="gave up after 2 attempts: card declined",
    ),
}


def snapshot_path(codec: type[Codec], case: str) -> Path:
    """Where the golden snapshot blob of ``case`` written by ``codec`` lives."""
    return GOLDEN_DIR / codec.name / f"snapshot-{case}.bin"


def value_path(codec: type[Codec]) -> Path:
    """Where the golden value blob (`VALUE`) written by ``codec`` lives."""
    return GOLDEN_DIR / codec.name / "value.bin"


# Every type of the value domain beyond JSON's own (snapstore.codecs.values), and a dict
# that looks like a tag: what a codec switch must hand back unchanged.
TYPED_VALUE: Final[dict[str, Any]] = {
    "bytes": b"\x00\xffsnap",
    "empty_bytes": b"",
    "when": datetime(2024, 5, 17, 8, 30, 15, 123456, tzinfo=UTC),
    "day": date(2024, 2, 29),
    "id": UUID("12345678-1234-5678-1234-567812345678"),
    "amount": Decimal("-1234.5600"),
    "looks_like_a_tag": {"$uuid": "not a uuid"},
    "nested": [{"at": datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), "raw": [b"a", b"b"]}],
}


def typed_value_path(codec: type[Codec]) -> Path:
    """Where the golden typed value blob (`TYPED_VALUE`) written by ``codec`` lives."""
    return GOLDEN_DIR / codec.name / "value-typed.bin"


def golden_files() -> dict[Path, bytes]:
    """Every golden file and the bytes the current code writes for it."""
    files: dict[Path, bytes] = {}
    for codec_type in GOLDEN_CODECS:
        codec = codec_instance(codec_type)
        for case, snapshot in SNAPSHOT_CASES.items():
            files[snapshot_path(codec_type, case)] = encode_snapshot(codec, snapshot)
        files[value_path(codec_type)] = seal_value(codec, VALUE)
        files[typed_value_path(codec_type)] = seal_value(codec, TYPED_VALUE)
    return files
