"""Notification dedupe windows: dedupe key -> terminal status, kept 30 minutes (``dedupe_window_seconds``).

Keys are ``<user_id>:<trigger_type>:<window start>`` and messages are keyed by user id, so a key always lives in
the partition of its user's events. Only terminal statuses (sent/dead/skipped) are stored, and only after the
database committed them, so a hit is always right; a miss falls through to the database. Entries are visible to
this worker at once and reach the changelog at the dispatcher's :meth:`flush` at the end of the batch (one message
per batch and partition, :mod:`tables.expiring`).
"""

from __future__ import annotations

import faust

from tables.expiring import ExpiringTable, status_value


class DedupeWindows:
    def __init__(self, app: faust.App, window_seconds: int, partitions: int) -> None:
        self.store = ExpiringTable(app, "notification-dedupe-windows", window_seconds, partitions,
                                   help="notification dedupe key -> terminal status (30 min)")

    def terminal_status(self, dedupe_key: str) -> str | None:
        value = self.store.get(dedupe_key)
        return value.get("s") if value else None

    def remember(self, dedupe_key: str, status: str) -> None:
        self.store.set(dedupe_key, status_value(status))

    def flush(self, partition: int) -> None:
        self.store.flush(partition)
