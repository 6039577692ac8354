"""Signals (cancel/pause) and external events, on both PostgreSQL backends.

Each scenario is written once as a coroutine over `Twin`, which awaits the async
backend and runs the sync one in a worker thread: concurrent scenarios then really
overlap for both twins. Claims are inserted as plain rows (the claims API is built
elsewhere), with expiry relative to the server clock, so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest

from snapstore import (
    AtSignal,
    AtTask,
    NotFoundError,
    SaveRequest,
    TaskResult,
    TaskStatus,
    TerminalStateError,
    ValidationError,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.codecs import JsonCodec, seal_value
from snapstore.errors import ClaimLostError, ConflictError, EncodeError, UnknownCodecError
from snapstore.model import Claim
from snapstore.signals import (
    Event,
    EventOutcome,
    ParkResult,
    Signal,
    SignalKind,
    SignalOutcome,
    resumed_by_event,
)
from snapstore.sql_catalog import wakeup_channel
from tests.twins import Twin, snap

IID = "wf-1"


async def insert_claim(twin: Twin, instance_id: str = IID, *, live: bool = True) -> Claim:
    """Insert a claims row that is live (expires in an hour) or already expired."""
    token = uuid.uuid4()
    offset = "1 hour" if live else "-1 second"
    ((expires_at,),) = await twin.sql(
        "INSERT INTO @schema@.claims (instance_id, worker_id, token, expires_at)"
        " VALUES (%(iid)s, 'worker-1', %(token)s, now() + %(offset)s::interval)"
        " RETURNING expires_at",
        {"iid": instance_id, "token": token, "offset": offset},
    )
    return Claim(instance_id=instance_id, worker_id="worker-1", token=token, expires_at=expires_at)


async def row_of(twin: Twin, instance_id: str = IID) -> tuple[int, str, datetime | None]:
    """(version, status, completed_at) of the snapshots row."""
    ((version, status, completed_at),) = await twin.sql(
        "SELECT version, status, completed_at FROM @schema@.snapshots WHERE instance_id = %(iid)s",
        {"iid": instance_id},
    )
    return int(version), status, completed_at


async def history_statuses(twin: Twin, instance_id: str = IID) -> list[str]:
    rows = await twin.sql(
        "SELECT status FROM @schema@.history WHERE instance_id = %(iid)s ORDER BY version",
        {"iid": instance_id},
    )
    return [r[0] for r in rows]


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


@contextlib.asynccontextmanager
async def widened(twin: Twin, connections: int) -> AsyncIterator[Twin]:
    """A second backend of the same flavour on the same schema whose pool already holds
    ``connections`` connections, so that many calls really run at once (a pool that grows
    on demand would mostly queue them on its first connection)."""
    backend = await _maybe_await(
        type(twin.backend).connect(
            twin.target.pool.conninfo,
            schema=twin.schema,
            min_size=connections,
            max_size=connections,
        )
    )
    try:
        yield Twin(backend)
    finally:
        await _maybe_await(backend.close())


@pytest.fixture(params=["sync", "async"])
def twin(request: pytest.FixtureRequest, dsn: str) -> Twin:
    return Twin(request.getfixturevalue("backend" if request.param == "sync" else "abackend"))


PARKED = snap(position=AtSignal(task_id="approve", signal_name="approval"))


async def create(twin: Twin, snapshot: WorkflowSnapshot | None = None) -> WorkflowSnapshot:
    snapshot = snap() if snapshot is None else snapshot
    assert await twin.save(snapshot) == 1
    return snapshot


async def status_of(twin: Twin, instance_id: str = IID) -> WorkflowStatus:
    stored = await twin.load(instance_id)
    assert stored is not None
    status: WorkflowStatus = stored.snapshot.status
    return status


@pytest.fixture
def listener(dsn: str, twin: Twin) -> Iterator[psycopg.Connection[Any]]:
    """A connection LISTENing on the store's wakeup channel."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'LISTEN "{wakeup_channel(twin.schema)}"'.encode())
        yield conn


def wakeups(conn: psycopg.Connection[Any]) -> list[str]:
    """Instance ids NOTIFYed so far. Notifications are sent at commit, before the store
    call returns, so a round trip on the listener is enough to receive them."""
    received: list[str] = []
    conn.add_notify_handler(lambda n: received.append(n.payload))
    conn.execute("SELECT 1")
    return received


# --- low-level signal rows ------------------------------------------------------------------


