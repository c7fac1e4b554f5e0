"""Optional OpenTelemetry tracing across both hops: commit -> relay publish -> handler -> second relay publish ->
handler -> webhook POST, one trace per trigger.

Invariants and limits:
- Off by default (``SMARTFLOW_TRACING__ENABLED=false``). While off, :func:`active` is False and every hook in the
  relay, the dispatcher, the trigger workflow and the notification service is skipped behind one boolean test per
  batch (the relay, the workflow) or per event (the dispatcher): no span, no header, no extra column, no extra
  statement. ``bench/tracing_bench.py`` measures the hooks both ways.
- The upstream ``trace_id`` (envelope payload field and Kafka header) is never touched; the W3C ``traceparent``
  (and ``tracestate`` when a sampler set one) Kafka header is written *next to* it by the relay.
- Second hop: the outbox row a handler writes carries its trace context in the nullable ``trace_context`` column
  (ours; Go inserts leave it NULL and GORM ignores it), a W3C carrier as JSON text of at most
  :data:`MAX_CONTEXT_CHARS` (512) characters. A row without one (written by Go) starts a new trace at its relay
  publish.
- Spans: ``outbox publish <service>`` (PRODUCER, from the row's ``created_at``, i.e. its commit, to the broker's
  ack), ``outbox handle <event type>`` (CONSUMER, child of the message's ``traceparent``; in a batch one span per
  event covering the batch call), ``webhook POST`` (CLIENT). A retry-scanner POST has no event and starts its own
  trace.
- Exporter: OTLP over HTTP (``tracing.exporter=otlp``, package extra ``smartflow-streams[otlp]``), ``console``, or
  ``none`` (spans are made but not exported: tests add their own in-memory processor through :func:`configure`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from opentelemetry import context as otel_context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from config import Settings

log = logging.getLogger(__name__)

MAX_CONTEXT_CHARS = 512
TRACE_HEADERS = ("traceparent", "tracestate")

_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_zone: ZoneInfo | None = None
# Per batch (dispatcher): correlation key -> the OTel context of the event it belongs to (see bind_batch).
_batch_contexts: contextvars.ContextVar[dict[Any, otel_context.Context] | None] = contextvars.ContextVar(
    "smartflow_batch_trace_contexts", default=None)


def active() -> bool:
    """True when tracing is configured on in this process (one global test; the hooks check it first)."""
    return _tracer is not None


def configure(settings: Settings, role: str, *, processors: Sequence[SpanProcessor] = ()) -> bool:
    """Set up tracing for this process if ``settings.tracing.enabled``; returns whether it is on. ``role`` (relay,
    worker) becomes part of ``service.name``. ``processors``: extra span processors (tests: in-memory exporter).
    Safe to call again: the previous provider is shut down (its spans flushed) first."""
    global _provider, _tracer, _zone
    shutdown()
    cfg = settings.tracing
    if not cfg.enabled:
        return False
    name = cfg.service_name or f"{settings.app_id}-{role}"
    provider = TracerProvider(resource=Resource.create({"service.name": name, "smartflow.role": role}),
                              sampler=ParentBasedTraceIdRatio(cfg.sample_ratio))
    exporter: Any = None
    if cfg.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # the exporter is an optional extra
            raise RuntimeError("tracing.exporter=otlp needs the OTLP exporter: pip install "
                               "'smartflow-streams[otlp]' (opentelemetry-exporter-otlp-proto-http)") from exc
        headers = {k: v.get_secret_value() for k, v in cfg.otlp_headers.items()}
        exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint, headers=headers or None,
                                    timeout=cfg.export_timeout_seconds)
    elif cfg.exporter == "console":
        exporter = ConsoleSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    for processor in processors:
        provider.add_span_processor(processor)
    _provider, _tracer, _zone = provider, provider.get_tracer("smartflow_streams"), settings.zone
    log.info("tracing on: service.name=%s exporter=%s sample_ratio=%g", name, cfg.exporter, cfg.sample_ratio)
    return True


def shutdown() -> None:
    """Flush and stop the provider (no-op when off)."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def _t() -> trace.Tracer:
    assert _tracer is not None, "tracing hook called while tracing is off"
    return _tracer


