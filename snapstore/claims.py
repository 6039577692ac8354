"""Distributed task claims: TTL leases, dispatch and fencing."""

from __future__ import annotations

from snapstore.runner import AsyncRunner, SyncRunner


class ClaimsMixin(SyncRunner):
    """Distributed task claims: TTL leases, dispatch and fencing. (sync)"""


class AsyncClaimsMixin(AsyncRunner):
    """Distributed task claims: TTL leases, dispatch and fencing. (async)"""