async def test_store_get_clear_signals(twin: Twin) -> None:
    await create(twin)
    stored = await twin.store_signal(IID, "pause", "maintenance")
    assert isinstance(stored, Signal)
    assert (stored.kind, stored.reason, stored.instance_id) == (
        SignalKind.PAUSE,
        "maintenance",
        IID,
    )
    assert stored.created_at is not None
    await twin.store_signal(IID, SignalKind.CANCEL)
    assert [s.kind for s in await twin.get_signals(IID)] == [SignalKind.CANCEL, SignalKind.PAUSE]
    assert await twin.get_signal(IID, "pause") == stored
    assert await twin.clear_signal(IID, "pause") is True
    assert await twin.clear_signal(IID, "pause") is False
    assert await twin.get_signal(IID, SignalKind.PAUSE) is None
    assert await twin.clear_signal(IID) is True
    assert await twin.get_signals(IID) == []
    assert (await row_of(twin))[0] == 1  # signal rows never touch the checkpoint


async def test_repeated_signal_keeps_the_first_request(twin: Twin) -> None:
    await create(twin)
    first = await twin.store_signal(IID, "cancel", "first")
    again = await twin.store_signal(IID, "cancel", "second")
    assert again == first


@pytest.mark.parametrize("kind", ["stop", "", "CANCEL", 3, None])
async def test_unknown_signal_kind_is_rejected(twin: Twin, kind: Any) -> None:
    await create(twin)
    with pytest.raises(ValidationError):
        await twin.store_signal(IID, kind)
    with pytest.raises(ValidationError):
        await twin.get_signal(IID, kind)
    assert (await twin.sql("SELECT count(*) FROM @schema@.signals")) == [(0,)]


async def test_signals_of_unknown_instance(twin: Twin) -> None:
    for call in (
        twin.store_signal("nope", "cancel"),
        twin.get_signals("nope"),
        twin.get_signal("nope", "cancel"),
        twin.clear_signal("nope"),
        twin.cancel("nope"),
        twin.pause("nope"),
        twin.unpause("nope"),
        twin.check_and_cancel("nope"),
        twin.check_and_pause("nope"),
    ):
        with pytest.raises(NotFoundError):
            await call


@pytest.mark.parametrize(
    "status", [WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED]
)
async def test_signals_on_terminal_instance_are_refused(twin: Twin, status: WorkflowStatus) -> None:
    await create(twin, snap(status=status))
    for call in (
        twin.store_signal(IID, "pause"),
        twin.cancel(IID),
        twin.pause(IID),
        twin.unpause(IID),
        twin.check_and_cancel(IID),
        twin.send_event(IID, "approval", 1),
    ):
        with pytest.raises(TerminalStateError):
            await call
    assert (await row_of(twin))[0] == 1
    assert (await twin.sql("SELECT count(*) FROM @schema@.signals")) == [(0,)]
    assert (await twin.sql("SELECT count(*) FROM @schema@.events")) == [(0,)]


# --- cancel ---------------------------------------------------------------------------------


async def test_cancel_applies_at_once_without_claim(twin: Twin) -> None:
    await create(twin)
    assert await twin.cancel(IID, "user asked") is SignalOutcome.APPLIED
    version, status, completed_at = await row_of(twin)
    assert (version, status) == (2, "Cancelled")
    assert completed_at is not None
    assert (await history_statuses(twin)) == ["InProgress", "Cancelled"]
    assert await twin.get_signals(IID) == []
    with pytest.raises(TerminalStateError):  # and it stays cancelled
        await twin.save(snap(), 2)


async def test_cancel_with_expired_claim_applies_at_once(twin: Twin) -> None:
    await create(twin)
    (await insert_claim(twin, live=False))
    assert await twin.cancel(IID) is SignalOutcome.APPLIED
    assert await status_of(twin) is WorkflowStatus.CANCELLED


async def test_cancel_is_pending_while_a_live_claim_holds_the_instance(twin: Twin) -> None:
    await create(twin)
    claim = await insert_claim(twin)
    assert await twin.cancel(IID, "user asked") is SignalOutcome.PENDING
    assert (await row_of(twin))[:2] == (1, "InProgress")
    signal = await twin.get_signal(IID, "cancel")
    assert signal is not None
    assert signal.reason == "user asked"

    assert await twin.check_and_pause(IID, claim) is None  # other kinds are not applied
    applied = await twin.check_and_cancel(IID, claim)
    assert applied == signal
    assert (await row_of(twin))[:2] == (2, "Cancelled")
    assert (await history_statuses(twin)) == ["InProgress", "Cancelled"]
    assert await twin.get_signals(IID) == []


async def test_check_and_cancel_without_pending_signal_writes_nothing(twin: Twin) -> None:
    await create(twin)
    assert await twin.check_and_cancel(IID, (await insert_claim(twin))) is None
    assert await twin.check_and_cancel(IID) is None
    assert (await row_of(twin))[:2] == (1, "InProgress")


