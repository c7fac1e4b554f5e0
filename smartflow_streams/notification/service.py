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
key. A worker keeps at most ``worker.max_in_flight`` (16) records claimed-but-unrecorded per agent, and as many in
its retry scanner (same claim/POST/record core), which bounds how many keys one ``kill -9`` can duplicate. Sends
run in a sliding window, not in chunks: a slot is refilled (claim the next records, one UPDATE for all the free
slots) as soon as an outcome is written, and each user has at most one send in flight (a user's records go one
after another, in order). So a webhook that hangs until the HTTP timeout holds one slot, not the batch: the other
users' records flow through the other 15 slots. A rate-limit wait over ``notification.rate_limit_max_wait_seconds``
(1 s) is a temporary failure with retry-after instead of a sleep, and once a user's webhook timed out in a window
its later records of that window are not POSTed but recorded as the temporary failure ``deferred_after_timeout``
(the retry scanner sends them after their backoff): a hanging webhook costs a batch one HTTP timeout, not one per
record. In practice fewer than 16 keys are duplicated:
outcomes are written as answers arrive (at most ``notification.outcome_flush_seconds``, 0.05 s, after an answer),
so only POSTs in flight or answered in the last ~50 ms before the kill are re-sent. Limit: the batch call returns
when its slowest send is done (a hanging webhook: one HTTP timeout, 5 s), so the next batch waits that long; the
window keeps the other users of the same batch unaffected.

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
from smartflow_streams.notification.feishu import ChannelConfig, Outcome, SendRequest, SendResult, WebhookProvider
from smartflow_streams.outbox.repository import ConsumeOutcome, OutboxRepository

log = logging.getLogger(__name__)

