"""The options of ``connect`` (one type, `ConnectOptions`, checked once by
`plan_connect` before anything is opened), and codec specialisation.

``PostgresBackend[MsgpackCodec]`` must really write msgpack, so subscripting a
backend with a concrete codec class returns a cached subclass that remembers
the codec; subscripting with a TypeVar keeps ordinary generic behaviour.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Final, TypedDict

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict

from snapstore import checks, logs
from snapstore.codecs import Codec, JsonCodec
from snapstore.errors import ConfigurationError, ValidationError
from snapstore.limits import Limits
from snapstore.sql_catalog import DEFAULT_SCHEMA, validate_schema

DEFAULT_APPLICATION_NAME: Final = "snapstore"
MAX_TIMEOUT_MS: Final = 2**31 - 1  # statement_timeout is an int of milliseconds
POOLERS: Final = (None, "session", "transaction")
"""What sits between the backend and PostgreSQL: nothing (or a session pooler, which
keeps a server connection per client) or a transaction pooler such as PgBouncer's
``pool_mode = transaction``."""
REPLICA_CHECKOUT_TIMEOUT: Final = 1.0
"""Seconds a read waits for a replica's pooled connection (at most; ``checkout_timeout``
if shorter) before the primary answers it instead: a replica that is down or saturated
costs a read this much, not the primary's whole checkout timeout."""


def _duration(name: str, value: object) -> timedelta | None:
    """A positive, finite duration from seconds or a timedelta (None: not set)."""
    if value is None:
        return None
    try:
        return checks.check_seconds(value, name)
    except ValidationError as exc:
        raise ConfigurationError(str(exc)) from None


class ConnectOptions(TypedDict, total=False):
    """Keyword options of ``connect`` on both backends (all optional)."""

    schema: str
    min_size: int
    max_size: int
    statement_timeout: float | timedelta | None
    application_name: str
    prepare_threshold: int | None
    codec: Codec | None
    run_migrations: bool
    open_timeout: float
    group_commit: bool | None
    connect_timeout: float
    checkout_timeout: float
    max_value_bytes: int
    max_checkpoint_bytes: int
    pooler: str | None
    slow_statement: float | timedelta | None
    strict_values: bool
    replicas: Sequence[str]


@dataclass(frozen=True)
class ConnectPlan:
    """``connect`` options sorted into what the pool, the backend and start-up need."""

    pool_kwargs: dict[str, Any]
    backend_kwargs: dict[str, Any]
    run_migrations: bool
    open_timeout: float
    replicas: tuple[tuple[str, dict[str, Any]], ...] = ()
    """Each read replica's conninfo and the keyword arguments of its pool."""


def check_pooler(pooler: object) -> str | None:
    """One of `POOLERS`."""
    if pooler not in POOLERS:
        raise ConfigurationError(f"pooler must be one of {POOLERS} (got {pooler!r})")
    return pooler


def check_replicas(replicas: object) -> tuple[str, ...]:
    """Replica conninfos: a list or tuple of non-empty strings libpq can parse (one
    string alone is refused: it would be read as a sequence of one-letter conninfos)."""
    # Values are not echoed: a conninfo may hold a password.
    if not isinstance(replicas, list | tuple):
        kind = type(replicas).__name__
        raise ConfigurationError(
            f"replicas must be a list or tuple of conninfo strings, not {kind}"
        )
    for i, replica in enumerate(replicas):
        if not isinstance(replica, str) or not replica.strip():
            kind = "an empty str" if isinstance(replica, str) else type(replica).__name__
            raise ConfigurationError(f"replicas[{i}] must be a conninfo string, not {kind}")
        try:
            conninfo_to_dict(replica)
        except ProgrammingError as exc:
            reason = " ".join(str(exc).split())
            raise ConfigurationError(f"replicas[{i}] is not a valid conninfo: {reason}") from None
    return tuple(replicas)


def _with_connect_timeout(
    connection: dict[str, Any], conninfo: str, timeout: timedelta | None, given: bool
) -> dict[str, Any]:
    """``connection`` with ``connect_timeout`` added, unless ``conninfo`` or
    PGCONNECT_TIMEOUT sets one and the option was not ``given`` explicitly."""
    elsewhere = "connect_timeout" in conninfo_to_dict(conninfo) or "PGCONNECT_TIMEOUT" in os.environ
    if timeout is None or (elsewhere and not given):
        return connection
    # libpq counts whole seconds (and waits at least 2).
    return {**connection, "connect_timeout": max(2, math.ceil(timeout.total_seconds()))}


