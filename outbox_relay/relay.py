"""Relay loop: claim due rows, publish them as upstream envelopes, mark them, retry, dead-letter, recover.

Invariants:
- A row is published only while this relay holds the table lease (exclusive mode, the default: checked before each
  batch) or its row claim (``claim_token``, shared mode; every mark is then guarded by it). Marks never move a
  terminal row.
- A row reaches ``published`` only after Kafka acknowledged it (acks=all). Delivery is at-least-once: a relay
  killed between the ack and the mark leaves the row pending; the next lease holder (after ``table_lease_seconds``,
  10 s) or, in shared mode, any relay after the row lease (``lease_seconds``, 30 s) publishes it again, and
  consumers treat the second copy as a duplicate (outbox id).
- Per-key order: rows are published in id order within a batch, batches one after another, one active relay per
  table (exclusive mode). It is kept under normal operation; a row that fails while later rows of its key succeed
  is retried after them (upstream has the same property, docs/upstream.md#relay-loop).
- Pipelining (MySQL): batch N waits for acks and is marked while N+1 is read (N's rows excluded: they are still
  pending) and built; N+1 is published only after N is marked, so a crash leaves at most one batch (500 rows)
  published but unmarked, as without pipelining.
- Poison (unparseable shell) goes ``dead`` with the reason; Kafka failures go back with backoff (n² s), ``dead``
  after ``max_retry`` (20). A broken DB or broker never ends the loop: the loop backs off (0.1 s doubling to 5 s;
  producer and topic-check restarts 1 s doubling to 30 s) and the outage is logged once per state change, with a
  reminder every ``relay.outage_reminder_seconds`` (:class:`~smartflow_streams.core.preflight.OutageLog`, one per
  dependency shared by all tables), not once per retry.
- Latency: the loop scans again at once after a full batch, ``partial_poll_ms`` (10 ms) after a partial one; a
  table with nothing due parks in :class:`~outbox_relay.wakeup.DueWatcher`, whose one probe statement for all idle
  tables backs off from 5 ms to ``idle_poll_max_ms`` (50 ms), so a lightly loaded relay publishes a new row within
  ~50 ms; after ``idle_deep_after_seconds`` (2 s) with nothing due it slows to ``idle_deep_poll_ms`` (250 ms), so
  an idle relay sends ~4 probes/s whatever the number of tables (was 20 reads/s per table) plus one lease renewal
  per table every ~3.3 s.
  A batch's round trips to the database and the broker cost about the same CPU whatever its size, so under light
  load fewer, bigger batches are cheaper: at 200 triggers/s through the pipeline (two tables active) the relay used
  46 % of a core with a 2 ms wait and 38 % with 10 ms (``bench/pipeline_bench.py`` latency runs, py-spy: a fifth
  of it in socket writes).
- Tracing (``tracing.enabled``, off by default: then one boolean test per batch and nothing else): one PRODUCER
  span per row from its commit to the broker's ack, parented by the row's ``trace_context``, and its W3C
  ``traceparent`` header next to the upstream ``trace_id`` (:mod:`smartflow_streams.core.tracing`).
"""

from __future__ import annotations

# Size (~440 lines, over the house ~400) on purpose: one table's relay loop (lease, read, publish, mark, retry/dead,
# park when idle, lost-message sweep) and the process that runs every table's loop; the loop reads top to bottom.

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from config import Settings
from outbox_relay.lease import TableLease
from smartflow_streams.core.logs import log_fields
from outbox_relay.producer import KafkaPublisher, OutgoingMessage, ensure_topics
from outbox_relay.reader import HeldReader
from outbox_relay.wakeup import DueWatcher
from smartflow_streams.core import clock, metrics, tracing
from smartflow_streams.catalog import RouteRegistry, ServiceRoute, registry as default_registry
from smartflow_streams.contracts.envelope import KafkaEnvelope, parse_shell_and_payload
from smartflow_streams.core.errors import ContractError, RouteNotRegisteredError
from smartflow_streams.outbox.backlog import STATUSES, read_backlog
from smartflow_streams.outbox.repository import Claim, OutboxRepository, OutboxRow
from smartflow_streams.core.preflight import OutageLog, database_where

log = logging.getLogger("outbox_relay")

