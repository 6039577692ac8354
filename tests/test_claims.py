"""Claims against real PostgreSQL through both backends: leases, fencing, dispatch.

Every scenario is written once and runs on the sync and the async twin (`tests.twins`).
The sync twin is driven through `asyncio.to_thread`, so scenarios that gather several
workers really run them concurrently on both twins.

Nothing here asserts how long something took. Leases are made to expire by shrinking
them with the absolute `extend` to a fraction of a second and then polling the server's
clock until it is past ``expires_at``; assertions that a lease is *live* use leases of
minutes, so a slow machine cannot make them flaky.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from snapstore import (
    AtDelay,
    AtSignal,
    AtTask,
    DecodeError,
    NotFoundError,
    RetryState,
    TaskResult,
    TerminalStateError,
    ValidationError,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.claims import MARKED_LIMIT, MAX_DISPATCH, ClaimedTask, DispatchQuery, scan_params
from snapstore.errors import ClaimLostError
from snapstore.model import TERMINAL_STATUSES, Claim
from snapstore.signals import EventOutcome
from snapstore.sql_catalog import bind_schema, wakeup_channel
from tests.twins import KINDS, Kind, Twin, opened, snap, without_timestamps

LONG = 600.0  # seconds: a lease that stays live for the whole test
SHORT = 0.2  # seconds: a lease the test waits out (by polling the server clock)
PATIENCE = 30.0  # seconds before a wait for the server clock is declared hung


class Claims(Twin):
    """The twin with this module's defaults (leases that outlive the test) and helpers."""

    async def save(
        self,
        snapshot: WorkflowSnapshot,
        expected_version: int | None = None,
        claim: Claim | None = None,
    ) -> int:
        version: int = await self.call("save", snapshot, expected_version, claim=claim)
        return version

    async def claim(self, instance_id: str, worker_id: str, ttl: float = LONG) -> Claim | None:
        found: Claim | None = await self.call("claim", instance_id, worker_id, ttl)
        return found

    async def find(self, worker_id: str = "w1", **kwargs: Any) -> list[ClaimedTask]:
        kwargs.setdefault("ttl", LONG)
        tasks: list[ClaimedTask] = await self.call("find_available_tasks", worker_id, **kwargs)
        return tasks

    async def claim_notified(
        self, ids: Iterable[str], worker_id: str = "w1", **kwargs: Any
    ) -> list[ClaimedTask]:
        kwargs.setdefault("ttl", LONG)
        tasks: list[ClaimedTask] = await self.call("claim_notified", ids, worker_id, **kwargs)
        return tasks

    # -- helpers -----------------------------------------------------------------------

    async def lease_row(self, instance_id: str) -> tuple[Any, ...] | None:
        rows = await self.sql(
            "SELECT worker_id, token, expires_at, task_id FROM @schema@.claims"
            " WHERE instance_id = %(i)s",
            {"i": instance_id},
        )
        return rows[0] if rows else None

    async def expire(self, claim: Claim) -> Claim:
        """Shrink the lease (extend is absolute) and wait until the server says it ran out."""
        short: Claim = await self.call("extend", claim, SHORT)
        await self.wait_past(short.expires_at)
        return short

    async def wait_past(self, moment: datetime) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PATIENCE
        while not await self.scalar("SELECT now() > %(t)s", {"t": moment}):
            assert loop.time() < deadline, f"server clock never passed {moment}"
            await asyncio.sleep(0.02)

    async def seed(self, *snapshots: WorkflowSnapshot) -> None:
        for snapshot in snapshots:
            await self.save(snapshot)


@pytest.fixture(params=KINDS)
async def claims(request: pytest.FixtureRequest, dsn: str, schema: str) -> AsyncIterator[Claims]:
    """An emptied store on this module's schema, once per backend twin."""
    kind: Kind = request.param
    async with opened(kind, dsn, schema=schema, max_size=12) as store:
        await store.truncate_all()
        yield Claims(store.target)


def now() -> datetime:
    return datetime.now(UTC)


def ids(tasks: Iterable[ClaimedTask]) -> list[str]:
    return [t.instance_id for t in tasks]


