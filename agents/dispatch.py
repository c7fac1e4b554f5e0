"""Per-message pipeline shared by every service agent: decode -> own? -> handler -> record the outcome.

Invariants:
- :meth:`Dispatcher.handle` never raises (except cancellation): Faust acks a message even when an agent raises,
  so every failure is caught, classified and recorded here (upstream spec 6.2, with traps 11 and 16 fixed).
- Poison -> outbox row ``dead`` with the reason: envelope JSON invalid but ``outbox_id`` recoverable, blank
  ``event_type``, no handler in this service, unsupported ``event_version``, payload invalid, or a handler raising a
  non-retriable error. A message with no usable ``outbox_id`` cannot reach a row: it is stored in
  ``outbox_dead_messages`` with the reason and its raw bytes (upstream committed it silently).
- Transient failure -> ``mark_failed_for_retry`` (backoff n² s, ``dead`` at ``max_retry``); the relay republishes.
- Another service's message -> skipped, row untouched (upstream 3.4).
- Recording a failure is retried for up to ~30 s (DB restarting). If it still fails, the message is acked with the
  row left ``published``; the relay's stale-published sweep (``relay.republish_after_seconds``, default 600 s)
  republishes it, so nothing is lost, only delayed. That is the documented answer to "a failure to record a
  failure".
- Duplicates (same outbox id again) are no-ops: the consumption-state table answers first, the row status
  (``consumed``/``dead`` under a row lock) decides.
- Batches (:meth:`Dispatcher.handle_batch`): events of one (partition, message key) run in offset order; different
  keys run concurrently, at most ``worker.max_in_flight`` at once (1 on SQLite, which has one writer). Upstream
  keys every event by its aggregate (user id for both contract events), so per-key order is the order that matters;
  the relative order of two keys was never defined (they may sit in different partitions). The agent acks the
  batch only after every event of it returned (``stream.take_events``), so a crash redelivers the whole batch and
  the duplicates are no-ops.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from faust.streams import _current_event

from smartflow_streams import clock, metrics
from smartflow_streams.catalog import RouteRegistry, registry as default_registry
from smartflow_streams.contracts.envelope import KafkaEnvelope, try_outbox_id
from smartflow_streams.db.models import outbox_dead_messages
from smartflow_streams.errors import ContractError, RouteNotRegisteredError, is_retriable
from smartflow_streams.handlers import HandlerContext, HandlerRegistry, handlers as default_handlers
from smartflow_streams.outbox.repository import ConsumeOutcome, OutboxRepository

log = logging.getLogger("agents")

RECORD_ATTEMPTS = 8  # 0.25 s doubling, capped at 8 s: about 30 s in all


class ConsumptionState(Protocol):
    """Accelerator (a Faust table in the worker): what this worker already saw consumed/dead. May forget."""

    def terminal(self, service: str, outbox_id: int) -> str | None: ...

    def record(self, service: str, outbox_id: int, status: str) -> None: ...


@dataclass(frozen=True)
class Position:
    topic: str
    partition: int
    offset: int
    key: bytes | None = None


class Dispatcher:
    def __init__(
        self, runtime: Any, *, handlers: HandlerRegistry | None = None, registry: RouteRegistry | None = None,
        consumption: ConsumptionState | None = None,
    ) -> None:
        self.runtime = runtime
        self.handlers = handlers or default_handlers
        self.registry = registry or default_registry
        self.consumption = consumption
        self._repos: dict[str, OutboxRepository] = {}

    def repo(self, service: str) -> OutboxRepository:
        if service not in self._repos:
            self._repos[service] = OutboxRepository(self.registry.service_route(service), registry=self.registry,
                                                    settings=self.runtime.settings)
        return self._repos[service]

    def max_in_flight(self) -> int:
        if self.runtime.engine.dialect.name == "sqlite":
            return 1
        return self.runtime.settings.worker.max_in_flight

    async def handle_batch(self, service: str, events: list[Any]) -> list[str]:
        """Process Faust events of ``service``'s topic (see the module note on order); outcomes in input order.

        Each event is handled with Faust's current-event context set to it, so table writes go to its partition.
        """
        groups: dict[tuple[int, bytes | None], list[int]] = {}
        for index, event in enumerate(events):
            groups.setdefault((event.message.partition, event.message.key), []).append(index)
        outcomes = [""] * len(events)
        limit = asyncio.Semaphore(self.max_in_flight())

        async def run(indexes: list[int]) -> None:
            async with limit:
                for index in indexes:
                    event = events[index]
                    message = event.message
                    _current_event.set(weakref.ref(event))
                    outcomes[index] = await self.handle(
                        service, event.value, Position(message.topic, message.partition, message.offset, message.key))

        if len(groups) == 1:
            await run(next(iter(groups.values())))
        else:
            await asyncio.gather(*(run(indexes) for indexes in groups.values()))
        return outcomes

    async def handle(self, service: str, raw: bytes | None, pos: Position) -> str:
        """Process one Kafka message of ``service``'s topic; returns the outcome label (for metrics/tests)."""
        try:
            outcome = await self._handle(service, raw or b"", pos)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - last line of defence: log, count, keep the stream flowing
            log.exception("agent %s: unexpected failure at %s:%d@%d", service, pos.topic, pos.partition, pos.offset)
            outcome = "error"
        metrics.consumed.labels(service, outcome).inc()
        return outcome

    async def _handle(self, service: str, raw: bytes, pos: Position) -> str:
        try:
            env = KafkaEnvelope.parse(raw)
        except ContractError as exc:
            outbox_id = try_outbox_id(raw)
            reason = f"invalid envelope: {exc}"
            if outbox_id:
                return await self._dead(service, outbox_id, reason)
            return await self._store_unroutable(service, raw, pos, reason)
        if not env.event_type.strip():
            return await self._dead(service, env.outbox_id, "message has no event type")
        owner = env.service_name.strip()
        if not owner:
            try:
                owner = self.registry.owner_of(env.event_type)
            except RouteNotRegisteredError:
                owner = ""
        if owner != service:
            log.info("agent %s: skipping non-local event: message service=%s type=%s outbox_id=%d", service,
                     owner or "?", env.event_type, env.outbox_id)
            return "foreign"
        if self.consumption is not None and self.consumption.terminal(service, env.outbox_id):
            return "duplicate"
        spec = self.handlers.get(env.event_type)
        if spec is None or spec.service != service:
            return await self._dead(service, env.outbox_id, f"this service has no handler registered: {env.event_type}")
        try:
            if env.event_version.strip() not in spec.versions:
                raise ContractError(f"{env.event_type} event_version not supported: {env.event_version!r}")
            payload = spec.decode(env)
        except ContractError as exc:
            return await self._dead(service, env.outbox_id, f"{env.event_type} payload invalid: {exc}")
        except Exception as exc:  # noqa: BLE001 - a parser bug is poison for this message too
            return await self._dead(service, env.outbox_id, f"{env.event_type} payload undecodable: {exc!r}")

        repo = self.repo(service)
        ctx = HandlerContext(service, env, repo, self.runtime.sessions, self.runtime)
        try:
            if spec.transactional:
                result = await repo.consume_and_mark_consumed(
                    self.runtime.sessions, env.outbox_id, lambda session: spec.fn(ctx, session, payload))
            else:
                result = await spec.fn(ctx, payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            await self._on_error(spec, ctx, payload, exc)
            reason = f"consume handler failed: {type(exc).__name__}: {exc}"
            if is_retriable(exc):
                return await self._retry(service, env.outbox_id, reason)
            return await self._dead(service, env.outbox_id, reason)
        outcome = _outcome_label(result)
        if outcome in ("consumed", "duplicate"):
            self._remember(service, env.outbox_id, "consumed")
        return outcome

    async def _on_error(self, spec: Any, ctx: HandlerContext, payload: Any, exc: Exception) -> None:
        hook: Callable[[HandlerContext, Any, Exception], Awaitable[None]] | None = getattr(spec.fn, "on_error", None)
        if hook is None:
            return
        try:
            await hook(ctx, payload, exc)
        except Exception:  # noqa: BLE001 - best effort, like upstream
            log.warning("agent %s: on_error hook failed for outbox_id=%d", ctx.service, ctx.envelope.outbox_id,
                        exc_info=True)

    async def _dead(self, service: str, outbox_id: int, reason: str) -> str:
        repo = self.repo(service)

        async def write() -> None:
            async with self.runtime.engine.begin() as conn:
                await repo.mark_dead(conn, [outbox_id], reason)

        log.warning("agent %s: outbox_id=%d -> dead: %s", service, outbox_id, reason)
        if await self._record(write, service, outbox_id):
            self._remember(service, outbox_id, "dead")
            return "dead"
        return "unrecorded"

    async def _retry(self, service: str, outbox_id: int, reason: str) -> str:
        repo = self.repo(service)
        result: dict[int, str] = {}

        async def write() -> None:
            async with self.runtime.engine.begin() as conn:
                result.update(await repo.mark_failed_for_retry(conn, [outbox_id], reason))

        log.info("agent %s: outbox_id=%d -> retry: %s", service, outbox_id, reason)
        if not await self._record(write, service, outbox_id):
            return "unrecorded"
        if result.get(outbox_id) == "dead":
            self._remember(service, outbox_id, "dead")
            return "dead"
        return "retry"

    async def _store_unroutable(self, service: str, raw: bytes, pos: Position, reason: str) -> str:
        async def write() -> None:
            async with self.runtime.engine.begin() as conn:
                exists = (await conn.execute(sa.select(outbox_dead_messages.c.id).where(
                    outbox_dead_messages.c.topic == pos.topic,
                    outbox_dead_messages.c.kafka_partition == pos.partition,
                    outbox_dead_messages.c.kafka_offset == pos.offset))).first()
                if exists is None:
                    await conn.execute(sa.insert(outbox_dead_messages).values(
                        service_name=service, topic=pos.topic, kafka_partition=pos.partition,
                        kafka_offset=pos.offset, message_key=(pos.key or b"").decode("utf-8", "replace")[:128],
                        reason=reason[:2000], raw_value=raw[:65536].decode("utf-8", "replace"),
                        created_at=clock.db_now()))

        log.warning("agent %s: unroutable message at %s:%d@%d: %s", service, pos.topic, pos.partition, pos.offset,
                    reason)
        return "unroutable" if await self._record(write, service, 0) else "unrecorded"

    async def _record(self, write: Callable[[], Awaitable[None]], service: str, outbox_id: int) -> bool:
        delay = 0.25
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                await write()
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                if attempt == RECORD_ATTEMPTS:
                    log.error("agent %s: could not record the failure of outbox_id=%d after %d attempts (%s); the "
                              "row stays published and the relay's stale-published sweep will republish it",
                              service, outbox_id, attempt, exc)
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
        return False

    def _remember(self, service: str, outbox_id: int, status: str) -> None:
        if self.consumption is None:
            return
        try:
            self.consumption.record(service, outbox_id, status)
        except Exception:  # noqa: BLE001 - an accelerator failure must never fail the message
            log.debug("consumption-state write failed", exc_info=True)


def _outcome_label(result: Any) -> str:
    if isinstance(result, ConsumeOutcome):
        return result.value
    outbox = getattr(result, "outbox", None)
    if isinstance(outbox, str):
        return outbox
    return "consumed"
