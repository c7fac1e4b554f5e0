"""Async engine factory for MySQL/MariaDB (aiomysql) and SQLite (aiosqlite).

- MySQL/MariaDB: READ COMMITTED (fewer gap locks for SKIP LOCKED claims), pool of 10 + 10 overflow, recycled
  hourly, pre-ping so a restarted server costs one failed checkout, not a crash loop.
- SQLite: WAL, ``busy_timeout`` 10 s, and every transaction starts with ``BEGIN IMMEDIATE`` so two processes never
  deadlock upgrading a read lock to a write lock (SQLite answers that case with an immediate "database is locked").
  SQLite has no row locks: writers are serialised, which is what makes its single-statement claim atomic.
- Both: ``hide_parameters=True``, so an error's text never carries the statement's bound values (row data,
  payloads) into ``last_error``, logs or served views.
"""

from __future__ import annotations

from pathlib import Path

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
    return create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=3600,
        pool_pre_ping=True,
        isolation_level="READ COMMITTED",
        hide_parameters=True,
    )


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
