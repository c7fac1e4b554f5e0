"""Async engine factory for MySQL/MariaDB (aiomysql) and SQLite (aiosqlite).

- MySQL/MariaDB: READ COMMITTED (fewer gap locks for SKIP LOCKED claims), pool of 10 + 10 overflow, recycled
  hourly. Two round trips per checkout that SQLAlchemy's defaults spend are skipped where they cannot matter
  (on this loopback VM every round trip costs CPU on both ends: socket writes were ~20 % of relay and worker
  samples under load):

  - *ping only after idle*: a connection idle for more than ``database_ping_after_idle_seconds`` (1 s) is pinged
    at checkout and replaced if dead (SQLAlchemy's ``pool_pre_ping`` pinged every checkout). A connection used
    within the last second is handed out as is, HikariCP's ``aliveBypassWindowMs`` rule; if the server died in
    that second, the first statement fails with a disconnect error, which makes SQLAlchemy recycle every pooled
    connection, so a restarted server costs one failed statement per process, not a crash loop (every caller
    retries or records a retriable failure).
  - *rollback on return only if a transaction is open*: a connection returned after its COMMIT (every
    ``engine.begin()`` block) got a second, empty ROLLBACK from the pool. Reads (``engine.connect()``) are rolled
    back by SQLAlchemy's ``Connection.close`` itself, before the pool sees them; what reaches the pool's reset is
    rolled back only if the server reports ``SERVER_STATUS_IN_TRANS`` (sent in every OK/EOF packet) or the status
    is unknown, so no transaction, lock or snapshot outlives its checkout
    (``tests/db/test_engine_pool.py``).
- SQLite: WAL, ``busy_timeout`` 10 s, and every transaction starts with ``BEGIN IMMEDIATE`` so two processes never
  deadlock upgrading a read lock to a write lock (SQLite answers that case with an immediate "database is locked").
  SQLite has no row locks: writers are serialised, which is what makes its single-statement claim atomic.
- Both: ``hide_parameters=True``, so an error's text never carries the statement's bound values (row data,
  payloads) into ``last_error``, logs or served views.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pymysql.constants.SERVER_STATUS import SERVER_STATUS_IN_TRANS  # the server has a transaction open
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine, AsyncSession

from config import Settings


def create_engine(settings: Settings, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30}, hide_parameters=True)
        _sqlite_pragmas(engine)
        return engine
    engine = create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=3600,
        pool_reset_on_return=None,  # _mysql_pool_manners resets what needs it
        isolation_level="READ COMMITTED",
        hide_parameters=True,
    )
    _mysql_pool_manners(engine, settings.database_ping_after_idle_seconds)
    return engine


def _mysql_pool_manners(engine: AsyncEngine, ping_after_idle: float) -> None:
    """Ping after idle, rollback on return only if a transaction is open (see the module note)."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned <= ping_after_idle:
            return  # new, or used within the window
        try:
            dbapi_connection.ping(False)
        except Exception as exc:  # noqa: BLE001 - any failure: the pool replaces this connection
            raise sa.exc.DisconnectionError(f"ping after idle failed: {type(exc).__name__}") from exc

    @event.listens_for(engine.sync_engine, "reset")
    def _on_reset(dbapi_connection: Any, _record: Any, state: Any) -> None:
        if state.terminate_only or not state.asyncio_safe or state.transaction_was_reset:
            return
        status = getattr(getattr(dbapi_connection, "_connection", None), "server_status", None)
        if status is None or status & SERVER_STATUS_IN_TRANS:
            dbapi_connection.rollback()


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"
