"""One held autocommit connection for the relay's reads: the idle probe and every table's claim read.

Why: a read through the pool is a checkout, the SELECT and the ROLLBACK that ends its implicit transaction; on
this loopback VM each round trip costs CPU in the relay, in MariaDB and in the kernel between them. At 50
triggers/s a relay sent ~130 of those ROLLBACKs a second, one per claim read (``bench/chain_bench.py`` with the
server's general log on). Here a read is the SELECT alone.

Invariants and limits:
- Only single-statement reads go through here (the exclusive-mode claim, the due probe). Autocommit gives each its
  own consistent snapshot, exactly what a one-statement READ COMMITTED transaction gives, so a producer's
  transaction is seen whole or not at all; no transaction, lock or snapshot outlives the statement.
- Reads are serialised on the one connection (an asyncio lock): each is ~1 ms, and the relay's tables read one
  after another on one event loop anyway. Writes (marks, leases) keep using the pool.
- Any failure or cancellation during a read drops the connection (closed, or invalidated if closing fails within
  5 s); the next read opens a fresh one. The caller sees the error and backs off as before.
- MySQL/MariaDB only: on SQLite every transaction starts with ``BEGIN IMMEDIATE`` (a write lock), so SQLite reads
  take a pooled connection each time (:meth:`HeldReader.rows` does that by itself).
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class HeldReader:
    """Runs one-statement reads on a held autocommit connection (SQLite: a pooled connection per read)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self.reads = 0  # statements sent (tests and benchmarks read it)

    async def rows(self, stmt: sa.Executable, params: dict[str, Any] | None = None) -> list[sa.Row[Any]]:
        """All rows of ``stmt`` (fetched before the connection is free for the next read)."""
        self.reads += 1
        if self.engine.dialect.name == "sqlite":
            async with self.engine.connect() as conn:
                return list((await conn.execute(stmt, params)).all())
        async with self._lock:
            try:
                if self._conn is None:
                    self._conn = await _autocommit(self.engine)
                return list((await self._conn.execute(stmt, params)).all())
            except BaseException:
                await self.drop()
                raise

    async def drop(self) -> None:
        """Close the held connection (next read opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await asyncio.shield(asyncio.wait_for(conn.close(), 5))
        except BaseException:  # noqa: BLE001 - a hung or broken connection is discarded
            try:
                await conn.invalidate()
            except Exception:  # noqa: BLE001
                pass


async def _autocommit(engine: AsyncEngine) -> AsyncConnection:
    conn = await engine.connect()
    try:
        return await conn.execution_options(isolation_level="AUTOCOMMIT")
    except BaseException:
        await conn.close()
        raise