async def test_check_and_cancel_with_lost_claim_keeps_the_signal(twin: Twin) -> None:
    await create(twin)
    claim = await insert_claim(twin)
    assert await twin.cancel(IID) is SignalOutcome.PENDING
    (await twin.sql("UPDATE @schema@.claims SET expires_at = now() - interval '1 second'"))
    with pytest.raises(ClaimLostError):
        await twin.check_and_cancel(IID, claim)
    assert (await row_of(twin))[:2] == (1, "InProgress")
    assert await twin.get_signal(IID, "cancel") is not None


async def test_cancel_on_paused_applies_even_with_a_live_claim(twin: Twin) -> None:
    await create(twin)
    assert await twin.pause(IID) is SignalOutcome.APPLIED
    (await insert_claim(twin))  # a paused instance is driven by nobody, whatever the lease says
    assert await twin.cancel(IID) is SignalOutcome.APPLIED
    assert (await row_of(twin))[:2] == (3, "Cancelled")
    assert (await history_statuses(twin)) == ["InProgress", "Paused", "Cancelled"]


async def test_applied_cancel_clears_every_pending_signal(twin: Twin) -> None:
    await create(twin)
    claim = await insert_claim(twin)
    assert await twin.pause(IID) is SignalOutcome.PENDING
    assert await twin.cancel(IID) is SignalOutcome.PENDING
    assert await twin.check_and_cancel(IID, claim) is not None
    assert (await twin.sql("SELECT count(*) FROM @schema@.signals")) == [(0,)]


async def test_cancel_keeps_task_outputs(twin: Twin) -> None:
    results = {"a": TaskResult(output={"big": [1, 2, 3]})}
    await create(twin, snap(position=AtTask(task_id="b"), task_results=results))
    assert await twin.cancel(IID) is SignalOutcome.APPLIED
    stored = await twin.load(IID)
    assert stored is not None
    assert stored.snapshot == snap(
        position=AtTask(task_id="b"), task_results=results, status=WorkflowStatus.CANCELLED
    )


# --- pause / unpause ------------------------------------------------------------------------


async def test_pause_applies_at_once_and_unpause_resumes(
    twin: Twin, listener: psycopg.Connection[Any]
) -> None:
    await create(twin)
    wakeups(listener)  # drop the creation's wakeup
    assert await twin.pause(IID, "maintenance") is SignalOutcome.APPLIED
    assert (await row_of(twin))[:2] == (2, "Paused")
    assert await twin.pause(IID) is SignalOutcome.UNCHANGED
    assert (await row_of(twin))[0] == 2
    assert wakeups(listener) == []  # a paused instance is not dispatchable

    assert await twin.unpause(IID) is SignalOutcome.APPLIED
    assert (await row_of(twin))[:2] == (3, "InProgress")
    assert (await history_statuses(twin)) == ["InProgress", "Paused", "InProgress"]
    assert wakeups(listener) == [IID]  # dispatchable again: workers are told
    assert await twin.unpause(IID) is SignalOutcome.UNCHANGED


async def test_pause_is_pending_under_a_live_claim(twin: Twin) -> None:
    await create(twin)
    claim = await insert_claim(twin)
    assert await twin.pause(IID, "maintenance") is SignalOutcome.PENDING
    assert (await row_of(twin))[:2] == (1, "InProgress")
    applied = await twin.check_and_pause(IID, claim)
    assert applied is not None
    assert applied.reason == "maintenance"
    assert (await row_of(twin))[:2] == (2, "Paused")
    assert await twin.get_signals(IID) == []
    assert await twin.unpause(IID) is SignalOutcome.APPLIED
    assert (await row_of(twin))[:2] == (3, "InProgress")


async def test_unpause_clears_the_pause_signal(twin: Twin) -> None:
    await create(twin)
    claim = await insert_claim(twin)
    assert await twin.pause(IID) is SignalOutcome.PENDING
    assert await twin.unpause(IID) is SignalOutcome.WITHDRAWN
    assert await twin.get_signal(IID, "pause") is None
    assert await twin.check_and_pause(IID, claim) is None  # the worker finds nothing to apply
    assert (await row_of(twin))[:2] == (1, "InProgress")


async def test_unpause_of_paused_instance_drops_a_stale_pause_signal(twin: Twin) -> None:
    await create(twin)
    assert await twin.pause(IID) is SignalOutcome.APPLIED
    await twin.store_signal(IID, "pause", "stale")
    assert await twin.unpause(IID) is SignalOutcome.APPLIED
    assert await twin.get_signals(IID) == []


