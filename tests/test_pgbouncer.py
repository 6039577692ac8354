"""The store behind a real PgBouncer in transaction mode (``pooler="transaction"``): every
feature works, and the wakeup listener notices that LISTEN does not and keeps polling."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from snapstore import AtSignal, ConfigurationError, SaveRequest, WorkflowStatus
from tests.pgbouncer import pgbouncer
from tests.twins import KINDS, Kind, Twin, advance, open_store, opened, snap, with_tasks


@pytest.fixture(scope="module")
def bouncer(dsn: str) -> Iterator[str]:
    with pgbouncer(dsn) as through:
        yield through


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    chosen: Kind = request.param
    return chosen


async def test_every_feature_works_behind_a_transaction_pooler(
    bouncer: str, fresh_schema: str, kind: Kind
) -> None:
    async with opened(
        kind, bouncer, schema=fresh_schema, pooler="transaction", max_size=4, group_commit=True
    ) as store:
        await scenario(store)


async def scenario(store: Twin) -> None:
    # saves, loads, history, group commit (concurrent saves share commits)
    first = with_tasks("a")
    assert await store.save(first) == 1
    versions = await asyncio.gather(*(store.save(snap(f"g{n}")) for n in range(8)))
    assert versions == [1] * 8
    assert await store.save(advance(first, error="two"), 1) == 2
    assert [e.version for e in await store.history("a")] == [1, 2]
    stored = await store.load("a")
    assert stored is not None
    assert stored.snapshot.error == "two"
    results = await store.save_many([SaveRequest(snap("m1")), SaveRequest(snap("m2"))])
    assert [r.version for r in results] == [1, 1]
    # claims and dispatch
    claim = await store.claim("a", "w1", 60)
    assert claim is not None
    assert (await store.extend(claim, 60)).expires_at >= claim.expires_at
    assert await store.release(claim)
    tasks = await store.find_available_tasks("w2", limit=3, ttl=60)
    assert len(tasks) == 3
    # signals and events
    assert (await store.cancel("m1", "done")).value == "applied"
    parked = snap("p", position=AtSignal(task_id="t", signal_name="go"))
    assert await store.save(parked) == 1
    assert (await store.send_event("p", "go", {"ok": True})).value == "resumed"
    assert (await store.pause("m2")).value == "applied"
    assert (await store.unpause("m2")).value == "applied"
    # retention
    assert await store.prune_history(keep_last=1) >= 1
    done = await store.load("m1")
    assert done is not None
    assert done.snapshot.status is WorkflowStatus.CANCELLED
    assert await store.purge_terminal(older_than=timedelta(0)) == 1


async def test_a_listener_behind_the_pooler_says_listen_fails_and_keeps_polling(
    bouncer: str, dsn: str, fresh_schema: str, kind: Kind
) -> None:
    async with opened(kind, bouncer, schema=fresh_schema, pooler="transaction") as store:
        behind = await store.wakeups(poll_interval=0.2)
        direct = await store.wakeups(poll_interval=3600, conninfo=dsn)
        try:
            assert behind.stats().listen_failures == 1
            assert direct.stats().listen_failures == 0
            await store.save(snap("due"))
            assert await behind.get(timeout=10) == ["due"]  # found by the fallback poll
            assert await direct.get(timeout=10) == ["due"]  # by NOTIFY: no poll ran since
        finally:
            await behind.close()
            await direct.close()


@pytest.mark.parametrize(
    "options",
    [{"prepare_threshold": 5}, {"statement_timeout": 1.0}, {"pooler": "statement"}],
    ids=repr,
)
async def test_a_transaction_pooler_refuses_what_it_cannot_keep_safe(
    kind: Kind, options: dict[str, Any]
) -> None:
    options = {"pooler": "transaction", **options}
    with pytest.raises(ConfigurationError):
        await open_store(kind, "postgresql://nobody@127.0.0.1:1/nowhere", **options)