def plan_connect(options: ConnectOptions, conninfo: str = "") -> ConnectPlan:
    """Validate ``connect`` options before anything is opened."""
    unknown = set(options) - set(ConnectOptions.__annotations__)
    if unknown:
        raise ConfigurationError(f"unknown connect option(s): {', '.join(sorted(unknown))}")
    schema = validate_schema(options.get("schema", DEFAULT_SCHEMA))
    min_size, max_size = options.get("min_size", 1), options.get("max_size", 10)
    sizes = (min_size, max_size)
    if any(isinstance(n, bool) or not isinstance(n, int) for n in sizes):
        raise ConfigurationError(f"pool sizes must be ints (got {sizes!r})")
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ConfigurationError(
            f"pool sizes must satisfy 0 <= min_size <= max_size, max_size >= 1 "
            f"(got {min_size}, {max_size})"
        )
    timeout = _duration("statement_timeout", options.get("statement_timeout"))
    open_timeout = _duration("open_timeout", options.get("open_timeout", 30.0))
    connect_timeout = _duration("connect_timeout", options.get("connect_timeout", 5.0))
    checkout_timeout = _duration("checkout_timeout", options.get("checkout_timeout", 5.0))
    pooler = check_pooler(options.get("pooler"))
    slow = _duration("slow_statement", options.get("slow_statement", logs.SLOW_STATEMENT))
    threshold = options.get("prepare_threshold", None if pooler == "transaction" else 5)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int)):
        raise ConfigurationError(f"prepare_threshold must be None or an int (got {threshold!r})")
    if pooler == "transaction" and threshold is not None:
        # PgBouncer before 1.21 shares server connections between clients: a named
        # prepared statement of one client could be bound by another's.
        raise ConfigurationError('pooler="transaction" uses no prepared statements')
    name = options.get("application_name", DEFAULT_APPLICATION_NAME)
    if not isinstance(name, str) or "\x00" in name:
        raise ConfigurationError(f"application_name must be a str (got {name!r})")
    for flag in ("run_migrations", "group_commit"):
        if not isinstance(options.get(flag, True), bool | None):
            raise ConfigurationError(f"{flag} must be a bool")
    replicas = check_replicas(options.get("replicas", ()))
    # Autocommit, so one statement is one commit.
    connection: dict[str, Any] = {
        "autocommit": True,
        "prepare_threshold": threshold,
        "application_name": name,
    }
    ms = None if timeout is None else max(1, int(timeout.total_seconds() * 1000))
    if ms is not None and ms > MAX_TIMEOUT_MS:
        raise ConfigurationError(f"statement_timeout must be at most {MAX_TIMEOUT_MS} ms")
    if ms is not None and pooler is None:
        # PgBouncer refuses this startup option: behind a pooler it is set per session
        # or per transaction instead (`runner.ConnectionSetup`, `runner.Runner`).
        connection["options"] = f"-c statement_timeout={ms}"
    # A timeout the conninfo or PGCONNECT_TIMEOUT sets stands, unless one is given here.
    given = "connect_timeout" in options
    checkout = 5.0 if checkout_timeout is None else checkout_timeout.total_seconds()
    pool_kwargs = {"min_size": min_size, "max_size": max_size, "open": False}
    return ConnectPlan(
        pool_kwargs={
            **pool_kwargs,
            "kwargs": _with_connect_timeout(connection, conninfo, connect_timeout, given),
            "timeout": checkout,
            "name": f"snapstore-{schema}",
        },
        replicas=tuple(
            (
                replica,
                {
                    **pool_kwargs,
                    "kwargs": _with_connect_timeout(connection, replica, connect_timeout, given),
                    "timeout": min(checkout, REPLICA_CHECKOUT_TIMEOUT),
                    "name": f"snapstore-{schema}-replica{i}",
                },
            )
            for i, replica in enumerate(replicas)
        ),
        backend_kwargs={
            "schema": schema,
            "codec": options.get("codec"),
            "group_commit": options.get("group_commit"),
            "pooler": pooler,
            "statement_timeout_ms": ms,
            "slow_statement": None if slow is None else slow.total_seconds(),
            "limits": Limits.build(
                options.get("max_value_bytes"),
                options.get("max_checkpoint_bytes"),
                options.get("strict_values", True),
            ),
            "owns_pool": True,
        },
        run_migrations=options.get("run_migrations", True),
        open_timeout=30.0 if open_timeout is None else open_timeout.total_seconds(),
    )


class CodecBound:
    """Base of both backends: ``Backend[CodecClass]`` is a subclass writing that codec."""

    codec_type: ClassVar[type[Codec]] = JsonCodec

    def __class_getitem__(cls, item: Any) -> Any:
        if isinstance(item, type) and isinstance(getattr(item, "codec_id", None), int):
            return _specialise(cls, item)
        return super().__class_getitem__(item)  # type: ignore[misc]


_specialised: dict[tuple[type[CodecBound], type[Codec]], type[CodecBound]] = {}


def _specialise(cls: type[CodecBound], codec_type: type[Codec]) -> type[CodecBound]:
    """One subclass per (backend, codec), so ``B[X] is B[X]`` and isinstance works."""
    key = (cls, codec_type)
    found = _specialised.get(key)
    if found is None:
        name = f"{cls.__name__}[{codec_type.__name__}]"
        attrs = {"codec_type": codec_type, "__module__": cls.__module__}
        found = _specialised.setdefault(key, type(name, (cls,), attrs))
    return found


__all__ = [
    "DEFAULT_SCHEMA",
    "CodecBound",
    "ConnectOptions",
    "check_replicas",
    "plan_connect",
]
