"""OpenTelemetry traces for a backend (the ``tracing`` extra: opentelemetry-api).

``instrument(backend)`` makes every public operation a span named ``snapstore.<op>``
(``snapstore.save``, ``snapstore.find_available_tasks``...), current while it runs, so
spans of the database driver nest under it. An operation on a snapshot that carries a
``trace_parent`` (W3C traceparent) continues that trace: the checkpoints of one
workflow run land in the trace that started it, whichever worker writes them. Other
operations are children of whatever span is current. Attributes: ``db.system``
(postgresql), ``snapstore.schema``, ``snapstore.instance_id`` where there is one; an
error sets the span's status and is recorded on it.
"""

from __future__ import annotations

import inspect
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from snapstore import __version__, observe
from snapstore.model import WorkflowSnapshot

_PROPAGATOR = TraceContextTextMapPropagator()


def _snapshot(args: tuple[Any, ...], kwargs: dict[str, Any]) -> WorkflowSnapshot | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, WorkflowSnapshot):
            return value
    return None


def _first_parameters(cls: type) -> dict[str, str]:
    """Each operation's first parameter after self, to tell which name an instance."""
    found = {}
    for name in observe.operations(cls):
        parameters = list(inspect.signature(getattr(cls, name)).parameters)[1:]
        if parameters:
            found[name] = parameters[0]
    return found


def _instance_id(first: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The instance an operation is about: its snapshot's, its ``instance_id`` argument,
    or its claim's (None for operations on many instances)."""
    found = _snapshot(args, kwargs)
    if found is not None:
        return found.instance_id
    if first not in ("instance_id", "claim"):
        return None
    value = kwargs.get(first, args[0] if args else None)
    if first == "claim":
        value = getattr(value, "instance_id", None)
    return value if isinstance(value, str) else None


class _Spans:
    """The observer: a span per operation, made current for its duration."""

    def __init__(self, tracer: trace.Tracer, schema: str, first: dict[str, str]) -> None:
        self.tracer = tracer
        self.schema = schema
        self.first = first

    def begin(
        self, operation: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Span, object]:
        snapshot = _snapshot(args, kwargs)
        parent = None
        if snapshot is not None and snapshot.trace_parent:
            parent = _PROPAGATOR.extract({"traceparent": snapshot.trace_parent})
        attributes: dict[str, str] = {"db.system": "postgresql", "snapstore.schema": self.schema}
        instance_id = _instance_id(self.first.get(operation), args, kwargs)
        if instance_id is not None:
            attributes["snapstore.instance_id"] = instance_id
        span = self.tracer.start_span(
            f"snapstore.{operation}",
            context=parent,
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
        )
        return span, context.attach(trace.set_span_in_context(span))

    def end(
        self,
        token: tuple[Span, object],
        operation: str,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        span, attached = token
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()
        context.detach(attached)  # type: ignore[arg-type]


def instrument(backend: Any, *, tracer_provider: TracerProvider | None = None) -> None:
    """Trace ``backend``'s operations with ``tracer_provider`` (default: the global one)."""
    tracer = trace.get_tracer("snapstore", __version__, tracer_provider=tracer_provider)
    backend.add_observer(_Spans(tracer, backend.schema, _first_parameters(type(backend))))
