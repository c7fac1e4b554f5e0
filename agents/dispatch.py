"""Per-message pipeline shared by every service agent: decode -> own? -> handler -> record the outcome.

Invariants:
- :meth:`Dispatcher.handle` never raises (except cancellation): Faust acks a message even when an agent raises,
  so every failure is caught, classified and recorded here (docs/upstream.md#consumer-loop;
  docs/upstream.md#malformed-messages-end-dead).
- Poison -> outbox row ``dead`` with the reason: envelope JSON invalid but ``outbox_id`` recoverable, blank
  ``event_type``, no handler in this service, unsupported ``event_version``, payload invalid, or a handler raising a
  non-retriable error. A message with no usable ``outbox_id`` cannot reach a row: it is stored in
  ``outbox_dead_messages`` with the reason and its raw bytes (upstream committed it silently).
- Transient failure -> ``mark_failed_for_retry`` (backoff n² s, ``dead`` at ``max_retry``); the relay republishes.
- Another service's message -> skipped, row untouched (docs/upstream.md#event-ownership).
- Recording a failure is retried for up to ~30 s (DB restarting). If it still fails, the message is acked with the
  row left ``published``; the relay's stale-published sweep (``relay.republish_after_seconds``, default 600 s)
  republishes it, so nothing is lost, only delayed. That is the documented answer to "a failure to record a
  failure". An unroutable message (no usable ``outbox_id``) has no row to republish, so storing it is retried
  until it succeeds (backoff 0.25 s doubling, capped at ``RECORD_MAX_DELAY`` 8 s; an error line every 8 attempts):
  its batch does not return, so the agent does not ack past it (the agent's partitions are paused behind it)
  until the database is back; a worker stopped meanwhile leaves it uncommitted and it is redelivered.
- Duplicates (same outbox id again) are no-ops: the consumption-state table answers first, the row status
  (``consumed``/``dead`` under a row lock) decides.
- Batches (:meth:`Dispatcher.handle_batch`): events of one (partition, message key) run in offset order; different
  keys run concurrently, at most ``worker.max_in_flight`` at once (1 on SQLite, which has one writer). Upstream
  keys every event by its aggregate (user id for both contract events), so per-key order is the order that matters;
  the relative order of two keys was never defined (they may sit in different partitions). The agent acks the
  batch only after every event of it returned (:func:`agents.batching.take_batches`), so a crash redelivers the whole batch and
  the duplicates are no-ops.
- Batched handlers (``worker.batched_handlers``, default on): the events of a batch whose handler has a ``batch``
  function (both contract events) are classified first; those that are ready (valid, owned, not known terminal, one
  per outbox id) run through that function together: a transactional one in one transaction
  (:meth:`OutboxRepository.consume_many`), so the statements per event fall with the batch size. Everything else
  (poison, foreign, duplicates, repeated outbox ids) takes the one-by-one path after the batch. If the batch call
  raises, its transaction rolled back and its events take the one-by-one path too, which classifies and records
  each failure exactly as without batching: the batch is an optimisation of the success path, never a different
  outcome. Per key, order of business effects is kept (a batch function applies its events in input order);
  only the relative timing of a poison event's ``dead`` mark and a later valid event of the same key changes.
- Tracing (``tracing.enabled``, off by default: then one boolean test per call and nothing else): every handler call
  runs in a CONSUMER span continuing the message's ``traceparent``; a batch call gets one span per event
  (:mod:`smartflow_streams.core.tracing`). Spans never change an outcome.
"""

from __future__ import annotations

# Size (~470 lines, over the house ~400) on purpose: the one place that catches, classifies and records every
# failure of a message (decode, owner, version, payload, handler, recording outage); batch and one-by-one paths
# sit side by side so their equivalence can be read and tested in one file.

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from faust.streams import _current_event