# -- leases --------------------------------------------------------------------------------


async def test_claim_leases_by_the_server_clock_and_records_the_task(claims: Claims) -> None:
    await claims.seed(snap("a", position=AtTask("step-1")))
    before = await claims.scalar("SELECT now()")
    lease = await claims.claim("a", "w1", LONG)
    after = await claims.scalar("SELECT now()")
    assert lease is not None
    assert (lease.instance_id, lease.worker_id, lease.task_id) == ("a", "w1", "step-1")
    assert before + timedelta(seconds=LONG) <= lease.expires_at <= after + timedelta(seconds=LONG)
    assert await claims.lease_row("a") == ("w1", lease.token, lease.expires_at, "step-1")


async def test_a_live_lease_is_not_taken_over_but_an_expired_one_is(claims: Claims) -> None:
    await claims.seed(snap("a"))
    first = await claims.claim("a", "w1")
    assert first is not None
    assert await claims.claim("a", "w2") is None
    assert (await claims.lease_row("a") or ())[1] == first.token

    await claims.expire(first)
    stolen = await claims.claim("a", "w2")
    assert stolen is not None
    assert stolen.worker_id == "w2"
    assert stolen.token != first.token
    assert await claims.lease_row("a") == ("w2", stolen.token, stolen.expires_at, None)


async def test_reclaiming_ones_own_live_lease_issues_a_fresh_token(claims: Claims) -> None:
    await claims.seed(snap("a"))
    old = await claims.claim("a", "w1")
    new = await claims.claim("a", "w1")
    assert old is not None
    assert new is not None
    assert new.token != old.token
    with pytest.raises(ClaimLostError):
        await claims.save(snap("a"), 1, claim=old)
    assert await claims.save(snap("a"), 1, claim=new) == 2


async def test_claim_refuses_unknown_and_finished_instances(claims: Claims) -> None:
    with pytest.raises(NotFoundError):
        await claims.claim("nope", "w1")
    for status in sorted(TERMINAL_STATUSES):
        await claims.seed(snap(f"done-{status}", status=status))
        with pytest.raises(TerminalStateError):
            await claims.claim(f"done-{status}", "w1")
    assert await claims.count("claims") == 0
    # Paused is not finished: it can be claimed explicitly (it is never dispatched).
    await claims.seed(snap("paused", status=WorkflowStatus.PAUSED))
    assert await claims.claim("paused", "w1") is not None


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("claim", ("a", "w1", 0)),
        ("claim", ("a", "w1", -1.0)),
        ("claim", ("a", "w1", float("nan"))),
        ("claim", ("a", "w1", True)),
        ("claim", ("a", "w1", 1e300)),
        ("claim", ("a", "", 5)),
        ("claim", ("", "w1", 5)),
    ],
)
async def test_claim_validates_its_arguments(
    claims: Claims, method: str, args: tuple[Any, ...]
) -> None:
    await claims.seed(snap("a"))
    with pytest.raises(ValidationError):
        await claims.call(method, *args)
    assert await claims.count("claims") == 0


async def test_extend_is_absolute_by_the_server_clock(claims: Claims) -> None:
    await claims.seed(snap("a"))
    lease = await claims.claim("a", "w1", 3600)
    assert lease is not None
    shorter = await claims.extend(lease, 60)  # absolute: shortens a longer lease
    assert shorter.expires_at < lease.expires_at
    assert shorter.token == lease.token
    remaining = await claims.scalar(
        "SELECT expires_at - now() FROM @schema@.claims WHERE instance_id = 'a'"
    )
    assert timedelta(0) < remaining <= timedelta(seconds=60)
    longer = await claims.extend(shorter, timedelta(hours=2))
    assert longer.expires_at > lease.expires_at
    assert await claims.lease_row("a") == ("w1", lease.token, longer.expires_at, None)


async def test_extend_fails_once_the_lease_expired_even_if_nobody_took_it(
    claims: Claims,
) -> None:
    await claims.seed(snap("a"))
    lease = await claims.claim("a", "w1")
    assert lease is not None
    expired = await claims.expire(lease)
    with pytest.raises(ClaimLostError):
        await claims.extend(expired, LONG)
    assert await claims.lease_row("a") == ("w1", lease.token, expired.expires_at, None)