IDLE_PROBE_MIN_MS = 5.0
"""First idle probe after a table found nothing due; doubles up to ``relay.idle_poll_max_ms``."""


@dataclass
class TableStats:
    claimed: int = 0
    published: int = 0
    retried: int = 0
    dead: int = 0
    batches: int = 0
    errors: int = 0
    last_error: str = ""
    counts: dict[str, int] = field(default_factory=dict)


def relay_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class TableRelay:
    """Relays one outbox table (one service's route)."""

    def __init__(
        self, route: ServiceRoute, engine: AsyncEngine, publisher: KafkaPublisher, settings: Settings,
        owner: str, stop: asyncio.Event, registry: RouteRegistry | None = None, watcher: DueWatcher | None = None,
        db_outage: OutageLog | None = None, reader: HeldReader | None = None,
    ) -> None:
        self.route, self.engine, self.publisher, self.settings = route, engine, publisher, settings
        self.stop = stop
        self.registry = registry or default_registry
        self.repo = OutboxRepository(route, registry=self.registry, settings=settings)
        self.lease = TableLease(engine, route.table, owner, settings.relay.table_lease_seconds)
        self.stats = TableStats()
        self._label = route.service_name
        self._next_sweep = 0.0
        self._in_flight: asyncio.Task[None] | None = None
        self._in_flight_ids: list[int] = []  # rows of the batch in flight: still pending, not to be read again
        self.watcher = watcher  # idle: park there (one probe for all idle tables) instead of polling this table
        self.reader = reader  # the process's held autocommit connection for the claim read (exclusive mode)
        self._nothing_due = False  # the last step read the table and found no due row
        reminder = settings.relay.outage_reminder_seconds
        self.db_outage = db_outage or OutageLog(log, "database", database_where(settings.database_url), reminder)
        self._step_trouble = OutageLog(log, f"relay {self._label}:", "step", reminder, problem="failing")

    async def run(self) -> None:
        relay = self.settings.relay
        delay = 0.0
        error_delay = 0.1
        while not self.stop.is_set():
            try:
                n = await self.step()
                if n == 0 and self._nothing_due and self.watcher is not None:
                    await self._park()
                    n = -1  # woken by due rows (or stop, or a lost lease): read again at once
                error_delay = 0.1
                self.db_outage.recovered()
                self._step_trouble.recovered()
            except Exception as exc:  # noqa: BLE001 - the loop must survive DB/broker outages
                await self._abandon_in_flight()
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                n, delay = 0, error_delay
                error_delay = min(error_delay * 2, 5.0)
                outage = self.db_outage if _is_database_error(exc) else self._step_trouble
                outage.failed(exc, delay)
            else:
                if n >= relay.batch_size or n < 0:
                    delay = 0.0
                elif n > 0:
                    delay = relay.partial_poll_ms / 1000
                else:
                    delay = min(max(delay * 2, 0.005), relay.idle_poll_max_ms / 1000)
            if delay:
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        try:
            await self.drain()
        except Exception as exc:  # noqa: BLE001 - its rows stay pending and are published again by the next holder
            log.warning("relay %s: last batch not marked: %s", self._label, exc)
        if relay.exclusive:
            try:
                await self.lease.release()
            except Exception:  # noqa: BLE001
                pass
        metrics.relay_is_leader.labels(self._label).set(0)

    async def step(self) -> int:
        """Claim and start publishing one batch; returns the number of rows claimed.

        Pipelined (MySQL): batch N's acks and marks run in a task while the loop reads and builds batch N+1;
        N+1 is handed to the producer only after N is marked, so at most one batch is ever published but not
        marked (the duplicates a crash can cause) and batches reach Kafka in claim order. SQLite (one writer)
        runs one batch at a time.
        """
        relay = self.settings.relay
        self._nothing_due = False
        if relay.exclusive:
            leader = await self.lease.hold()
            metrics.relay_is_leader.labels(self._label).set(1 if leader else 0)
            if not leader:
                await self.drain()
                await asyncio.sleep(min(1.0, relay.table_lease_seconds / 3))
                return 0
        if not await self.publisher.ready():
            await self.drain()
            return 0
        await self._sweep_stale_published()
        started = time.perf_counter()
        in_flight = self._in_flight_ids if self._in_flight is not None else []
        claim = await self.repo.claim_due(self.engine, limit=relay.batch_size, lease_seconds=relay.lease_seconds,
                                          exclusive=relay.exclusive, exclude=in_flight,
                                          read=self.reader.rows if self.reader is not None else None)
        if not claim.rows:
            await self.drain()
            self._nothing_due = True
            return 0
        messages, poison = self._build(claim.rows)
        spans = (await tracing.start_publish_spans(self.engine, self.repo.table, self._label, claim.rows, messages)
                 if tracing.active() else None)
        await self.drain()  # batch N is marked before N+1 is published
        task = asyncio.create_task(self._publish_and_mark(claim, messages, poison, started, spans))
        if self.engine.dialect.name == "sqlite":
            await task
        else:
            self._in_flight, self._in_flight_ids = task, [r.id for r in claim.rows]
        return len(claim.rows)

    async def _park(self) -> None:
        """Nothing due: wait in the shared watcher until this table has a due row. Every lease-renewal interval
        (``table_lease_seconds / 3``) it wakes to renew the lease and run the stale-published sweep without reading
        the table; it returns when rows are due, on stop, or when the lease was lost (``step`` then stands by)."""
        relay = self.settings.relay
        just_read = True
        while not self.stop.is_set():
            if await self.watcher.wait_due(self.repo.table, self.repo.due_condition,  # type: ignore[union-attr]
                                           relay.table_lease_seconds / 3, self.stop, just_read=just_read):
                return
            just_read = False
            if relay.exclusive:
                leader = await self.lease.hold()
                metrics.relay_is_leader.labels(self._label).set(1 if leader else 0)
                if not leader:
                    return
            await self._sweep_stale_published()

    async def drain(self) -> None:
        """Wait for the batch still in flight (acks and marks); its errors propagate."""
        previous, self._in_flight = self._in_flight, None
        if previous is not None:
            await previous

    async def _publish_and_mark(self, claim: Claim, messages: list[OutgoingMessage], poison: dict[int, str],
                                started: float, spans: dict[int, Any] | None = None) -> None:
        failures = await self.publisher.publish(messages)
        if spans:
            tracing.end_publish_spans(spans, failures)
        for row_id, failure in failures.items():
            if not failure.retriable:
                poison[row_id] = failure.reason
        failed = {row_id: f.reason for row_id, f in failures.items() if f.retriable}
        ok_ids = [m.row_id for m in messages if m.row_id not in failures]
        async with self.engine.begin() as conn:
            published = await self.repo.mark_published(conn, ok_ids, claim_token=claim.token)
            for reason, ids in _group(poison).items():
                await self.repo.mark_dead(conn, ids, reason, claim_token=claim.token)
            outcomes: dict[int, str] = {}
            for reason, ids in _group(failed).items():
                outcomes.update(await self.repo.mark_failed_for_retry(conn, ids, reason, claim_token=claim.token))
        dead_now = len(poison) + sum(1 for s in outcomes.values() if s == "dead")
        retried = sum(1 for s in outcomes.values() if s == "pending")
        self._record(claim.rows, published, retried, dead_now, time.perf_counter() - started, ok_ids)
        for row_id, reason in poison.items():  # rare (a message Kafka can never take): one line per row
            log.warning("relay %s: outbox_id=%d -> dead: %s", self._label, row_id, reason,
                        extra=log_fields(service=self._label, outbox_id=row_id))
        if failed:
            log.warning("relay %s: %d of %d rows not delivered (%s)", self._label, len(failed), len(claim.rows),
                        next(iter(failed.values())), extra=log_fields(service=self._label))

    async def _abandon_in_flight(self) -> None:
        """After a failed step: let the batch in flight finish if it can; its failure was or will be logged once."""
        try:
            await self.drain()
        except Exception as exc:  # noqa: BLE001
            log.warning("relay %s: batch in flight not marked: %s: %s", self._label, type(exc).__name__, exc)

    async def _sweep_stale_published(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        after = self.settings.relay.republish_after_seconds
        self._next_sweep = now + max(1.0, min(after / 10, 60.0))
        async with self.engine.begin() as conn:
            n = await self.repo.requeue_stale_published(conn, after)
        if n:
            self.stats.retried += n
            metrics.relay_retried.labels(self._label).inc(n)
            log.warning("relay %s: %d published rows not consumed within %g s: republishing", self._label, n, after)

    def _build(self, rows: list[OutboxRow]) -> tuple[list[OutgoingMessage], dict[int, str]]:
        messages: list[OutgoingMessage] = []
        poison: dict[int, str] = {}
        for row in rows:
            try:
                shell, payload_value = parse_shell_and_payload(row.payload)
            except ContractError as exc:
                poison[row.id] = f"failed to parse outbox event shell: {exc}"
                continue
            service, topic = self._destination(row)
            value = KafkaEnvelope.relay_bytes(row.id, shell, service)
            headers = [
                ("event_id", (shell.event_id.strip() or str(row.id)).encode()),
                ("event_type", shell.event_type.encode()),
                ("event_version", shell.event_version.encode()),
                ("service_name", service.encode()),
            ]
            trace_id = _trace_id(payload_value)
            if trace_id:
                headers.append(("trace_id", trace_id.encode()))
            messages.append(OutgoingMessage(row.id, topic, row.message_key.encode(), value, headers))
        return messages, poison

    def _destination(self, row: OutboxRow) -> tuple[str, str]:
        if row.service_name:
            return row.service_name, row.topic or self.registry.service_route(row.service_name).topic
        # Legacy row without service_name: relay it to its owner (docs/upstream.md#legacy-rows-without-a-service-name).
        try:
            owner = self.registry.owner_of(row.biz_type)
        except RouteNotRegisteredError:
            owner = self.route.service_name
        return owner, self.registry.service_route(owner).topic

    def _record(self, rows: list[OutboxRow], published: int, retried: int, dead: int, seconds: float,
                ok_ids: list[int]) -> None:
        s, label = self.stats, self._label
        s.batches += 1
        s.claimed += len(rows)
        s.published += published
        s.retried += retried
        s.dead += dead
        metrics.relay_claimed.labels(label).inc(len(rows))
        metrics.relay_published.labels(label).inc(published)
        metrics.relay_retried.labels(label).inc(retried)
        metrics.relay_dead.labels(label).inc(dead)
        metrics.relay_batch_seconds.labels(label).observe(seconds)
        now = clock.db_now()
        ok = set(ok_ids)
        hist = metrics.relay_commit_to_publish_seconds.labels(label)
        for row in rows:
            if row.id in ok and row.created_at is not None:
                hist.observe(max(0.0, (now - row.created_at).total_seconds()))
        log.debug("relay %s: batch of %d: published=%d retried=%d dead=%d in %.1f ms", label, len(rows),
                  published, retried, dead, seconds * 1000)

    async def refresh_backlog(self) -> None:
        t = self.repo.table
        async with self.engine.connect() as conn:
            backlog = await read_backlog(conn, t)
        self.stats.counts = backlog.counts
        for status in STATUSES:
            metrics.outbox_backlog.labels(self._label, status).set(self.stats.counts.get(status, 0))
        metrics.outbox_oldest_pending.labels(self._label).set(backlog.oldest_pending_seconds(clock.db_now()))


def _is_database_error(exc: BaseException) -> bool:
    """Errors of the database connection (the step's only I/O besides Kafka, whose failures are return values)."""
    return isinstance(exc, (sa.exc.SQLAlchemyError, OSError, asyncio.TimeoutError))


def _group(reasons: dict[int, str]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for row_id, reason in reasons.items():
        grouped[reason].append(row_id)
    return grouped


def _trace_id(payload: object) -> str:
    """The payload's top-level string ``trace_id`` ("" if absent or not a string), from the payload the shell
    parse already decoded (a second ``json.loads`` of every payload was ~6 % of the relay's CPU on Go rows)."""
    value = payload.get("trace_id", "") if isinstance(payload, dict) else ""
    return value if isinstance(value, str) else ""


def routes_for(settings: Settings, registry: RouteRegistry | None = None) -> list[ServiceRoute]:
    """The distinct tables this relay serves (``relay.services``, default the whole catalog)."""
    reg = registry or default_registry
    services = settings.relay.services or reg.services()
    routes: dict[str, ServiceRoute] = {}
    for service in services:
        route = reg.service_route(service)
        routes.setdefault(route.table, route)
    return list(routes.values())


class Relay:
    """All table relays of one process, the topic provisioner, the periodic summary and the metrics endpoint."""

    def __init__(self, settings: Settings, engine: AsyncEngine, registry: RouteRegistry | None = None) -> None:
        self.settings, self.engine = settings, engine
        self.registry = registry or default_registry
        self.stop = asyncio.Event()
        self.owner = relay_owner_id()
        self.publisher = KafkaPublisher(settings)
        reminder = settings.relay.outage_reminder_seconds
        self.publisher.outage = OutageLog(log, "kafka broker", settings.kafka_bootstrap, reminder)
        self.topics_outage = OutageLog(log, "kafka broker (topic check)", settings.kafka_bootstrap, reminder)
        self.db_outage = OutageLog(log, "database", database_where(settings.database_url), reminder)
        self.reader = HeldReader(engine)
        self.watcher = DueWatcher(engine, IDLE_PROBE_MIN_MS, settings.relay.idle_poll_max_ms,
                                  settings.relay.idle_deep_poll_ms, settings.relay.idle_deep_after_seconds,
                                  reader=self.reader)
        self.tables = [
            TableRelay(route, engine, self.publisher, settings, self.owner, self.stop, self.registry,
                       watcher=self.watcher, db_outage=self.db_outage, reader=self.reader)
            for route in routes_for(settings, self.registry)
        ]
        self.topics_ready = False

    async def run(self) -> None:
        log.info("relay %s starting: tables=%s bootstrap=%s batch=%d lease=%gs exclusive=%s", self.owner,
                 [t.route.table for t in self.tables], self.settings.kafka_bootstrap, self.settings.relay.batch_size,
                 self.settings.relay.lease_seconds, self.settings.relay.exclusive)
        background = [asyncio.create_task(self._provision_topics()), asyncio.create_task(self._summaries())]
        try:
            await asyncio.gather(*(t.run() for t in self.tables))
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.watcher.close()
            await self.publisher.close()
            log.info("relay %s stopped", self.owner)

    async def _provision_topics(self) -> None:
        topics = sorted({t.route.topic for t in self.tables})
        timeout = self.settings.relay.topic_check_timeout_seconds
        delay = 1.0
        while not self.stop.is_set():
            try:
                created = await ensure_topics(self.settings, topics, self.settings.relay.topic_partitions, timeout)
                self.topics_ready = True
                self.topics_outage.recovered()
                log.info("relay topics ready (%d, created %s)", len(topics), created or "none")
                return
            except Exception as exc:  # noqa: BLE001
                self.topics_outage.failed(exc, delay)
            try:
                wait, delay = delay, min(delay * 2, 30.0)
                await asyncio.wait_for(self.stop.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _summaries(self) -> None:
        interval = self.settings.relay.summary_interval_seconds
        backlog_every = min(5.0, interval)
        last_summary = time.monotonic()
        refreshed: dict[str, tuple[float, int]] = {}  # table -> (when, claimed then)
        while not self.stop.is_set():
            for table in self.tables:
                # an idle table's counts are refreshed every summary interval (30 s), a busy one's every 5 s:
                # 2 statements per table every 5 s were a third of an idle relay's statements
                when, claimed = refreshed.get(table.route.table, (-1e9, -1))
                if table.stats.claimed == claimed and time.monotonic() - when < interval:
                    continue
                refreshed[table.route.table] = (time.monotonic(), table.stats.claimed)
                try:
                    await table.refresh_backlog()
                except Exception as exc:  # noqa: BLE001
                    log.debug("backlog refresh failed for %s: %s", table.route.table, exc)
            if time.monotonic() - last_summary >= interval:
                last_summary = time.monotonic()
                for t in self.tables:
                    s = t.stats
                    log.info("relay %s: claimed=%d published=%d retried=%d dead=%d batches=%d errors=%d rows=%s",
                             t.route.service_name, s.claimed, s.published, s.retried, s.dead, s.batches,
                             s.errors, s.counts, extra=log_fields(service=t.route.service_name))
            try:
                await asyncio.wait_for(self.stop.wait(), backlog_every)
            except asyncio.TimeoutError:
                pass
