"""Options shared by the sync and async backends, and codec specialisation.

``PostgresBackend[MsgpackCodec]`` must really write msgpack, so subscripting a
backend with a concrete codec class returns a cached subclass that remembers
the codec; subscripting with a TypeVar keeps ordinary generic behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Final, TypedDict

from snapstore.codecs import Codec, JsonCodec, codec_instance
from snapstore.errors import ConfigurationError
from snapstore.operations import Context
from snapstore.queries import DEFAULT_SCHEMA, Queries, queries_for, validate_schema

DEFAULT_APPLICATION_NAME: Final = "snapstore"


@dataclass(frozen=True)
class PoolOptions:
    """How an owned pool is sized and how its connections are set up."""

    min_size: int = 1
    max_size: int = 10
    statement_timeout: timedelta | None = None
    application_name: str = DEFAULT_APPLICATION_NAME
    prepare_threshold: int | None = 5
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = (self.min_size, self.max_size)
        if any(isinstance(n, bool) or not isinstance(n, int) for n in sizes):
            raise ConfigurationError(f"pool sizes must be ints (got {sizes!r})")
        if not 0 <= self.min_size <= self.max_size or self.max_size < 1:
            raise ConfigurationError(
                f"pool sizes must satisfy 0 <= min_size <= max_size, max_size >= 1 "
                f"(got {self.min_size}, {self.max_size})"
            )
        if self.statement_timeout is not None and self.statement_timeout <= timedelta(0):
            raise ConfigurationError("statement_timeout must be positive")

    def connection_kwargs(self) -> dict[str, Any]:
        """kwargs for every pooled connection: autocommit so one statement is one commit."""
        options = ""
        if self.statement_timeout is not None:
            ms = max(1, int(self.statement_timeout.total_seconds() * 1000))
            options = f"-c statement_timeout={ms}"
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": self.prepare_threshold,
            "application_name": self.application_name,
            **self.extra,
        }
        if options:
            kwargs["options"] = options
        return kwargs


def coerce_timeout(value: float | timedelta | None) -> timedelta | None:
    """Accept seconds or a timedelta."""
    if value is None or isinstance(value, timedelta):
        return value
    return timedelta(seconds=value)


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


@dataclass(frozen=True)
class ConnectPlan:
    """``connect`` options sorted into what the pool, the backend and start-up need."""

    pool_kwargs: dict[str, Any]
    backend_kwargs: dict[str, Any]
    run_migrations: bool
    open_timeout: float


def plan_connect(options: ConnectOptions) -> ConnectPlan:
    """Validate ``connect`` options before anything is opened."""
    unknown = set(options) - set(ConnectOptions.__annotations__)
    if unknown:
        raise ConfigurationError(f"unknown connect option(s): {', '.join(sorted(unknown))}")
    schema = validate_schema(options.get("schema", DEFAULT_SCHEMA))
    pool = PoolOptions(
        min_size=options.get("min_size", 1),
        max_size=options.get("max_size", 10),
        statement_timeout=coerce_timeout(options.get("statement_timeout")),
        application_name=options.get("application_name", DEFAULT_APPLICATION_NAME),
        prepare_threshold=options.get("prepare_threshold", 5),
    )
    return ConnectPlan(
        pool_kwargs={
            "min_size": pool.min_size,
            "max_size": pool.max_size,
            "kwargs": pool.connection_kwargs(),
            "open": False,
            "name": f"snapstore-{schema}",
        },
        backend_kwargs={
            "schema": schema,
            "codec": options.get("codec"),
            "group_commit": options.get("group_commit"),
            "owns_pool": True,
        },
        run_migrations=options.get("run_migrations", True),
        open_timeout=options.get("open_timeout", 30.0),
    )


class CodecBound:
    """Mixin giving a backend class its codec from ``Backend[CodecClass]``."""

    codec_type: ClassVar[type[Codec]] = JsonCodec

    def __class_getitem__(cls, item: Any) -> Any:
        if isinstance(item, type) and isinstance(getattr(item, "codec_id", None), int):
            return _specialise(cls, item)
        return super().__class_getitem__(item)  # type: ignore[misc]

    def _init_common(self, schema: str, codec: Codec | None) -> None:
        self.schema = validate_schema(schema)
        self.codec: Codec = codec if codec is not None else codec_instance(self.codec_type)
        self.queries: Queries = queries_for(self.schema)
        self.ctx = Context(self.codec, self.schema)


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
    "PoolOptions",
    "coerce_timeout",
    "plan_connect",
]
