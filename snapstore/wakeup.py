"""LISTEN/NOTIFY wakeups with a bounded, coalescing queue and a fallback poll."""

from __future__ import annotations

from snapstore.runner import AsyncRunner, SyncRunner


class WakeupMixin(SyncRunner):
    """LISTEN/NOTIFY wakeups with a bounded, coalescing queue and a fallback poll. (sync)"""


class AsyncWakeupMixin(AsyncRunner):
    """LISTEN/NOTIFY wakeups with a bounded, coalescing queue and a fallback poll. (async)"""
