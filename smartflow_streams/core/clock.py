"""Wall-clock helpers. DB datetimes are naive local times in the configured zone (Go ``loc=Local``).

All "now" reads go through :func:`db_now` so tests can shift time with :func:`set_offset` instead of sleeping
(e.g. to make a 10-minute sending lease expire).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from config import get_settings

_offset = timedelta(0)


def now() -> datetime:
    """Aware current time in the configured zone (plus the test offset)."""
    return datetime.now(get_settings().zone) + _offset


def db_now() -> datetime:
    """Naive current time in the configured zone, millisecond precision (DATETIME(3))."""
    value = now().replace(tzinfo=None)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def set_offset(delta: timedelta) -> None:
    """Shift this process's clock (tests only)."""
    global _offset
    _offset = delta
