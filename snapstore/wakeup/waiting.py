"""What truly differs between a thread and a task: how a listener runs in the
background, stops, sleeps and hands ids to waiting consumers.

Each name comes as a pair, the async one spelled ``Async...`` / ``a...``; the
listener source uses the async spelling and the generated sync listener the other
(see `snapstore._async_to_sync`). Keep the pairs small and their behaviour alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

T = TypeVar("T")
log = logging.getLogger("snapstore.wakeup")

STOP_CHECK_INTERVAL: Final = 0.1
"""How often a blocked sync listener looks at its stop flag: psycopg's notifies()
cannot be interrupted from another thread, so it waits in slices this long."""
ASYNC_STOP_CHECK_INTERVAL: Final = math.inf
"""A task is cancelled instead, so its wait needs no slicing."""
CLOSE_TIMEOUT: Final = 10.0


def resolve(value: Any) -> Any:
    """A pool's conninfo/kwargs may be a callable (rotating credentials)."""
    return value() if callable(value) else value


async def aresolve(value: Any) -> Any:
    """`resolve`, awaiting what an async pool's callable returns."""
    value = resolve(value)
    return await value if inspect.isawaitable(value) else value


class Mailbox:
    """Where consumer threads wait for ids. ``guard`` serialises access to the queue
    between the listener thread and consumers; `wake` is called with it held."""

    def __init__(self) -> None:
        self.guard = threading.Condition()

    def wake(self) -> None:
        self.guard.notify_all()

    def wait(self, ready: Callable[[], bool], take: Callable[[], T], timeout: float | None) -> T:
        """Wait up to ``timeout`` seconds for ``ready()``, then ``take()`` under the guard."""
        with self.guard:
            self.guard.wait_for(ready, timeout)
            return take()


class AsyncMailbox:
    """`Mailbox` for tasks of one event loop: no lock is needed (no await while the
    queue is touched), only an event to wake waiting consumers."""

    def __init__(self) -> None:
        self.guard = contextlib.nullcontext()
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(
        self, ready: Callable[[], bool], take: Callable[[], T], timeout: float | None
    ) -> T:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not ready():
                    self._event.clear()
                    await self._event.wait()
        return take()


class Worker:
    """Runs a listener's loop on a daemon thread; `stop` asks it to end and joins it."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=target, name=name, daemon=True)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def sleep(self, delay: float) -> None:
        """Sleep, cut short by `stop`."""
        self._stopping.wait(delay)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(CLOSE_TIMEOUT)
            if self._thread.is_alive():
                log.warning("wakeup listener thread did not stop within %ss", CLOSE_TIMEOUT)


class AsyncWorker:
    """Runs a listener's loop in a task; `stop` cancels it and waits for it to end."""

    def __init__(self, target: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._target = target
        self._name = name
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._target(), name=self._name)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])