from smartflow_streams.core import clock, metrics, tracing
from smartflow_streams.catalog import RouteRegistry, registry as default_registry
from smartflow_streams.contracts.envelope import KafkaEnvelope, OutboxEventShell, try_outbox_id
from smartflow_streams.db.models import outbox_dead_messages
from smartflow_streams.core.errors import ContractError, RouteNotRegisteredError, is_retriable
from smartflow_streams.startup.handlers import HandlerContext, HandlerRegistry, HandlerSpec, handlers as default_handlers
from smartflow_streams.core.logs import log_fields
from smartflow_streams.outbox.repository import ConsumeOutcome, OutboxRepository
from smartflow_streams.startup.runtime import ConsumptionState, WorkerRuntime

log = logging.getLogger("agents")

RECORD_ATTEMPTS = 8  # 0.25 s doubling, capped at 8 s: about 30 s in all
RECORD_MAX_DELAY = 8.0


@dataclass(frozen=True)
class Ready:
    """An event that passed every check before its handler: envelope, handler, decoded payload."""

    env: KafkaEnvelope
    spec: HandlerSpec
    payload: Any


@dataclass(frozen=True)
class Rejected:
    """An event decided without its handler: ``dead`` / ``unroutable`` (with the reason), ``foreign``, ``duplicate``."""

    kind: str
    reason: str = ""
    outbox_id: int = 0


@dataclass(frozen=True)
class Position:
    topic: str
    partition: int
    offset: int
    key: bytes | None = None


