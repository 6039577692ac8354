"""Hooks that see every public operation of a backend: what metrics and traces use.

An `Observer` is told when an operation starts (``begin``: it may make a span current)
and ends (``end``: how long it took and the error it raised, if any). `attach` wraps
the operations of one backend instance the first time an observer is added, so a
backend nobody observes runs its methods unwrapped. An observer that fails is logged
and skipped: it never turns a store call into an error, nor hides the store's own.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, Protocol

from snapstore import logs

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


def operations(cls: type) -> list[str]:
    """The public operations of a backend class (what `attach` wraps)."""
    return sorted(
        name
        for name, value in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and name not in NOT_OPERATIONS
    )


def _begun(
    observers: list[Observer], operation: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[tuple[Observer, Any]]:
    begun = []
    for observer in observers:
        try:
            begun.append((observer, observer.begin(operation, args, kwargs)))
        except Exception:
            logs.store.exception("observer %r failed at the start of %s", observer, operation)
    return begun


def _ended(
    begun: list[tuple[Observer, Any]], operation: str, seconds: float, error: BaseException | None
) -> None:
    for observer, token in reversed(begun):
        try:
            observer.end(token, operation, seconds, error)
        except Exception:
            logs.store.exception("observer %r failed at the end of %s", observer, operation)


def _observed(backend: Any, operation: str, method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            begun = _begun(backend._observers, operation, args, kwargs)
            started, error = time.perf_counter(), None
            try:
                return await method(*args, **kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _ended(begun, operation, time.perf_counter() - started, error)

        return run_async

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        begun = _begun(backend._observers, operation, args, kwargs)
        started, error = time.perf_counter(), None
        try:
            return method(*args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _ended(begun, operation, time.perf_counter() - started, error)

    return run


def attach(backend: Any, observer: Observer) -> None:
    """Add ``observer`` to ``backend`` (its operations are wrapped on the first one)."""
    if not vars(backend).get("_observed_operations"):
        for name in operations(type(backend)):
            setattr(backend, name, _observed(backend, name, getattr(backend, name)))
        backend._observed_operations = True
    backend._observers = [*backend._observers, observer]
