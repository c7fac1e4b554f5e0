"""Notification service: handles ``notification.feishu.requested`` and retries due records.

One event, three short transactions, the HTTP call outside all of them (a DB transaction never spans the 5 s
webhook timeout; upstream trap 18):
1. lock the outbox row (consumed/dead -> duplicate, stop); find or create the record; claim it into ``sending``
   (pending, or failed and due). Terminal records, and failed ones not yet due, just mark the outbox row consumed
   (the retry scanner owns them). A fresh ``sending`` lease held by someone else raises :class:`LeaseHeldError`
   so the outbox row is retried later (upstream 9.3 since abe3b49).
2. POST through the provider (rate limited, 5 s timeout).
3. write the outcome guarded by the send token, and mark the outbox row consumed, in one transaction.

At most one POST per dedupe key is in flight at any time (the claim), and none after ``sent``: duplicates of the
event, replays and concurrent workers all meet the claim or a terminal status. A worker killed between 1 and 3
leaves ``sending``; after the 10-minute lease the scanner sends again. That second POST is the one duplicate per
dedupe key this design can produce (the first may have reached Feishu before the crash); Feishu has no idempotency
key. A worker runs at most ``worker.max_in_flight`` (16) sends per agent at once, which bounds how many keys one
``kill -9`` can duplicate.

Deliberate difference from upstream: a duplicate event does not resend a ``failed`` record before its
``next_retry_at`` (upstream resent at once, defeating the backoff).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from config import Settings
from smartflow_streams import metrics
from smartflow_streams.errors import LeaseHeldError
from smartflow_streams.notification import records
from smartflow_streams.notification.providers import ChannelConfig, SendRequest, SendResult, WebhookProvider
from smartflow_streams.outbox.repository import ConsumeOutcome, OutboxRepository

log = logging.getLogger(__name__)


class DedupeCache(Protocol):
    """Accelerator consulted before the database (a Faust table in the worker). May forget anything."""

    def terminal_status(self, dedupe_key: str) -> str | None: ...

    def remember(self, dedupe_key: str, status: str) -> None: ...


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
        """Process one validated ``FeishuNotificationRequestedPayload`` carried by outbox row ``outbox_id``."""
        cached = self.dedupe.terminal_status(payload.dedupe_key) if self.dedupe else None
        if cached is not None:
            outcome = await repo.consume_and_mark_consumed(self.sessions, outbox_id)
            metrics.notification_dedupe_hits.labels("table").inc()
            return HandleResult(outbox=outcome.value, status=cached, reused=True, deduped_by="table")

        token: str | None = None
        async with self.sessions() as session, session.begin():
            state: dict[str, Any] = {}

            async def phase_one(s: AsyncSession) -> None:
                rec, reused = await records.find_or_create(s, payload, self.cfg)
                state.update(rec=rec, reused=reused)
                if reused:
                    metrics.notification_dedupe_hits.labels("database").inc()
                if rec.status in records.TERMINAL:
                    return
                if records.lease_fresh(rec, self.cfg):
                    raise LeaseHeldError(f"notification {rec.id} is being sent; wait for its lease to expire")
                state["token"] = await records.claim(s, rec, self.cfg)
                if state["token"] is None:
                    return
                state["rec"] = await records.get(s, rec.id)
                state["channel"] = await records.load_channel(s, rec.row["user_id"])
                raise _Deferred  # leave the outbox row unconsumed until the outcome is written

            try:
                outcome = await repo.consume(session, outbox_id, phase_one)
            except _Deferred:
                outcome = None
            if outcome is ConsumeOutcome.DUPLICATE or outcome is ConsumeOutcome.NOT_FOUND:
                return HandleResult(outbox=outcome.value)
            rec: records.Record = state["rec"]
            token = state.get("token")
            if token is None:
                # terminal, or failed and not yet due: the scanner owns it; the event itself is done
                if self.dedupe and rec.status in records.TERMINAL:
                    self.dedupe.remember(rec.dedupe_key, rec.status)
                return HandleResult(outbox="consumed", record_id=rec.id, status=rec.status, reused=state["reused"],
                                    attempt_count=rec.attempt_count, deduped_by="database" if state["reused"] else "")

        result = await self._send(state.get("channel"), records.build_request(rec))
        async with self.sessions() as session, session.begin():
            status = await records.apply_outcome(session, rec, token, result, self.cfg)
            await repo.consume(session, outbox_id)
        status = status or "superseded"
        metrics.notifications.labels(status).inc()
        if self.dedupe and status in records.TERMINAL:
            self.dedupe.remember(rec.dedupe_key, status)
        log.info("notification.feishu.requested consumed: outbox_id=%d notification_id=%d status=%s delivered=%s "
                 "reused=%s attempt_count=%d", outbox_id, rec.id, status, status == "sent", state["reused"],
                 rec.attempt_count)
        return HandleResult(outbox="consumed", record_id=rec.id, status=status, delivered=status == "sent",
                            reused=state["reused"], attempt_count=rec.attempt_count)

    async def _send(self, channel: ChannelConfig | None, request: SendRequest) -> SendResult:
        result = await self.provider.send(channel, request)
        metrics.notification_provider_seconds.labels(channel.kind if channel else "none").observe(
            result.latency_seconds)
        if result.rate_limit_wait_seconds:
            metrics.notification_rate_limit_wait_seconds.inc(result.rate_limit_wait_seconds)
        return result

    async def retry_due(self, limit: int | None = None) -> ScanStats:
        """One retry-scanner pass: failed-and-due and stale-sending records, each claimed then sent."""
        stats = ScanStats()
        async with self.sessions() as session:
            ids = await records.list_due(session, self.cfg, limit or self.cfg.retry_batch_size)
        stats.scanned = len(ids)
        for record_id in ids:
            try:
                status = await self.retry_one(record_id)
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the batch
                stats.errors += 1
                stats.first_error = stats.first_error or f"{type(exc).__name__}: {exc}"
                continue
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

    async def retry_one(self, record_id: int) -> str | None:
        async with self.sessions() as session, session.begin():
            rec = await records.get(session, record_id, lock=True)
            if rec is None:
                return None
            token = await records.claim(session, rec, self.cfg)
            if token is None:
                return None
            rec = await records.get(session, record_id)
            channel = await records.load_channel(session, rec.row["user_id"])
        result = await self._send(channel, records.build_request(rec))
        async with self.sessions() as session, session.begin():
            status = await records.apply_outcome(session, rec, token, result, self.cfg)
        if status:
            metrics.notifications.labels(status).inc()
        return status


class _Deferred(Exception):
    """Internal: abort the consume-and-mark step without rolling back (raised after the claim)."""