# --- events ---------------------------------------------------------------------------------


async def test_event_resumes_an_instance_parked_on_it(
    twin: Twin, listener: psycopg.Connection[Any]
) -> None:
    await create(twin, PARKED)
    wakeups(listener)
    assert await twin.send_event(IID, "approval", {"by": "alice"}) is EventOutcome.RESUMED
    stored = await twin.load(IID)
    assert stored is not None
    assert stored.version == 2
    assert stored.snapshot.position == AtTask(task_id="approve")
    assert stored.snapshot.task_results["approve"] == TaskResult(
        status=TaskStatus.COMPLETED, output={"by": "alice"}
    )
    assert await twin.peek_events(IID) == []
    assert wakeups(listener) == [IID]


@pytest.mark.parametrize(
    "snapshot",
    [
        snap(position=AtTask(task_id="approve")),
        snap(position=AtSignal(task_id="approve", signal_name="other")),
        msgspec.structs.replace(PARKED, status=WorkflowStatus.PAUSED),
    ],
    ids=["not-parked", "parked-on-another-name", "paused"],
)
async def test_event_is_buffered_unless_the_instance_waits_for_it(
    twin: Twin, snapshot: WorkflowSnapshot
) -> None:
    await create(twin, snapshot)
    assert await twin.send_event(IID, "approval", [1, 2]) is EventOutcome.BUFFERED
    assert (await row_of(twin))[0] == 1
    (event,) = await twin.peek_events(IID)
    assert isinstance(event, Event)
    assert (event.instance_id, event.name, event.payload) == (IID, "approval", [1, 2])
    assert event.created_at is not None


async def test_events_of_unknown_instance(twin: Twin) -> None:
    with pytest.raises(NotFoundError):
        await twin.send_event("nope", "approval")
    with pytest.raises(NotFoundError):
        await twin.peek_events("nope")
    assert (await twin.sql("SELECT count(*) FROM @schema@.events")) == [(0,)]


async def test_event_validation_writes_nothing(twin: Twin) -> None:
    await create(twin, PARKED)
    with pytest.raises(ValidationError):
        await twin.send_event(IID, "", 1)
    with pytest.raises(EncodeError):
        await twin.send_event(IID, "approval", object())
    with pytest.raises(ValidationError):
        await twin.peek_events(IID, limit=0)
    assert (await row_of(twin))[0] == 1
    assert await twin.peek_events(IID) == []


async def test_buffered_events_are_fifo_per_name(twin: Twin) -> None:
    await create(twin)
    for n, name in enumerate(["a", "b", "a", "a", "b"]):
        assert await twin.send_event(IID, name, n) is EventOutcome.BUFFERED
    assert [(e.name, e.payload) for e in await twin.peek_events(IID)] == [
        ("a", 0), ("b", 1), ("a", 2), ("a", 3), ("b", 4),
    ]  # fmt: skip
    assert [e.payload for e in await twin.peek_events(IID, "a")] == [0, 2, 3]
    assert [e.payload for e in await twin.peek_events(IID, "a", limit=2)] == [0, 2]

    current, version = snap(), 1
    for expected in (0, 2, 3):
        oldest = (await twin.peek_events(IID, "a", limit=1))[0]
        assert oldest.payload == expected
        current = msgspec.structs.replace(current, input=oldest.payload)
        version = (await twin.consume_event(oldest.id, current, version)).version
    assert version == 4
    assert await twin.peek_events(IID, "a") == []
    assert [e.payload for e in await twin.peek_events(IID)] == [1, 4]


async def test_consume_refuses_to_skip_an_older_event(twin: Twin) -> None:
    await create(twin)
    await twin.send_event(IID, "a", "first")
    await twin.send_event(IID, "a", "second")
    _, newer = await twin.peek_events(IID)
    with pytest.raises(ValidationError):
        await twin.consume_event(newer.id, snap(), 1)
    assert (await row_of(twin))[0] == 1
    assert len(await twin.peek_events(IID)) == 2


async def test_consume_and_advance_is_atomic(twin: Twin) -> None:
    await create(twin)
    await twin.send_event(IID, "approval", "ok")
    (event,) = await twin.peek_events(IID)
    await twin.save(snap(input="someone else"), 1)  # our expected_version is now stale

    with pytest.raises(ConflictError):
        await twin.consume_event(event.id, snap(input="ok"), 1)
    assert await twin.peek_events(IID) == [event]  # not consumed
    assert (await row_of(twin))[0] == 2

    assert (await twin.consume_event(event.id, snap(input="ok"), 2)).version == 3
    assert await twin.peek_events(IID) == []
    with pytest.raises(NotFoundError):  # consumed exactly once
        await twin.consume_event(event.id, snap(input="again"), 3)
    assert (await row_of(twin))[0] == 3


