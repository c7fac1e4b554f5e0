"""The one clock. Every business "now" (DB timestamps, dedupe windows, ``sent_at``, signature timestamps) is read
here, so tests can shift time with :func:`set_offset` instead of sleeping (e.g. to make a 10-minute sending lease
expire) and every reader sees the same shifted time.

Invariants:

* :func:`zone` is the configured zone (``SMARTFLOW_TIME_ZONE``, default ``Asia/Shanghai``); DB datetimes are naive
  local times in it (Go's DSN ``loc=Local``).
* :func:`now`, :func:`db_now`, :func:`unix` and :func:`unix_nanos` all include the same offset.
* :func:`db_now` has millisecond precision (``DATETIME(3)``), truncated, never rounded.

Not read here on purpose: ids that only need to be unique (``trace_..._<time_ns>``), process-local cache TTLs
(``tables/expiring.py``) and latency measurements (``time.perf_counter``).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from config import get_settings

_offset = timedelta(0)


def zone() -> ZoneInfo:
    """The configured time zone (``SMARTFLOW_TIME_ZONE``)."""
    return get_settings().zone


def now(in_zone: tzinfo | None = None) -> datetime:
    """Aware current time in ``in_zone`` (default: the configured zone), plus the test offset; Go's ``time.Now()``."""
    return datetime.now(in_zone if in_zone is not None else zone()) + _offset


def db_now() -> datetime:
    """Naive current time in the configured zone, millisecond precision (DATETIME(3))."""
    value = now().replace(tzinfo=None)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def unix() -> float:
    """Current Unix time in seconds (plus the test offset)."""
    return time.time() + _offset.total_seconds()


def unix_nanos() -> int:
    """Current Unix time in nanoseconds (plus the test offset), full ``time.time_ns`` resolution."""
    return time.time_ns() + (_offset // timedelta(microseconds=1)) * 1000


def set_offset(delta: timedelta) -> None:
    """Shift this process's clock (tests only)."""
    global _offset
    _offset = delta