# -- carriers ---------------------------------------------------------------------------------------------------


def carrier_json(ctx: otel_context.Context | None = None) -> str | None:
    """The W3C carrier of ``ctx`` (default: the current context) as JSON text for ``trace_context``; None when
    there is no valid span in it."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    if "traceparent" not in carrier:
        return None
    text = json.dumps(carrier, separators=(",", ":"))
    return text if len(text) <= MAX_CONTEXT_CHARS else json.dumps({"traceparent": carrier["traceparent"]})


def context_from_json(text: str | None) -> otel_context.Context | None:
    if not text:
        return None
    try:
        carrier = json.loads(text)
    except ValueError:
        return None
    return _PROPAGATOR.extract(carrier) if isinstance(carrier, dict) else None


def context_from_headers(headers: Any) -> otel_context.Context | None:
    """OTel context from Kafka headers (a list of ``(name, bytes)`` or a mapping), None without ``traceparent``."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    carrier = {}
    for name, value in items:
        if name in TRACE_HEADERS and value is not None:
            carrier[name] = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    return _PROPAGATOR.extract(carrier) if "traceparent" in carrier else None


# -- relay ------------------------------------------------------------------------------------------------------


async def start_publish_spans(engine: Any, table: Any, service: str, rows: Sequence[Any],
                              messages: Sequence[Any]) -> dict[int, Span]:
    """Relay hook (only while :func:`active`): read the batch's stored trace contexts (one SELECT, rows with a
    context only), start one PRODUCER span per message (parent: the row's context; start: the row's commit) and
    append its ``traceparent``/``tracestate`` to the message headers. End them with :func:`end_publish_spans`."""
    import sqlalchemy as sa

    ids = [m.row_id for m in messages]
    stored: dict[int, str] = {}
    if ids:
        async with engine.connect() as conn:
            # ids inlined (all pass int()): 500 bound parameters cost ~10x more CPU than the literal list
            id_list = sa.text(f"{table.name}.id IN ({','.join(str(int(i)) for i in ids)})")
            result = await conn.execute(sa.select(table.c.id, table.c.trace_context).where(
                id_list, table.c.trace_context.is_not(None)))
            stored = {int(i): str(c) for i, c in result.all()}
    created = {r.id: r.created_at for r in rows}
    spans: dict[int, Span] = {}
    tracer = _t()
    for m in messages:
        span = tracer.start_span(
            f"outbox publish {service}", context=context_from_json(stored.get(m.row_id)), kind=SpanKind.PRODUCER,
            start_time=_epoch_ns(created.get(m.row_id)),
            attributes={"messaging.system": "kafka", "messaging.destination.name": m.topic,
                        "messaging.operation.type": "publish", "smartflow.outbox_id": m.row_id,
                        "smartflow.service": service})
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        m.headers.extend((name, value.encode("latin-1")) for name, value in carrier.items())
        spans[m.row_id] = span  # type: ignore[assignment]
    return spans


def end_publish_spans(spans: Mapping[int, Span], failures: Mapping[int, Any]) -> None:
    """End the relay's spans: OK for acknowledged rows, ERROR with the reason for the others."""
    for row_id, span in spans.items():
        failure = failures.get(row_id)
        if failure is not None:
            span.set_status(Status(StatusCode.ERROR, str(getattr(failure, "reason", failure))))
        span.end()


def _epoch_ns(value: datetime | None) -> int | None:
    if value is None or _zone is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=_zone)
    return int(aware.timestamp() * 1_000_000_000)


# -- worker -----------------------------------------------------------------------------------------------------


def _event_headers(event: Any) -> Any:
    message = getattr(event, "message", None)
    return getattr(message, "headers", None)


def _current_faust_event() -> Any:
    from faust.streams import _current_event

    ref = _current_event.get(None)
    return ref() if ref is not None else None


