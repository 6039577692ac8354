"""Prometheus metrics for a backend (the ``metrics`` extra: prometheus-client).

``instrument(backend)`` registers, on ``registry`` (default: prometheus-client's):

* ``snapstore_operation_duration_seconds{operation, outcome}``: a histogram per public
  operation (save, save_many, load, claim, find_available_tasks, send_event...);
  outcome ``ok`` or the error's type;
* ``snapstore_conflicts_total{operation}`` and ``snapstore_claims_lost_total{operation}``;
* read when scraped: ``snapstore_retries_total``, ``snapstore_lost_connections_total
  {outcome}``, ``snapstore_poison_total{kind}``, the wakeup listeners' counters
  (``snapstore_wakeups_total{event}``, ``snapstore_wakeup_drop_ratio``), group commit
  (``snapstore_group_commit_*``), the pool (``snapstore_pool{figure}``) and, with
  ``store_gauges`` (default on), the store itself from one statement per scrape
  (`AsyncPostgresBackend.stats`): ``snapstore_instances{status}``, ``snapstore_due``,
  ``snapstore_oldest_due_seconds``, ``snapstore_leases{state}``, ``snapstore_events
  {state}``, ``snapstore_open_branches``.

Every series carries a ``schema`` label, so several stores share one registry.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from snapstore.errors import ClaimLostError, ConflictError
from snapstore.operations import StoreStats

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""Seconds: a save takes about a millisecond, a dispatch of a big backlog longer."""


class Metrics:
    """The metric families of one registry (shared by every backend instrumented on it)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.duration = Histogram(
            "snapstore_operation_duration_seconds",
            "Time of each public store operation, by outcome (ok or the error's type).",
            ["schema", "operation", "outcome"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.conflicts = Counter(
            "snapstore_conflicts",
            "Writes refused by the version check (ConflictError).",
            ["schema", "operation"],
            registry=registry,
        )
        self.claims_lost = Counter(
            "snapstore_claims_lost",
            "Writes refused because the lease was lost (ClaimLostError).",
            ["schema", "operation"],
            registry=registry,
        )


_BY_REGISTRY: dict[int, Metrics] = {}
_LOCK = threading.Lock()


def _metrics(registry: CollectorRegistry) -> Metrics:
    with _LOCK:
        found = _BY_REGISTRY.get(id(registry))
        if found is None or found.registry is not registry:
            found = _BY_REGISTRY[id(registry)] = Metrics(registry)
        return found


class _Timing:
    """The observer: one histogram sample per operation, and the refusals counted."""

    def __init__(self, metrics: Metrics, schema: str) -> None:
        self.metrics = metrics
        self.schema = schema

    def begin(self, operation: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        return None

    def end(self, token: Any, operation: str, seconds: float, error: BaseException | None) -> None:
        outcome = "ok" if error is None else type(error).__name__
        self.metrics.duration.labels(self.schema, operation, outcome).observe(seconds)
        if isinstance(error, ConflictError):
            self.metrics.conflicts.labels(self.schema, operation).inc()
        elif isinstance(error, ClaimLostError):
            self.metrics.claims_lost.labels(self.schema, operation).inc()


class StoreCollector(Collector):
    """What a backend knows and what its store holds, read when scraped."""

    def __init__(self, backend: Any, read_stats: Any | None) -> None:
        self.backend = backend
        self.read_stats = read_stats  # () -> StoreStats, or None: no store gauges

    def describe(self) -> list[Metric]:
        """Nothing up front: several backends (schemas) share the names on one registry,
        and describing by collecting would query the store at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        b, schema = self.backend, self.backend.schema
        counts = b.counts.snapshot()
        retries = CounterMetricFamily(
            "snapstore_retries", "Batches sent again after a deadlock.", labels=["schema"]
        )
        retries.add_metric([schema], counts.get("retries", 0))
        yield retries
        lost = CounterMetricFamily(
            "snapstore_lost_connections",
            "Writes whose connection was lost, by what a fresh connection found.",
            labels=["schema", "outcome"],
        )
        for outcome in ("committed", "resent", "unknown"):
            lost.add_metric([schema, outcome], counts.get(f"lost_connections_{outcome}", 0))
        yield lost
        poison = b.poison_counts
        bad = CounterMetricFamily(
            "snapstore_poison",
            "Unreadable items set aside (quarantined instances, buried events).",
            labels=["schema", "kind"],
        )
        bad.add_metric([schema, "instance"], poison.instances_quarantined)
        bad.add_metric([schema, "event"], poison.events_buried)
        yield bad
        yield from self._wakeups(schema, b.wakeup_stats())
        grouped = b.group_commit_stats
        if grouped is not None:
            yield from self._group_commit(schema, grouped)
        pool = GaugeMetricFamily(
            "snapstore_pool", "psycopg_pool figures.", labels=["schema", "figure"]
        )
        for figure, value in sorted(b.pool.get_stats().items()):
            pool.add_metric([schema, figure], value)
        yield pool
        if self.read_stats is not None:
            yield from store_gauges(schema, self.read_stats())

    @staticmethod
    def _wakeups(schema: str, stats: Any) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "snapstore_wakeups", "Wakeup listener counters.", labels=["schema", "event"]
        )
        for name, value in sorted(dataclasses.asdict(stats).items()):
            events.add_metric([schema, name], value)
        yield events
        ratio = GaugeMetricFamily(
            "snapstore_wakeup_drop_ratio", "Share of wakeups dropped.", labels=["schema"]
        )
        ratio.add_metric([schema], stats.drop_rate)
        yield ratio

    @staticmethod
    def _group_commit(schema: str, stats: Any) -> Iterator[Metric]:
        figures = {**dataclasses.asdict(stats), "mean_batch": stats.mean_batch}
        for name, value in sorted(figures.items()):
            family = GaugeMetricFamily(
                f"snapstore_group_commit_{name}", f"Group commit: {name}.", labels=["schema"]
            )
            family.add_metric([schema], value)
            yield family


