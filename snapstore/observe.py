"""Hooks that see every public operation of a backend: what metrics and traces use.

An `Observer` is told when an operation starts (``begin``: it may make a span current)
and ends (``end``: how long it took and the error it raised, if any). `observable`
wraps a backend class's public operations once, at class creation; with no observer
attached a call costs one attribute test more. `snapstore.metrics` and
`snapstore.tracing` provide the observers.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

NOT_OPERATIONS = frozenset(
    {
        "connect",
        "from_pool",
        "close",
        "wakeups",
        "close_wakeups",
        "wakeup_stats",
        "truncate_all",
        "add_observer",
    }
)
"""Public methods that are set-up or test helpers, not store operations."""


class Observer(Protocol):
    """Sees operations start and end."""

    def begin(self, operation: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Called before ``operation`` runs, with its arguments; returns what ``end`` gets."""

    def end(self, token: Any, operation: str, seconds: float, error: BaseException | None) -> None:
        """Called once ``operation`` returned (``error`` None) or raised."""


def _wrapped(operation: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            observers: list[Observer] = self._observers
            if not observers:
                return await fn(self, *args, **kwargs)
            tokens = [o.begin(operation, args, kwargs) for o in observers]
            began, error = time.perf_counter(), None
            try:
                return await fn(self, *args, **kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _ended(observers, tokens, operation, time.perf_counter() - began, error)

        return run_async

    @functools.wraps(fn)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        observers: list[Observer] = self._observers
        if not observers:
            return fn(self, *args, **kwargs)
        tokens = [o.begin(operation, args, kwargs) for o in observers]
        began, error = time.perf_counter(), None
        try:
            return fn(self, *args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _ended(observers, tokens, operation, time.perf_counter() - began, error)

    return run


def _ended(
    observers: Iterable[Observer],
    tokens: Iterable[Any],
    operation: str,
    seconds: float,
    error: BaseException | None,
) -> None:
    for observer, token in reversed(list(zip(observers, tokens, strict=True))):
        observer.end(token, operation, seconds, error)


def operations(cls: type) -> list[str]:
    """The public operations a backend class defines (what `observable` wraps)."""
    return sorted(
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and name not in NOT_OPERATIONS and inspect.isfunction(value)
    )


def observable(cls: type[T]) -> type[T]:
    """Class decorator: every public operation of ``cls`` reports to its observers."""
    for name in operations(cls):
        setattr(cls, name, _wrapped(name, getattr(cls, name)))
    return cls
