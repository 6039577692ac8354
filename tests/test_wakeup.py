"""Wakeups against a real PostgreSQL: NOTIFY semantics, the bounded queue, the
fallback poll and reconnection, for the thread listener and the asyncio one.

Every test runs on a schema of its own, hence on a NOTIFY channel of its own:
counters can be asserted exactly, and another test run against the same server
(``SNAPSTORE_DSN``) cannot send into it. Nothing is asserted about durations:
`eventually` polls a condition until a generous deadline. "Nothing was sent"
is shown by ordering instead of by waiting: notifications arrive in commit
order, so once a sentinel committed later has arrived, anything that was not
seen before it was never sent.

The scenarios that matter for both shells are written once, against `Side`,
and run for each shell; the sync backend is called through
``asyncio.to_thread`` so its blocking ``get`` never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Unpack, cast

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from snapstore import (
    AsyncPostgresBackend,
    AtDelay,
    AtSignal,
    JsonCodec,
    PostgresBackend,
    WorkflowStatus,
)
from snapstore.errors import ConfigurationError, UnavailableError
from snapstore.model import Claim
from snapstore.sql_catalog import queries_for, wakeup_channel
from snapstore.wakeup import (
    TIMER_GRACE,
    Backoff,
    Connect,
    Disconnect,
    Listen,
    ListenerPlan,
    Poll,
    PollCursor,
    Sleep,
    WakeupOptions,
    WakeupQueue,
    WakeupStats,
    next_poll_in,
    supervise,
)
from tests.twins import Twin, snap

# The backends of the fixtures live on the session loop (see pyproject.toml).
session_loop = pytest.mark.asyncio(loop_scope="session")

DEADLINE = 30.0
SLOW_POLL = 3600.0  # "no periodic poll during this test": only NOTIFY and (re)connect polls
FAST_POLL = 0.1


def balanced(stats: WakeupStats) -> bool:
    """Every received id is accounted for exactly once."""
    return stats.received == stats.delivered + stats.coalesced + stats.dropped + stats.pending


async def eventually(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after a generous deadline."""
    end = time.monotonic() + DEADLINE
    while True:
        result = condition()
        if await result if isinstance(result, Awaitable) else result:
            return
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --- one interface over both shells --------------------------------------------------------


class Side(Twin):
    """A backend of either flavour on a fresh schema; closes its listeners afterwards."""

    def __init__(self, backend: Any) -> None:
        super().__init__(backend)
        self.listeners: list[Twin] = []

    async def listen(self, **settings: Unpack[WakeupOptions]) -> Twin:
        listener: Twin = await self.call("wakeups", **settings)
        self.listeners.append(listener)
        return listener

    def backend_stats(self) -> WakeupStats:
        stats: WakeupStats = self.wakeup_stats()
        return stats


async def collect(listener: Twin, expected: set[str]) -> list[str]:
    """Everything ``listener`` delivers until ``expected`` has all been seen."""
    seen: list[str] = []
    end = time.monotonic() + DEADLINE
    while not expected <= set(seen):
        if time.monotonic() > end:
            pytest.fail(f"never delivered: {sorted(expected - set(seen))}")
        seen += await listener.get(timeout=0.2)
    return seen


@pytest.fixture(params=["thread", "asyncio"])
async def side(request: pytest.FixtureRequest, dsn: str, fresh_schema: str) -> AsyncIterator[Side]:
    backend: PostgresBackend[JsonCodec] | AsyncPostgresBackend[JsonCodec]
    if request.param == "thread":
        backend = await asyncio.to_thread(
            PostgresBackend[JsonCodec].connect, dsn, schema=fresh_schema, max_size=4
        )
    else:
        backend = await AsyncPostgresBackend[JsonCodec].connect(
            dsn, schema=fresh_schema, max_size=4
        )
    result = Side(backend)
    try:
        yield result
    finally:
        for listener in result.listeners:
            await listener.close()
        await result.close()


@pytest.fixture
def store(dsn: str, fresh_schema: str) -> Iterator[PostgresBackend[JsonCodec]]:
    """A sync backend on a fresh schema, for the SQL-level NOTIFY tests."""
    with PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema, max_size=4) as backend:
        yield backend