@contextlib.contextmanager
def handler_span(service: str, event_type: str, outbox_id: int, event: Any = None) -> Iterator[Span]:
    """CONSUMER span around one handler call, child of the message's ``traceparent`` (``event``: the Faust event,
    default the current one) and current for the call, so rows it enqueues and POSTs it makes join the trace."""
    parent = context_from_headers(_event_headers(event if event is not None else _current_faust_event()))
    with _t().start_as_current_span(
            f"outbox handle {event_type}", context=parent, kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "kafka", "messaging.operation.type": "process",
                        "smartflow.service": service, "smartflow.event_type": event_type,
                        "smartflow.outbox_id": outbox_id}) as span:
        yield span  # type: ignore[misc]


@contextlib.contextmanager
def batch_spans(service: str, event_type: str, events: Sequence[Any], payloads: Sequence[Any],
                outbox_ids: Sequence[int]) -> Iterator[list[Span]]:
    """One CONSUMER span per event of a batch call (each the child of its own message's ``traceparent``), bound to
    its payload for the duration (:func:`context_for`), so per-item work inside the batch joins the right trace."""
    tracer = _t()
    spans: list[Span] = []
    bound: dict[Any, otel_context.Context] = {}
    for event, payload, outbox_id in zip(events, payloads, outbox_ids):
        span = tracer.start_span(
            f"outbox handle {event_type}", context=context_from_headers(_event_headers(event)), kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "kafka", "messaging.operation.type": "process",
                        "smartflow.service": service, "smartflow.event_type": event_type,
                        "smartflow.outbox_id": outbox_id, "smartflow.batch_size": len(events)})
        spans.append(span)  # type: ignore[arg-type]
        ctx = trace.set_span_in_context(span)
        for key in _correlation_keys(payload):
            bound[key] = ctx
    token = _batch_contexts.set(bound)
    try:
        yield spans
    except BaseException as exc:
        for span in spans:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        _batch_contexts.reset(token)
        for span in spans:
            span.end()


def _correlation_keys(payload: Any) -> list[Any]:
    # The payload object itself (the trigger workflow gets the very objects), and its preview id (a notification
    # POST knows only its record, whose preview id is the event's).
    keys: list[Any] = [id(payload)]
    preview_id = getattr(payload, "preview_id", None)
    if isinstance(preview_id, str) and preview_id:
        keys.append(("preview", preview_id))
    return keys


def context_for(payload: Any = None, *, preview_id: str = "") -> otel_context.Context | None:
    """The context of the batch item ``payload`` (or of the item with ``preview_id``); None outside a batch (the
    current context then applies)."""
    bound = _batch_contexts.get()
    if not bound:
        return None
    if payload is not None and id(payload) in bound:
        return bound[id(payload)]
    return bound.get(("preview", preview_id)) if preview_id else None


def stamp_row(row: dict[str, Any], payload: Any) -> None:
    """Trigger-workflow hook (only while :func:`active`): give a new outbox row the trace context of the event
    ``payload`` that wrote it (``trace_context``; None when there is none). Every row of a traced batch gets the key,
    so one executemany still fits all of them."""
    row["trace_context"] = carrier_json(context_for(payload))


@contextlib.contextmanager
def webhook_span(kind: str, preview_id: str, notification_id: int) -> Iterator[Span]:
    """CLIENT span around one webhook POST, in the trace of the event that asked for it."""
    with _t().start_as_current_span(
            "webhook POST", context=context_for(preview_id=preview_id), kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "smartflow.webhook_kind": kind,
                        "smartflow.notification_id": notification_id}) as span:
        yield span  # type: ignore[misc]


def record_webhook_result(span: Span, result: Any) -> None:
    """Outcome of a POST on its span: ``smartflow.outcome`` / error code; ERROR status unless it succeeded."""
    outcome = getattr(getattr(result, "outcome", None), "value", "")
    span.set_attribute("smartflow.outcome", outcome)
    code = getattr(result, "error_code", "")
    if code:
        span.set_attribute("smartflow.error_code", code)
    if outcome != "success":
        span.set_status(Status(StatusCode.ERROR, code or outcome))
