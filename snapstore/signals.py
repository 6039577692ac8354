"""Cancel/pause signals and buffered external events."""

from __future__ import annotations

from snapstore.runner import AsyncRunner, SyncRunner


class SignalsMixin(SyncRunner):
    """Cancel/pause signals and buffered external events. (sync)"""


class AsyncSignalsMixin(AsyncRunner):
    """Cancel/pause signals and buffered external events. (async)"""
