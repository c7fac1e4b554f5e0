"""The one backlog query of an outbox table: rows per status and the oldest pending row, in one connection.

Used by the relay's metrics (``smartflow_outbox_backlog``, ``smartflow_outbox_oldest_pending_seconds``) and the
admin overview. Two statements (``GROUP BY status`` and ``MIN(created_at) WHERE status = 'pending'``); both use
the ``status`` index, so the cost grows with the number of statuses, not with a full scan per status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

STATUSES = ("pending", "published", "consumed", "dead")


@dataclass(frozen=True)
class Backlog:
    counts: dict[str, int]  # only the statuses that have rows
    oldest_pending: datetime | None  # naive, configured zone (as stored)

    def all_counts(self) -> dict[str, int]:
        """Every status of :data:`STATUSES` (0 when absent), plus any other status found."""
        return {**{s: 0 for s in STATUSES}, **self.counts}

    def oldest_pending_seconds(self, now: datetime) -> float:
        """Age of the oldest pending row at ``now`` (naive, same zone), never negative; 0 with no pending row."""
        return max(0.0, (now - self.oldest_pending).total_seconds()) if self.oldest_pending is not None else 0.0


async def read_backlog(conn: Any, table: sa.Table) -> Backlog:
    """Read ``table``'s backlog on ``conn`` (an async connection or session)."""
    counts = (await conn.execute(sa.select(table.c.status, sa.func.count()).group_by(table.c.status))).all()
    oldest = (await conn.execute(
        sa.select(sa.func.min(table.c.created_at)).where(table.c.status == "pending"))).scalar()
    return Backlog({str(k): int(v) for k, v in counts}, oldest)
