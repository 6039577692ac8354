"""Prometheus metrics for a backend (the ``metrics`` extra: prometheus-client).

``instrument(backend)`` registers, on ``registry`` (default: prometheus-client's):

* ``snapstore_operation_duration_seconds{operation, outcome}``: a histogram per public
  operation (save, save_many, load, claim, find_available_tasks, send_event...);
  outcome ``ok`` or the error's type;
* ``snapstore_conflicts_total{operation}`` and ``snapstore_claims_lost_total{operation}``;
* read when scraped: ``snapstore_retries_total``, ``snapstore_lost_connections_total
  {outcome}``, ``snapstore_replica_reads_total``, ``snapstore_replica_fallbacks_total
  {reason}``, ``snapstore_poison_total{kind}``, the wakeup listeners' counters
  (``snapstore_wakeups_total{event}``, ``snapstore_wakeup_drop_ratio``), group commit
  (``snapstore_group_commit_*``), the pool (``snapstore_pool{figure}``) and, with
  ``store_gauges`` (default on), the store itself from one statement of bounded cost
  per scrape (`AsyncPostgresBackend.stats` with ``exact=False``):
  ``snapstore_instances{status}``, ``snapstore_due``,
  ``snapstore_oldest_due_seconds``, ``snapstore_leases{state}``, ``snapstore_events
  {state}``, ``snapstore_open_branches``.

Every series carries a ``schema`` label, so several stores share one registry.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from snapstore import logs
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


_REGISTRIES: dict[int, tuple[CollectorRegistry, Metrics, StoreCollector]] = {}
_LOCK = threading.Lock()


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


class _Families:
    """Metric families by name, so each appears once however many backends report."""

    def __init__(self) -> None:
        self.found: dict[str, Metric] = {}

    def labelled(
        self,
        name: str,
        help_: str,
        schema: str,
        counts: dict[str, int],
        label: str,
        values: tuple[str, ...],
    ) -> None:
        """A counter per value of ``label``, read from ``counts`` under
        ``<name without snapstore_>_<value>``."""
        family = self.counter(name, help_, ["schema", label])
        key = name.removeprefix("snapstore_")
        for value in values:
            family.add_metric([schema, value], counts.get(f"{key}_{value}", 0))

    def counter(self, name: str, help_: str, labels: list[str]) -> CounterMetricFamily:
        family = self.found.setdefault(name, CounterMetricFamily(name, help_, labels=labels))
        assert isinstance(family, CounterMetricFamily)
        return family

    def gauge(self, name: str, help_: str, labels: list[str]) -> GaugeMetricFamily:
        family = self.found.setdefault(name, GaugeMetricFamily(name, help_, labels=labels))
        assert isinstance(family, GaugeMetricFamily)
        return family


class StoreCollector(Collector):
    """What the instrumented backends of one registry know, and what their stores hold,
    read when scraped. A backend that has gone (collected) or closed its pool is left
    out; a store that cannot be read says so (``snapstore_store_up`` 0) instead of
    failing the scrape."""

    def __init__(self) -> None:
        self.sources: list[tuple[weakref.ref[Any], Any | None]] = []
        self._lock = threading.Lock()

    def add(self, backend: Any, read_stats: Any | None) -> None:
        with self._lock:
            self.sources.append((weakref.ref(backend), read_stats))

    def describe(self) -> list[Metric]:
        """Nothing up front: describing by collecting would query stores at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            live = [(b, reader) for ref, reader in self.sources if (b := ref()) is not None]
        families = _Families()
        for backend, reader in live:
            if backend.pool.closed:
                continue
            self._backend(families, backend)
            if reader is not None:
                self._store(families, backend.schema, reader)
        yield from families.found.values()

    @staticmethod
    def _backend(f: _Families, b: Any) -> None:
        schema, counts = b.schema, b.counts.snapshot()
        f.counter(
            "snapstore_retries", "Batches sent again after a deadlock.", ["schema"]
        ).add_metric([schema], counts.get("retries", 0))
        lost = ("committed", "resent", "unknown")
        help_ = "Writes whose connection was lost, by what a fresh connection found."
        f.labelled("snapstore_lost_connections", help_, schema, counts, "outcome", lost)
        f.counter(
            "snapstore_replica_reads", "Reads a read replica answered.", ["schema"]
        ).add_metric([schema], counts.get("replica_reads", 0))
        why = ("behind", "unavailable", "refused", "down")
        help_ = "Reads the primary answered instead of a replica, by why."
        f.labelled("snapstore_replica_fallbacks", help_, schema, counts, "reason", why)
        poison = b.poison_counts
        bad = f.counter(
            "snapstore_poison",
            "Unreadable items set aside (quarantined instances, buried events).",
            ["schema", "kind"],
        )
        bad.add_metric([schema, "instance"], poison.instances_quarantined)
        bad.add_metric([schema, "event"], poison.events_buried)
        wakeups = b.wakeup_stats()
        events = f.counter("snapstore_wakeups", "Wakeup listener counters.", ["schema", "event"])
        for name, value in sorted(dataclasses.asdict(wakeups).items()):
            events.add_metric([schema, name], value)
        f.gauge("snapstore_wakeup_drop_ratio", "Share of wakeups dropped.", ["schema"]).add_metric(
            [schema], wakeups.drop_rate
        )
        grouped = b.group_commit_stats
        if grouped is not None:
            figures = {**dataclasses.asdict(grouped), "mean_batch": grouped.mean_batch}
            for name, value in sorted(figures.items()):
                f.gauge(
                    f"snapstore_group_commit_{name}", f"Group commit: {name}.", ["schema"]
                ).add_metric([schema], value)
        pool = f.gauge("snapstore_pool", "psycopg_pool figures.", ["schema", "figure"])
        for figure, value in sorted(b.pool.get_stats().items()):
            pool.add_metric([schema, figure], value)

    @staticmethod
    def _store(f: _Families, schema: str, reader: Any) -> None:
        up = f.gauge("snapstore_store_up", "1 if the store could be read this scrape.", ["schema"])
        try:
            stats = reader()
        except Exception as exc:  # a scrape must not fail for one store
            logs.store.warning(
                "metrics: store %s cannot be read: %s", schema, exc, extra={"schema": schema}
            )
            up.add_metric([schema], 0)
            return
        up.add_metric([schema], 1)
        store_gauges(f, schema, stats)