async def test_consume_fenced_by_a_lost_claim_keeps_the_event(twin: Twin) -> None:
    await create(twin)
    claim = await insert_claim(twin, live=False)
    await twin.send_event(IID, "approval", "ok")
    (event,) = await twin.peek_events(IID)
    with pytest.raises(ClaimLostError):
        await twin.consume_event(event.id, snap(input="ok"), 1, claim=claim)
    assert await twin.peek_events(IID) == [event]
    live = await insert_claim(twin, "wf-2")
    with pytest.raises(ValidationError):  # a claim on another instance fences nothing here
        await twin.consume_event(event.id, snap(input="ok"), 1, claim=live)
    assert await twin.peek_events(IID) == [event]


async def test_consume_needs_the_event_of_that_instance(twin: Twin) -> None:
    await create(twin)
    await create(twin, snap("wf-2"))
    await twin.send_event("wf-2", "approval", "theirs")
    (theirs,) = await twin.peek_events("wf-2")
    with pytest.raises(NotFoundError):
        await twin.consume_event(theirs.id, snap(), 1)
    assert await twin.peek_events("wf-2") == [theirs]


async def test_concurrent_events_resume_once_and_buffer_the_rest(twin: Twin) -> None:
    await create(twin, PARKED)
    payloads = list(range(8))
    async with widened(twin, len(payloads)) as wide:
        outcomes = await asyncio.gather(*(wide.send_event(IID, "approval", p) for p in payloads))
    assert sorted(outcomes) == sorted([EventOutcome.RESUMED] + [EventOutcome.BUFFERED] * 7)
    stored = await twin.load(IID)
    assert stored is not None
    assert stored.version == 2
    assert stored.snapshot.position == AtTask(task_id="approve")
    delivered = stored.snapshot.task_results["approve"].output
    buffered = [e.payload for e in await twin.peek_events(IID)]
    assert sorted([delivered, *buffered]) == payloads  # none lost, none twice


async def test_event_for_parked_instance_respects_older_buffered_ones(twin: Twin) -> None:
    await create(twin)
    await twin.send_event(IID, "approval", "early")  # arrives before the engine parks
    await twin.save(PARKED, 1)  # parked with a plain save, missing the buffered event
    assert await twin.send_event(IID, "approval", "late") is EventOutcome.RESUMED
    stored = await twin.load(IID)
    assert stored is not None
    assert stored.snapshot.task_results["approve"].output == "early"
    assert [e.payload for e in await twin.peek_events(IID)] == ["late"]


async def test_park_consumes_an_already_buffered_event(twin: Twin) -> None:
    await create(twin)
    claim = await insert_claim(twin)
    await twin.send_event(IID, "approval", "early")
    result = await twin.park(PARKED, 1, claim=claim)
    assert isinstance(result, ParkResult)
    assert result.version == 2
    assert result.event is not None
    assert result.event.payload == "early"
    assert result.snapshot.position == AtTask(task_id="approve")
    stored = await twin.load(IID)
    assert stored is not None
    assert stored.snapshot == result.snapshot
    assert await twin.peek_events(IID) == []


async def test_park_without_buffered_event_waits_for_send(twin: Twin) -> None:
    await create(twin)
    await twin.send_event(IID, "other", "unrelated")
    result = await twin.park(PARKED, 1)
    assert (result.version, result.event, result.snapshot) == (2, None, PARKED)
    assert await twin.send_event(IID, "approval", "now") is EventOutcome.RESUMED
    assert (await row_of(twin))[0] == 3
    assert [e.name for e in await twin.peek_events(IID)] == ["other"]


async def test_park_failure_leaves_the_event_buffered(twin: Twin) -> None:
    await create(twin)
    await twin.send_event(IID, "approval", "early")
    with pytest.raises(ConflictError):
        await twin.park(PARKED, 7)
    with pytest.raises(ValidationError):
        await twin.park(snap(), 1)  # not positioned AtSignal
    assert [e.payload for e in await twin.peek_events(IID)] == ["early"]
    assert (await row_of(twin))[0] == 1


# --- unreadable buffered events block nothing ------------------------------------------------


