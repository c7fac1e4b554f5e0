"""``notification_records`` state machine (docs/upstream.md#notification-records), database side only.

States: ``pending -> sending -> sent | failed | dead | skipped``; ``failed -> sending`` on retry. ``sent``, ``dead``
and ``skipped`` are terminal.

Invariants:
- One record per (channel ``feishu``, dedupe_key): the unique index ``uk_notification_dedupe`` is the final guard
  against concurrent creators (the loser's INSERT skips the key and it reads the winner's record).
- A POST happens only after a conditional UPDATE moved the record into ``sending`` with a fresh ``send_token``
  (the claim). Only one claimer can win it: pending/failed-and-due, or ``sending`` whose lease (``updated_at``,
  10 min) has expired. The outcome write is guarded by that token, so a sender whose lease expired and was
  re-claimed cannot overwrite the new sender's result.
- Retry schedule after the n-th temporary failure: ``min(base * 2^(n-1), max)`` = +5, +10, +20, +30 min; the
  ``max_attempts``-th (5th) temporary failure is ``dead``. ``last_error`` keeps 2000 characters.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from config import NotificationSettings
from smartflow_streams.core import clock
from smartflow_streams.db.bulk import update_rows
from smartflow_streams.db.models import json_text, notification_records as records
from smartflow_streams.db.models import user_notification_channels as channels
from smartflow_streams.notification.feishu import (
    CONFIG_CHANNEL, DEFAULT_MESSAGE_TEXT, RECORD_CHANNEL, ChannelConfig, Outcome, SendRequest, SendResult,
    channel_config,
)

DEFAULT_FALLBACK = DEFAULT_MESSAGE_TEXT  # records use RECORD_CHANNEL "feishu", channel configs CONFIG_CHANNEL
TERMINAL = ("sent", "dead", "skipped")


@dataclass
class Record:
    id: int
    status: str
    attempt_count: int
    max_attempts: int
    dedupe_key: str
    next_retry_at: datetime | None
    updated_at: datetime | None
    row: dict[str, Any]


def _record(m: Any) -> Record:
    d = dict(m)
    return Record(d["id"], d["status"], d["attempt_count"], d["max_attempts"], d["dedupe_key"],
                  d["next_retry_at"], d["updated_at"], d)


def normalise_texts(summary: str, fallback: str, max_chars: int) -> tuple[str, str, bool]:
    """docs/upstream.md#notification-handling: a summary that is empty or carries a link (``://``, ``www.``) is
    dropped for the fallback."""
    fallback = (fallback or "").strip() or DEFAULT_FALLBACK
    summary = (summary or "").strip()
    lowered = summary.lower()
    if not summary or "://" in lowered or "www." in lowered:
        return "", fallback, True
    return summary[:max_chars], fallback, False


def message_text(rec: dict[str, Any]) -> str:
    """docs/upstream.md#notification-sending: summary, else fallback, else the default sentence; the target URL
    appended if missing."""
    summary = (rec.get("summary_text") or "").strip()
    text = summary if summary and not rec.get("fallback_used") else (rec.get("fallback_text") or "").strip()
    text = text or DEFAULT_FALLBACK
    target = rec.get("target_url") or ""
    if target and target not in text:
        text = f"{text}\n{target}"
    return text


def retry_delay(attempt_count: int, settings: NotificationSettings) -> timedelta:
    n = max(attempt_count, 1)
    return timedelta(seconds=min(settings.base_delay_seconds * 2 ** (n - 1), settings.max_delay_seconds))


def _new_record_values(payload: Any, settings: NotificationSettings, now: datetime) -> dict[str, Any]:
    summary, fallback, fallback_used = normalise_texts(
        payload.summary_text, payload.fallback_text, settings.summary_max_chars)
    return dict(
        channel=RECORD_CHANNEL, user_id=payload.user_id, trigger_id=payload.trigger_id or "",
        preview_id=payload.preview_id, trigger_type=payload.trigger_type or "", target_type=payload.target_type or "",
        target_id=payload.target_id or 0, dedupe_key=payload.dedupe_key, target_url=payload.target_url,
        summary_text=summary or None, fallback_text=fallback, fallback_used=fallback_used, status="pending",
        attempt_count=0, max_attempts=settings.max_attempts, trace_id=payload.trace_id or None,
        created_at=now, updated_at=now,
    )


async def _latest_by_dedupe(session: AsyncSession, keys: list[str]) -> dict[str, Record]:
    """dedupe key -> its newest record (latest ``created_at``, then id), locked; keys without one are absent."""
    if not keys:
        return {}
    stmt = (sa.select(records).where(records.c.channel == RECORD_CHANNEL, records.c.dedupe_key.in_(keys))
            .order_by(records.c.created_at, records.c.id))
    if session.bind.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    return {m["dedupe_key"]: _record(m) for m in (await session.execute(stmt)).mappings()}


def _insert_skipping_existing(dialect: str) -> sa.Insert:
    """INSERT into ``notification_records`` that leaves a row whose (channel, dedupe_key) exists untouched."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(records).on_conflict_do_nothing(index_elements=["channel", "dedupe_key"])
    from sqlalchemy.dialects.mysql import insert as mysql_insert

    return mysql_insert(records).on_duplicate_key_update(id=records.c.id)


