"""Notification service: handles ``notification.feishu.requested`` and retries due records.

Per event (a batch does each step for all its events at once, :meth:`NotificationService.handle_requested_many`),
short transactions with the HTTP call outside all of them (a DB transaction never spans the 5 s webhook timeout;
docs/upstream.md#no-slow-work-in-transactions):
1. lock the outbox row (consumed/dead -> duplicate, stop); find or create the record; claim it into ``sending``
   (pending, or failed and due). Terminal records, and failed ones not yet due, just mark the outbox row consumed
   (the retry scanner owns them). A fresh ``sending`` lease held by someone else raises :class:`LeaseHeldError`
   so the outbox row is retried later (docs/upstream.md#notification-handling).
2. POST through the provider (rate limited, 5 s timeout).
3. write the outcome guarded by the send token, and mark the outbox row consumed, in one transaction.

At most one POST per dedupe key is in flight at any time (the claim), and none after ``sent``: duplicates of the
event, replays and concurrent workers all meet the claim or a terminal status. A worker killed between 1 and 3
leaves ``sending``; after the 10-minute lease the scanner sends again. That second POST is the one duplicate per
dedupe key this design can produce (the first may have reached Feishu before the crash); Feishu has no idempotency
key. A worker runs at most ``worker.max_in_flight`` (16) sends per agent at once, and as many in its retry
scanner (which sends its due records in chunks of that size through the same claim/POST/record core), which bounds
how many keys one ``kill -9`` can duplicate. In practice it is fewer: outcomes are written as answers arrive (at
most ``notification.outcome_flush_seconds``, 0.05 s, after an answer, or at once when the chunk is complete), so
only POSTs in flight or answered in the last ~50 ms before the kill are re-sent.

Deliberate difference from upstream: a duplicate event does not resend a ``failed`` record before its
``next_retry_at`` (upstream resent at once, defeating the backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from config import Settings
from smartflow_streams.core import metrics, tracing
from smartflow_streams.core.errors import LeaseHeldError
from smartflow_streams.core.logs import log_fields
from smartflow_streams.notification import records
from smartflow_streams.notification.feishu import ChannelConfig, SendRequest, SendResult, WebhookProvider
from smartflow_streams.outbox.repository import ConsumeOutcome, OutboxRepository

log = logging.getLogger(__name__)


class DedupeCache(Protocol):
    """Accelerator consulted before the database (a Faust table in the worker). May forget anything."""

    def terminal_status(self, dedupe_key: str) -> str | None: ...

    def remember(self, dedupe_key: str, status: str) -> None: ...

    def flush(self, partition: int) -> None:
        """Write what :meth:`remember` buffered for ``partition``; the dispatcher calls it once per batch and
        partition."""


@dataclass
class HandleResult:
    outbox: str
    record_id: int | None = None
    status: str = ""
    delivered: bool = False
    reused: bool = False
    attempt_count: int = 0
    deduped_by: str = ""


@dataclass
class ScanStats:
    scanned: int = 0
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    dead: int = 0
    skipped: int = 0
    errors: int = 0
    first_error: str = ""
    by_status: dict[str, int] = field(default_factory=dict)


class NotificationService:
    def __init__(
        self, settings: Settings, sessions: Callable[[], AsyncSession], provider: WebhookProvider,
        dedupe: DedupeCache | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.notification
        self.sessions = sessions
        self.provider = provider
        self.dedupe = dedupe

    async def handle_requested(self, repo: OutboxRepository, outbox_id: int, payload: Any) -> HandleResult:
        """Process one validated ``FeishuNotificationRequestedPayload`` carried by outbox row ``outbox_id``:
        :meth:`handle_requested_many` of one, its per-event error raised."""
        result = (await self.handle_requested_many(repo, [(outbox_id, payload)]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def handle_requested_many(
        self, repo: OutboxRepository, items: list[tuple[int, Any]], activate: Callable[[int], None] | None = None,
    ) -> list[HandleResult | Exception]:
        """Process events ``(outbox_id, payload)`` together; per item, in input order, its result or the error that
        should send that outbox row to retry (:class:`LeaseHeldError`, a send that raised). Raises when a
        transaction fails: nothing of that transaction is written, so the caller may go one by one; records already
        claimed stay ``sending`` and their one-by-one retry meets the lease (retry later), exactly as when the
        outcome write of a single event fails.

        Steps: one transaction for the whole batch (lock the outbox rows, find or create the records, settle the
        events that need no POST); then, per chunk of ``worker.max_in_flight`` (16) records, claim (one UPDATE),
        POST concurrently (one user's records one after another) and write the outcomes (one transaction). Claiming
        per chunk keeps the bound of the module note: a ``kill -9`` can leave at most 16 records per agent POSTed
        but not recorded. Cost for N events: ~4 + 6 * N / 16 statements. ``activate(i)`` is called before the dedupe
        cache is written for item ``i`` (the worker makes item ``i``'s Kafka event current so a Faust table write
        goes to its partition). Items sharing a dedupe key share one claim and one POST; the later ones are
        ``reused`` and finish with the first. ``activate(i)`` also precedes the dedupe-cache read of item ``i``.
        """
        results: list[HandleResult | Exception | None] = [None] * len(items)
        remember: list[tuple[int, str, str]] = []  # (item, dedupe key, terminal status) for the cache
        waiting: dict[int, list[int]] = {}  # claimable record id -> its items (the first one "sends")
        reused_flags: dict[int, bool] = {}
        async with self.sessions() as session, session.begin():
            state = await repo.lock_for_consume(session, [outbox_id for outbox_id, _ in items])
            consumed_now: list[int] = []
            todo: list[int] = []
            seen: set[int] = set()
            for i, (outbox_id, payload) in enumerate(items):
                if state[outbox_id] is not ConsumeOutcome.CONSUMED or outbox_id in seen:
                    dup = state[outbox_id] is ConsumeOutcome.CONSUMED
                    results[i] = HandleResult(outbox="duplicate" if dup else state[outbox_id].value)
                    continue
                seen.add(outbox_id)
                if activate is not None:
                    activate(i)
                cached = self.dedupe.terminal_status(payload.dedupe_key) if self.dedupe else None
                if cached is not None:
                    consumed_now.append(outbox_id)
                    metrics.notification_dedupe_hits.labels("table").inc()
                    results[i] = HandleResult(outbox="consumed", status=cached, reused=True, deduped_by="table")
                    continue
                todo.append(i)
            found = await records.find_or_create_many(session, [items[i][1] for i in todo], self.cfg)
            for i, (rec, reused) in zip(todo, found):
                reused_flags[i] = reused
                if reused:
                    metrics.notification_dedupe_hits.labels("database").inc()
                if rec.id in waiting:
                    waiting[rec.id].append(i)
                elif records.claimable(rec, self.cfg):
                    waiting[rec.id] = [i]
                elif records.lease_fresh(rec, self.cfg):
                    results[i] = LeaseHeldError(f"notification {rec.id} is being sent; wait for its lease to expire")
                else:
                    # terminal, or failed and not yet due: the scanner owns it; the event itself is done
                    consumed_now.append(items[i][0])
                    if rec.status in records.TERMINAL:
                        remember.append((i, rec.dedupe_key, rec.status))
                    results[i] = HandleResult(outbox="consumed", record_id=rec.id, status=rec.status, reused=reused,
                                              attempt_count=rec.attempt_count,
                                              deduped_by="database" if reused else "")
            await repo.mark_consumed(session, consumed_now)
        chunk = max(1, self.settings.worker.max_in_flight)
        record_ids = list(waiting)
        for start in range(0, len(record_ids), chunk):
            await self._claim_send_chunk(repo, items, record_ids[start:start + chunk], waiting, reused_flags,
                                          results, remember)
        if self.dedupe:
            for i, key, status in remember:
                if activate is not None:
                    activate(i)
                self.dedupe.remember(key, status)
        return [r if r is not None else RuntimeError("no result") for r in results]

    async def _claim_send_chunk(
        self, repo: OutboxRepository, items: list[tuple[int, Any]], record_ids: list[int],
        waiting: dict[int, list[int]], reused_flags: dict[int, bool], results: list[Any],
        remember: list[tuple[int, str, str]],
    ) -> None:
        """One chunk of :meth:`handle_requested_many`: claim, POST, record. A record another sender claimed since
        the batch transaction gives its items :class:`LeaseHeldError` (retry later)."""
        async def consume(session: AsyncSession, outcomes: list[tuple[records.Record, SendResult]]) -> None:
            await repo.mark_consumed(session, [items[i][0] for rec, _r in outcomes for i in waiting[rec.id]])

        recs, sent, statuses = await self._claim_send_record(record_ids, consume)
        for record_id in record_ids:
            if record_id not in recs:
                for i in waiting[record_id]:
                    results[i] = LeaseHeldError(f"notification {record_id} was claimed by another sender")
        outcomes = [(recs[record_id], result) for record_id, result in sent.items()
                    if not isinstance(result, Exception)]
        for record_id, result in sent.items():
            if isinstance(result, Exception):  # the record stays `sending`; the scanner resends after the lease
                for i in waiting[record_id]:
                    results[i] = result
        for rec, _result in outcomes:
            status = statuses[rec.id] or "superseded"
            for n, i in enumerate(waiting[rec.id]):
                if status in records.TERMINAL:
                    remember.append((i, rec.dedupe_key, status))
                results[i] = HandleResult(outbox="consumed", record_id=rec.id, status=status,
                                          delivered=status == "sent" and n == 0,
                                          reused=reused_flags[i] or n > 0, attempt_count=rec.attempt_count)
                log.info("notification.feishu.requested consumed: outbox_id=%d notification_id=%d status=%s "
                         "delivered=%s reused=%s attempt_count=%d", items[i][0], rec.id, status,
                         results[i].delivered, results[i].reused, rec.attempt_count,
                         extra=log_fields(service="notification", event_type="notification.feishu.requested",
                                          outbox_id=items[i][0],
                                          trace_id=getattr(items[i][1], "trace_id", None) or None))

    async def _claim_send_record(
        self, record_ids: list[int],
        in_outcome_tx: Callable[[AsyncSession, list[tuple[records.Record, SendResult]]], Awaitable[None]] | None = None,
    ) -> tuple[dict[int, records.Record], dict[int, SendResult | Exception], dict[int, str | None]]:
        """Claim ``record_ids`` (one UPDATE, one token; those another sender holds are left out), POST them
        (:meth:`_send_many`) and write the outcomes as the answers come in, each write together with
        ``in_outcome_tx``. Returns the claimed records, each one's send result (or the exception its send raised:
        it stays ``sending`` and is re-sent after its lease) and the statuses written (``None``: another sender
        superseded this one).

        A write takes every answer that arrived before it and starts when the chunk's last POST is answered or
        ``notification.outcome_flush_seconds`` (0.05 s) after the first unwritten answer, whichever is first: one
        write per chunk when the webhook answers every POST within that time, and a slow POST never keeps its
        answered chunk-mates unrecorded (what a ``kill -9`` turns into duplicate deliveries) for longer than that.
        A write that fails cancels the POSTs not yet answered (their records stay ``sending``) and raises; the
        writes before it stay committed."""
        async with self.sessions() as session, session.begin():
            token, _count = await records.claim_many(session, record_ids, self.cfg)
            recs = {i: r for i, r in (await records.get_many(session, record_ids)).items()
                    if r.row["send_token"] == token}
            channels = await records.load_channels(session, [int(r.row["user_id"]) for r in recs.values()])
        sent: dict[int, SendResult | Exception] = {}
        statuses: dict[int, str | None] = {}
        if not recs:
            return recs, sent, statuses
        answers: asyncio.Queue[tuple[records.Record, SendResult | Exception] | None] = asyncio.Queue()
        sends = asyncio.ensure_future(self._send_many(list(recs.values()), channels, answers.put_nowait))
        sends.add_done_callback(lambda _task: answers.put_nowait(None))  # None: every POST answered
        try:
            finished = False
            while not finished:
                batch = [await answers.get()]
                if batch[-1] is not None and not sends.done():  # linger for chunk-mates, not past the last answer
                    await asyncio.wait({sends}, timeout=self.cfg.outcome_flush_seconds)
                while batch[-1] is not None and not answers.empty():
                    batch.append(answers.get_nowait())
                finished = batch[-1] is None
                answered = [a for a in batch if a is not None]
                sent.update((rec.id, result) for rec, result in answered)
                outcomes = [(rec, result) for rec, result in answered if not isinstance(result, Exception)]
                if outcomes:
                    statuses.update(await self._write_outcomes(outcomes, token, in_outcome_tx))
            sends.result()  # a bug in the send loop itself surfaces here
        finally:
            if not sends.done():
                sends.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sends
        return recs, {i: sent[i] for i in recs}, statuses

    async def _write_outcomes(
        self, outcomes: list[tuple[records.Record, SendResult]], token: str,
        in_outcome_tx: Callable[[AsyncSession, list[tuple[records.Record, SendResult]]], Awaitable[None]] | None,
    ) -> dict[int, str | None]:
        async with self.sessions() as session, session.begin():
            statuses = await records.apply_outcomes(session, outcomes, token, self.cfg)
            if in_outcome_tx is not None:
                await in_outcome_tx(session, outcomes)
        for rec, _result in outcomes:
            metrics.notifications.labels(statuses[rec.id] or "superseded").inc()
        return statuses

    async def _send_many(
        self, recs: list[records.Record], channels: dict[int, ChannelConfig],
        on_answer: Callable[[tuple[records.Record, SendResult | Exception]], None],
    ) -> None:
        """POST each record and pass ``(record, result)`` to ``on_answer`` as soon as it is answered: one user's
        records one after another, users concurrently (callers pass at most ``worker.max_in_flight``). A send that
        raises is passed as its exception."""
        by_user: dict[int, list[records.Record]] = {}
        for rec in recs:
            by_user.setdefault(int(rec.row["user_id"]), []).append(rec)

        async def user_sends(user_id: int, queue: list[records.Record]) -> None:
            for rec in queue:
                try:
                    result: SendResult | Exception = await self._send(channels.get(user_id),
                                                                      records.build_request(rec))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - classified by the caller per item
                    result = exc
                on_answer((rec, result))

        await asyncio.gather(*(user_sends(u, q) for u, q in by_user.items()))

    async def _send(self, channel: ChannelConfig | None, request: SendRequest) -> SendResult:
        if tracing.active():
            with tracing.webhook_span(channel.kind if channel else "none", request.preview_id,
                                      request.notification_id) as span:
                result = await self.provider.send(channel, request)
                tracing.record_webhook_result(span, result)
        else:
            result = await self.provider.send(channel, request)
        metrics.notification_provider_seconds.labels(channel.kind if channel else "none").observe(
            result.latency_seconds)
        if result.rate_limit_wait_seconds:
            metrics.notification_rate_limit_wait_seconds.inc(result.rate_limit_wait_seconds)
        return result

    async def retry_due(self, limit: int | None = None) -> ScanStats:
        """One retry-scanner pass: failed-and-due and stale-sending records (``retry_batch_size``, 50, oldest due
        first), claimed, POSTed and recorded in chunks of ``worker.max_in_flight`` (16) through the same path as
        the event handler: ~5 statements per chunk instead of 5 per record. A chunk that fails (DB down) is
        counted in ``errors`` and left to the next pass; records it claimed are re-sent after their lease."""
        stats = ScanStats()
        async with self.sessions() as session:
            ids = await records.list_due(session, self.cfg, limit or self.cfg.retry_batch_size)
        stats.scanned = len(ids)
        chunk = max(1, self.settings.worker.max_in_flight)
        for start in range(0, len(ids), chunk):
            try:
                _recs, sent, statuses = await self._claim_send_record(ids[start:start + chunk])
            except Exception as exc:  # noqa: BLE001 - one bad chunk must not stop the pass
                stats.errors += 1
                stats.first_error = stats.first_error or f"{type(exc).__name__}: {exc}"
                continue
            for record_id, result in sent.items():
                if isinstance(result, Exception):
                    stats.errors += 1
                    stats.first_error = stats.first_error or f"{type(result).__name__}: {result}"
                    continue
                status = statuses.get(record_id)
                if status is None:
                    continue
                stats.claimed += 1
                stats.by_status[status] = stats.by_status.get(status, 0) + 1
                if hasattr(stats, status):
                    setattr(stats, status, getattr(stats, status) + 1)
        if stats.scanned:
            log.info("notification retry scan: scanned=%d claimed=%d sent=%d failed=%d dead=%d skipped=%d errors=%d",
                     stats.scanned, stats.claimed, stats.sent, stats.failed, stats.dead, stats.skipped, stats.errors)
        return stats


