"""Remembers which task rows a store already holds, so saves send only what changed.

After a save at version v, the tasks table holds exactly that snapshot's task
rows. A later save with ``expected_version == v`` can then skip every row
equal to the remembered one (compared by value, encoded output included, so
in-place mutation of an output is still seen): if the CAS succeeds, the row is
already right; if it fails, nothing is written anyway. This keeps a
long workflow's per-save cost proportional to what changed, not to its length.

"The store holds version v" is only proof of which rows it holds while v names
one write: another process may delete the instance and create it again up to the
same version. So the cache also keeps the instance's ``created_at`` (the server
time of the transaction that created this life of the id, returned by every
save), and a save that skips rows requires it: a recreated instance makes the
save fail as a conflict instead of pairing this checkpoint with task rows that
belong to someone else.

Memory is bounded by bytes, not only by instances: a row keeps a 16-byte digest of
its encoded output, never the output itself (1 MB outputs would otherwise pin 1 GB
per thousand cached instances), and a finished instance is forgotten at once (no
later save of it can succeed).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final, NamedTuple

from snapstore.rows import (
    ENTRY_OVERHEAD,
    UNKNOWN,
    Known,
    TaskRow,
    rows_footprint,
)

__all__ = ["UNKNOWN", "Known", "Stored", "TaskCache"]

DEFAULT_MAX_INSTANCES: Final = 10_000
DEFAULT_MAX_BYTES: Final = 64 * 2**20


class Stored(NamedTuple):
    """One committed save, as the cache learns of it."""

    instance_id: str
    version: int
    known: Known  # what it left in the store


def footprint(instance_id: str, known: Known) -> int:
    """About how many bytes remembering a save keeps alive (its `Prior` knows, counted
    as its rows were added; without one, counted here)."""
    prior = known.prior
    rows_size = prior.footprint if prior is not None else rows_footprint(known.rows.items())
    return ENTRY_OVERHEAD + len(instance_id) + rows_size


class TaskCache:
    """A bounded, thread-safe LRU of instance id -> (version, `Known`): at most
    ``max_instances`` entries and about ``max_bytes`` (see `footprint`)."""

    def __init__(
        self, max_instances: int = DEFAULT_MAX_INSTANCES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self._max = max_instances
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[int, Known, int]] = OrderedDict()

    @property
    def size(self) -> tuple[int, int]:
        """(instances, approximate bytes) remembered now."""
        with self._lock:
            return len(self._data), self._bytes

    def known(self, instance_id: str, expected_version: int | None) -> Known:
        """What the store holds at ``expected_version``, if that is the remembered version."""
        if expected_version is None:
            return UNKNOWN
        with self._lock:
            entry = self._data.get(instance_id)
            if entry is None or entry[0] != expected_version:
                return UNKNOWN
            self._data.move_to_end(instance_id)
            return entry[1]

    def remember(
        self,
        instance_id: str,
        version: int,
        created_at: datetime,
        rows: Mapping[str, TaskRow],
    ) -> None:
        self.remember_many([Stored(instance_id, version, Known(created_at, rows))])

    def remember_many(self, saves: Iterable[Stored]) -> None:
        """Learn a commit's saves under one lock acquisition."""
        with self._lock:
            data = self._data
            for instance_id, version, known in saves:
                current = data.get(instance_id)
                if current is not None:
                    if current[0] > version and current[1].created_at == known.created_at:
                        continue  # a newer save of this life of the id already landed
                    self._bytes -= current[2]
                size = footprint(instance_id, known)
                data[instance_id] = (version, known, size)
                data.move_to_end(instance_id)
                self._bytes += size
            while data and (len(data) > self._max or self._bytes > self._max_bytes):
                self._bytes -= data.popitem(last=False)[1][2]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def keep_life(self, instance_id: str, created_at: datetime | None) -> None:
        """Forget ``instance_id`` if what is remembered is another life of the id than
        the one read (``created_at``): deleted and created again by another process. A
        save at the version just read then sends every row instead of failing its CAS."""
        with self._lock:
            entry = self._data.get(instance_id)
            if entry is not None and entry[1].created_at != created_at:
                self._bytes -= entry[2]
                del self._data[instance_id]

    def forget(self, instance_id: str) -> None:
        with self._lock:
            entry = self._data.pop(instance_id, None)
            if entry is not None:
                self._bytes -= entry[2]