def store_gauges(schema: str, stats: StoreStats) -> Iterator[Metric]:
    """The store's own figures as gauges."""
    instances = GaugeMetricFamily(
        "snapstore_instances", "Instances by status.", labels=["schema", "status"]
    )
    for status, count in stats.instances.items():
        instances.add_metric([schema, status], count)
    yield instances
    for name, help_, value in (
        ("snapstore_due", "Instances dispatchable now.", stats.due),
        (
            "snapstore_oldest_due_seconds",
            "How long the oldest dispatchable instance has waited.",
            stats.oldest_due_seconds or 0.0,
        ),
        ("snapstore_open_branches", "Branches not finished.", stats.open_branches),
        ("snapstore_dead_events", "Unreadable events set aside.", stats.dead_events),
    ):
        gauge = GaugeMetricFamily(name, help_, labels=["schema"])
        gauge.add_metric([schema], value)
        yield gauge
    leases = GaugeMetricFamily("snapstore_leases", "Leases by state.", labels=["schema", "state"])
    leases.add_metric([schema, "live"], stats.live_leases)
    leases.add_metric([schema, "expired"], stats.expired_leases)
    yield leases
    events = GaugeMetricFamily(
        "snapstore_events",
        "Buffered events (not_parked: on instances not waiting for one).",
        labels=["schema", "state"],
    )
    events.add_metric([schema, "buffered"], stats.buffered_events)
    events.add_metric([schema, "not_parked"], stats.events_not_parked)
    yield events


def instrument(
    backend: Any,
    *,
    registry: CollectorRegistry = REGISTRY,
    store_gauges: bool = True,
    read_stats: Any | None = None,
) -> Metrics:
    """Count and time ``backend``'s operations on ``registry`` and expose its figures.

    For a sync backend the store gauges are read with ``backend.stats()``; an asyncio
    backend cannot be called from the scraping thread, so pass ``read_stats`` (a
    callable returning `StoreStats`, e.g. a sync backend's ``stats``) or
    ``store_gauges=False``."""
    metrics = _metrics(registry)
    backend.add_observer(_Timing(metrics, backend.schema))
    reader = read_stats
    if store_gauges and reader is None:
        if getattr(backend, "_is_async", False):
            raise ValueError("an asyncio backend needs read_stats= (or store_gauges=False)")
        reader = backend.stats
    registry.register(StoreCollector(backend, reader if store_gauges else None))
    return metrics
