"""The MySQL pool's manners (``db/engine.py``): no ROLLBACK after a commit, a rollback whenever a transaction is
still open, and a ping only for connections idle longer than ``database_ping_after_idle_seconds``. Real MariaDB.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from sqlalchemy.ext.asyncio import create_async_engine

import config
from smartflow_streams.db.engine import create_engine
from smartflow_streams.db.models import notification_records


@pytest.fixture
def db_kind() -> str:
    return "mariadb"


async def session_rollbacks(conn: sa.ext.asyncio.AsyncConnection) -> tuple[int, int]:
    """(connection id, ROLLBACK statements this connection has run so far)."""
    cid = (await conn.execute(sa.text("SELECT CONNECTION_ID()"))).scalar_one()
    row = (await conn.execute(sa.text("SHOW SESSION STATUS LIKE 'Com_rollback'"))).one()
    return int(cid), int(row[1])


async def test_no_rollback_after_a_commit_one_after_reads(db) -> None:
    engine = create_engine(db.settings, pool_size=1)
    try:
        async with engine.connect() as conn:  # reads: an implicit transaction, rolled back on return
            cid, before = await session_rollbacks(conn)
        async with engine.begin() as conn:  # committed: nothing left to roll back
            await conn.execute(sa.select(sa.literal(1)))
        async with engine.connect() as conn:
            cid_after, after = await session_rollbacks(conn)
    finally:
        await engine.dispose()
    assert cid_after == cid  # the same pooled connection all along
    assert after == before + 1  # the reads' return only (SQLAlchemy's default sent one per return: +2)


async def test_a_connection_returned_after_reads_holds_no_lock(db) -> None:
    """A transaction left open on a pooled connection would hold the table's metadata lock and block DDL."""
    engine = create_engine(db.settings, pool_size=1)
    admin = create_async_engine(db.url, poolclass=NullPool)
    alter = sa.text("ALTER TABLE notification_records ADD COLUMN pool_probe INT NULL")
    try:
        async with admin.connect() as ddl:
            await ddl.execute(sa.text("SET SESSION lock_wait_timeout = 1"))
            async with engine.connect() as conn:  # control: while the reading transaction is open, DDL waits
                await conn.execute(sa.select(notification_records.c.id).limit(1))
                with pytest.raises(sa.exc.OperationalError, match="1205|Lock wait timeout"):
                    await ddl.execute(alter)
            await ddl.execute(alter)  # returned to the pool: its transaction was rolled back, the lock released
    finally:
        await admin.dispose()
        await engine.dispose()


async def test_ping_only_after_idle(db) -> None:
    admin = create_async_engine(db.url, poolclass=NullPool)

    async def kill(cid: int) -> None:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f"KILL {int(cid)}"))
        await asyncio.sleep(0.1)

    idle_ping = create_engine(config.load_settings(database_url=db.url, database_ping_after_idle_seconds=0.2),
                              pool_size=1)
    no_ping = create_engine(config.load_settings(database_url=db.url, database_ping_after_idle_seconds=60),
                            pool_size=1)
    try:
        async with idle_ping.connect() as conn:
            first = (await conn.execute(sa.text("SELECT CONNECTION_ID()"))).scalar_one()
        await kill(first)
        await asyncio.sleep(0.3)  # idle past the window: the checkout pings, finds it dead, connects anew
        async with idle_ping.connect() as conn:
            assert (await conn.execute(sa.text("SELECT CONNECTION_ID()"))).scalar_one() != first

        async with no_ping.connect() as conn:
            first = (await conn.execute(sa.text("SELECT CONNECTION_ID()"))).scalar_one()
        await kill(first)  # within the window: handed out unpinged, its first statement meets the dead socket
        with pytest.raises(sa.exc.OperationalError):
            async with no_ping.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        async with no_ping.connect() as conn:  # the disconnect recycled the pool: the next checkout works
            assert (await conn.execute(sa.text("SELECT CONNECTION_ID()"))).scalar_one() != first
    finally:
        await admin.dispose()
        await idle_ping.dispose()
        await no_ping.dispose()