async def corrupt_event(twin: Twin, name: str = "approval") -> int:
    """Buffer an event, then break its payload as a disk or another tool might."""
    await twin.send_event(IID, name, "lost")
    [(event_id,)] = await twin.sql(
        "UPDATE @schema@.events SET payload = '\\x00ff'::bytea"
        " WHERE instance_id = %(iid)s AND payload IS NOT NULL"
        " AND id = (SELECT max(id) FROM @schema@.events) RETURNING id",
        {"iid": IID},
    )
    return int(event_id)


async def buried(twin: Twin) -> list[tuple[Any, ...]]:
    return await twin.sql(
        "SELECT id, name, reason <> '' FROM @schema@.dead_events WHERE instance_id = %(iid)s",
        {"iid": IID},
    )


async def test_park_buries_an_unreadable_event_and_takes_the_next(
    twin: Twin, caplog: pytest.LogCaptureFixture
) -> None:
    await create(twin)
    bad = await corrupt_event(twin)
    await twin.send_event(IID, "approval", "good")
    before = twin.poison_counts.events_buried
    with caplog.at_level("WARNING", logger="snapstore.events"):
        result = await twin.park(PARKED, 1)
    assert result.event is not None
    assert result.event.payload == "good"
    assert await buried(twin) == [(bad, "approval", True)]
    assert twin.poison_counts.events_buried == before + 1
    assert any(str(bad) in r.getMessage() for r in caplog.records)
    assert await twin.peek_events(IID) == []


async def test_park_with_only_an_unreadable_event_parks(twin: Twin) -> None:
    await create(twin)
    await corrupt_event(twin)
    result = await twin.park(PARKED, 1)
    assert (result.version, result.event) == (2, None)
    assert len(await buried(twin)) == 1
    assert await twin.send_event(IID, "approval", "late") is EventOutcome.RESUMED


async def test_send_event_resumes_past_an_unreadable_older_event(twin: Twin) -> None:
    await create(twin)
    await corrupt_event(twin)
    await twin.save(PARKED, 1)  # parked with a plain save, the broken event buffered
    assert await twin.send_event(IID, "approval", "fresh") is EventOutcome.RESUMED
    stored = await twin.load(IID)
    assert stored is not None
    assert stored.snapshot.task_results["approve"].output == "fresh"
    assert len(await buried(twin)) == 1


async def test_peek_buries_an_unreadable_event_so_the_next_can_be_consumed(twin: Twin) -> None:
    await create(twin)
    await twin.send_event(IID, "approval", "first")
    await corrupt_event(twin)
    await twin.send_event(IID, "approval", "third")
    first, third = await twin.peek_events(IID)
    assert [first.payload, third.payload] == ["first", "third"]
    assert len(await buried(twin)) == 1
    await twin.save(PARKED, 1)
    done = resumed_by_event(PARKED, first.payload)
    assert (await twin.consume_event(first.id, done, 2)).version == 3
    assert [e.payload for e in await twin.peek_events(IID)] == ["third"]


async def test_deleting_an_instance_deletes_its_dead_events(twin: Twin) -> None:
    await create(twin)
    await corrupt_event(twin)
    await twin.peek_events(IID)
    assert await twin.delete(IID)
    assert await buried(twin) == []


class Unregistered:
    """A codec another process has: JSON bytes under an id no process here registered."""

    codec_id = 251  # no test registers it
    name = "elsewhere"
    builtin_types = ()

    def dumps(self, doc: Any) -> bytes:
        return JsonCodec().dumps(doc)


async def test_an_event_of_a_codec_this_process_lacks_is_not_buried(twin: Twin) -> None:
    """Not corrupt: a process that has the codec can read it (a rolling deploy)."""
    await create(twin)
    await twin.send_event(IID, "approval", "later")
    blob = seal_value(Unregistered(), "x")  # type: ignore[arg-type]
    await twin.sql(
        "UPDATE @schema@.events SET payload = %(blob)s WHERE instance_id = %(iid)s",
        {"blob": blob, "iid": IID},
    )
    with pytest.raises(UnknownCodecError):
        await twin.peek_events(IID)
    with pytest.raises(UnknownCodecError):
        await twin.park(PARKED, 1)
    assert await buried(twin) == []
    assert await twin.count("events") == 1


# --- holes between signals and events (issue #11) ---------------------------------------------


async def test_an_event_sent_while_paused_resumes_the_parked_instance_at_unpause(
    twin: Twin,
) -> None:
    await create(twin, PARKED)
    assert (await twin.pause(IID)).value == "applied"
    assert await twin.send_event(IID, "approval", "yes") is EventOutcome.BUFFERED
    assert (await twin.unpause(IID)).value == "applied"
    stored = await twin.load(IID)
    assert stored is not None
    assert stored.snapshot.status is WorkflowStatus.IN_PROGRESS
    assert stored.snapshot.position == AtTask(task_id="approve")
    assert stored.snapshot.task_results["approve"].output == "yes"
    assert await twin.peek_events(IID) == []


