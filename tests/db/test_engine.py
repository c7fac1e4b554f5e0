"""Engines hide statement parameters: a database error's text never carries row data (both backends)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from smartflow_streams.db.models import notification_records
from smartflow_streams.core.masking import mask_database_url, scrub_error

ROW_SECRET = "row-data-7c1d9e4a-secret"


async def test_an_integrity_error_carries_no_parameters(db) -> None:
    values = dict(channel="feishu", user_id=1, trigger_id="t", preview_id="p", trigger_type="x", target_type="y",
                  target_id=1, dedupe_key=ROW_SECRET, target_url="/a", status="pending", attempt_count=0,
                  max_attempts=5, summary_text=ROW_SECRET)
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(notification_records).values(id=1, **values))
    with pytest.raises(sa.exc.IntegrityError) as failure:
        async with db.engine.begin() as conn:
            await conn.execute(sa.insert(notification_records).values(id=1, **values))  # same primary key
    text = str(failure.value)
    assert "INSERT INTO" in text  # the statement is still there for the operator
    assert ROW_SECRET not in text
    assert "hidden due to hide_parameters" in text


def test_scrub_error_removes_parameters_stored_before_and_database_passwords() -> None:
    old = ("(pymysql.err.IntegrityError) (1062, \"Duplicate entry\") [SQL: INSERT INTO t (a, b) VALUES (%s, %s)] "
           f"[parameters: ('{ROW_SECRET}', 5)] (Background on this error at: https://sqlalche.me/e/20/gkpj) "
           "while connecting mysql+aiomysql://app:pa@ss@db:3306/x?password=qwerty12")
    cleaned = scrub_error(old)
    assert ROW_SECRET not in cleaned and "pa@ss" not in cleaned and "ss@db" not in cleaned
    assert "qwerty12" not in cleaned
    assert "[parameters hidden]" in cleaned and "INSERT INTO t" in cleaned


@pytest.mark.parametrize(("url", "masked"), [
    ("mysql+aiomysql://app:secret@db/x", "mysql+aiomysql://app:****@db/x"),
    ("mysql+aiomysql://app:p@ss@db/x", "mysql+aiomysql://app:****@db/x"),
    ("mysql+aiomysql://:secret@db/x", "mysql+aiomysql://:****@db/x"),
    ("mysql+aiomysql://app@db/x?charset=utf8mb4&password=secret", "mysql+aiomysql://app@db/x?charset=utf8mb4&password=****"),
    ("sqlite+aiosqlite:///var/x.sqlite", "sqlite+aiosqlite:///var/x.sqlite"),
])
def test_mask_database_url(url: str, masked: str) -> None:
    assert mask_database_url(url) == masked