async def test_fenced_save_succeeds_while_live_and_is_refused_after_loss(
    claims: Claims,
) -> None:
    await claims.seed(snap("a"))
    lease = await claims.claim("a", "w1")
    assert lease is not None
    assert await claims.save(snap("a", position=AtTask("t1")), 1, claim=lease) == 2
    assert await claims.save(snap("a", position=AtTask("t2")), 2, claim=lease) == 3

    expired = await claims.expire(lease)
    with pytest.raises(ClaimLostError):  # expired, not (yet) stolen
        await claims.save(snap("a", position=AtTask("t3")), 3, claim=expired)
    thief = await claims.claim("a", "w2")
    assert thief is not None
    with pytest.raises(ClaimLostError):  # stolen
        await claims.save(snap("a", position=AtTask("t3")), 3, claim=expired)
    assert await claims.count("history", "a") == 3  # nothing written by the refusals

    assert await claims.save(snap("a", position=AtTask("t3")), 3, claim=thief) == 4
    stored = await claims.load("a")
    assert stored is not None
    assert stored.snapshot.position == AtTask("t3")


async def test_a_finishing_save_drops_its_lease(claims: Claims) -> None:
    await claims.seed(snap("a"))
    lease = await claims.claim("a", "w1")
    assert lease is not None
    done = snap("a", status=WorkflowStatus.COMPLETED)
    assert await claims.save(done, 1, claim=lease) == 2
    assert await claims.lease_row("a") is None


async def test_a_claim_cannot_fence_another_instance(claims: Claims) -> None:
    await claims.seed(snap("a"), snap("b"))
    lease = await claims.claim("a", "w1")
    assert lease is not None
    with pytest.raises(ValidationError):
        await claims.save(snap("b"), 1, claim=lease)


async def test_a_claim_that_is_not_a_claim_is_refused(claims: Claims) -> None:
    await claims.seed(snap("a"))
    lease = await claims.claim("a", "w1")
    assert lease is not None
    for fake in (
        msgspec.structs.replace(lease, token=str(lease.token)),
        ("a", lease.token),
    ):
        with pytest.raises(ValidationError):
            await claims.save(snap("a"), 1, claim=fake)  # type: ignore[arg-type]
    assert await claims.save(snap("a"), 1, claim=lease) == 2  # nothing was written


# -- release and wakeups ---------------------------------------------------------------