async def test_consuming_into_a_wait_for_a_buffered_event_resumes_at_once(twin: Twin) -> None:
    """The checkpoint a consumed event leads to waits for another event, already
    buffered: it is delivered in the same transaction, as park does."""
    await create(twin, PARKED)
    await twin.save(snap(), 1)  # not parked: both events are buffered
    await twin.send_event(IID, "approval", "first")
    await twin.send_event(IID, "second", "next")
    (first,) = await twin.peek_events(IID, "approval")
    waits = snap(position=AtSignal(task_id="then", signal_name="second"))
    result = await twin.consume_event(first.id, waits, 2)
    assert result.version == 3
    assert result.event is not None
    assert result.event.payload == "next"  # the caller is told, and continues from:
    assert result.snapshot.position == AtTask(task_id="then")
    stored = await twin.load(IID)
    assert stored is not None
    assert stored.snapshot == result.snapshot
    assert stored.snapshot.task_results["then"].output == "next"
    assert await twin.peek_events(IID) == []


async def test_cancel_wins_over_a_pending_pause_whichever_check_comes_first(
    twin: Twin,
) -> None:
    await create(twin)
    claim = await insert_claim(twin)
    assert (await twin.pause(IID, "hold")).value == "pending"
    assert (await twin.cancel(IID, "stop")).value == "pending"
    applied = await twin.check_and_pause(IID, claim=claim)
    assert applied is not None
    assert (applied.kind, applied.reason) == (SignalKind.CANCEL, "stop")
    assert await status_of(twin) is WorkflowStatus.CANCELLED
    assert await twin.get_signals(IID) == []


@pytest.mark.parametrize("held", [True, False], ids=["held", "unclaimed"])
async def test_an_event_resuming_an_instance_a_worker_holds_wakes_nobody(
    twin: Twin, listener: psycopg.Connection[Any], held: bool
) -> None:
    """Only an instance nobody drives is announced: a live lease means its worker
    carries on, and other workers woken for it could not take it."""
    await create(twin, PARKED)
    if held:
        await insert_claim(twin)
    wakeups(listener)
    assert await twin.send_event(IID, "approval", "yes") is EventOutcome.RESUMED
    assert wakeups(listener) == ([] if held else [IID])


# --- who asked, and why: kept where operators read it ------------------------------------


async def applied_rows(twin: Twin) -> list[tuple[Any, ...]]:
    return await twin.sql(
        "SELECT version, kind, reason, requested_by FROM @schema@.applied_signals"
        " WHERE instance_id = %(iid)s ORDER BY version",
        {"iid": IID},
    )


async def test_a_cancel_applied_at_once_keeps_its_reason_and_requester(twin: Twin) -> None:
    await create(twin)
    assert await twin.cancel(IID, "duplicate order", requested_by="ops:alice") is (
        SignalOutcome.APPLIED
    )
    assert await applied_rows(twin) == [(2, "cancel", "duplicate order", "ops:alice")]
    last = (await twin.history(IID))[-1]
    assert last.version == 2
    assert last.applied_signal is not None
    assert (last.applied_signal.kind, last.applied_signal.reason) == ("cancel", "duplicate order")
    assert last.applied_signal.requested_by == "ops:alice"
    assert last.applied_signal.requested_at is not None
    assert (await twin.history(IID))[0].applied_signal is None


async def test_a_pending_pause_applied_by_the_worker_keeps_its_requester(twin: Twin) -> None:
    await create(twin)
    claim = await insert_claim(twin)
    assert await twin.pause(IID, "maintenance", requested_by="ops:bob") is SignalOutcome.PENDING
    (pending,) = await twin.get_signals(IID)
    assert (pending.reason, pending.requested_by) == ("maintenance", "ops:bob")
    applied = await twin.check_signals(IID, claim)
    assert applied is not None
    assert (applied.kind, applied.requested_by) == (SignalKind.PAUSE, "ops:bob")
    assert await applied_rows(twin) == [(2, "pause", "maintenance", "ops:bob")]
    assert await status_of(twin) is WorkflowStatus.PAUSED


async def test_check_signals_applies_a_cancel_before_a_pause(twin: Twin) -> None:
    await create(twin)
    claim = await insert_claim(twin)
    await twin.pause(IID, "hold")
    await twin.cancel(IID, "stop", requested_by="ops:carol")
    applied = await twin.check_signals(IID, claim)
    assert applied is not None
    assert applied.kind is SignalKind.CANCEL
    assert await status_of(twin) is WorkflowStatus.CANCELLED
    assert await twin.get_signals(IID) == []
    assert await applied_rows(twin) == [(2, "cancel", "stop", "ops:carol")]
    with pytest.raises(TerminalStateError):  # finished: there is nothing left to apply
        await twin.check_signals(IID, claim)