class Dispatcher:
    def __init__(
        self, runtime: WorkerRuntime, *, handlers: HandlerRegistry | None = None, registry: RouteRegistry | None = None,
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
        """Process Faust events of ``service``'s topic (see the module note on batches and order); outcomes in input
        order. Each event is handled with Faust's current-event context set to it, so table writes go to its
        partition."""
        outcomes = [""] * len(events)
        verdicts: list[Ready | Rejected | None] = [None] * len(events)
        rest = list(range(len(events)))
        if self.runtime.settings.worker.verify_messages:
            for index, event in enumerate(events):
                _current_event.set(weakref.ref(event))
                verdicts[index] = self._classify(service, event.value or b"")
            await self._verify(service, verdicts)
        if self.runtime.settings.worker.batched_handlers:
            rest, batches = [], {}
            seen: set[int] = set()
            for index, event in enumerate(events):
                _current_event.set(weakref.ref(event))  # the accelerators read the event's partition
                verdict = verdicts[index] = verdicts[index] or self._classify(service, event.value or b"")
                if (isinstance(verdict, Ready) and verdict.spec.batch is not None
                        and verdict.env.outbox_id not in seen):
                    seen.add(verdict.env.outbox_id)
                    batches.setdefault(verdict.spec.event_type, []).append(index)
                else:
                    rest.append(index)
            for indexes in batches.values():
                if not await self._run_batch(service, events, [verdicts[i] for i in indexes], indexes, outcomes):
                    rest.extend(indexes)
            rest.sort()
        await self._one_by_one(service, events, rest, verdicts, outcomes)
        self._flush(service, events)
        return outcomes

    async def _verify(self, service: str, verdicts: list[Ready | Rejected | None]) -> None:
        """``worker.verify_messages``: each ready message must match its outbox row (event type, version and
        payload, compared as JSON values); one SELECT per batch. A message that does not (or whose row does not
        exist) becomes ``unroutable``: stored in ``outbox_dead_messages`` with the reason, the row untouched (a
        forged message must not be able to kill a genuine row; the genuine message still arrives or is
        republished). A failed read leaves the verdicts as they are and raises (the batch is redelivered)."""
        ready = [(i, v) for i, v in enumerate(verdicts) if isinstance(v, Ready)]
        if not ready:
            return
        table = self.repo(service).table
        ids = sorted({v.env.outbox_id for _i, v in ready})
        async with self.runtime.engine.connect() as conn:
            rows = {int(r.id): r.payload for r in await conn.execute(
                sa.select(table.c.id, table.c.payload).where(table.c.id.in_(ids)))}
        for index, verdict in ready:
            outbox_id = verdict.env.outbox_id
            problem = _mismatch(verdict.env, rows.get(outbox_id))
            if problem:
                log.warning("agent %s: outbox_id=%d: message does not match its outbox row (%s)", service,
                            outbox_id, problem)
                verdicts[index] = Rejected("unroutable", f"message does not match outbox row {outbox_id}: "
                                                         f"{problem}", outbox_id)

    def _flush(self, service: str, events: list[Any]) -> None:
        """Write what the Faust-table accelerators buffered during the batch: once per partition, with one of that
        partition's events current (Faust writes a table key to the current event's changelog partition)."""
        dedupe = getattr(self.runtime, "dedupe", None)
        if self.consumption is None and dedupe is None:
            return
        last_of_partition = {event.message.partition: event for event in events}
        for partition, event in last_of_partition.items():
            _current_event.set(weakref.ref(event))
            try:
                if self.consumption is not None:
                    self.consumption.flush(service, partition)
                if dedupe is not None:
                    dedupe.flush(partition)
            except Exception:  # noqa: BLE001 - an accelerator failure must never fail the batch
                log.debug("accelerator flush failed", exc_info=True)

    async def _one_by_one(self, service: str, events: list[Any], indexes: list[int],
                          verdicts: list[Ready | Rejected | None], outcomes: list[str]) -> None:
        groups: dict[tuple[int, bytes | None], list[int]] = {}
        for index in indexes:
            groups.setdefault((events[index].message.partition, events[index].message.key), []).append(index)
        limit = asyncio.Semaphore(self.max_in_flight())

        async def run(group: list[int]) -> None:
            async with limit:
                for index in group:
                    event = events[index]
                    message = event.message
                    _current_event.set(weakref.ref(event))
                    pos = Position(message.topic, message.partition, message.offset, message.key)
                    outcomes[index] = await self.handle(service, event.value, pos, verdicts[index])

        if len(groups) == 1:
            await run(next(iter(groups.values())))
        elif groups:
            await asyncio.gather(*(run(group) for group in groups.values()))

    async def _run_batch(self, service: str, events: list[Any], ready: list[Any], indexes: list[int],
                         outcomes: list[str]) -> bool:
        """Run ready events of one handler through its ``batch`` function; False (nothing recorded, the caller
        goes one by one) if the call raised. Per-item errors of a custom batch are classified like single ones."""
        spec: HandlerSpec = ready[0].spec
        repo = self.repo(service)

        def activate(i: int) -> None:
            _current_event.set(weakref.ref(events[indexes[i]]))

        ctx = HandlerContext(service, None, repo, self.runtime.sessions, self.runtime, activate)
        batch_fn = spec.batch
        assert batch_fn is not None  # only specs with a batch function are batched
        traced = (tracing.batch_spans(service, spec.event_type, [events[i] for i in indexes],
                                      [r.payload for r in ready], [r.env.outbox_id for r in ready])
                  if tracing.active() else contextlib.nullcontext())
        try:
            with traced:
                if spec.transactional:
                    by_id = {r.env.outbox_id: r.payload for r in ready}
                    async with self.runtime.sessions() as session, session.begin():
                        state = await repo.consume_many(
                            session, list(by_id), lambda s, live: batch_fn(ctx, s, [by_id[i] for i in live]))
                    results: list[Any] = [state[r.env.outbox_id] for r in ready]
                else:
                    results = await batch_fn(ctx, [(r.env.outbox_id, r.payload) for r in ready])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the one-by-one path classifies and records each event
            log.info("agent %s: batch of %d %s failed (%s: %s); handling them one by one", service, len(ready),
                     spec.event_type, type(exc).__name__, exc)
            metrics.batch_fallbacks.labels(service).inc()
            return False
        for i, (r, result) in enumerate(zip(ready, results)):
            activate(i)
            try:
                outcome = await self._finish(service, spec, ctx, r, result)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - as in handle(): log, count, keep the stream flowing
                log.exception("agent %s: unexpected failure finishing outbox_id=%d", service, r.env.outbox_id)
                outcome = "error"
            metrics.consumed.labels(service, outcome).inc()
            outcomes[indexes[i]] = outcome
        return True

    async def handle(self, service: str, raw: bytes | None, pos: Position,
                     verdict: Ready | Rejected | None = None) -> str:
        """Process one Kafka message of ``service``'s topic; returns the outcome label (for metrics/tests).
        ``verdict``: its :meth:`_classify` result when the caller already has it."""
        try:
            raw = raw or b""
            verdict = verdict or self._classify(service, raw)
            if isinstance(verdict, Rejected):
                outcome = await self._reject(service, verdict, raw, pos)
            else:
                outcome = await self._run(service, verdict)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - last line of defence: log, count, keep the stream flowing
            log.exception("agent %s: unexpected failure at %s:%d@%d", service, pos.topic, pos.partition, pos.offset)
            outcome = "error"
        metrics.consumed.labels(service, outcome).inc()
        return outcome

    def _classify(self, service: str, raw: bytes) -> Ready | Rejected:
        """Every check before the handler, without I/O: envelope, event type, owner, consumption state, handler,
        version, payload."""
        try:
            env = KafkaEnvelope.parse(raw)
        except ContractError as exc:
            outbox_id = try_outbox_id(raw)
            return Rejected("dead" if outbox_id else "unroutable", f"invalid envelope: {exc}", outbox_id or 0)
        if not env.event_type.strip():
            return Rejected("dead", "message has no event type", env.outbox_id)
        owner = env.service_name.strip()
        if not owner:
            try:
                owner = self.registry.owner_of(env.event_type)
            except RouteNotRegisteredError:
                owner = ""
        if owner != service:
            log.info("agent %s: skipping non-local event: message service=%s type=%s outbox_id=%d", service,
                     owner or "?", env.event_type, env.outbox_id,
                     extra=log_fields(service=service, event_type=env.event_type, outbox_id=env.outbox_id))
            return Rejected("foreign", outbox_id=env.outbox_id)
        if self.consumption is not None and self.consumption.terminal(service, env.outbox_id):
            return Rejected("duplicate", outbox_id=env.outbox_id)
        spec = self.handlers.get(env.event_type)
        if spec is None or spec.service != service:
            return Rejected("dead", f"this service has no handler registered: {env.event_type}", env.outbox_id)
        try:
            if env.event_version.strip() not in spec.versions:
                raise ContractError(f"{env.event_type} event_version not supported: {env.event_version!r}")
            payload = spec.decode(env)
        except ContractError as exc:
            return Rejected("dead", f"{env.event_type} payload invalid: {exc}", env.outbox_id)
        except Exception as exc:  # noqa: BLE001 - a parser bug is poison for this message too
            return Rejected("dead", f"{env.event_type} payload undecodable: {exc!r}", env.outbox_id)
        return Ready(env, spec, payload)

    async def _reject(self, service: str, verdict: Rejected, raw: bytes, pos: Position) -> str:
        if verdict.kind == "dead":
            return await self._dead(service, verdict.outbox_id, verdict.reason)
        if verdict.kind == "unroutable":
            return await self._store_unroutable(service, raw, pos, verdict.reason)
        return verdict.kind

    async def _run(self, service: str, ready: Ready) -> str:
        spec, env, payload = ready.spec, ready.env, ready.payload
        repo = self.repo(service)
        ctx = HandlerContext(service, env, repo, self.runtime.sessions, self.runtime)
        traced = (tracing.handler_span(service, env.event_type, env.outbox_id) if tracing.active()
                  else contextlib.nullcontext())
        try:
            with traced:
                if spec.transactional:
                    result: Any = await repo.consume_and_mark_consumed(
                        self.runtime.sessions, env.outbox_id, lambda session: spec.fn(ctx, session, payload))
                else:
                    result = await spec.fn(ctx, payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified in _finish
            result = exc
        return await self._finish(service, spec, ctx, ready, result)

    async def _finish(self, service: str, spec: HandlerSpec, ctx: HandlerContext, ready: Ready, result: Any) -> str:
        """Record one handler result: an exception goes to retry or ``dead`` (classified), success is remembered."""
        outbox_id = ready.env.outbox_id
        if isinstance(result, Exception):
            await self._on_error(spec, ctx, ready.payload, result)
            reason = f"consume handler failed: {type(result).__name__}: {result}"
            if is_retriable(result):
                return await self._retry(service, outbox_id, reason)
            return await self._dead(service, outbox_id, reason)
        outcome = _outcome_label(result)
        if outcome in ("consumed", "duplicate"):
            self._remember(service, outbox_id, "consumed", counted=outcome == "consumed")
        return outcome

    async def _on_error(self, spec: HandlerSpec, ctx: HandlerContext, payload: Any, exc: Exception) -> None:
        hook = spec.on_error
        if hook is None:
            return
        try:
            await hook(ctx, payload, exc)
        except Exception:  # noqa: BLE001 - best effort, like upstream
            log.warning("agent %s: on_error hook failed (%s)", ctx.service, type(exc).__name__, exc_info=True)

    async def _dead(self, service: str, outbox_id: int, reason: str) -> str:
        repo = self.repo(service)

        async def write() -> None:
            async with self.runtime.engine.begin() as conn:
                await repo.mark_dead(conn, [outbox_id], reason)

        log.warning("agent %s: outbox_id=%d -> dead: %s", service, outbox_id, reason,
                    extra=log_fields(service=service, outbox_id=outbox_id))
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

        log.info("agent %s: outbox_id=%d -> retry: %s", service, outbox_id, reason,
                 extra=log_fields(service=service, outbox_id=outbox_id))
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
        await self._record(write, service, 0, until_written=True)
        return "unroutable"

    async def _record(self, write: Callable[[], Awaitable[None]], service: str, outbox_id: int, *,
                      until_written: bool = False) -> bool:
        """Run ``write`` until it succeeds: ``RECORD_ATTEMPTS`` (8, ~30 s) times, or with ``until_written`` for as
        long as it takes (only cancellation ends it)."""
        delay = 0.25
        attempt = 0
        while True:
            attempt += 1
            try:
                await write()
                if attempt > RECORD_ATTEMPTS:
                    log.warning("agent %s: unroutable message stored after %d attempts", service, attempt)
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                if attempt % RECORD_ATTEMPTS == 0:
                    if not until_written:
                        log.error("agent %s: could not record the failure of outbox_id=%d after %d attempts (%s); "
                                  "the row stays published and the relay's stale-published sweep will republish "
                                  "it", service, outbox_id, attempt, type(exc).__name__)
                        return False
                    log.error("agent %s: could not store an unroutable message after %d attempts (%s); not "
                              "acknowledging it, retrying every %g s", service, attempt, type(exc).__name__,
                              RECORD_MAX_DELAY)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECORD_MAX_DELAY)

    def _remember(self, service: str, outbox_id: int, status: str, counted: bool = True) -> None:
        if self.consumption is None:
            return
        try:
            self.consumption.record(service, outbox_id, status, counted)
        except Exception:  # noqa: BLE001 - an accelerator failure must never fail the message
            log.debug("consumption-state write failed", exc_info=True)


def _mismatch(env: KafkaEnvelope, stored: str | None) -> str:
    """Why ``env`` does not carry what its outbox row holds ("" when it does)."""
    if stored is None:
        return "no such row"
    try:
        shell = OutboxEventShell.parse(stored)
        same_payload = json.loads(env.payload) == json.loads(shell.payload)
    except (ContractError, ValueError):
        return "row payload unreadable"
    if shell.event_type != env.event_type or shell.event_version != env.event_version:
        return "event type or version differs"
    return "" if same_payload else "payload differs"


def _outcome_label(result: Any) -> str:
    if isinstance(result, ConsumeOutcome):
        return result.value
    outbox = getattr(result, "outbox", None)
    if isinstance(outbox, str):
        return outbox
    return "consumed"
