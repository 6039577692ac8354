"""Metrics (prometheus-client) and traces (OpenTelemetry) of a backend's operations."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from snapstore import ConflictError, JsonCodec, PostgresBackend, metrics, tracing
from tests.twins import snap


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``url``, by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def served(
    backend: PostgresBackend[JsonCodec],
) -> Iterator[tuple[PostgresBackend[JsonCodec], str]]:
    registry = CollectorRegistry()
    metrics.instrument(backend, registry=registry)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield backend, f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        backend._observers = []  # the session's backend goes on uninstrumented


def test_operations_are_timed_and_counted_and_the_store_is_gauged(
    served: tuple[PostgresBackend[JsonCodec], str],
) -> None:
    backend, url = served
    schema = (("schema", backend.schema),)
    backend.save(snap("a"))
    backend.save(snap("b"))
    with pytest.raises(ConflictError):
        backend.save(snap("a"), 5)
    backend.claim("b", "w1")
    found = scrape(url)

    def sample(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted({**dict(schema), **labels}.items())))]

    assert sample("snapstore_operation_duration_seconds_count", operation="save", outcome="ok") == 2
    outcome = {"operation": "save", "outcome": "ConflictError"}
    assert sample("snapstore_operation_duration_seconds_count", **outcome) == 1
    assert sample("snapstore_conflicts_total", operation="save") == 1
    assert sample("snapstore_instances", status="InProgress") == 2
    assert sample("snapstore_due") == 1  # b is leased
    assert sample("snapstore_leases", state="live") == 1
    assert sample("snapstore_oldest_due_seconds") >= 0
    assert sample("snapstore_poison_total", kind="instance") == 0
    assert sample("snapstore_retries_total") == 0
    assert sample("snapstore_replica_reads_total") == 0  # no replica: tests/test_replicas.py
    assert sample("snapstore_replica_fallbacks_total", reason="behind") == 0
    assert sample("snapstore_pool", figure="pool_max") >= 1
    assert ("snapstore_wakeup_drop_ratio", schema) in found


def test_the_cli_serves_metrics_over_http(dsn: str, backend: PostgresBackend[JsonCodec]) -> None:
    backend.save(snap("wf"))
    script = Path(sys.executable).parent / "snapstore"
    server = subprocess.Popen(
        [
            str(script),
            "metrics",
            "--serve",
            "127.0.0.1:0",
            "--dsn",
            dsn,
            "--schema",
            backend.schema,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("serving metrics on http://127.0.0.1:"), line
        found = scrape(line.split(" on ", 1)[1].strip())
        key = ("snapstore_instances", (("schema", backend.schema), ("status", "InProgress")))
        assert found[key] == 1
    finally:
        server.terminate()
        assert server.wait(10) == 0


@pytest.fixture
def spans(backend: PostgresBackend[JsonCodec]) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(backend, tracer_provider=provider)
    try:
        yield exporter
    finally:
        backend._observers = []


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_a_span_per_operation_continuing_the_snapshots_trace(
    backend: PostgresBackend[JsonCodec], spans: InMemorySpanExporter
) -> None:
    traced = snap("wf", trace_parent=f"00-{TRACE_ID}-{PARENT_ID}-01")
    backend.save(traced)
    backend.load("wf")
    with pytest.raises(ConflictError):
        backend.save(traced, 9)
    saved, loaded, refused = spans.get_finished_spans()
    assert [s.name for s in (saved, loaded, refused)] == [
        "snapstore.save",
        "snapstore.load",
        "snapstore.save",
    ]
    assert f"{saved.context.trace_id:032x}" == TRACE_ID
    assert saved.parent is not None
    assert f"{saved.parent.span_id:016x}" == PARENT_ID
    assert saved.attributes is not None
    assert saved.attributes["snapstore.instance_id"] == "wf"
    assert loaded.parent is None  # no trace of its own to continue
    assert refused.status.status_code is StatusCode.ERROR
    assert [e.name for e in refused.events] == ["exception"]


def test_several_stores_share_a_registry_and_a_broken_one_does_not_fail_the_scrape(
    backend: PostgresBackend[JsonCodec], dsn: str, fresh_schema: str
) -> None:
    registry = CollectorRegistry()
    other = PostgresBackend[JsonCodec].connect(dsn, schema=fresh_schema)
    try:
        metrics.instrument(backend, registry=registry)

        def unreadable() -> None:
            raise RuntimeError("no")

        metrics.instrument(other, registry=registry, read_stats=unreadable)
        with pytest.raises(ValueError, match="instrumented already"):
            metrics.instrument(backend, registry=registry)
        server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
        try:
            found = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
            assert found[("snapstore_store_up", (("schema", backend.schema),))] == 1
            assert found[("snapstore_store_up", (("schema", fresh_schema),))] == 0
            other.close()  # a closed backend is left out, not an error
            found = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
            assert ("snapstore_store_up", (("schema", fresh_schema),)) not in found
        finally:
            server.shutdown()
    finally:
        other.close()
        backend._observers = []


def test_spans_name_an_instance_only_for_operations_on_one(
    backend: PostgresBackend[JsonCodec], spans: InMemorySpanExporter
) -> None:
    backend.save(snap("wf"))
    (task,) = backend.find_available_tasks("worker-1")
    backend.release(task.claim)
    saved, dispatched, released = spans.get_finished_spans()
    assert saved.attributes is not None
    assert dispatched.attributes is not None
    assert saved.attributes["snapstore.instance_id"] == "wf"
    assert "snapstore.instance_id" not in dispatched.attributes  # "worker-1" is no instance
    assert released.attributes is not None
    assert released.attributes["snapstore.instance_id"] == "wf"  # from the claim