async def test_check_signals_with_nothing_pending_writes_nothing(twin: Twin) -> None:
    await create(twin)
    assert await twin.check_signals(IID) is None
    assert [e.version for e in await twin.history(IID)] == [1]
    assert await applied_rows(twin) == []


# --- signal waits with a deadline -------------------------------------------------------------


def waiting_until(seconds: float) -> WorkflowSnapshot:
    deadline = datetime.now(UTC) + timedelta(seconds=seconds)
    return snap(position=AtSignal(task_id="approve", signal_name="approval", timeout_at=deadline))


async def test_a_wait_past_its_deadline_is_dispatched_and_says_it_timed_out(twin: Twin) -> None:
    parked = waiting_until(1.0)
    wait = parked.position
    assert isinstance(wait, AtSignal)
    assert await twin.save(parked) == 1
    assert await twin.find_available_tasks("w1") == []  # still waiting
    assert await twin.next_dispatch_at() == wait.timeout_at  # a timer, queued
    await asyncio.sleep(1.2)
    (task,) = await twin.find_available_tasks("w1")
    assert task.timed_out
    assert task.snapshot.position == wait
    assert wait.timed_out()


async def test_an_event_after_the_deadline_is_buffered_not_applied(twin: Twin) -> None:
    await twin.save(waiting_until(0.3))
    await asyncio.sleep(0.5)
    assert await twin.send_event(IID, "approval", "late") is EventOutcome.BUFFERED
    stored = await twin.load(IID)
    assert stored is not None
    assert isinstance(stored.snapshot.position, AtSignal)  # the timed-out wait is untouched
    assert [e.payload for e in await twin.peek_events(IID)] == ["late"]


async def test_an_event_before_the_deadline_resumes_the_wait(twin: Twin) -> None:
    await twin.save(waiting_until(60))
    assert await twin.send_event(IID, "approval", "in time") is EventOutcome.RESUMED
    assert await twin.find_available_tasks("w1") != []  # resumed: AtTask, due now


async def test_a_wait_without_a_deadline_is_never_dispatched(twin: Twin) -> None:
    await twin.save(PARKED)
    assert await twin.find_available_tasks("w1") == []
    assert await twin.next_dispatch_at() is None


@pytest.mark.parametrize(
    "deadline",
    [datetime(2030, 1, 1), datetime.max.replace(tzinfo=UTC), "soon"],
    ids=["naive", "end-of-time", "not-a-time"],
)
async def test_a_bad_deadline_is_refused_before_anything_is_written(
    twin: Twin, deadline: Any
) -> None:
    bad = snap(position=AtSignal(task_id="approve", signal_name="approval", timeout_at=deadline))
    with pytest.raises(ValidationError):
        await twin.save(bad)
    assert await twin.count("snapshots") == 0


async def test_a_late_event_is_not_applied_when_the_timed_out_wait_is_parked_again(
    twin: Twin,
) -> None:
    """Buffered because it came after the deadline, it never answers that wait, whichever
    call saves the wait next."""
    wait = waiting_until(0.3)
    await twin.save(wait)
    await asyncio.sleep(0.5)
    assert await twin.send_event(IID, "approval", "late") is EventOutcome.BUFFERED
    result = await twin.park(wait, 1)
    assert result.event is None
    assert [e.payload for e in await twin.peek_events(IID)] == ["late"]


async def test_an_event_in_time_but_buffered_while_paused_is_applied_at_unpause(
    twin: Twin,
) -> None:
    await twin.save(waiting_until(0.5))
    assert (await twin.pause(IID)).value == "applied"
    assert await twin.send_event(IID, "approval", "in time") is EventOutcome.BUFFERED
    await asyncio.sleep(0.7)  # the deadline passes while paused
    assert (await twin.unpause(IID)).value == "applied"
    stored = await twin.load(IID)
    assert stored is not None
    assert stored.snapshot.task_results["approve"].output == "in time"


async def test_a_batch_save_resuming_a_held_instance_wakes_nobody(
    twin: Twin, listener: psycopg.Connection[Any]
) -> None:
    await create(twin, PARKED)
    await insert_claim(twin)
    wakeups(listener)
    (result,) = await twin.save_many([SaveRequest(snap(position=AtTask(task_id="x")), 1)])
    assert result.version == 2
    assert wakeups(listener) == []
