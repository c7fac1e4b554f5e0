"""Public API for services to register handlers for their own event types.

    from smartflow_streams.startup.handlers import handlers

    @handlers.transactional("memory.extract.requested", service="memory", model=MyPayload)
    async def extract(ctx: HandlerContext, session: AsyncSession, payload: MyPayload) -> None:
        ...  # business writes; they commit atomically with the outbox row's `consumed`

Two kinds:
- ``transactional`` (the default pattern, upstream ``ConsumeAndMarkConsumed`` with a callback): the function runs
  inside the outbox consume transaction; its writes and ``consumed`` commit together; duplicates never run it.
- ``custom``: the function gets the context and must mark the row itself (``ctx.repo``), for work that cannot sit in
  one transaction (the Feishu POST).

Either kind may also handle many events at once: pass ``batch=`` to the decorator (the dispatcher uses it when
``worker.batched_handlers`` is on and falls back to ``fn`` one by one when a batch call raises). A transactional
``batch(ctx, session, payloads) -> results`` runs inside one consume transaction for all the rows (it must give the
same end state as calling ``fn`` for each payload in order); a custom ``batch(ctx, [(outbox_id, payload)]) ->
[result or exception]`` marks the rows itself and returns per item the result or the error to classify.
``on_error=`` names a best-effort hook ``(ctx, payload, exc)`` run after a failed call, before the row goes to
retry or ``dead`` (its own failures are logged, never raised). Both live on the :class:`HandlerSpec`.

Registering a handler also registers ``event_type -> service`` in the route registry (conflicting owner: error).
One handler per event type; registering a different function again raises (upstream silently overwrote).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from smartflow_streams.catalog import RouteRegistry, registry as default_registry
from smartflow_streams.contracts.envelope import ACCEPTED_CONTRACT_VERSIONS, KafkaEnvelope
from smartflow_streams.core.errors import RouteConflictError

if TYPE_CHECKING:  # type-only: both import this module's room siblings at run time
    from smartflow_streams.outbox.repository import OutboxRepository
    from smartflow_streams.startup.runtime import WorkerRuntime


@dataclass
class HandlerContext:
    """What a handler gets besides its payload."""

    service: str
    envelope: KafkaEnvelope | None  # None for a batch function (each item has its own)
    repo: OutboxRepository  # bound to the service's table
    sessions: Callable[[], AsyncSession]
    runtime: WorkerRuntime  # settings, notification service, preview builder, ...
    activate: Callable[[int], None] | None = None  # batch: make item i's Kafka event current (Faust table writes)


TransactionalFn = Callable[[HandlerContext, AsyncSession, Any], Awaitable[Any]]
CustomFn = Callable[[HandlerContext, Any], Awaitable[Any]]
TransactionalBatchFn = Callable[[HandlerContext, AsyncSession, list[Any]], Awaitable[list[Any]]]
CustomBatchFn = Callable[[HandlerContext, list[tuple[int, Any]]], Awaitable[list[Any]]]
ErrorHook = Callable[[HandlerContext, Any, Exception], Awaitable[None]]


@dataclass(frozen=True)
class HandlerSpec:
    event_type: str
    service: str
    fn: Callable[..., Awaitable[Any]]
    transactional: bool
    parse: Callable[[Any], Any] | None = None
    versions: tuple[str, ...] = ACCEPTED_CONTRACT_VERSIONS
    batch: Callable[..., Awaitable[list[Any]]] | None = None  # TransactionalBatchFn | CustomBatchFn
    on_error: ErrorHook | None = None

    def decode(self, envelope: KafkaEnvelope) -> Any:
        """The payload as the handler wants it: ``parse(payload JSON)`` or the decoded JSON value."""
        return self.parse(envelope.payload) if self.parse else envelope.decoded()


@dataclass
class HandlerRegistry:
    routes: RouteRegistry = field(default_factory=lambda: default_registry)
    _specs: dict[str, HandlerSpec] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, spec: HandlerSpec) -> HandlerSpec:
        self.routes.register_event(spec.event_type, spec.service)
        with self._lock:
            current = self._specs.get(spec.event_type)
            if current is not None and current.fn is not spec.fn:
                raise RouteConflictError(f"a handler for {spec.event_type} is already registered ({current.fn!r})")
            self._specs[spec.event_type] = spec
        return spec

    def transactional(
        self, event_type: str, *, service: str, model: Any = None, versions: tuple[str, ...] | None = None,
        batch: TransactionalBatchFn | None = None, on_error: ErrorHook | None = None,
    ) -> Callable[[TransactionalFn], TransactionalFn]:
        def decorator(fn: TransactionalFn) -> TransactionalFn:
            self.register(HandlerSpec(event_type, service, fn, True, _parser(model),
                                      versions or ACCEPTED_CONTRACT_VERSIONS, batch, on_error))
            return fn
        return decorator

    def custom(
        self, event_type: str, *, service: str, model: Any = None, versions: tuple[str, ...] | None = None,
        batch: CustomBatchFn | None = None, on_error: ErrorHook | None = None,
    ) -> Callable[[CustomFn], CustomFn]:
        def decorator(fn: CustomFn) -> CustomFn:
            self.register(HandlerSpec(event_type, service, fn, False, _parser(model),
                                      versions or ACCEPTED_CONTRACT_VERSIONS, batch, on_error))
            return fn
        return decorator

    def get(self, event_type: str) -> HandlerSpec | None:
        with self._lock:
            return self._specs.get(event_type)

    def for_service(self, service: str) -> list[HandlerSpec]:
        with self._lock:
            return [s for s in self._specs.values() if s.service == service]


def _parser(model: Any) -> Callable[[Any], Any] | None:
    if model is None:
        return None
    return model.parse if hasattr(model, "parse") else model


handlers = HandlerRegistry()
