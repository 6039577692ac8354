"""Read replicas against a real primary and streaming hot standby (`tests.replication`),
for both twins.

Which server answered is proved by lag made deterministic: with the standby's replay
paused, a write on the primary is invisible on the replica, so an old answer came from
the replica and a new one from the primary. The standby is read-only, so a write sent
there would fail: every write succeeding proves none was. One pair serves the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from snapstore import (
    ConfigurationError,
    JsonCodec,
    PostgresBackend,
    TaskResult,
    ValidationError,
    replicas,
)
from snapstore.cli import main
from snapstore.model import AtTask
from tests.replication import Pair, pair_or_skip
from tests.twins import KINDS, Kind, Twin, advance, new_schema_name, open_store, opened, snap

# The backends of the fixtures live on the session loop (see pyproject.toml), and their
# pools' workers must run while the tests do.
pytestmark = pytest.mark.asyncio(loop_scope="session")

# Nothing listens on port 1: a replica there is down from the start.
NOWHERE = "postgresql://postgres@127.0.0.1:1/postgres"


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with pair_or_skip() as started:
        yield started


@pytest.fixture(scope="module")
def schema(pair: Pair) -> str:
    """A store migrated on the primary and replayed on the standby."""
    name = new_schema_name()
    PostgresBackend[JsonCodec].connect(pair.primary.url, schema=name).close()
    pair.wait_caught_up()
    return name


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    chosen: Kind = request.param
    return chosen


@pytest.fixture
async def store(pair: Pair, schema: str, kind: Kind) -> AsyncIterator[Twin]:
    """A backend on the primary with the standby as its replica."""
    async with opened(
        kind, pair.primary.url, schema=schema, replicas=[pair.standby.url], run_migrations=False
    ) as opened_store:
        yield opened_store


@contextlib.contextmanager
def replay_paused(pair: Pair) -> Iterator[None]:
    """The standby stops applying WAL: what the primary writes meanwhile is not there."""
    pair.pause_replay()
    try:
        yield
    finally:
        pair.resume_replay()


def new_id() -> str:
    return f"wf-{uuid.uuid4().hex[:10]}"


class Counted:
    """What a backend counted since this was made (`OperationalCounts`)."""

    def __init__(self, store: Twin) -> None:
        self.store = store
        self.before: dict[str, int] = store.counts.snapshot()

    def since(self) -> dict[str, int]:
        now: dict[str, int] = self.store.counts.snapshot()
        changed = {k: v - self.before.get(k, 0) for k, v in now.items()}
        return {k: v for k, v in changed.items() if v}


async def test_a_replica_serves_loads_and_min_version_reads_your_writes(
    store: Twin, pair: Pair
) -> None:
    first = snap(new_id())
    v1 = await store.save(first)
    pair.wait_caught_up()
    counted = Counted(store)
    assert (await store.load(first.instance_id)).version == v1
    assert counted.since() == {"replica_reads": 1}
    with replay_paused(pair):
        v2 = await store.save(advance(first, position=AtTask("next")), v1)
        newcomer = snap(new_id())
        await store.save(newcomer)
        counted = Counted(store)
        stale = await store.load(first.instance_id)
        assert stale.version == v1  # the replica's answer: it has not replayed v2
        assert stale.snapshot.position != AtTask("next")
        assert await store.load(newcomer.instance_id) is None  # nor the new instance
        assert counted.since() == {"replica_reads": 2}
        fresh = await store.load(first.instance_id, min_version=v2)
        assert fresh.version == v2
        assert fresh.snapshot.position == AtTask("next")
        assert (await store.load(newcomer.instance_id, min_version=1)).version == 1
        assert counted.since() == {"replica_reads": 2, "replica_fallbacks_behind": 2}
        assert (await store.load(first.instance_id, replica=False)).version == v2
        assert (await store.load(first.instance_id, min_version=v1)).version == v1
        assert counted.since() == {"replica_reads": 3, "replica_fallbacks_behind": 2}
    pair.wait_caught_up()
    assert (await store.load(first.instance_id)).version == v2


async def test_history_list_and_task_results_are_served_by_the_replica(
    store: Twin, pair: Pair
) -> None:
    first = snap(new_id(), task_results={"a": TaskResult(output=1)})
    v1 = await store.save(first)
    pair.wait_caught_up()
    with replay_paused(pair):
        second = advance(first, task_results={"a": TaskResult(output=2), "b": TaskResult(output=3)})
        v2 = await store.save(second, v1)
        iid = first.instance_id
        counted = Counted(store)
        assert [h.version for h in await store.history(iid)] == [v1]
        (item,) = [i for i in (await store.list(limit=1000)).items if i.instance_id == iid]
        assert item.version == v1
        assert (await store.load_task_result(iid, "a")).output == 1
        assert await store.load_task_result(iid, "b") is None
        assert counted.since() == {"replica_reads": 4}
        # a full page of earlier versions is the primary's page too: the replica's will do
        assert [h.version for h in await store.history(iid, limit=1, min_version=v2)] == [v1]
        assert counted.since() == {"replica_reads": 5}

        counted = Counted(store)
        assert [h.version for h in await store.history(iid, min_version=v2)] == [v1, v2]
        assert (await store.load_task_result(iid, "a", min_version=v2)).output == 2
        assert (await store.load_task_result(iid, "b", min_version=v2)).output == 3
        assert counted.since() == {"replica_fallbacks_behind": 3}
        (item,) = [
            i for i in (await store.list(limit=1000, replica=False)).items if i.instance_id == iid
        ]
        assert item.version == v2
        assert [h.version for h in await store.history(iid, replica=False)] == [v1, v2]
        assert (await store.load_task_result(iid, "a", replica=False)).output == 2
        assert counted.since() == {"replica_fallbacks_behind": 3}  # never asked


async def test_writes_claims_events_and_wakeups_never_go_to_the_replica(
    store: Twin, pair: Pair
) -> None:
    """The standby refuses every write (read-only), so each of these succeeding shows it
    went to the primary; LISTEN too is refused during recovery."""
    iid = new_id()
    wakeups = await store.wakeups(poll_interval=3600)  # so the NOTIFY is what tells
    try:
        version = await store.save(snap(iid))
        seen: set[str] = set()  # after what the listener's first poll found (other tests')
        deadline = time.monotonic() + 5.0
        while iid not in seen and time.monotonic() < deadline:
            seen.update(await wakeups.get(timeout=1.0))
        assert iid in seen
        assert wakeups.stats().listen_failures == 0
    finally:
        await wakeups.close()
    claim = await store.claim(iid, "w1", ttl=30)
    assert claim is not None
    await store.extend(claim, ttl=30)
    version = await store.save(snap(iid, position=AtTask("t")), version, claim=claim)
    assert await store.release(claim)
    assert await store.send_event(iid, "note", {"n": 1}) is not None
    assert [e.name for e in await store.peek_events(iid)] == ["note"]
    assert await store.pause(iid) is not None
    assert await store.unpause(iid) is not None
    assert await store.fork(iid, version, f"{iid}-fork") == 1
    tasks = await store.claim_notified([f"{iid}-fork"], "w2")
    assert [t.claim.instance_id for t in tasks] == [f"{iid}-fork"]
    assert await store.delete(f"{iid}-fork")
    assert await store.migrate() == []
    assert (await store.load(iid, min_version=version)).version >= version  # pause, unpause


async def test_reads_fall_back_to_the_primary_while_the_replica_is_down(
    store: Twin, pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicas, "RETRY_AFTER", 0.5)
    first = snap(new_id(), task_results={"a": TaskResult(output="ok")})
    version = await store.save(first)
    pair.wait_caught_up()
    assert (await store.load(first.instance_id)).version == version  # a pooled connection
    pair.standby.kill()
    try:
        counted = Counted(store)
        began = time.monotonic()
        for _ in range(3):  # lost connection, then no connection (the replica marked down)
            assert (await store.load(first.instance_id)).version == version
            assert [h.version for h in await store.history(first.instance_id)] == [version]
            assert (await store.load_task_result(first.instance_id, "a")).output == "ok"
            page = await store.list(limit=1000)
            assert first.instance_id in [i.instance_id for i in page.items]
        # at most one read waited for a connection that never came (REPLICA_CHECKOUT_TIMEOUT)
        assert time.monotonic() - began < 4.0
        seen = counted.since()
        assert "replica_reads" not in seen
        assert seen.get("replica_fallbacks_unavailable", 0) >= 1
        assert seen.get("replica_fallbacks_down", 0) >= 1
    finally:
        pair.standby.start()
    pair.wait_caught_up()
    deadline = time.monotonic() + 10
    counted = Counted(store)
    while "replica_reads" not in counted.since():  # once its pool reconnects
        assert time.monotonic() < deadline, counted.since()
        assert (await store.load(first.instance_id)).version == version
        await asyncio.sleep(0.1)


async def test_a_replica_down_at_connect_does_not_stop_the_store(
    pair: Pair, schema: str, kind: Kind
) -> None:
    began = time.monotonic()
    async with opened(
        kind, pair.primary.url, schema=schema, replicas=[NOWHERE], run_migrations=False
    ) as store:
        assert time.monotonic() - began < 3.0  # connect does not wait for it
        version = await store.save(snap(iid := new_id()))
        assert (await store.load(iid)).version == version  # the primary answers
        assert (await store.load(iid)).version == version
        seen = store.counts.snapshot()
        assert "replica_reads" not in seen
        fallbacks = seen.get("replica_fallbacks_unavailable", 0)
        assert fallbacks + seen.get("replica_fallbacks_down", 0) == 2
    assert time.monotonic() - began < 6.0


async def test_a_replica_that_refuses_a_read_hands_it_to_the_primary(
    pair: Pair, kind: Kind
) -> None:
    """A store created while replay is paused has no tables on the standby yet: the
    replica refuses the statement (a ServerError there), the primary answers."""
    fresh = new_schema_name()
    with replay_paused(pair):
        async with opened(kind, pair.primary.url, schema=fresh, replicas=[pair.standby.url]) as s:
            version = await s.save(snap(iid := new_id()))
            counted = Counted(s)
            assert (await s.load(iid)).version == version
            assert counted.since() == {"replica_fallbacks_refused": 1}


async def test_borrowed_replica_pools_are_used_and_left_open(pair: Pair, schema: str) -> None:
    def pool(url: str) -> ConnectionPool[Any]:
        return ConnectionPool(url, kwargs={"autocommit": True}, min_size=1, max_size=2)

    with pool(pair.primary.url) as primary, pool(pair.standby.url) as standby:
        backend = PostgresBackend[JsonCodec].from_pool(
            primary, schema=schema, run_migrations=False, replicas=[standby]
        )
        with backend:
            assert backend.replica_pools == (standby,)
            version = backend.save(snap(iid := new_id()))
            pair.wait_caught_up()
            loaded = backend.load(iid)
            assert loaded is not None
            assert loaded.version == version
            assert backend.counts.snapshot() == {"replica_reads": 1}
        assert not standby.closed
        assert not primary.closed


@pytest.mark.parametrize(
    "bad",
    [NOWHERE, None, [1], [""], ["nonsense"], ("host=h bogus_option=1",), {NOWHERE}],
    ids=["str", "none", "int", "empty", "unparsable", "unknown-option", "set"],
)
async def test_bad_replicas_options_are_refused_before_any_io(kind: Kind, bad: Any) -> None:
    """The primary's address is unreachable too: a ConfigurationError, not a timeout,
    shows the check came first."""
    began = time.monotonic()
    with pytest.raises(ConfigurationError, match="replicas"):
        await open_store(kind, NOWHERE, replicas=bad)
    assert time.monotonic() - began < 1.0


async def test_bad_read_options_are_refused_before_any_io(store: Twin) -> None:
    counted = Counted(store)
    for bad in (0, -1, "2", True, 1.5):
        with pytest.raises(ValidationError, match="min_version"):
            await store.load("wf-x", min_version=bad)
        with pytest.raises(ValidationError, match="min_version"):
            await store.history("wf-x", min_version=bad)
        with pytest.raises(ValidationError, match="min_version"):
            await store.load_task_result("wf-x", "a", min_version=bad)
    for flag in ("no", 0, None):
        with pytest.raises(ValidationError, match="replica"):
            await store.list(replica=flag)
    with pytest.raises(ValidationError):
        await store.load("", min_version=1)  # the program's own checks: before any replica
    assert counted.since() == {}


async def test_cli_reads_go_to_the_replica(
    pair: Pair, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with PostgresBackend[JsonCodec].connect(
        pair.primary.url, schema=schema, run_migrations=False
    ) as backend:
        iid = new_id()
        v1 = backend.save(snap(iid, task_results={"a": TaskResult(output=1)}))
        pair.wait_caught_up()
        with replay_paused(pair):
            backend.save(snap(iid, task_results={"a": TaskResult(output=2)}), v1)

            def run(*args: str, replica: str = pair.standby.url) -> Any:
                common = ["--dsn", pair.primary.url, "--schema", schema, "--replica", replica]
                assert main([args[0], *common, *args[1:]]) == 0
                out = capsys.readouterr().out
                return out if args[0] == "ls" else json.loads(out)

            assert run("show", iid)["version"] == v1
            assert [h["version"] for h in run("history", iid)] == [v1]
            assert run("task", iid, "a")["output"] == 1
            (line,) = [line for line in run("ls", "--limit", "1000").splitlines() if iid in line]
            assert f"\tv{v1}\t" in line
            assert run("show", iid, replica=NOWHERE)["version"] == v1 + 1  # the primary
