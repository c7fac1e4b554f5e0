"""Table lease: at most one active relay per outbox table (``SMARTFLOW_RELAY__EXCLUSIVE=true``, the default).

Why: with several relays claiming disjoint batches of one table (SKIP LOCKED), two rows of one message key can
be published by two relays at once and reach Kafka out of order (docs/architecture.md#per-key-order). One active relay
per table keeps per-key order; the others stand by and take over within ``table_lease_seconds`` (10 s) of a crash.
The lease is also the holder's claim on every row of the table: it writes no per-row claim (that UPDATE cost ~40 %
of the relay's database time), so a crashed holder's rows are still due for the next one. The price: a holder paused
between its lease check and its publish for longer than the lease publishes that one batch (<= 500 rows) again
beside the new holder -- duplicates, which consumers drop by outbox id; the new holder still sends every row's first
copy in id order. Renewal: every third of the TTL (~3.3 s), one UPDATE.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from smartflow_streams.core import clock
from smartflow_streams.db.models import outbox_relay_leases as leases


class TableLease:
    def __init__(self, engine: AsyncEngine, table: str, owner: str, ttl_seconds: float) -> None:
        self.engine, self.table, self.owner, self.ttl = engine, table, owner, ttl_seconds
        self._held_until = None

    async def hold(self) -> bool:
        """True while this relay holds the lease; renews it when a third of the TTL has passed."""
        now = clock.db_now()
        if self._held_until is not None and now < self._held_until - timedelta(seconds=self.ttl * 2 / 3):
            return True
        until = now + timedelta(seconds=self.ttl)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(leases)
                .where(leases.c.table_name == self.table, sa.or_(leases.c.owner == self.owner, leases.c.lease_until < now))
                .values(owner=self.owner, lease_until=until, updated_at=now)
            )
            won = bool(result.rowcount)
        if not won:
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(sa.insert(leases).values(
                        table_name=self.table, owner=self.owner, lease_until=until, updated_at=now))
                won = True
            except IntegrityError:
                won = False
        self._held_until = until if won else None
        return won

    async def release(self) -> None:
        if self._held_until is None:
            return
        self._held_until = None
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(leases).where(leases.c.table_name == self.table, leases.c.owner == self.owner))