async def notifications(dsn: str, channel: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return conn


async def next_notification(conn: psycopg.AsyncConnection[Any]) -> tuple[str, str]:
    async for note in conn.notifies(timeout=PATIENCE, stop_after=1):
        return note.channel, note.payload
    raise AssertionError("no notification arrived")


async def test_release_notifies_when_the_instance_is_dispatchable(claims: Claims, dsn: str) -> None:
    later = now() + timedelta(hours=1)
    await claims.seed(snap("due"), snap("sleeping", position=AtDelay("t", later)))
    due, sleeping = await claims.claim("due", "w1"), await claims.claim("sleeping", "w1")
    assert due is not None
    assert sleeping is not None
    channel = wakeup_channel(claims.schema)
    listener = await notifications(dsn, channel)
    try:
        assert await claims.release(sleeping)  # not dispatchable: no NOTIFY
        assert await claims.release(due)
        # NOTIFYs arrive in commit order, so the first one proves "sleeping" sent none.
        assert await next_notification(listener) == (channel, "due")
    finally:
        await listener.close()
    assert await claims.count("claims") == 0
    assert not await claims.release(due)  # already gone


async def test_release_with_a_lost_token_leaves_the_new_lease_alone(claims: Claims) -> None:
    await claims.seed(snap("a"))
    lease = await claims.claim("a", "w1")
    assert lease is not None
    expired = await claims.expire(lease)
    assert await claims.release(expired)  # expired but still ours: released
    lease = await claims.claim("a", "w1")
    assert lease is not None
    expired = await claims.expire(lease)
    thief = await claims.claim("a", "w2")
    assert thief is not None
    assert not await claims.release(expired)
    assert (await claims.lease_row("a") or ())[1] == thief.token


# -- dispatch ------------------------------------------------------------------------------


async def test_dispatch_leases_and_loads_the_checkpoint(claims: Claims) -> None:
    original = snap(
        "a",
        position=AtTask("t2"),
        task_results={"t1": TaskResult(output={"rows": [1, 2]})},
        input={"x": 1},
    )
    await claims.seed(original)
    (task,) = await claims.find("w1", limit=5)
    assert task.error is None
    assert task.claim.worker_id == "w1"
    assert task.claim.task_id == "t2"
    assert without_timestamps(task.stored) == without_timestamps(await claims.load("a"))
    assert task.snapshot == original
    assert await claims.lease_row("a") == ("w1", task.claim.token, task.claim.expires_at, "t2")
    assert await claims.find("w2") == []  # leased: not dispatchable any more
    assert await claims.save(original, task.stored.version, claim=task.claim) == 2


async def test_dispatch_orders_by_priority_then_age(claims: Claims) -> None:
    for n, priority in enumerate([5, 1, 3, 1, 2, 4]):
        await claims.seed(snap(f"p{priority}-{n}", priority=priority))
    order = ["p1-1", "p1-3", "p2-4", "p3-2", "p4-5", "p5-0"]
    assert await claims.dispatchable_ids(aging_interval=86400) == order
    assert ids(await claims.find(limit=4, aging_interval=86400)) == order[:4]
    assert ids(await claims.find(limit=4, aging_interval=86400)) == order[4:]


async def test_an_instance_keeps_its_queue_place_until_released_paused_or_delayed(
    claims: Claims,
) -> None:
    """available_at is "due since": saving an instance that stays due keeps its place
    (and its age); releasing a lease, resuming and coming due put it at the back."""
    await claims.seed(snap("a"), snap("b"))
    assert await claims.dispatchable_ids(aging_interval=86400) == ["a", "b"]
    assert await claims.save(snap("a", error="step"), 1) == 2
    assert await claims.dispatchable_ids(aging_interval=86400) == ["a", "b"]
    lease = await claims.claim("a", "w1")
    assert lease is not None
    assert await claims.save(snap("a", error="step"), 2, claim=lease) == 3
    assert await claims.release(lease)
    assert await claims.dispatchable_ids(aging_interval=86400) == ["b", "a"]
    assert await claims.save(snap("b", status=WorkflowStatus.PAUSED), 1) == 2
    assert await claims.save(snap("b"), 2) == 3
    assert await claims.dispatchable_ids(aging_interval=86400) == ["a", "b"]
    soon = now() + timedelta(milliseconds=1)
    assert await claims.save(snap("a", position=AtDelay("t", soon)), 3) == 4
    assert await claims.save(snap("a"), 4) == 5  # due again from now
    assert await claims.dispatchable_ids(aging_interval=86400) == ["b", "a"]


async def test_aging_lets_old_low_priority_work_overtake_fresh_urgent_work(
    claims: Claims,
) -> None:
    # available_at is when the instance became due: an hour ago for "old".
    await claims.seed(
        snap("old", priority=5, position=AtDelay("t", now() - timedelta(hours=1))),
        snap("fresh", priority=1),
    )
    # Aged 6 levels (3600 s / 600 s): effective priority 5 - 6 = -1 beats 1 - 0.
    assert await claims.dispatchable_ids(aging_interval=600) == ["old", "fresh"]
    # Aged 0 levels: plain priority decides.
    assert await claims.dispatchable_ids(aging_interval=timedelta(days=1)) == ["fresh", "old"]
    assert ids(await claims.find(limit=1, aging_interval=600)) == ["old"]


async def test_tags_route_an_instance_only_to_workers_with_all_its_tags(claims: Claims) -> None:
    await claims.seed(
        snap("plain"),
        snap("gpu", tags=("gpu",)),
        snap("gpu-eu", tags=("gpu", "eu")),
        snap("tpu", tags=("tpu",)),
    )
    everything = ["gpu", "gpu-eu", "plain", "tpu"]
    assert sorted(await claims.dispatchable_ids()) == everything
    assert sorted(await claims.dispatchable_ids(tags=[])) == ["plain"]
    assert sorted(await claims.dispatchable_ids(tags=["gpu"])) == ["gpu", "plain"]
    assert sorted(await claims.dispatchable_ids(tags=("eu", "gpu", "x"))) == [
        "gpu",
        "gpu-eu",
        "plain",
    ]
    assert sorted(ids(await claims.find("w-tpu", tags=["tpu"]))) == ["plain", "tpu"]
    assert sorted(ids(await claims.find("w-any"))) == ["gpu", "gpu-eu"]


async def test_timers_and_retry_backoff_gate_dispatch(claims: Claims) -> None:
    past, future = now() - timedelta(minutes=5), now() + timedelta(hours=1)
    await claims.seed(
        snap("timer-due", position=AtDelay("t", past)),
        snap("timer-later", position=AtDelay("t", future)),
        snap("retry-due", retries={"t": RetryState(attempts=1, next_attempt_at=past)}),
        snap("retry-later", retries={"t": RetryState(attempts=2, next_attempt_at=future)}),
    )
    assert sorted(ids(await claims.find(limit=10))) == ["retry-due", "timer-due"]
    assert await claims.find(limit=10) == []
    assert await claims.claim_notified(["timer-later", "retry-later"]) == []


async def test_an_instance_parked_on_a_signal_waits_for_its_event(claims: Claims) -> None:
    await claims.seed(snap("parked", position=AtSignal("t1", "approve")))
    assert await claims.dispatchable_ids() == []
    assert await claims.next_dispatch_at() is None  # no timer: only an event wakes it
    outcome = await claims.call("send_event", "parked", "approve", {"ok": True})
    assert outcome == EventOutcome.RESUMED
    assert ids(await claims.find()) == ["parked"]


async def test_paused_finished_and_leased_instances_are_not_dispatched(
    claims: Claims,
) -> None:
    await claims.seed(
        snap("run"),
        snap("held"),
        snap("paused", status=WorkflowStatus.PAUSED),
        *(snap(f"done-{s}", status=s) for s in sorted(TERMINAL_STATUSES)),
    )
    held = await claims.claim("held", "other")
    assert held is not None
    assert await claims.dispatchable_ids() == ["run"]
    assert ids(await claims.find()) == ["run"]

    await claims.expire(held)  # an expired lease makes the instance dispatchable again
    (again,) = await claims.find("w2")
    assert again.instance_id == "held"
    assert again.claim.token != held.token


async def test_filters_apply_before_the_limit(claims: Claims) -> None:
    # 40 urgent instances this worker cannot run (tags) or nobody can run yet (timer)
    # sort before the 3 it can: they must not use up its LIMIT.
    later = now() + timedelta(hours=1)
    await claims.seed(
        *(snap(f"gpu-{n:02}", priority=1, tags=("gpu",)) for n in range(20)),
        *(snap(f"later-{n:02}", priority=1, position=AtDelay("t", later)) for n in range(20)),
        *(snap(f"mine-{n}", priority=5) for n in range(3)),
    )
    assert ids(await claims.find("cpu-worker", limit=3, tags=[])) == [
        "mine-0",
        "mine-1",
        "mine-2",
    ]


async def test_an_undecodable_checkpoint_does_not_block_dispatch(claims: Claims) -> None:
    await claims.seed(snap("bad", priority=1), snap("good", priority=2))
    await claims.sql("UPDATE @schema@.history SET data = '\\x00'::bytea WHERE instance_id = 'bad'")
    bad, good = await claims.find(limit=5)
    assert bad.instance_id == "bad"
    assert isinstance(bad.error, DecodeError)
    with pytest.raises(DecodeError):
        _ = bad.stored
    assert good.error is None
    assert good.snapshot.instance_id == "good"
    assert await claims.count("claims") == 2  # the bad one stays leased, not retried


async def test_an_undecodable_checkpoint_is_handed_out_once_then_quarantined(
    claims: Claims,
) -> None:
    """Not again and again: after its lease is gone no dispatch, poll or timer returns
    it; saving a good checkpoint over it releases it."""
    await claims.seed(snap("bad"), snap("good"))
    await claims.sql("UPDATE @schema@.history SET data = '\\x00'::bytea WHERE instance_id = 'bad'")
    before = claims.poison_counts.instances_quarantined
    first = {t.instance_id: t for t in await claims.find(limit=5)}
    assert claims.poison_counts.instances_quarantined == before + 1
    assert isinstance(first["bad"].error, DecodeError)
    assert first["good"].error is None
    assert await claims.release(first["bad"].claim)
    assert await claims.find(limit=5) == []  # "good" is still leased, "bad" quarantined
    assert await claims.dispatchable_ids() == []
    assert await claims.count("claims") == 1
    await claims.save(snap("bad", error="repaired"), 1)  # an operator saves a good one
    (again,) = await claims.find(limit=5)
    assert again.instance_id == "bad"
    assert again.error is None
    assert again.snapshot.error == "repaired"


async def test_claim_notified_uses_the_dispatch_predicate_on_the_named_ids(
    claims: Claims,
) -> None:
    later = now() + timedelta(hours=1)
    await claims.seed(
        snap("a", priority=4),
        snap("b", priority=2),
        snap("c"),
        snap("gpu", tags=("gpu",)),
        snap("later", position=AtDelay("t", later)),
        snap("paused", status=WorkflowStatus.PAUSED),
        snap("taken"),
    )
    assert await claims.claim("taken", "other") is not None
    named = ["a", "b", "gpu", "later", "paused", "taken", "unknown", "a"]
    got = await claims.claim_notified(named, "w1", tags=[])
    assert ids(got) == ["b", "a"]  # priority order, "c" was not named
    assert all(t.stored.version == 1 for t in got)
    assert await claims.claim_notified([], "w1") == []
    assert ids(await claims.claim_notified(["gpu", "c"], "w1", tags=["gpu"], limit=1)) == ["c"]


async def test_dispatchable_ids_reports_without_leasing(claims: Claims) -> None:
    await claims.seed(snap("a", priority=2), snap("b", priority=1))
    assert await claims.dispatchable_ids(limit=1) == ["b"]
    assert await claims.dispatchable_ids() == ["b", "a"]
    assert await claims.count("claims") == 0


async def test_next_dispatch_at_is_the_next_timer_or_lease_expiry(claims: Claims) -> None:
    assert await claims.next_dispatch_at() is None
    timer = now() + timedelta(hours=2)
    await claims.seed(snap("due"), snap("sleeping", position=AtDelay("t", timer)))
    assert await claims.next_dispatch_at() == timer
    lease = await claims.claim("due", "w1", 60)
    assert lease is not None
    assert await claims.next_dispatch_at() == lease.expires_at
    await claims.release(lease)
    assert await claims.next_dispatch_at() == timer


async def test_concurrent_workers_never_share_an_instance_and_drain_the_queue(
    claims: Claims,
) -> None:
    total = 200
    await claims.seed(*(snap(f"wf-{n:03}", priority=1 + n % 5) for n in range(total)))

    async def worker(name: str) -> list[str]:
        mine: list[str] = []
        while batch := await claims.find(name, limit=7):
            mine.extend(ids(batch))
        return mine

    results = await asyncio.gather(*(worker(f"w{n}") for n in range(8)))
    every = list(itertools.chain.from_iterable(results))
    assert len(every) == len(set(every)) == total
    assert await claims.count("claims") == total
    owners = await claims.sql("SELECT instance_id, worker_id FROM @schema@.claims")
    assert {iid: w for iid, w in owners} == {
        iid: f"w{n}" for n, mine in enumerate(results) for iid in mine
    }


async def marked_elsewhere(dsn: str, schema: str, *instance_ids: str) -> psycopg.AsyncConnection:
    """A transaction holding dispatch marks on ``instance_ids``, as a concurrent dispatch
    that has not committed yet does (part_mark in sql/queries/claims.sql)."""
    conn = await psycopg.AsyncConnection.connect(dsn)
    for instance_id in instance_ids:
        statement = bind_schema(
            "SELECT pg_try_advisory_xact_lock(hashtext('snapstore dispatch @schema@'),"
            " hashtext(%(i)s))",
            schema,
        )
        row = await (await conn.execute(statement, {"i": instance_id})).fetchone()
        assert row == (True,)
    return conn


async def test_dispatch_passes_over_instances_another_dispatch_marked(
    claims: Claims, dsn: str, schema: str
) -> None:
    await claims.seed(*(snap(f"wf-{n}", priority=1) for n in range(4)))
    other = await marked_elsewhere(dsn, schema, "wf-0", "wf-2")
    try:
        assert ids(await claims.find("w1", limit=2)) == ["wf-1", "wf-3"]
        assert await claims.find("w1", limit=2) == []  # the marked ones are passed over
        assert await claims.claim_notified(["wf-0", "wf-2"], "w1") == []
        assert await claims.dispatchable_ids() == ["wf-0", "wf-2"]  # a report marks nothing
    finally:
        await other.close()  # its transaction ends: the marks go with it
    assert ids(await claims.find("w1", limit=2)) == ["wf-0", "wf-2"]


async def test_a_dispatch_leaves_no_mark_behind(claims: Claims) -> None:
    await claims.seed(*(snap(f"wf-{n}", priority=1 + n % 5) for n in range(20)))
    assert len(await claims.find("w1", limit=MARKED_LIMIT)) == MARKED_LIMIT
    assert await claims.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    assert len(await claims.find("w2", limit=8)) == 8  # the rest, none held back


async def test_a_dispatch_above_the_marked_limit_leases_unmarked(
    claims: Claims, dsn: str, schema: str
) -> None:
    """Five priority scans of more than MARKED_LIMIT rows would mark more instances than
    PostgreSQL's lock table holds per transaction: such a dispatch marks nothing and
    takes a marked instance by its key (nobody has leased it)."""
    total = MARKED_LIMIT + 1
    await claims.seed(*(snap(f"wf-{n:02}", priority=1) for n in range(total)))
    other = await marked_elsewhere(dsn, schema, "wf-00")
    try:
        leased = await claims.find("w1", limit=total)
    finally:
        await other.close()
    assert ids(leased) == [f"wf-{n:02}" for n in range(total)]


async def test_dispatch_is_served_by_the_partial_index(claims: Claims) -> None:
    await claims.sql(
        "INSERT INTO @schema@.snapshots (instance_id, status, definition_hash, position_kind,"
        " version, codec, data_hash)"
        " SELECT 'wf-' || n, CASE WHEN n % 50 = 0 THEN 'InProgress' ELSE 'Completed' END,"
        " 'd', 'NotStarted', 1, 'json', '\\x00'::bytea FROM generate_series(1, 5000) AS n"
    )
    await claims.sql("ANALYZE @schema@.snapshots")
    statement = claims.backend.queries["dispatch_candidates"].decode()
    query = DispatchQuery.build("w1", limit=10, tags=["gpu"])
    params = {**query.params(), **scan_params(query.limit)}  # as dispatch scans
    plan = "\n".join(r[0] for r in await claims.sql("EXPLAIN " + statement, params))
    assert "Seq Scan on snapshots" not in plan, plan
    assert "snapshots_dispatch_idx" in plan, plan


# -- pure validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": MAX_DISPATCH + 1},
        {"limit": True},
        {"limit": 1, "ttl": 0},
        {"limit": 1, "aging_interval": -5},
        {"limit": 1, "tags": "gpu"},
        {"limit": 1, "tags": [1]},
        {"limit": 1, "instance_ids": "abc"},
        {"limit": 1, "instance_ids": [""]},
    ],
)
def test_dispatch_queries_are_validated_before_any_io(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DispatchQuery.build("w1", **kwargs)


def test_a_hint_sets_the_default_limit_and_drops_duplicates() -> None:
    query = DispatchQuery.build("w1", limit=None, instance_ids=["b", "a", "b"])
    assert (query.instance_ids, query.limit) == (["b", "a"], 2)
    assert DispatchQuery.build("w1", limit=None, instance_ids=[]).empty