async def find_or_create_many(
    session: AsyncSession, payloads: list[Any], settings: NotificationSettings
) -> list[tuple[Record, bool]]:
    """For each payload its record (by ``notification_id``, then dedupe key) and whether it was ``reused``; missing
    records are created ``pending``. All returned records are locked until the transaction ends.

    Cost: 1 SELECT for all dedupe keys, then for the missing ones 1 multi-row INSERT that skips a key another
    creator has (MySQL ``ON DUPLICATE KEY UPDATE id = id``, SQLite ``ON CONFLICT DO NOTHING``, on
    ``uk_notification_dedupe``) and 1 SELECT (plus 1 SELECT for the payloads carrying a ``notification_id``, if
    any). Payloads sharing a dedupe key share the record: the first one creates it, the later ones are ``reused``.
    A concurrent creator of the same key (another worker, the same instant) makes our INSERT wait for its
    transaction on the unique index and then skip the key; the SELECT returns its record, so both use one record
    and the claim lets one of them send. Limit: that record then counts as created here (``reused`` False), which
    only changes the dedupe-hit metric and the result flag. (The INSERT used to raise on that conflict inside a
    savepoint and retry: SAVEPOINT and RELEASE were 2 of the ~12 round trips of a notification batch.)
    """
    found: dict[str, Record] = {}
    named = await get_many(session, [p.notification_id for p in payloads if (p.notification_id or 0) > 0], lock=True)
    by_id = {p.notification_id: named[p.notification_id] for p in payloads
             if p.notification_id in named and named[p.notification_id].row["channel"] == RECORD_CHANNEL
             and named[p.notification_id].dedupe_key == p.dedupe_key}
    keys = list(dict.fromkeys(p.dedupe_key for p in payloads))
    found.update(await _latest_by_dedupe(session, keys))
    existed = set(found)
    first = {p.dedupe_key: p for p in reversed(payloads)}  # the first payload of each key creates its record
    missing = [k for k in keys if k not in found]
    if missing:
        now = clock.db_now()
        await session.execute(_insert_skipping_existing(session.bind.dialect.name),
                              [_new_record_values(first[k], settings, now) for k in missing])
        found.update(await _latest_by_dedupe(session, missing))
        lost = [k for k in missing if k not in found]
        if lost:  # cannot happen while uk_notification_dedupe exists: say so rather than KeyError below
            raise RuntimeError(f"notification record for dedupe key {lost[0]!r} neither created nor found")
    out: list[tuple[Record, bool]] = []
    seen: set[str] = set()
    for payload in payloads:
        rec = by_id.get(payload.notification_id or 0)
        if rec is not None:
            out.append((rec, True))
            continue
        key = payload.dedupe_key
        out.append((found[key], key in existed or key in seen))
        seen.add(key)
    return out


async def claim_many(
    session: AsyncSession, ids: list[int], settings: NotificationSettings, *, honour_retry_time: bool = True
) -> tuple[str, int]:
    """Conditionally move records to ``sending`` in one UPDATE with one shared send token; returns ``(token, rows
    claimed)``. The claimed records are those whose ``send_token`` is now ``token`` (read them back in the same
    transaction); another claimer wins the others.

    Claimable: ``pending``; ``failed`` whose ``next_retry_at`` is due (or any ``failed`` when
    ``honour_retry_time`` is False); ``sending`` whose lease expired. The attempt is counted here.
    """
    now = clock.db_now()
    stale_before = now - timedelta(seconds=settings.sending_lease_seconds)
    failed_due = records.c.status == "failed"
    if honour_retry_time:
        failed_due = sa.and_(failed_due, sa.or_(records.c.next_retry_at.is_(None), records.c.next_retry_at <= now))
    claimable = sa.or_(
        records.c.status == "pending",
        failed_due,
        sa.and_(records.c.status == "sending", records.c.updated_at <= stale_before),
    )
    token = uuid.uuid4().hex
    result = await session.execute(
        sa.update(records).where(records.c.id.in_(ids), claimable).values(
            status="sending", send_token=token, attempt_count=records.c.attempt_count + 1,
            next_retry_at=None, last_error_code=None, last_error=None, updated_at=now,
            max_attempts=sa.case((records.c.max_attempts <= 0, settings.max_attempts), else_=records.c.max_attempts),
        )
    )
    return token, int(result.rowcount or 0)


async def get_many(session: AsyncSession, ids: list[int], *, lock: bool = False) -> dict[int, Record]:
    """id -> record for the ids that exist (one SELECT; ``lock``: ``FOR UPDATE`` outside SQLite)."""
    if not ids:
        return {}
    stmt = sa.select(records).where(records.c.id.in_(list(dict.fromkeys(ids))))
    if lock and session.bind.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    return {int(m["id"]): _record(m) for m in (await session.execute(stmt)).mappings()}


