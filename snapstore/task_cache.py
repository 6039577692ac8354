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
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final, NamedTuple

from snapstore.statements import TaskRow

DEFAULT_MAX_INSTANCES: Final = 10_000


class Known(NamedTuple):
    """What one save left in the store: when that life of the instance began, its rows."""

    created_at: datetime | None
    rows: Mapping[str, TaskRow]


UNKNOWN: Final = Known(None, {})


class Stored(NamedTuple):
    """One committed save, as the cache learns of it."""

    instance_id: str
    version: int
    created_at: datetime
    rows: Mapping[str, TaskRow]


class TaskCache:
    """A bounded, thread-safe LRU of instance id -> (version, `Known`)."""

    def __init__(self, max_instances: int = DEFAULT_MAX_INSTANCES) -> None:
        self._max = max_instances
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[int, Known]] = OrderedDict()

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
        self.remember_many([Stored(instance_id, version, created_at, rows)])

    def remember_many(self, saves: Iterable[Stored]) -> None:
        """Learn a commit's saves under one lock acquisition."""
        with self._lock:
            data = self._data
            for instance_id, version, created_at, rows in saves:
                current = data.get(instance_id)
                if current is not None and current[0] > version:
                    continue  # a newer save already landed
                data[instance_id] = (version, Known(created_at, rows))
                data.move_to_end(instance_id)
            while len(data) > self._max:
                data.popitem(last=False)

    def forget(self, instance_id: str) -> None:
        with self._lock:
            self._data.pop(instance_id, None)
