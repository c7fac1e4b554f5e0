"""The relay's held autocommit reader (``outbox_relay/reader.py``) on a real MariaDB: one connection, no ROLLBACK per
read, no transaction left open between reads, and a broken connection replaced on the next read."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from outbox_relay.reader import HeldReader
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.outbox.repository import OutboxRepository

ROLLBACKS = sa.text("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME='COM_ROLLBACK'")


@pytest.fixture
def db_kind() -> str:
    return "mariadb"


async def test_reads_share_one_connection_without_rollbacks_or_open_transactions(db) -> None:
    await upgrade_schema(db.engine)
    repo = OutboxRepository.for_service("notification")
    reader = HeldReader(db.engine)
    admin = create_async_engine(db.url, poolclass=NullPool)
    try:
        cid = (await reader.rows(sa.text("SELECT CONNECTION_ID()")))[0][0]
        before = int((await reader.rows(ROLLBACKS))[0][0])
        for _ in range(5):
            claim = await repo.claim_due(db.engine, limit=10, lease_seconds=30, exclusive=True, read=reader.rows)
            assert claim.rows == []
        assert (await reader.rows(sa.text("SELECT CONNECTION_ID()")))[0][0] == cid
        assert int((await reader.rows(ROLLBACKS))[0][0]) == before  # none sent: each read is one statement
        async with admin.connect() as ddl:  # the reader still holds its connection, but no transaction on it
            await ddl.execute(sa.text("SET SESSION lock_wait_timeout = 1"))
            await ddl.execute(sa.text(f"ALTER TABLE {repo.table.name} ADD COLUMN reader_probe INT NULL"))
        assert reader.reads == 9
    finally:
        await reader.drop()
        await admin.dispose()


async def test_a_broken_connection_fails_one_read_and_is_replaced(db) -> None:
    reader = HeldReader(db.engine)
    admin = create_async_engine(db.url, poolclass=NullPool)
    try:
        cid = (await reader.rows(sa.text("SELECT CONNECTION_ID()")))[0][0]
        async with admin.connect() as conn:
            await conn.execute(sa.text(f"KILL {int(cid)}"))
        with pytest.raises(sa.exc.DBAPIError):
            await reader.rows(sa.text("SELECT 1"))
        assert (await reader.rows(sa.text("SELECT CONNECTION_ID()")))[0][0] != cid
    finally:
        await reader.drop()
        await admin.dispose()
