"""Thread-safe counters and latency samples for one benchmark window.

Workers record into a `Recorder`; only events inside the measurement window
count, so throughput is "completed during the window / window length" and
never a peak rate over a lucky second.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = math.ceil(q * len(sorted_values) / 100)  # 1-based: the smallest value covering q%
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def summarize_ms(samples: list[float]) -> dict[str, Any] | None:
    """p50/p95/p99/max in milliseconds of samples in seconds; None when empty."""
    if not samples:
        return None
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 50) * 1000, 3),
        "p95": round(percentile(ordered, 95) * 1000, 3),
        "p99": round(percentile(ordered, 99) * 1000, 3),
        "max": round(ordered[-1] * 1000, 3),
    }


class Recorder:
    """Counts saves and completed workflows and keeps latency samples.

    The window opens at `start` and closes at `stop`; events outside it are
    ignored so warm-up and drain do not inflate or deflate the rates.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.saves = 0
        self.workflows = 0
        self.workflow_latency: list[float] = []
        self.pickup_latency: list[float] = []
        self.branch_concurrency: list[float] = []  # per finished fork: branches at once
        self.errors: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.first_error: dict[str, str] = {}
        self.started = 0.0
        self.stopped = 0.0
        self._open = False

    def start(self) -> None:
        with self._lock:
            self.started = time.monotonic()
            self._open = True

    def stop(self) -> None:
        with self._lock:
            self.stopped = time.monotonic()
            self._open = False

    @property
    def window(self) -> float:
        end = self.stopped if not self._open else time.monotonic()
        return max(end - self.started, 1e-9) if self.started else 0.0

    def saved(self, count: int = 1) -> None:
        with self._lock:
            if self._open:
                self.saves += count

    def completed(self, latency: float) -> None:
        with self._lock:
            if self._open:
                self.workflows += 1
                self.workflow_latency.append(latency)

    def fanned(self, concurrency: float) -> None:
        with self._lock:
            if self._open:
                self.branch_concurrency.append(concurrency)

    def picked_up(self, latency: float) -> None:
        with self._lock:
            if self._open:
                self.pickup_latency.append(max(latency, 0.0))

    def note(self, what: str) -> None:
        """Count a noteworthy event that is not an error (e.g. a spurious dispatch)."""
        with self._lock:
            self.notes[what] += 1

    def error(self, exc: BaseException) -> None:
        """Errors are counted by type, never raised: a benchmark reports them instead."""
        name = type(exc).__name__
        with self._lock:
            self.errors[name] += 1
            self.first_error.setdefault(name, str(exc)[:300])