@pytest.fixture
def admin(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


# --- NOTIFY semantics of save (SQL level, observed on a raw LISTEN connection) -------------


class RawListener:
    """A bare LISTEN connection: sees exactly what the server sends on a channel."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.channel = wakeup_channel(schema)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))

    def until(self, sentinel: str) -> list[str]:
        """Payloads received up to and including ``sentinel``."""
        payloads: list[str] = []
        end = time.monotonic() + DEADLINE
        while sentinel not in payloads:
            assert time.monotonic() < end, f"{sentinel!r} never arrived (got {payloads})"
            payloads += [n.payload for n in self.conn.notifies(timeout=0.5)]
        return payloads


@pytest.fixture
def raw(dsn: str, store: PostgresBackend[JsonCodec]) -> Iterator[RawListener]:
    listener = RawListener(dsn, store.schema)
    yield listener
    listener.conn.close()


def test_only_dispatchable_unclaimed_saves_notify(
    store: PostgresBackend[JsonCodec], raw: RawListener, admin: psycopg.Connection[Any]
) -> None:
    store.save(snap("claimed"))  # created InProgress and due: announced
    token = uuid.uuid4()
    expires = admin.execute(
        sql.SQL(
            "INSERT INTO {}.claims (instance_id, worker_id, token, expires_at) "
            "VALUES (%s, 'w1', %s, now() + interval '1 hour') RETURNING expires_at"
        ).format(sql.Identifier(store.schema)),
        ("claimed", token),
    ).fetchone()
    assert expires is not None
    claim = Claim(instance_id="claimed", worker_id="w1", token=token, expires_at=expires[0])
    store.save(snap("claimed"), 1, claim=claim)  # the claimant keeps driving it: silent
    store.save(snap("done", status=WorkflowStatus.COMPLETED))
    store.save(snap("failed", status=WorkflowStatus.FAILED, error="boom"))
    store.save(snap("paused", status=WorkflowStatus.PAUSED))
    wake_at = datetime.now(UTC) + timedelta(hours=1)
    store.save(snap("timer", position=AtDelay(task_id="t", wake_at=wake_at)))
    store.save(snap("sentinel"))
    assert raw.until("sentinel") == ["claimed", "sentinel"]


def test_a_save_notifies_only_when_the_instance_became_dispatchable(
    store: PostgresBackend[JsonCodec], raw: RawListener
) -> None:
    """Workers were told when it became dispatchable; more steps of it change nothing for
    them. Resuming, coming due and new tags (other workers may take it) are news."""
    store.save(snap("a"))  # new: announced
    store.save(snap("a"), 1)  # still dispatchable: silent
    store.save(snap("a", status=WorkflowStatus.PAUSED), 2)
    store.save(snap("a"), 3)  # resumed: announced
    soon = datetime.now(UTC) + timedelta(hours=1)
    store.save(snap("a", position=AtDelay(task_id="t", wake_at=soon)), 4)
    past = datetime.now(UTC) - timedelta(seconds=1)
    store.save(snap("a", position=AtDelay(task_id="t", wake_at=past)), 5)  # due: announced
    store.save(snap("a", tags=("gpu",)), 6)  # other workers may take it: announced
    store.save(snap("a", tags=("gpu",)), 7)  # silent
    store.save(snap("sentinel"))
    assert raw.until("sentinel") == ["a", "a", "a", "a", "sentinel"]


def test_a_refused_wakeup_leaves_the_committed_save_standing(
    store: PostgresBackend[JsonCodec],
    admin: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The wakeup statements run after the saves committed: their failure is logged and
    the save's result returned (a raised error would send the caller to save again, into
    a conflict with its own checkpoint)."""
    store.save(snap("woken"))
    store.save(snap("woken", status=WorkflowStatus.PAUSED), 1)
    claims = sql.Identifier(store.schema, "claims")
    admin.execute(sql.SQL("ALTER TABLE {} RENAME TO claims_away").format(claims))
    try:
        with caplog.at_level("WARNING", logger="snapstore"):
            assert store.save(snap("woken"), 2) == 3  # resumed: a wakeup, refused
    finally:
        away = sql.Identifier(store.schema, "claims_away")
        admin.execute(sql.SQL("ALTER TABLE {} RENAME TO claims").format(away))
    assert [r.statement for r in caplog.records] == ["live_leases"]  # type: ignore[attr-defined]
    stored = store.load("woken")
    assert stored is not None
    assert stored.version == 3


class OneConnection:
    """Lends one connection, in whatever transaction it is in, where a pool is expected:
    a backend built on it runs its real statements inside the caller's transaction."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        yield self.conn


def test_notify_is_delivered_only_at_commit(
    store: PostgresBackend[JsonCodec], raw: RawListener, dsn: str, admin: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(dsn) as writer:  # not autocommit: what it runs stays uncommitted
        in_tx = PostgresBackend[JsonCodec].from_pool(
            cast(Any, OneConnection(writer)), schema=store.schema, run_migrations=False
        )
        in_tx.save(snap("in-tx"))
        writer.execute("SELECT pg_notify(%s, 'raw-in-tx')", (raw.channel,))
        admin.execute("SELECT pg_notify(%s, 'probe-1')", (raw.channel,))
        assert raw.until("probe-1") == ["probe-1"]  # committed later, seen first
        writer.commit()
        in_tx.save(snap("rolled-back"))
        writer.rollback()
    admin.execute("SELECT pg_notify(%s, 'probe-2')", (raw.channel,))
    assert raw.until("probe-2") == ["in-tx", "raw-in-tx", "probe-2"]


# --- the listeners, both shells ------------------------------------------------------------


@session_loop
async def test_dispatchable_save_wakes_every_listener(side: Side) -> None:
    first = await side.listen(poll_interval=SLOW_POLL)
    second = await side.listen(poll_interval=SLOW_POLL)
    await side.save(snap("w1"))
    assert await collect(first, {"w1"}) == ["w1"]
    assert await collect(second, {"w1"}) == ["w1"]
    one = WakeupStats(received=1, notified=1, delivered=1, polls=1)  # polls: the start poll
    assert first.stats() == one
    assert side.backend_stats() == one + one
    await first.close()
    assert first.closed
    assert side.backend_stats() == one + one  # a closed listener still counts


@session_loop
async def test_start_poll_queues_work_that_was_already_due(side: Side) -> None:
    await side.save(snap("before"))
    listener = await side.listen(poll_interval=SLOW_POLL)
    assert listener.stats().pending == 1  # queued before wakeups() returned
    assert await listener.get(timeout=0) == ["before"]


@session_loop
async def test_coalescing_and_drops_are_counted_exactly(side: Side) -> None:
    listener = await side.listen(maxsize=2, poll_interval=SLOW_POLL)
    # "a" becomes dispatchable three times while it is pending: created, then resumed twice.
    paused, running = WorkflowStatus.PAUSED, WorkflowStatus.IN_PROGRESS
    for expected, status in enumerate((running, paused, running, paused, running)):
        await side.save(snap("a", status=status), expected or None)
    for i in range(10):
        await side.save(snap(f"b{i}"))
    await eventually(lambda: listener.stats().received == 13, "13 notifications")
    stats = listener.stats()
    assert stats == WakeupStats(
        received=13, notified=13, coalesced=2, dropped=9, pending=2, polls=1
    )
    assert stats.drop_rate == 9 / 13
    assert balanced(stats)
    assert await listener.get(timeout=0, max_items=1) == ["a"]
    assert await listener.get(timeout=0) == ["b0"]
    assert await listener.get(timeout=0) == []
    after = listener.stats()
    assert (after.delivered, after.pending) == (2, 0)
    assert balanced(after)


@session_loop
async def test_fallback_poll_finds_dropped_wakeups(side: Side) -> None:
    listener = await side.listen(maxsize=2, poll_interval=FAST_POLL)
    ids = {f"d{i}" for i in range(5)}
    for instance_id in sorted(ids):
        await side.save(snap(instance_id))
    # Nobody consumes yet: two ids fit, the other three notifications are dropped.
    await eventually(lambda: listener.stats().notified == 5, "5 notifications")
    assert listener.stats().dropped == 3
    assert set(await collect(listener, ids)) == ids
    stats = listener.stats()
    assert stats.polled >= 3  # the dropped ones came back through the poll
    assert balanced(stats)


@session_loop
async def test_due_timer_is_found_by_the_poll(side: Side) -> None:
    listener = await side.listen(poll_interval=FAST_POLL)
    wake_at = datetime.now(UTC) + timedelta(seconds=1)
    await side.save(snap("sleeper", position=AtDelay(task_id="t", wake_at=wake_at)))
    assert "sleeper" in await collect(listener, {"sleeper"})
    stats = listener.stats()
    assert stats.notified == 0  # no NOTIFY for a timer: only the poll could see it due
    assert stats.polled >= 1


@session_loop
async def test_a_known_timer_is_polled_when_it_comes_due_not_at_the_interval(
    side: Side,
) -> None:
    wake_at = datetime.now(UTC) + timedelta(seconds=1)
    await side.save(snap("sleeper", position=AtDelay(task_id="t", wake_at=wake_at)))
    listener = await side.listen(poll_interval=SLOW_POLL)  # its start poll learns the timer
    assert "sleeper" in await collect(listener, {"sleeper"})
    stats = listener.stats()
    assert (stats.polls, stats.polled, stats.notified) == (2, 1, 0)


@session_loop
async def test_a_signal_wait_is_polled_when_its_deadline_passes(side: Side) -> None:
    """A wait with a deadline is queued like a timer: the listener wakes for it then."""
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    wait = AtSignal(task_id="t", signal_name="go", timeout_at=deadline)
    await side.save(snap("waiter", position=wait))
    listener = await side.listen(poll_interval=SLOW_POLL)  # its start poll learns the deadline
    assert "waiter" in await collect(listener, {"waiter"})
    stats = listener.stats()
    assert (stats.polls, stats.polled, stats.notified) == (2, 1, 0)


@session_loop
async def test_claimed_instances_are_not_polled(side: Side, admin: psycopg.Connection[Any]) -> None:
    await side.save(snap("busy"))
    await side.save(snap("idle"))
    admin.execute(
        sql.SQL(
            "INSERT INTO {}.claims (instance_id, worker_id, token, expires_at) "
            "VALUES ('busy', 'w', %s, now() + interval '1 hour')"
        ).format(sql.Identifier(side.schema)),
        (uuid.uuid4(),),
    )
    listener = await side.listen(poll_interval=SLOW_POLL)
    assert await listener.get(timeout=0) == ["idle"]


@pytest.fixture
def listener_role(admin: psycopg.Connection[Any], dsn: str) -> Iterator[tuple[str, str]]:
    """A login role of its own for the listener, so a test can refuse its reconnects."""
    role, password = f"wk_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    admin.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )
    yield role, make_conninfo(dsn, user=role, password=password)
    admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@session_loop
async def test_reconnects_and_catches_up_on_work_saved_while_down(
    listener_role: tuple[str, str], admin: psycopg.Connection[Any], side: Side
) -> None:
    role, conninfo = listener_role
    schema = sql.Identifier(side.schema)
    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, sql.Identifier(role)))
    admin.execute(
        sql.SQL("GRANT SELECT ON {}.snapshots, {}.claims TO {}").format(
            schema, schema, sql.Identifier(role)
        )
    )
    listener = await side.listen(
        conninfo=conninfo, poll_interval=SLOW_POLL, backoff_initial=0.02, backoff_max=0.5
    )
    pid = listener.backend_pid
    assert pid is not None
    found = admin.execute(
        "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    assert found == ("snapstore-wakeup",)

    # Refuse its reconnects, then kill it (waiting until the process is gone), so
    # these saves are committed while nobody listens: their NOTIFYs are lost.
    admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
    assert admin.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,)).fetchone() == (True,)
    down = {f"down{i}" for i in range(3)}
    for instance_id in sorted(down):
        await side.save(snap(instance_id))
    await eventually(lambda: listener.backend_pid is None, "the listener to notice")
    admin.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))

    assert set(await collect(listener, down)) == down
    stats = listener.stats()
    assert stats.reconnects >= 1
    assert stats.notified == 0  # delivered by the catch-up poll after reconnecting
    assert listener.backend_pid not in (None, pid)

    await side.save(snap("after"))  # and LISTEN is active again
    assert await collect(listener, {"after"}) == ["after"]
    assert listener.stats().notified == 1
    await listener.close()  # before the role is dropped


@session_loop
async def test_close_stops_cleanly(side: Side, admin: psycopg.Connection[Any]) -> None:
    listener = await side.listen(poll_interval=FAST_POLL)
    pid = listener.backend_pid
    await listener.close()
    await listener.close()  # idempotent
    assert listener.closed
    assert listener.backend_pid is None
    assert await listener.get(timeout=None) == []  # returns at once once closed

    def gone() -> bool:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return row.fetchone() == (0,)

    await eventually(gone, "the LISTEN connection to end")
    assert not listener.target._worker.running


@session_loop
async def test_backend_closes_its_open_listeners(side: Side) -> None:
    listeners = [await side.listen(poll_interval=SLOW_POLL) for _ in range(2)]
    await side.save(snap("x"))
    await eventually(lambda: side.backend_stats().received == 2, "both notified")
    await side.close_wakeups()
    assert all(listener.closed for listener in listeners)
    assert side.backend_stats().received == 2


@session_loop
async def test_bad_conninfo_fails_at_start(side: Side, dsn: str) -> None:
    with pytest.raises(UnavailableError, match="does not exist"):
        await side.listen(conninfo=make_conninfo(dsn, dbname=f"missing_{uuid.uuid4().hex}"))
    assert side.backend_stats() == WakeupStats()


# --- pure parts ----------------------------------------------------------------------------


def test_options_are_validated() -> None:
    bad: list[WakeupOptions] = [
        {"maxsize": 0},
        {"poll_interval": 0},
        {"backoff_initial": 0},
        {"backoff_initial": 2.0, "backoff_max": 1.0},
    ]
    for settings in bad:
        with pytest.raises(ConfigurationError):
            ListenerPlan.build(queries_for("snapstore"), settings)


def test_queue_keeps_arrival_order_and_counts_every_outcome() -> None:
    queue = WakeupQueue(3)
    queue.offer(["x", "y", "x"], polled=False)
    queue.offer(["z", "w", "y"], polled=True)
    assert queue.take(2) == ["x", "y"]
    assert queue.take() == ["z"]
    stats = queue.stats()
    assert stats == WakeupStats(
        received=6, notified=3, polled=3, coalesced=2, dropped=1, delivered=3
    )
    assert balanced(stats)


def test_backoff_doubles_to_the_cap_with_bounded_jitter() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(7))
    nominal = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for expected in nominal:
        assert expected / 2 <= backoff.next_delay() <= expected
    backoff.reset()
    assert 0.05 <= backoff.next_delay() <= 0.1


def test_supervise_polls_after_every_connect_and_backs_off_on_errors() -> None:
    now = [0.0]
    program = supervise(1.0, Backoff(0.1, 1.0, random.Random(1)), clock=lambda: now[0])
    assert next(program) == Connect(reconnect=False)
    assert next(program) == Poll()
    assert next(program) == Listen(1.0)
    now[0] = 0.4
    assert next(program) == Listen(cast(float, pytest.approx(0.6)))
    now[0] = 1.0
    assert next(program) == Poll()  # the interval elapsed
    assert next(program) == Listen(1.0)
    assert program.throw(psycopg.OperationalError("gone")) == Disconnect()
    first = next(program)
    assert isinstance(first, Sleep)
    assert 0.05 <= first.delay <= 0.1
    assert next(program) == Connect(reconnect=True)
    assert program.throw(psycopg.OperationalError("refused")) == Disconnect()
    second = next(program)
    assert isinstance(second, Sleep)
    assert 0.1 <= second.delay <= 0.2
    assert next(program) == Connect(reconnect=True)
    assert next(program) == Poll()  # catch-up poll right after reconnecting
    assert next(program) == Listen(1.0)
    assert program.throw(psycopg.OperationalError("gone again")) == Disconnect()
    third = next(program)
    assert isinstance(third, Sleep)
    assert third.delay <= 0.1


def test_the_next_poll_comes_just_after_the_next_timer_if_that_is_sooner() -> None:
    assert next_poll_in(1.0, None) == 1.0  # nothing scheduled: the interval
    assert next_poll_in(1.0, 5.0) == 1.0
    assert next_poll_in(1.0, 0.25) == pytest.approx(0.25 + TIMER_GRACE)
    assert next_poll_in(1.0, -3.0) == TIMER_GRACE  # already due: soon, but never spinning
    now = [0.0]
    program = supervise(1.0, Backoff(0.1, 1.0, random.Random(1)), clock=lambda: now[0])
    assert next(program) == Connect(reconnect=False)
    assert next(program) == Poll()
    assert program.send(0.25) == Listen(cast(float, pytest.approx(0.25 + TIMER_GRACE)))
    now[0] = 0.3
    assert next(program) == Poll()


def test_poll_cursor_walks_the_due_set_and_wraps_around() -> None:
    cursor = PollCursor()
    assert cursor.params(2) == {"limit": 2, "after_at": None, "after_id": None}
    at = datetime(2024, 1, 1, tzinfo=UTC)
    cursor.advance([("a", at), ("b", at)], 2)  # a full page: more may follow
    assert cursor.params(5) == {"limit": 5, "after_at": at, "after_id": "b"}
    cursor.advance([("c", at)], 5)  # a short page: the end, start over
    assert cursor.params(5) == {"limit": 5, "after_at": None, "after_id": None}


def test_listen_connection_is_autocommit_named_and_keeps_the_callers_choices() -> None:
    plan = ListenerPlan.build(queries_for("snapstore"), {"application_name": "me"})
    assert plan.listen.as_string(None) == 'LISTEN "snapstore_wakeup:snapstore"'
    pool_kwargs = {
        "autocommit": False,
        "application_name": "pool",
        "connect_timeout": 2,
        "prepare_threshold": 5,
    }
    kwargs = plan.connect_kwargs("host=h keepalives_idle=7", pool_kwargs)
    assert (kwargs["autocommit"], kwargs["application_name"]) == (True, "me")
    assert kwargs["prepare_threshold"] is None
    assert kwargs["connect_timeout"] == 2  # the pool's choice wins over the default
    assert "keepalives_idle" not in kwargs  # so does the conninfo's
    assert kwargs["keepalives"] == 1