def store_gauges(f: _Families, schema: str, stats: StoreStats) -> None:
    """The store's own figures as gauges."""
    instances = f.gauge("snapstore_instances", "Instances by status.", ["schema", "status"])
    for status, count in stats.instances.items():
        instances.add_metric([schema, status], count)
    for name, help_, value in (
        ("snapstore_due", "Instances dispatchable now.", stats.due),
        (
            "snapstore_oldest_due_seconds",
            "How long the oldest dispatchable instance has waited.",
            stats.oldest_due_seconds or 0.0,
        ),
        ("snapstore_open_branches", "Branches of current forks not finished.", stats.open_branches),
        ("snapstore_dead_events", "Unreadable events set aside.", stats.dead_events),
    ):
        f.gauge(name, help_, ["schema"]).add_metric([schema], value)
    leases = f.gauge("snapstore_leases", "Leases by state.", ["schema", "state"])
    leases.add_metric([schema, "live"], stats.live_leases)
    leases.add_metric([schema, "expired"], stats.expired_leases)
    events = f.gauge(
        "snapstore_events",
        "Buffered events (not_parked: on instances not waiting for one).",
        ["schema", "state"],
    )
    events.add_metric([schema, "buffered"], stats.buffered_events)
    events.add_metric([schema, "not_parked"], stats.events_not_parked)


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
    if any(isinstance(o, _Timing) for o in backend._observers):
        raise ValueError(f"backend of schema {backend.schema!r} is instrumented already")
    reader = read_stats if store_gauges else None
    if store_gauges and reader is None:
        if backend._is_async:
            raise ValueError("an asyncio backend needs read_stats= (or store_gauges=False)")
        reader = functools.partial(backend.stats, exact=False)
    if reader is not None and inspect.iscoroutinefunction(reader):
        raise ValueError("read_stats must be a plain callable (it runs in the scraping thread)")
    with _LOCK:  # one set of families and one collector per registry
        found = _REGISTRIES.get(id(registry))
        if found is None or found[0] is not registry:
            found = _REGISTRIES[id(registry)] = (registry, Metrics(registry), StoreCollector())
            registry.register(found[2])
    _, metrics, collector = found
    collector.add(backend, reader)
    backend.add_observer(_Timing(metrics, backend.schema))
    return metrics
