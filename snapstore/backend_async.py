"""The PostgreSQL backend: its whole public API in one class, each method a thin
shell that builds a program (`snapstore.programs`, `snapstore.signals`,
`snapstore.claims`, `snapstore.retention`) and runs it.

The sync backend is generated from the asyncio one (``make sync``), so both run
exactly the same logic and SQL.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, Self, TypeVar, Unpack, cast

from psycopg import AsyncConnection, DatabaseError
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from snapstore import branches as br
from snapstore import checks, logs, observe, programs
from snapstore import claims as cl
from snapstore import operations as ops
from snapstore import replicas as rp
from snapstore import retention as rt
from snapstore import rows as rw
from snapstore import signals as sg
from snapstore.branches import BranchClaim, BranchDone, BranchState, ClaimedBranch
from snapstore.claims import ClaimedTask, DispatchQuery, Seconds
from snapstore.codecs import Codec, codec_instance
from snapstore.codecs.registry import require_registered
from snapstore.config import CodecBound, ConnectOptions, check_pooler, plan_connect
from snapstore.errors import CommitUnknownError, ServerError, UnavailableError
from snapstore.group_commit import AsyncGroupCommitter, GroupCommitStats
from snapstore.limits import Limits
from snapstore.migrate_async import migrate
from snapstore.model import (
    Claim,
    HistoryEntry,
    Page,
    SaveRequest,
    SaveResult,
    StoredSnapshot,
    TaskResult,
    WorkflowSnapshot,
    WorkflowStatus,
)
from snapstore.observe import Observer
from snapstore.operations import Problem, StoreStats
from snapstore.programs import OperationalCounts, PoisonCounts
from snapstore.replicas import Replica, Replicas
from snapstore.runner_async import (
    RECONNECT_EVERY,
    AsyncRunner,
    ConnectionSetup,
    check_connection,
    reach,
    retry_while_waited,
    typed_error,
)
from snapstore.signals import Event, EventOutcome, ParkResult, Signal, SignalKind, SignalOutcome
from snapstore.sql_catalog import DEFAULT_SCHEMA, queries_for, validate_schema
from snapstore.wakeup import ListenerPlan, WakeupOptions, WakeupRegistry, WakeupStats
from snapstore.wakeup.listener_async import AsyncWakeupListener

C = TypeVar("C", bound=Codec)
R = TypeVar("R")

ASK_ATTEMPTS: Final = 3
"""Tries of each question asked after a lost write (has it finished? did it commit?)."""


def _log_settled(what: str, schema: str, committed: bool, resendable: bool) -> None:
    """A write whose connection was lost, and what asking a fresh connection found."""
    fate = (
        "it had committed"
        if committed
        else ("it had not committed: sent again" if resendable else "its outcome is unknown")
    )
    logs.store.warning("connection lost during %s; %s", what, fate, extra={"schema": schema})


def _owned_pool(
    conninfo: str,
    kwargs: dict[str, Any],
    setup: ConnectionSetup,
    reconnect_failed: Callable[[AsyncConnectionPool[Any]], Any],
) -> AsyncConnectionPool[Any]:
    """A pool `connect` opens (the primary's or a replica's): each new connection set up
    by ``setup``, idle ones checked before use, reconnecting in rounds."""
    return AsyncConnectionPool(
        conninfo,
        check=check_connection,
        configure=setup,
        reconnect_failed=reconnect_failed,
        reconnect_timeout=RECONNECT_EVERY,
        **kwargs,
    )


class AsyncPostgresBackend(CodecBound, Generic[C]):
    """A durable snapshot store on PostgreSQL, for asyncio.

    Build one with ``await AsyncPostgresBackend[JsonCodec].connect(url)`` (the codec in
    the brackets writes every new blob; blobs from any registered codec are read), or
    wrap a pool you own with `from_pool`. Share one per event loop.
    """

    _is_async: ClassVar[bool] = True  # sync: _is_async: ClassVar[bool] = False

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        codec: Codec | None = None,
        owns_pool: bool = False,
        group_commit: bool | None = None,
        limits: Limits | None = None,
        pooler: str | None = None,
        statement_timeout_ms: int | None = None,
        slow_statement: float | None = logs.SLOW_STATEMENT,
        replicas: Sequence[AsyncConnectionPool[Any]] = (),
    ) -> None:
        """Wrap ``pool`` (use `connect` or `from_pool` rather than calling this).

        ``statement_timeout_ms`` is applied per transaction behind a transaction pooler
        (elsewhere `connect` sets it on the connections). ``slow_statement``: seconds
        after which a statement is logged as slow (None: never). ``replicas``: pools of
        read replicas (see `snapstore.replicas`), owned when ``pool`` is."""
        self.schema = validate_schema(schema)
        self.codec: Codec = (
            codec_instance(self.codec_type) if codec is None else require_registered(codec)
        )
        self.queries = queries_for(self.schema)
        self.ctx = programs.Context(self.codec, self.schema, limits=limits or Limits())
        self._pool = pool
        self._owns_pool = owns_pool
        # Behind a transaction pooler a server process id says nothing about a client.
        self._pids_known = check_pooler(pooler) != "transaction"
        local = None if self._pids_known else statement_timeout_ms

        def runner(on: AsyncConnectionPool[Any], name: str) -> AsyncRunner:
            # An owned pool sets up each connection as it opens (`connect`'s configure
            # hook); a borrowed one's are set up at their first use by the runner.
            setup = (
                None
                if owns_pool
                else ConnectionSetup(self.queries, name, pooler=pooler, timeout_ms=None)
            )
            return AsyncRunner(
                on, self.queries, local_timeout_ms=local, setup=setup, slow_statement=slow_statement
            )

        # Anything with a connection() will do as a pool, named or not.
        self._runner = runner(pool, getattr(pool, "name", "borrowed"))
        self.counts = OperationalCounts()
        named = [(getattr(r, "name", f"replica{i}"), r) for i, r in enumerate(replicas)]
        self._replicas: Replicas[AsyncRunner] = Replicas(
            [Replica(name, r, runner(r, name), schema=self.schema) for name, r in named],
            self.counts,
        )
        self._wakeups = WakeupRegistry()
        self._observers: builtins.list[Observer] = []
        grouped = AsyncGroupCommitter.ON_BY_DEFAULT if group_commit is None else group_commit
        self._committer = AsyncGroupCommitter(self._flush) if grouped else None

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def connect(cls, conninfo: str, **options: Unpack[ConnectOptions]) -> Self:
        """Open an owned pool to ``conninfo`` and migrate the schema (unless told not to).

        Options (all keyword, see `ConnectOptions`): ``schema`` (default "snapstore"),
        ``min_size``/``max_size`` (pool), ``statement_timeout`` (seconds or timedelta),
        ``application_name``, ``prepare_threshold``, ``codec`` (instance overriding the
        bracketed class), ``run_migrations``, ``open_timeout``, ``group_commit`` (default
        on for the asyncio backend, off for the sync one), ``connect_timeout`` (default
        5 s), ``checkout_timeout`` (default 5 s: the wait for a pooled connection),
        ``max_value_bytes`` and ``max_checkpoint_bytes`` (see `snapstore.limits`) and
        ``pooler`` (``"transaction"`` behind PgBouncer's transaction pooling: no prepared
        statements; see README "Behind PgBouncer") and ``slow_statement`` (seconds, default
        1; a statement that takes longer is logged on ``snapstore.store``; None: never)
        and ``replicas`` (a list of conninfos of hot standbys: `load`, `history`, `list`
        and `load_task_result` may be served by them, see `snapstore.replicas`; each gets
        a pool sized and set up as the primary's).

        A server that cannot be reached is an `UnavailableError` carrying its reason,
        within ``connect_timeout``; pooled connections are checked before each use. A
        replica that cannot be reached is not: its pool opens without waiting, and reads
        go to the primary while it is down (logged on ``snapstore.pool``).
        """
        plan = plan_connect(options, conninfo)
        pooler, ms = plan.backend_kwargs["pooler"], plan.backend_kwargs["statement_timeout_ms"]
        queries = queries_for(plan.backend_kwargs["schema"])

        def setup(name: str) -> ConnectionSetup:
            return ConnectionSetup(queries, name, pooler=pooler, timeout_ms=ms)

        pool = _owned_pool(
            conninfo, plan.pool_kwargs, setup(plan.pool_kwargs["name"]), retry_while_waited
        )
        replicas = [
            _owned_pool(target, kwargs, setup(kwargs["name"]), rp.unreachable)
            for target, kwargs in plan.replicas
        ]
        # cls checks the rest: still no I/O
        backend = cls(pool, replicas=replicas, **plan.backend_kwargs)
        try:
            await reach(conninfo, plan.pool_kwargs["kwargs"])
            try:
                await pool.open(wait=True, timeout=plan.open_timeout)
            except PoolTimeout as exc:
                raise UnavailableError(f"{exc} (server reachable, pool not filled)") from exc
            if plan.run_migrations:
                await backend.migrate()
            for replica in replicas:  # a replica that is down must not stop the primary
                await replica.open(wait=False)
        except BaseException:
            await backend.close()
            raise
        return backend

    @classmethod
    async def from_pool(
        cls,
        pool: AsyncConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        codec: Codec | None = None,
        run_migrations: bool = True,
        group_commit: bool | None = None,
        limits: Limits | None = None,
        pooler: str | None = None,
        replicas: Sequence[AsyncConnectionPool[Any]] = (),
    ) -> Self:
        """Use a pool the caller owns (and closes). Its connections should be autocommit.

        ``limits``: see `snapstore.limits` (defaults: 256 MiB per value, 512 MiB per
        checkpoint). ``replicas``: pools of read replicas the caller owns too (see
        `connect`)."""
        backend = cls(
            pool,
            schema=schema,
            codec=codec,
            group_commit=group_commit,
            limits=limits,
            pooler=pooler,
            replicas=replicas,
        )
        if run_migrations:
            await backend.migrate()
        return backend

    def add_observer(self, observer: Observer) -> None:
        """Tell ``observer`` of every operation from now on (see `snapstore.metrics`,
        `snapstore.tracing`); a backend nobody observes pays nothing for this."""
        observe.attach(self, observer)

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        """The connection pool the backend runs on (the primary's)."""
        return self._pool

    @property
    def replica_pools(self) -> tuple[AsyncConnectionPool[Any], ...]:
        """The pools of the read replicas, in the order given (empty: none)."""
        return tuple(member.pool for member in self._replicas.members)

    async def close(self) -> None:
        """Stop this backend's wakeup listeners, then close the pools (the primary's and
        the replicas') if this backend opened them; borrowed pools are left alone."""
        await self.close_wakeups()
        if self._owns_pool:
            for member in self._replicas.members:
                await member.pool.close()
            await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def migrate(self) -> builtins.list[int]:
        """Apply pending migrations; return the versions applied."""
        conn: AsyncConnection[Any] | None = None
        try:
            async with self._pool.connection() as conn:
                return await migrate(conn, self.schema)
        except DatabaseError as exc:  # one transaction: lost means rolled back, or re-runnable
            raise typed_error(exc, self._pool, conn, False, []) from exc

    # --- checkpoints -----------------------------------------------------------------------

    async def save(
        self,
        snapshot: WorkflowSnapshot,
        expected_version: int | None = None,
        *,
        claim: Claim | None = None,
    ) -> int:
        """Write a checkpoint and return its new version.

        ``expected_version=None`` creates the instance (`ConflictError` if it
        exists); otherwise the stored version must equal it. The snapshot row,
        its history row and its task rows commit together or not at all. With
        ``claim``, the write is fenced: it is refused (`ClaimLostError`) once the
        lease has expired or been taken over. With ``group_commit`` on, concurrent
        saves share one commit; the contract is unchanged.
        """
        item = programs.prepare(self.ctx, snapshot, expected_version, claim)
        if self._committer is None:
            (result,) = await self._flush([item])
            return result.unwrap()
        return (await self._committer.submit(item)).unwrap()

    async def save_many(self, requests: Sequence[SaveRequest]) -> builtins.list[SaveResult]:
        """Save many checkpoints in one commit; one `SaveResult` per request, in order.

        A failed item (conflict, terminal, invalid...) is reported in its result and
        does not stop the others.
        """
        prepared, rejected = programs.prepare_many(self.ctx, requests)
        saved = await self._flush(prepared) if prepared else []
        return programs.merge_results(len(requests), rejected, saved)

    async def _flush(self, items: builtins.list[rw.PreparedSave]) -> builtins.list[SaveResult]:
        """One commit of prepared saves (a save, a group-commit batch or a `save_many`).

        A deadlock with a concurrent batch is retried. A connection lost after the
        batch was sent is resolved on a fresh connection: the results if it
        committed, one more try if it did not, `CommitUnknownError` while that cannot
        be told (the server still unreachable)."""
        deadlocks, resent = 0, False
        while True:
            try:
                return await self._runner.run(programs.save_batch(self.ctx, items))
            except ServerError as refused:
                deadlocks += 1
                if refused.sqlstate not in programs.RETRYABLE_SQLSTATES:
                    raise
                if deadlocks == programs.MAX_BATCH_ATTEMPTS:
                    raise
                self.counts.count("retries")
                logs.store.info(
                    "batch of %d saves rolled back (%s), sent again",
                    len(items),
                    refused.sqlstate,
                    extra={"schema": self.schema, "sqlstate": refused.sqlstate},
                )
            except CommitUnknownError as lost:
                if resent:
                    raise
                done, found = await self._settle(lost, lambda: programs.committed(self.ctx, items))
                self._settled("a batch of saves", bool(found), done)
                if not found and not done:  # it may still be running: sending it again
                    raise  # could race it, and would turn its success into a conflict
                resent = True
                if found:  # it committed; what it refused is sent again for its error
                    rest = [item for i, item in enumerate(items) if i not in found]
                    again = iter(await self._flush(rest) if rest else [])
                    return [found[i] if i in found else next(again) for i in range(len(items))]
                # it did not commit: send it once more

    async def _settle(
        self, lost: CommitUnknownError, ask: Callable[[], programs.Program[R]]
    ) -> tuple[bool, R]:
        """After a lost write: whether its server process has finished (so a write not
        found did not commit and may be sent again), and what ``ask`` finds on a fresh
        connection. Still unreachable: the write's `CommitUnknownError`."""
        try:
            done = self._pids_known and await self._ask_twice(
                lambda: programs.backend_finished(lost.backend_pid)
            )
            return done, await self._ask_twice(ask)
        except (UnavailableError, ServerError):  # the question went unanswered
            raise lost from None

    async def _write(
        self, make: Callable[[programs.Receipt], programs.Program[R]], *, transaction: bool = True
    ) -> R:
        """Run the write program ``make`` builds. If its connection is lost, find out on a
        fresh one whether it committed (`programs.Receipt`): if so, return what it would
        have; if not, or if it writes idempotently, send it once more. A
        `CommitUnknownError` only while that cannot be told."""
        receipt = programs.Receipt()
        try:
            return await self._runner.run(make(receipt), transaction=transaction)
        except CommitUnknownError as lost:
            if receipt.confirm is not None:
                done, found = await self._settle(lost, receipt.confirm)
                self._settled("a write", found, done or receipt.resend_safe)
                if found:
                    return cast(R, receipt.outcome)
                if not (done or receipt.resend_safe):
                    raise  # it may still be running: sending it again could race it
                return await self._runner.run(make(programs.Receipt()), transaction=transaction)
            try:  # idempotent, so sent again; if that fails too, the first stays unknown
                return await self._runner.run(make(programs.Receipt()), transaction=transaction)
            except UnavailableError:
                raise lost from None

    def _settled(self, what: str, committed: bool, resendable: bool) -> None:
        outcome = "committed" if committed else ("resent" if resendable else "unknown")
        self.counts.count(f"lost_connections_{outcome}")
        _log_settled(what, self.schema, committed, resendable)

    async def _dispatch(self, query: cl.DispatchQuery) -> builtins.list[ClaimedTask]:
        """Lease and load what ``query`` picks (a lost run's leases are dropped first)."""
        return await self._write(lambda r: cl.dispatch_program(self.ctx, query, r))

    async def _read(
        self,
        make: Callable[[], programs.Program[R]],
        replica: bool,
        enough: Callable[[R], bool] | None = None,
    ) -> R:
        """Run the read-only program ``make`` builds on a replica if one may serve it
        (``replica``, and one is up), and return its answer when it is ``enough`` (no
        test: any answer is). A replica that fails or is behind hands the read to the
        primary, whose answer, or error, is the caller's (see `snapstore.replicas`)."""
        member = self._replicas.pick(checks.check_flag("replica", replica))
        if member is not None:
            try:
                found = await member.runner.run(make(), writes=False)
            except (UnavailableError, ServerError) as exc:
                self._replicas.failed(member, exc)
            else:
                if enough is None or enough(found):
                    self._replicas.served(member)
                    return found
                self._replicas.behind(member)
        return await self._runner.run(make(), writes=False)

    async def _ask_twice(self, program: Callable[[], programs.Program[R]]) -> R:
        """Run a read-only program, up to `ASK_ATTEMPTS` times while its connection is
        lost under it (the pool may hand out another connection the same outage killed;
        a terminated backend is one connection); no connection to be had fails at once."""
        for _ in range(ASK_ATTEMPTS - 1):
            try:
                return await self._runner.run(program(), writes=False)
            except UnavailableError as exc:
                if not exc.connection_lost:
                    raise
        return await self._runner.run(program(), writes=False)

    @property
    def poison_counts(self) -> PoisonCounts:
        """How many unreadable instances and events this backend has set aside (a copy)."""
        return self.ctx.poison.copy()

    @property
    def group_commit_stats(self) -> GroupCommitStats | None:
        """Batching figures when group commit is on."""
        return None if self._committer is None else self._committer.stats

    async def load(
        self,
        instance_id: str,
        *,
        input_type: Any = None,
        output_type: Any = None,
        min_version: int | None = None,
        replica: bool = True,
    ) -> StoredSnapshot | None:
        """The latest checkpoint with task outputs hydrated, or None.

        ``input_type``/``output_type``: what to read the snapshot's input and output as
        (a msgspec Struct, a dataclass, anything msgspec decodes into); `DecodeError`
        when the stored value does not fit. With replicas, a replica may answer, as it
        was a moment ago: ``min_version`` (e.g. what your last save returned) asks for
        that version or later, from the primary when the replica has not replayed it
        yet (read-your-writes); ``replica=False`` asks the primary."""
        in_type = rw.check_value_type("input_type", input_type)
        out_type = rw.check_value_type("output_type", output_type)
        floor = rp.check_min_version(min_version)
        stored = await self._read(
            lambda: programs.load(self.ctx, instance_id),
            replica,
            lambda found: rp.load_reached(found, floor),
        )
        return rw.typed_load(stored, in_type, out_type)

    async def load_task_result(
        self,
        instance_id: str,
        task_id: str,
        *,
        output_type: Any = None,
        min_version: int | None = None,
        replica: bool = True,
    ) -> TaskResult | None:
        """One task's stored result (with output, read as ``output_type`` if given), or
        None. ``min_version`` and ``replica`` as for `load`: the result is that of the
        instance at ``min_version`` or later."""
        type_ = rw.check_value_type("output_type", output_type)
        floor = rp.check_min_version(min_version)
        if floor is None or replica is False or not self._replicas:  # no probe needed
            found = await self._read(
                lambda: programs.load_task_result(instance_id, task_id), replica
            )
        else:
            _, found = await self._read(
                lambda: rp.task_result_at(instance_id, task_id),
                replica,
                lambda at: rp.version_reached(at[0], floor),
            )
        return rw.typed_result(instance_id, task_id, found, type_)

    async def fork(self, source_id: str, version: int, instance_id: str) -> int:
        """Create ``instance_id`` from version ``version`` of ``source_id`` (replay from
        any past checkpoint), its task outputs as they were then, recorded as forked
        from there (`SnapshotSummary.forked_from`); returns its version, 1.

        `NotFoundError` if that version is not in history (pruned) or a task has run
        again since, so its output of then is gone; `ConflictError` if ``instance_id``
        exists."""
        return await self._write(
            lambda r: programs.fork(self.ctx, source_id, version, instance_id, r)
        )

    async def delete(self, instance_id: str) -> bool:
        """Remove an instance and every row that belongs to it; False if absent."""
        return await self._write(lambda _: programs.delete(instance_id, self.ctx))

    async def list(
        self,
        status: Iterable[WorkflowStatus] | WorkflowStatus | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        replica: bool = True,
    ) -> Page:
        """Instances ordered by id, without decoding blobs; follow ``next_cursor``.

        With replicas, a replica may answer (``replica=False``: the primary)."""
        return await self._read(lambda: programs.list_snapshots(status, limit, cursor), replica)

    async def history(
        self,
        instance_id: str,
        *,
        after_version: int = 0,
        limit: int | None = None,
        skip_corrupt: bool = False,
        min_version: int | None = None,
        replica: bool = True,
    ) -> builtins.list[HistoryEntry]:
        """Checkpoints in version order (task outputs are not part of history blobs).

        A version that cannot be read raises `DecodeError` naming it; with
        ``skip_corrupt`` it is left out instead (with the deltas that depend on it), so
        one bad version does not hide the rest: compare the versions to see what was.
        ``min_version`` and ``replica`` as for `load`: a replica's answer will do when it
        reaches ``min_version`` or fills the page (``limit``).
        """
        floor = rp.check_min_version(min_version)
        return await self._read(
            lambda: programs.history(instance_id, after_version, limit, skip_corrupt),
            replica,
            lambda entries: rp.history_reached(entries, floor, limit),
        )

    async def truncate_all(self) -> None:
        """Empty every table of the schema. For tests."""
        await self._runner.run(programs.truncate_all(self.ctx))

    # --- signals (see `snapstore.signals`) -------------------------------------------------

    async def store_signal(
        self,
        instance_id: str,
        kind: SignalKind | str,
        reason: str | None = None,
        *,
        requested_by: str | None = None,
    ) -> Signal:
        """Record a pending signal as is (no claim check; see `cancel`/`pause` for that).

        `ValidationError` for an unknown kind, `NotFoundError`, `TerminalStateError`.
        """
        return await self._write(lambda _: sg.store_signal(instance_id, kind, reason, requested_by))

    async def get_signals(self, instance_id: str) -> builtins.list[Signal]:
        """The pending signals of an instance (`NotFoundError` if it does not exist)."""
        return await self._runner.run(sg.read_signals(instance_id, None), writes=False)

    async def get_signal(self, instance_id: str, kind: SignalKind | str) -> Signal | None:
        """The pending ``kind`` signal, or None."""
        return await self._runner.run(sg.read_signal(instance_id, kind), writes=False)

    async def clear_signal(self, instance_id: str, kind: SignalKind | str | None = None) -> bool:
        """Drop the pending ``kind`` signal (every kind when None); whether one existed."""
        return await self._write(lambda _: sg.clear_signal(instance_id, kind))

    async def cancel(
        self, instance_id: str, reason: str | None = None, *, requested_by: str | None = None
    ) -> SignalOutcome:
        """Cancel now (APPLIED) unless a live claim holds the instance (PENDING). The
        reason and requester are kept with the request and, once applied, against the
        checkpoint that applied it (``applied_signals``, `HistoryEntry.applied_signal`)."""
        return await self._request(instance_id, SignalKind.CANCEL, reason, requested_by)

    async def pause(
        self, instance_id: str, reason: str | None = None, *, requested_by: str | None = None
    ) -> SignalOutcome:
        """Pause now (APPLIED) unless a live claim holds the instance (PENDING); the
        reason and requester are kept as for `cancel`."""
        return await self._request(instance_id, SignalKind.PAUSE, reason, requested_by)

    async def _request(
        self, instance_id: str, kind: SignalKind, reason: str | None, requested_by: str | None
    ) -> SignalOutcome:
        return await self._write(
            lambda r: sg.request(self.ctx, instance_id, kind, reason, requested_by, r)
        )

    async def unpause(self, instance_id: str) -> SignalOutcome:
        """Resume a Paused instance (APPLIED) or withdraw a pending pause (WITHDRAWN)."""
        return await self._write(lambda r: sg.unpause(self.ctx, instance_id, r))

    async def check_and_cancel(self, instance_id: str, claim: Claim | None = None) -> Signal | None:
        """Apply a pending cancel (fenced by ``claim``); the signal applied, or None."""
        return await self._check(instance_id, SignalKind.CANCEL, claim)

    async def check_and_pause(self, instance_id: str, claim: Claim | None = None) -> Signal | None:
        """Apply a pending pause (fenced by ``claim``); the signal applied, or None. If a
        cancel is pending too, it wins: it is applied instead (the signal's ``kind``)."""
        return await self._check(instance_id, SignalKind.PAUSE, claim)

    async def check_signals(self, instance_id: str, claim: Claim | None = None) -> Signal | None:
        """Apply whatever control signal is pending, in one transaction fenced by
        ``claim``: a cancel before a pause; the signal applied (its ``kind`` says which),
        or None. The one call a worker needs between steps."""
        return await self._check(instance_id, None, claim)

    async def _check(
        self, instance_id: str, kind: SignalKind | None, claim: Claim | None
    ) -> Signal | None:
        return await self._write(
            lambda r: sg.check_and_apply(self.ctx, instance_id, kind, claim, r)
        )

    # --- events (see `snapstore.signals`) --------------------------------------------------

    async def send_event(self, instance_id: str, name: str, payload: Any = None) -> EventOutcome:
        """Resume the instance if parked on ``name`` (RESUMED), else buffer it (BUFFERED)."""
        return await self._write(lambda r: sg.send_event(self.ctx, instance_id, name, payload, r))

    async def peek_events(
        self, instance_id: str, name: str | None = None, *, limit: int = sg.DEFAULT_EVENT_PAGE
    ) -> builtins.list[Event]:
        """Buffered events (of ``name``, or all), oldest first, without consuming them."""
        program = sg.peek_events(self.ctx, instance_id, name, limit)  # buries idempotently
        return await self._runner.run(program, writes=False)

    async def consume_event(
        self,
        event_id: int,
        snapshot: WorkflowSnapshot,
        expected_version: int,
        *,
        claim: Claim | None = None,
    ) -> ParkResult:
        """Consume a peeked event and save the checkpoint it led to, atomically; a
        checkpoint waiting for an event already buffered is resumed with it at once
        (see `ParkResult`: continue from its ``snapshot``)."""
        return await self._write(
            lambda r: sg.consume_event(self.ctx, event_id, snapshot, expected_version, claim, r)
        )

    async def park(
        self,
        snapshot: WorkflowSnapshot,
        expected_version: int | None,
        *,
        claim: Claim | None = None,
    ) -> ParkResult:
        """Save an AtSignal checkpoint, or resume at once with an already buffered event."""
        return await self._write(lambda r: sg.park(self.ctx, snapshot, expected_version, claim, r))

    # --- claims and dispatch (see `snapstore.claims` for the lease rules) ------------------

    async def claim(
        self, instance_id: str, worker_id: str, ttl: Seconds = cl.DEFAULT_TTL
    ) -> Claim | None:
        """Lease ``instance_id`` for ``ttl`` (seconds or timedelta, server clock).

        Returns None while another worker holds a live lease; takes over an expired one;
        re-claiming one's own live lease issues a fresh token. Any non-terminal instance
        can be claimed (InProgress or Paused, due or not): this is the explicit path,
        dispatch is `find_available_tasks`. Raises `NotFoundError` for an unknown
        instance and `TerminalStateError` for a finished one.
        """
        return await self._write(
            lambda r: cl.claim_program(instance_id, worker_id, ttl, r), transaction=False
        )

    async def extend(self, claim: Claim, ttl: Seconds = cl.DEFAULT_TTL) -> Claim:
        """Renew a live lease to end ``ttl`` after the server's now (absolute, not added).

        Returns the claim with its new ``expires_at``; raises `ClaimLostError` if the
        lease already expired or was taken over.
        """
        return await self._write(lambda _: cl.extend_program(claim, ttl), transaction=False)

    async def release(self, claim: Claim) -> bool:
        """Drop the lease if this token still owns it (True), even if it had expired.

        When the instance is then dispatchable, the wakeup channel is notified at commit
        so another worker picks it up.
        """
        return await self._write(lambda _: cl.release_program(self.ctx, claim), transaction=False)

    async def find_available_tasks(
        self,
        worker_id: str,
        *,
        limit: int = 10,
        ttl: Seconds = cl.DEFAULT_TTL,
        tags: Iterable[str] | None = None,
        aging_interval: Seconds = cl.DEFAULT_AGING_INTERVAL,
    ) -> builtins.list[ClaimedTask]:
        """Atomically lease up to ``limit`` dispatchable instances, most urgent first.

        ``tags``: what this worker can run; an instance is eligible only if all of its
        tags are among them (None: any instance). ``aging_interval``: waiting that long
        raises an instance one priority level. Each result carries its lease and the
        checkpoint loaded under it.
        """
        query = DispatchQuery.build(
            worker_id, limit=limit, ttl=ttl, tags=tags, aging_interval=aging_interval
        )
        return await self._dispatch(query)

    async def claim_notified(
        self,
        instance_ids: Iterable[str],
        worker_id: str,
        *,
        ttl: Seconds = cl.DEFAULT_TTL,
        tags: Iterable[str] | None = None,
        limit: int | None = None,
        aging_interval: Seconds = cl.DEFAULT_AGING_INTERVAL,
    ) -> builtins.list[ClaimedTask]:
        """`find_available_tasks` restricted to ``instance_ids`` (e.g. those a wakeup
        NOTIFY named): the ones still dispatchable for this worker are leased and loaded,
        the rest (claimed by someone faster, not due, unknown) are skipped."""
        query = DispatchQuery.build(
            worker_id,
            limit=limit,
            ttl=ttl,
            tags=tags,
            aging_interval=aging_interval,
            instance_ids=instance_ids,
        )
        return await self._dispatch(query)

    async def dispatchable_ids(
        self,
        *,
        limit: int = 100,
        tags: Iterable[str] | None = None,
        aging_interval: Seconds = cl.DEFAULT_AGING_INTERVAL,
    ) -> builtins.list[str]:
        """Instances dispatchable right now, in dispatch order, without leasing them.

        Same predicate and order as `find_available_tasks`; rows that another worker is
        leasing at this very moment are skipped.
        """
        query = DispatchQuery.build(
            cl.PEEK_WORKER, limit=limit, tags=tags, aging_interval=aging_interval
        )
        return await self._runner.run(cl.dispatchable_ids_program(query), writes=False)

    async def next_dispatch_at(self) -> datetime | None:
        """When something may next become dispatchable without a NOTIFY (a timer or
        backoff coming due, a lease running out), by the server clock; None if nothing
        is pending. A poller sleeps until then (or until a wakeup), then dispatches."""
        return await self._runner.run(cl.next_dispatch_at_program(), writes=False)

    # --- parallel branches (see `snapstore.branches`) --------------------------------------

    async def start_branches(
        self,
        snapshot: WorkflowSnapshot,
        expected_version: int | None,
        *,
        claim: Claim | None = None,
    ) -> int:
        """Save an AtFork checkpoint and hand its branches to branch workers; its version.

        The instance is not dispatched itself until the last branch result lands
        (`complete_branch`), which saves its join checkpoint. ``claim`` fences the save
        and is given up with it: the branches are the work now."""
        return await self._write(
            lambda r: br.start_branches(self.ctx, snapshot, expected_version, claim, r)
        )

    async def find_available_branches(
        self,
        worker_id: str,
        *,
        limit: int = 10,
        ttl: Seconds = cl.DEFAULT_TTL,
        tags: Iterable[str] | None = None,
    ) -> builtins.list[ClaimedBranch]:
        """Lease up to ``limit`` open branches, oldest first, each with its fork's
        checkpoint; a branch whose lease expired (its worker died) is open again."""
        query = br.BranchQuery.build(worker_id, limit=limit, ttl=ttl, tags=tags)
        return await self._write(lambda r: br.dispatch_branches(self.ctx, query, r))

    async def extend_branch(self, claim: BranchClaim, ttl: Seconds = cl.DEFAULT_TTL) -> BranchClaim:
        """Renew a live branch lease (absolute, as `extend`); `ClaimLostError` if lost."""
        return await self._write(lambda _: br.extend_branch(claim, ttl), transaction=False)

    async def release_branch(self, claim: BranchClaim) -> bool:
        """Give an unfinished branch back, for another worker to take at once."""
        return await self._write(lambda _: br.release_branch(claim), transaction=False)

    async def complete_branch(self, claim: BranchClaim, result: TaskResult) -> BranchDone:
        """Record the branch's result (its task row, under the branch id), fenced by its
        lease and by the fork still being current (`ClaimLostError` otherwise). The last
        result of the fork also saves the join checkpoint (``BranchDone.joined``): every
        branch result in ``task_results``, position `AtJoin`, dispatchable once."""
        return await self._write(lambda r: br.complete_branch(self.ctx, claim, result, r))

    async def branches(self, instance_id: str) -> builtins.list[BranchState]:
        """The branches of the instance's current fork (none if it is not at one)."""
        return await self._runner.run(br.branch_states(instance_id), writes=False)

    # --- wakeups (see `snapstore.wakeup`) --------------------------------------------------

    async def wakeups(self, **options: Unpack[WakeupOptions]) -> AsyncWakeupListener:
        """Start a listener for this schema's wakeups (see `WakeupOptions`).

        It uses one connection of its own, made from the pool's conninfo and kwargs
        (or ``conninfo=``); close it, or use it as a context manager.
        """
        plan = ListenerPlan.build(self.queries, options)
        return await AsyncWakeupListener.start(
            plan, self._pool.conninfo, self._pool.kwargs, self._wakeups
        )

    async def close_wakeups(self) -> None:
        """Close every listener of this backend that is still open (e.g. at shutdown)."""
        for listener in self._wakeups.live():
            if isinstance(listener, AsyncWakeupListener):
                await listener.close()

    def wakeup_stats(self) -> WakeupStats:
        """Counters summed over every listener this backend created, open or closed."""
        return self._wakeups.total()

    # --- retention (see `snapstore.retention`) ---------------------------------------------

    async def prune_history(
        self,
        *,
        keep_last: int = 1,
        older_than: Seconds | None = None,
        instance_id: str | None = None,
        batch_size: int = rt.DEFAULT_BATCH,
        dry_run: bool = False,
    ) -> int:
        """Delete checkpoints beyond the last ``keep_last`` per instance (and older than
        ``older_than``, seconds or timedelta, if given); returns how many were deleted
        (``dry_run``: how many would be, deleting nothing)."""
        if checks.check_flag("dry_run", dry_run):
            program = rt.prune_dry_run(instance_id, keep_last, older_than, batch_size)
            return await self._runner.run(program, writes=False)
        batch = rt.prune_batches(instance_id, keep_last, older_than, batch_size)
        return await self._runner.run_batches(batch, rt.PRUNE_START)

    async def purge_terminal(
        self, *, older_than: Seconds, batch_size: int = rt.DEFAULT_BATCH, dry_run: bool = False
    ) -> int:
        """Delete instances that finished more than ``older_than`` (seconds or timedelta)
        ago, with all their rows (``dry_run``: count them, delete nothing)."""
        if checks.check_flag("dry_run", dry_run):
            program = rt.purge_dry_run(older_than, batch_size)
            return await self._runner.run(program, writes=False)
        batch = rt.purge_batches(older_than, batch_size)
        return await self._runner.run_batches(batch, None)

    # --- operators (see `snapstore.operations`) --------------------------------------------

    async def stats(self, *, exact: bool = True) -> StoreStats:
        """Counts of the store now: instances by status, due backlog and its oldest wait,
        leases, buffered and dead events, open branches, in one statement. ``exact=False``
        (what metrics scrape): a bounded cost on any store, the instances by status
        estimated by the planner past 100k rows and the due backlog counted up to 10k."""
        program = ops.store_stats(self.schema, exact=checks.check_flag("exact", exact))
        return await self._runner.run(program, writes=False)

    async def check(self, *, older_than: Seconds = ops.DEFAULT_CHECK_AGE) -> builtins.list[Problem]:
        """What looks wrong: migrations missing, edited or unknown; instances due for
        longer than ``older_than`` that no worker takes; leases run out that long ago;
        events buffered that long on instances not parked. Empty: healthy."""
        return await self._runner.run(ops.check_store(older_than), writes=False)