def claimable(rec: Record, settings: NotificationSettings) -> bool:
    """What :func:`claim_many` (honouring the retry time) would accept, judged on a row the caller holds locked."""
    now = clock.db_now()
    if rec.status == "pending":
        return True
    if rec.status == "failed":
        return rec.next_retry_at is None or rec.next_retry_at <= now
    if rec.status == "sending":
        return rec.updated_at is not None and rec.updated_at <= now - timedelta(seconds=settings.sending_lease_seconds)
    return False


def lease_fresh(rec: Record, settings: NotificationSettings) -> bool:
    if rec.status != "sending" or rec.updated_at is None:
        return False
    return rec.updated_at > clock.db_now() - timedelta(seconds=settings.sending_lease_seconds)


def build_request(rec: Record) -> SendRequest:
    r = rec.row
    return SendRequest(
        notification_id=rec.id, user_id=int(r["user_id"]), trigger_id=r["trigger_id"], preview_id=r["preview_id"],
        trigger_type=r["trigger_type"], target_type=r["target_type"], target_id=int(r["target_id"]),
        target_url=r["target_url"], message_text=message_text(r), fallback_used=bool(r["fallback_used"]),
        trace_id=r.get("trace_id") or "", attempt_count=rec.attempt_count,
    )


def _outcome_values(rec: Record, result: SendResult, settings: NotificationSettings, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        provider_request_json=_json(result.request_json), provider_response_json=_json(result.response_json),
        provider_message_id=result.provider_message_id or None, updated_at=now, send_token=None,
        last_error_code=result.error_code or None, last_error=(result.error_message or "")[:2000] or None,
    )
    if result.outcome is Outcome.SUCCESS:
        values.update(status="sent", sent_at=now, last_error_code=None, last_error=None, next_retry_at=None)
    elif result.outcome is Outcome.SKIPPED:
        values.update(status="skipped", next_retry_at=None)
    elif result.outcome is Outcome.PERMANENT or rec.attempt_count >= max(rec.max_attempts, 1):
        values.update(status="dead", next_retry_at=None)
    else:
        delay = retry_delay(rec.attempt_count, settings)
        if result.retry_after_seconds:
            delay = max(delay, timedelta(seconds=result.retry_after_seconds))
        values.update(status="failed", next_retry_at=now + delay)
    return values


async def apply_outcomes(
    session: AsyncSession, outcomes: list[tuple[Record, SendResult]], token: str, settings: NotificationSettings
) -> dict[int, str | None]:
    """Write provider outcomes for records claimed with one ``token``; returns ``{id: new status}``, ``None`` for a
    record the token no longer holds. One UPDATE per outcome shape (usually one: all ``sent``; per-row values as
    CASE, :mod:`smartflow_streams.db.bulk`), each row guarded by ``status = 'sending' AND send_token = token``. When fewer rows
    changed than were sent (a lease expired and another sender re-claimed), the statuses are read back."""
    now = clock.db_now()
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    intended: dict[int, str] = {}
    for rec, result in outcomes:
        values = _outcome_values(rec, result, settings, now)
        intended[rec.id] = values["status"]
        groups.setdefault(tuple(sorted(values)), []).append({"id": rec.id, **values})
    changed = 0
    guards = (records.c.status == "sending", records.c.send_token == token)
    text = {c: sa.Text() for c in _JSON_COLUMNS}
    for params in groups.values():
        changed += await update_rows(session, records, params, where=guards, bind_types=text)
    if changed == len(intended):
        return dict(intended)
    ids = list(intended)
    current = {int(i): (status, send_token) for i, status, send_token in (await session.execute(
        sa.select(records.c.id, records.c.status, records.c.send_token).where(records.c.id.in_(ids)))).all()}
    return {i: status if current.get(i) == (status, None) else None for i, status in intended.items()}


async def list_due(session: AsyncSession, settings: NotificationSettings, limit: int) -> list[int]:
    """Ids of failed records due for retry and ``sending`` records whose lease expired
    (docs/upstream.md#retry-scanner)."""
    now = clock.db_now()
    stale_before = now - timedelta(seconds=settings.sending_lease_seconds)
    stmt = (
        sa.select(records.c.id)
        .where(sa.or_(
            sa.and_(records.c.status == "failed", records.c.next_retry_at.is_not(None), records.c.next_retry_at <= now),
            sa.and_(records.c.status == "sending", records.c.updated_at <= stale_before),
        ))
        .order_by(records.c.next_retry_at, records.c.id).limit(limit)
    )
    return [int(i) for i in (await session.execute(stmt)).scalars()]


async def load_channels(session: AsyncSession, user_ids: list[int]) -> dict[int, ChannelConfig]:
    """user id -> its ``feishu_webhook`` channel config, for the users that have one (one SELECT)."""
    if not user_ids:
        return {}
    rows = (await session.execute(sa.select(channels).where(
        channels.c.user_id.in_(list(dict.fromkeys(user_ids))), channels.c.channel == CONFIG_CHANNEL))).mappings()
    return {int(m["user_id"]): channel_config(m) for m in rows}


_JSON_COLUMNS = ("provider_request_json", "provider_response_json")


def _json(value: Any) -> str | None:
    if value in (None, {}, ""):
        return None
    return json_text(value)