DEFERRED_AFTER_TIMEOUT = "deferred_after_timeout"  # error code of a record not sent after its webhook timed out


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
        events that need no POST); then the sliding window of :meth:`_send_window` (claim up to
        ``worker.max_in_flight`` (16) records, one per user, POST them, write outcomes as they come, refill). The
        window keeps the bound of the module note: a ``kill -9`` can leave at most 16 records per agent POSTed
        but not recorded. Cost for N events when the webhooks answer fast: ~4 + 6 * N / 16 statements. ``activate(i)`` is called before the dedupe
        cache is written for item ``i`` (the worker makes item ``i``'s Kafka event current so a Faust table write
        goes to its partition). Items sharing a dedupe key share one claim and one POST; the later ones are
        ``reused`` and finish with the first. ``activate(i)`` also precedes the dedupe-cache read of item ``i``.
        """
        results: list[HandleResult | Exception | None] = [None] * len(items)
        remember: list[tuple[int, str, str]] = []  # (item, dedupe key, terminal status) for the cache
        waiting: dict[int, list[int]] = {}  # claimable record id -> its items (the first one "sends")
        reused_flags: dict[int, bool] = {}
        users: dict[int, int] = {}  # record id -> its user (the window runs one send per user at a time)
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
                users[rec.id] = int(rec.row["user_id"])
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
        if waiting:
            await self._claim_send_all(repo, items, waiting, users, reused_flags, results, remember)
        if self.dedupe:
            for i, key, status in remember:
                if activate is not None:
                    activate(i)
                self.dedupe.remember(key, status)
        return [r if r is not None else RuntimeError("no result") for r in results]

    async def _claim_send_all(
        self, repo: OutboxRepository, items: list[tuple[int, Any]],
        waiting: dict[int, list[int]], users: dict[int, int], reused_flags: dict[int, bool], results: list[Any],
        remember: list[tuple[int, str, str]],
    ) -> None:
        """The sending part of :meth:`handle_requested_many`: claim, POST, record through the window. A record
        another sender claimed since the batch transaction gives its items :class:`LeaseHeldError` (retry later)."""
        async def consume(session: AsyncSession, outcomes: list[tuple[records.Record, SendResult]]) -> None:
            await repo.mark_consumed(session, [items[i][0] for rec, _r in outcomes for i in waiting[rec.id]])

        record_ids = list(waiting)
        recs, sent, statuses = await self._send_window([(r, users[r]) for r in record_ids], consume)
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

    async def _send_window(
        self, order: list[tuple[int, int]],
        in_outcome_tx: Callable[[AsyncSession, list[tuple[records.Record, SendResult]]], Awaitable[None]] | None = None,
    ) -> tuple[dict[int, records.Record], dict[int, SendResult | Exception], dict[int, str | None]]:
        """Claim, POST and record ``order`` (``(record id, user id)``, in sending order) through a sliding window.

        Invariants: at most ``worker.max_in_flight`` records are claimed and not yet recorded at any time (the
        ``kill -9`` bound); at most one send per user is in flight, and a user's records are claimed in ``order``;
        after a user's send timed out (``provider_timeout``) that user's remaining records are claimed and recorded
        as ``deferred_after_timeout`` without a POST; a slot is refilled right after the outcome write that frees it (one claim transaction for all the free
        slots: claim UPDATE, read the claimed rows and their channels). Outcome writes take every answer that
        arrived before them and start ``notification.outcome_flush_seconds`` (0.05 s) after the first unwritten
        answer, or at once when no POST is left in flight; each write runs together with ``in_outcome_tx``.

        Returns the claimed records (those another sender holds are left out), each one's send result (or the
        exception its send raised: it stays ``sending`` and is re-sent after its lease; its slot is freed) and the
        statuses written (``None``: another sender superseded this one). A transaction that fails cancels the
        POSTs in flight (their records stay ``sending``) and raises; the writes before it stay committed."""
        limit = max(1, self.settings.worker.max_in_flight)
        pending = list(order)
        busy: set[int] = set()  # users with a claimed, unrecorded record
        stalled: set[int] = set()  # users whose webhook timed out in this window: the rest is deferred, not sent
        recs: dict[int, records.Record] = {}
        sent: dict[int, SendResult | Exception] = {}
        statuses: dict[int, str | None] = {}
        tasks: dict[int, asyncio.Task[None]] = {}
        answers: asyncio.Queue[tuple[records.Record, SendResult | Exception]] = asyncio.Queue()
        unrecorded = 0
        try:
            while True:
                picked = self._pick(pending, busy, limit - unrecorded)
                if picked:
                    claimed, channels, token = await self._claim(picked)
                    for record_id, user_id in picked:
                        rec = claimed.get(record_id)
                        if rec is None:
                            continue  # another sender holds it: the caller retries later
                        recs[record_id] = rec
                        busy.add(user_id)
                        unrecorded += 1
                        if user_id in stalled:
                            answers.put_nowait((rec, SendResult(
                                Outcome.TEMPORARY, DEFERRED_AFTER_TIMEOUT,
                                "not sent: this user's webhook timed out earlier in the same batch")))
                            continue
                        tasks[record_id] = asyncio.ensure_future(
                            self._send_one(rec, channels.get(user_id), token, answers.put_nowait))
                if unrecorded == 0:
                    if pending and picked:
                        continue  # everything picked was held by others; pick again
                    break
                batch = [await answers.get()]
                in_flight = [t for t in tasks.values() if not t.done()]
                if in_flight:  # linger for slot-mates, not past the last one in flight
                    await asyncio.wait(in_flight, timeout=self.cfg.outcome_flush_seconds)
                while not answers.empty():
                    batch.append(answers.get_nowait())
                by_token: dict[str, list[tuple[records.Record, SendResult]]] = {}
                for rec, result in batch:
                    sent[rec.id] = result
                    tasks.pop(rec.id, None)
                    if isinstance(result, SendResult) and result.error_code == "provider_timeout":
                        stalled.add(int(rec.row["user_id"]))
                    if not isinstance(result, Exception):
                        by_token.setdefault(str(rec.row["send_token"]), []).append((rec, result))
                for token, outcomes in by_token.items():
                    statuses.update(await self._write_outcomes(outcomes, token, in_outcome_tx))
                unrecorded -= len(batch)
                for rec, _result in batch:
                    busy.discard(int(rec.row["user_id"]))
        finally:
            for task in tasks.values():
                task.cancel()
            for task in tasks.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return recs, {i: sent[i] for i in recs if i in sent}, statuses

    @staticmethod
    def _pick(pending: list[tuple[int, int]], busy: set[int], free: int) -> list[tuple[int, int]]:
        """Take (and remove from ``pending``) up to ``free`` entries, the first of each user not ``busy``; a busy
        user's later records stay behind its earlier ones."""
        if free <= 0 or not pending:
            return []
        picked: list[tuple[int, int]] = []
        skipped: set[int] = set(busy)
        keep: list[tuple[int, int]] = []
        for entry in pending:
            user_id = entry[1]
            if len(picked) < free and user_id not in skipped:
                picked.append(entry)
            else:
                keep.append(entry)
            skipped.add(user_id)
        pending[:] = keep
        return picked

    async def _claim(
        self, picked: list[tuple[int, int]],
    ) -> tuple[dict[int, records.Record], dict[int, ChannelConfig], str]:
        record_ids = [record_id for record_id, _user in picked]
        async with self.sessions() as session, session.begin():
            token, _count = await records.claim_many(session, record_ids, self.cfg)
            claimed = {i: r for i, r in (await records.get_many(session, record_ids)).items()
                       if r.row["send_token"] == token}
            channels = await records.load_channels(session, [int(r.row["user_id"]) for r in claimed.values()])
        return claimed, channels, token

    async def _send_one(
        self, rec: records.Record, channel: ChannelConfig | None, token: str,
        on_answer: Callable[[tuple[records.Record, SendResult | Exception]], None],
    ) -> None:
        """POST one record and pass ``(record, result)`` to ``on_answer``; a send that raises passes its
        exception (classified by the caller)."""
        try:
            result: SendResult | Exception = await self._send(channel, records.build_request(rec))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified by the caller per item
            result = exc
        on_answer((rec, result))

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
        first), claimed, POSTed and recorded through the same sliding window as the event handler
        (:meth:`_send_window`, ``worker.max_in_flight`` (16) at once): ~5 statements per 16 records when the
        webhooks answer fast. A transaction that fails (DB down) is counted in ``errors`` and ends the pass;
        records it claimed are re-sent after their lease, the rest are due again in the next pass."""
        stats = ScanStats()
        async with self.sessions() as session:
            ids = await records.list_due(session, self.cfg, limit or self.cfg.retry_batch_size)
            found = await records.get_many(session, ids) if ids else {}
        stats.scanned = len(ids)
        sent: dict[int, SendResult | Exception] = {}
        statuses: dict[int, str | None] = {}
        try:
            _recs, sent, statuses = await self._send_window(
                [(i, int(found[i].row["user_id"])) for i in ids if i in found])
        except Exception as exc:  # noqa: BLE001 - counted; the next pass picks the records up again
            stats.errors += 1
            stats.first_error = f"{type(exc).__name__}: {exc}"
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


