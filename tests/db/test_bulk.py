"""One UPDATE with per-row CASE values leaves the table exactly as one UPDATE per row does (both backends)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from smartflow_streams.db import bulk
from smartflow_streams.db.models import notification_records

BASE = dict(channel="feishu", trigger_id="t", preview_id="p", trigger_type="x", target_type="y", target_id=1,
            target_url="/a", status="sending", attempt_count=1, max_attempts=5, summary_text="s")
WHEN = datetime(2026, 12, 2, 10, 30, 15, 123000)


def _rows(n: int) -> list[dict]:
    """Outcome-shaped values: some columns differ per row (incl. NULL and JSON text), some are equal."""
    return [dict(id=i, status="sent" if i % 3 else "failed", provider_message_id=None if i % 2 else f"om_{i}",
                 provider_response_json=f'{{"code":0,"n":{i},"text":"\\u4f60\\"q\\""}}',
                 next_retry_at=None if i % 3 else WHEN + timedelta(seconds=i), updated_at=WHEN, send_token=None)
            for i in range(1, n + 1)]


async def _seed(db, n: int, token: str = "tok") -> None:
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(notification_records), [
            dict(BASE, id=i, user_id=i, dedupe_key=f"k{i}", send_token=token if i != 2 else "other") for i in range(1, n + 1)])


async def _table(db) -> list[tuple]:
    t = notification_records
    async with db.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(sa.select(t).order_by(t.c.id))).all()]


GUARDS = (notification_records.c.status == "sending", notification_records.c.send_token == "tok")
TEXT = {"provider_response_json": sa.Text()}


async def test_case_update_equals_one_update_per_row(db, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows(7)
    await _seed(db, 7)
    t = notification_records
    one_by_one = 0
    async with db.engine.begin() as conn:  # the reference: the per-row statements the CASE form replaces
        for row in rows:
            values = {k: v for k, v in row.items() if k != "id"}
            stmt = sa.update(t).where(t.c.id == row["id"], *GUARDS).values(
                {k: sa.bindparam(None, v, type_=TEXT.get(k, t.c[k].type)) for k, v in values.items()})
            one_by_one += (await conn.execute(stmt)).rowcount
    expected = await _table(db)
    async with db.engine.begin() as conn:
        await conn.execute(sa.delete(t))
    await _seed(db, 7)
    monkeypatch.setattr(bulk, "ROWS_PER_STATEMENT", 3)  # 7 rows: 3 statements, the last one a single row
    statements = bulk.update_by_id(t, rows, where=GUARDS, bind_types=TEXT)
    assert len(statements) == 3
    changed = 0
    async with db.engine.begin() as conn:
        for stmt in statements:
            changed += (await conn.execute(stmt)).rowcount
    assert await _table(db) == expected
    assert changed == one_by_one == 6  # row 2 is held by another token: guarded out in both forms
    async with db.engine.connect() as conn:
        response, = (await conn.execute(sa.select(t.c.provider_response_json).where(t.c.id == 4))).one()
    if isinstance(response, str):  # SQLite: TEXT; MariaDB: the JSON type decodes it
        response = json.loads(response)
    assert response == {"code": 0, "n": 4, "text": '\u4f60"q"'}  # JSON text stored as given, not encoded twice


def test_equal_values_bind_once_and_rows_must_agree() -> None:
    t = notification_records
    stmt, = bulk.update_by_id(t, [dict(id=1, status="sent", attempt_count=1), dict(id=2, status="sent",
                                                                                   attempt_count=2)])
    sql = str(stmt.compile())
    assert sql.count("CASE") == 1  # attempt_count differs, status does not
    with pytest.raises(ValueError, match="same columns"):
        bulk.update_by_id(t, [dict(id=1, status="sent"), dict(id=2, attempt_count=1)])
    with pytest.raises(ValueError, match="unique"):
        bulk.update_by_id(t, [dict(id=1, status="sent"), dict(id=1, status="dead")])
    assert bulk.update_by_id(t, []) == []


async def test_large_updates_do_not_fill_the_compiled_cache(db) -> None:
    """Each row count is its own statement shape: only the small ones (<= CACHED_ROWS_MAX rows) are cached, so
    varying batch sizes cannot fill the engine's cache with ~8 KiB per row each; results stay exact."""
    await _seed(db, 60)
    cache = db.engine.sync_engine._compiled_cache
    before = len(cache)
    for n in range(bulk.CACHED_ROWS_MAX + 1, 60, 5):
        async with db.engine.begin() as conn:
            assert await bulk.update_rows(conn, notification_records, _rows(n), bind_types=TEXT) == n
    assert len(cache) == before
    async with db.engine.begin() as conn:
        assert await bulk.update_rows(conn, notification_records, _rows(3), bind_types=TEXT) == 3
    assert len(cache) == before + 1
    async with db.engine.connect() as conn:
        got = {r.id: r.status for r in await conn.execute(sa.select(notification_records.c.id, notification_records.c.status))}
    assert got[3] == "failed" and got[55] == "sent" and got[59] == "sent"
