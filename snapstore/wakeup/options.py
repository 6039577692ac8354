"""How a listener queues, polls and reconnects: the `WakeupOptions` a caller gives
``backend.wakeups(...)``, validated once into the `ListenerPlan` the listener runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, TypedDict

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row

from snapstore.errors import ConfigurationError
from snapstore.sql_catalog import Queries, wakeup_channel

POLL_QUERY: Final = "wakeup_poll"
NEXT_DUE_QUERY: Final = "next_dispatch_at"
DEFAULT_APPLICATION_NAME: Final = "snapstore-wakeup"
PROBE_TIMEOUT: Final = 1.0
"""Seconds a new LISTEN connection waits for its own NOTIFY to come back."""
# Unless the conninfo says otherwise. A LISTEN connection is idle most of the time,
# so a silently dead peer (network partition, failover) would otherwise only be
# noticed by the next poll, which could then hang for the kernel's retransmission
# timeout (~15 min); and a reconnect attempt must not outlast `close()` by much.
CONNECTION_DEFAULTS: Final[dict[str, Any]] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


class WakeupOptions(TypedDict, total=False):
    """Keyword options of ``backend.wakeups(...)``, all optional.

    ``maxsize`` (10_000) bounds the queue of pending ids; an id arriving when it is
    full is dropped and counted. ``poll_interval`` (1.0 s) bounds how long a lost
    NOTIFY, or a timer saved less than one interval before it is due, can wait;
    known timers get a poll of their own. ``backoff_initial`` / ``backoff_max``
    (0.1 / 10.0 s) shape the reconnect delays. ``application_name`` names the LISTEN
    connection. ``conninfo`` overrides the pool's connection string for it: LISTEN
    does not work through a transaction-pooling proxy (PgBouncer), so the listener
    may need to reach the server directly.
    """

    maxsize: int
    poll_interval: float
    backoff_initial: float
    backoff_max: float
    application_name: str
    conninfo: str | None


def _positive(name: str, value: object, why: str = "") -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    raise ConfigurationError(f"{name} must be a positive, finite number{why} (got {value!r})")


@dataclass(frozen=True)
class ListenerPlan:
    """What a listener runs, validated and built once: channel, LISTEN and poll
    statements, queue size, poll and backoff timing."""

    channel: str
    listen: sql.Composed
    probe: sql.Composed
    poll: bytes
    next_due: bytes
    application_name: str = DEFAULT_APPLICATION_NAME
    maxsize: int = 10_000
    poll_interval: float = 1.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    conninfo: str | None = None

    @classmethod
    def build(cls, queries: Queries, options: WakeupOptions | None = None) -> ListenerPlan:
        """Validate ``options`` (`ConfigurationError`) before anything connects."""
        given: dict[str, Any] = dict(options or {})
        unknown = set(given) - set(WakeupOptions.__annotations__)
        if unknown:
            raise ConfigurationError(f"unknown wakeup option(s): {', '.join(sorted(unknown))}")
        maxsize = given.get("maxsize", cls.maxsize)
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigurationError(f"maxsize must be an int >= 1 (got {maxsize!r})")
        poll_interval = _positive(
            "poll_interval",
            given.get("poll_interval", cls.poll_interval),
            ": the fallback poll is always on",
        )
        initial = _positive("backoff_initial", given.get("backoff_initial", cls.backoff_initial))
        maximum = _positive("backoff_max", given.get("backoff_max", cls.backoff_max))
        if initial > maximum:
            raise ConfigurationError(
                f"backoff must satisfy 0 < backoff_initial <= backoff_max "
                f"(got {initial!r}, {maximum!r})"
            )
        name = given.get("application_name", cls.application_name)
        conninfo = given.get("conninfo")
        if not isinstance(name, str) or (conninfo is not None and not isinstance(conninfo, str)):
            raise ConfigurationError("application_name and conninfo must be str")
        channel = wakeup_channel(queries.schema)
        return cls(
            channel=channel,
            # The channel contains ':' and must match pg_notify's text argument
            # byte for byte, so it is always a quoted identifier.
            listen=sql.SQL("LISTEN {}").format(sql.Identifier(channel)),
            # An empty payload names no instance: other listeners ignore it.
            probe=sql.SQL("SELECT pg_notify({}, '')").format(sql.Literal(channel)),
            poll=queries[POLL_QUERY],
            next_due=queries[NEXT_DUE_QUERY],
            application_name=name,
            maxsize=maxsize,
            poll_interval=poll_interval,
            backoff_initial=initial,
            backoff_max=maximum,
            conninfo=conninfo,
        )

    def connect_kwargs(self, conninfo: str, pool_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The pool's connection kwargs, adapted to a LISTEN connection.

        Autocommit, because a LISTEN issued inside a transaction only takes
        effect at its commit; a name of its own, so it can be told apart in
        pg_stat_activity; tuple rows, whatever row factory the pool's connections
        use; no prepared statements (it runs a few statements now and then, and
        behind an undeclared transaction pooler one could bind another client's);
        `CONNECTION_DEFAULTS` unless the caller chose otherwise.
        """
        given = conninfo_to_dict(conninfo)
        kwargs = {
            **pool_kwargs,
            "autocommit": True,
            "application_name": self.application_name,
            "row_factory": tuple_row,
            "prepare_threshold": None,
        }
        for key, value in CONNECTION_DEFAULTS.items():
            if key not in given and key not in kwargs:
                kwargs[key] = value
        return kwargs
