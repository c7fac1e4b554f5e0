"""Go ``time.Time`` interop: parse and render times exactly as the upstream Go services do.

Invariants and limits:

* Parsing accepts what Go's ``time.Time.UnmarshalJSON`` accepts (Go >= 1.20 strict RFC 3339):
  ``YYYY-MM-DDTHH:MM:SS[.frac](Z|±hh:mm)`` with an upper-case ``T`` and ``Z``, hour 0-23, minute and second 0-59,
  offset hour 0-23 and offset minute 0-59. Any number of fractional digits is accepted (Go reads at most 9 and
  drops the rest); Python keeps only the first **6** (microseconds), so digits 7-9 are **truncated** (never
  rounded). A time written by Go with nanoseconds therefore re-renders with at most 6 fractional digits.
* Year 0000 is valid in Go but cannot be represented by :class:`datetime` (years 1-9999): it raises
  :class:`~smartflow_streams.core.errors.ContractError`.
* Go's zero time ``0001-01-01T00:00:00Z`` (any spelling of that instant) means "unset" and parses to ``None``
  unless ``keep_zero=True`` (used for ``*time.Time`` fields, where Go keeps a non-nil pointer to the zero time).
* Like Go with ``TZ=Asia/Shanghai`` (``time.Local``), a parsed offset that equals the configured zone's offset at
  that instant yields a datetime in the configured :class:`~zoneinfo.ZoneInfo`; other offsets yield a fixed
  :class:`datetime.timezone`; ``Z`` yields UTC.
* Rendering follows ``time.RFC3339Nano`` (``MarshalJSON``): fraction with trailing zeros trimmed, none when zero,
  ``Z`` for a zero UTC offset, else ``±hh:mm`` (an offset's seconds are dropped, as Go does).
* Naive datetimes are always interpreted in the configured zone (``config.get_settings().zone``, default
  ``Asia/Shanghai``) unless a ``zone`` is passed; DB columns hold naive local time like Go's DSN ``loc=Local``.
* Dedupe windows (:func:`window_start`) floor the absolute time to a multiple of the window since Go's zero time
  (for 1800 s identical to ``floor(unix / 1800) * 1800``) and render in the datetime's own zone.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from smartflow_streams.core import clock
from smartflow_streams.core.errors import ContractError

GO_ZERO_TIME_TEXT = "0001-01-01T00:00:00Z"
GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)
"""The instant of Go's ``time.Time{}``; every datetime equal to it is "zero"."""

DEFAULT_WINDOW_SECONDS = 1800
"""Upstream's 30-minute dedupe window."""

_FRACTION_DIGITS_KEPT = 6

_RFC3339 = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})"
)


def configured_zone() -> ZoneInfo:
    """The process time zone from settings (``SMARTFLOW_TIME_ZONE``, default ``Asia/Shanghai``): :func:`clock.zone`."""
    return clock.zone()


def _zone_or_default(zone: tzinfo | None) -> tzinfo:
    return zone if zone is not None else configured_zone()


def is_go_zero(dt: datetime | None) -> bool:
    """True for ``None`` and for any aware datetime at Go's zero instant (``0001-01-01T00:00:00Z``)."""
    if dt is None:
        return True
    if dt.tzinfo is None or dt.utcoffset() is None:
        return False
    try:
        return dt == GO_ZERO_TIME
    except OverflowError:  # pragma: no cover - comparison never overflows in CPython, kept for safety
        return False


# -- parsing ----------------------------------------------------------------------------------------------------


def parse_go_time(value: str | None, *, keep_zero: bool = False, zone: tzinfo | None = None) -> datetime | None:
    """Parse a Go JSON time (RFC 3339, 0-9+ fractional digits) into an aware datetime.

    ``None``, ``""`` and the zero instant return ``None`` (``keep_zero=True`` returns :data:`GO_ZERO_TIME` for
    the zero instant instead). Fractional digits beyond 6 are truncated. Invalid text raises
    :class:`ContractError`.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ContractError(f"time must be an RFC 3339 string, got {type(value).__name__}")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ContractError(f"invalid RFC 3339 time {value!r}: expected YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm)")
    offset = _parse_offset(value, match.group("zone"))
    parsed = _build_datetime(value, match, offset)
    if is_go_zero(parsed):
        return GO_ZERO_TIME if keep_zero else None
    if match.group("zone") == "Z":
        return parsed
    return _attach_local_zone(parsed, offset, zone)


def _parse_offset(value: str, text: str) -> timedelta:
    if text == "Z":
        return timedelta(0)
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise ContractError(f"invalid RFC 3339 time {value!r}: time zone offset out of range")
    delta = timedelta(hours=hours, minutes=minutes)
    return -delta if text[0] == "-" else delta


def _build_datetime(value: str, match: re.Match[str], offset: timedelta) -> datetime:
    fraction = (match.group("fraction") or "")[:_FRACTION_DIGITS_KEPT]
    microsecond = int(fraction.ljust(_FRACTION_DIGITS_KEPT, "0")) if fraction else 0
    try:
        return datetime(
            int(match.group("year")),
            int(match.group("month")),
            int(match.group("day")),
            int(match.group("hour")),
            int(match.group("minute")),
            int(match.group("second")),
            microsecond,
            tzinfo=timezone(offset),
        )
    except ValueError as exc:
        raise ContractError(f"invalid RFC 3339 time {value!r}: {exc}") from None


def _attach_local_zone(parsed: datetime, offset: timedelta, zone: tzinfo | None) -> datetime:
    """Go: "use local zone with the given offset if possible", else a fixed zone."""
    local = _zone_or_default(zone)
    try:
        in_local = parsed.astimezone(local)
    except (OverflowError, ValueError):
        return parsed
    return in_local if in_local.utcoffset() == offset else parsed


# -- rendering --------------------------------------------------------------------------------------------------


def _aware(dt: datetime, zone: tzinfo | None) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        return dt.replace(tzinfo=_zone_or_default(zone))
    return dt


def _format_offset(dt: datetime) -> str:
    offset = dt.utcoffset()
    total = int(offset.total_seconds()) if offset is not None else 0
    if total == 0:
        return "Z"
    minutes = -((-total) // 60) if total < 0 else total // 60  # Go truncates toward zero
    if minutes == 0:
        return "+00:00"
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _format_clock(dt: datetime) -> str:
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )


def format_go_time(dt: datetime | None, zone: tzinfo | None = None) -> str:
    """Render like Go's ``time.Time.MarshalJSON`` (RFC3339Nano, without the surrounding quotes).

    ``None`` renders Go's zero time ``0001-01-01T00:00:00Z``. A naive datetime is interpreted in ``zone``
    (default: the configured zone).
    """
    if dt is None:
        return GO_ZERO_TIME_TEXT
    aware = _aware(dt, zone)
    fraction = f".{aware.microsecond:06d}".rstrip("0") if aware.microsecond else ""
    return _format_clock(aware) + fraction + _format_offset(aware)


def format_rfc3339_seconds(dt: datetime | None, zone: tzinfo | None = None) -> str:
    """Render like Go's ``t.Format(time.RFC3339)``: no fractional seconds (they are dropped, not rounded)."""
    if dt is None:
        return GO_ZERO_TIME_TEXT
    aware = _aware(dt, zone)
    return _format_clock(aware) + _format_offset(aware)


# -- windows and zones ------------------------------------------------------------------------------------------


def window_start(dt: datetime, window_seconds: int = DEFAULT_WINDOW_SECONDS, *, zone: tzinfo | None = None) -> datetime:
    """Go ``dt.Truncate(window)``: floor the absolute time to a multiple of ``window_seconds`` since Go's zero time.

    The result is in ``dt``'s own zone (its offset is the zone's offset at the window start). A naive ``dt`` is
    interpreted in ``zone`` (default: configured zone). ``window_seconds <= 0`` returns ``dt`` unchanged, like Go.
    """
    aware = _aware(dt, zone)
    if window_seconds <= 0:
        return aware
    delta = aware - GO_ZERO_TIME
    seconds = delta.days * 86_400 + delta.seconds  # floor: timedelta keeps seconds/microseconds non-negative
    start = seconds - seconds % window_seconds
    try:
        return (GO_ZERO_TIME + timedelta(seconds=start)).astimezone(aware.tzinfo)
    except OverflowError:
        raise ContractError(f"time {aware.isoformat()} is outside the supported range") from None


def now_in_zone(zone: tzinfo | None = None) -> datetime:
    """The current time as an aware datetime in ``zone`` (default: configured zone); Go's ``time.Now()``.

    Reads :func:`smartflow_streams.core.clock.now`, so the test clock offset applies here too."""
    return clock.now(_zone_or_default(zone))


def to_zone(dt: datetime, zone: tzinfo | None = None) -> datetime:
    """``dt`` converted to ``zone`` (default: configured zone); a naive ``dt`` is taken to be in that zone."""
    target = _zone_or_default(zone)
    if dt.tzinfo is None or dt.utcoffset() is None:
        return dt.replace(tzinfo=target)
    return dt.astimezone(target)


def db_naive(dt: datetime | None, zone: tzinfo | None = None) -> datetime | None:
    """Aware datetime -> naive local time in ``zone`` for a DB column (Go DSN ``loc=Local``). Naive passes through."""
    if dt is None:
        return None
    return to_zone(dt, zone).replace(tzinfo=None)


def from_db_naive(naive: datetime | None, zone: tzinfo | None = None) -> datetime | None:
    """Naive local time read from a DB column -> aware datetime in ``zone`` (default: configured zone)."""
    if naive is None:
        return None
    return to_zone(naive, zone)


__all__ = [
    "DEFAULT_WINDOW_SECONDS",
    "GO_ZERO_TIME",
    "GO_ZERO_TIME_TEXT",
    "configured_zone",
    "db_naive",
    "format_go_time",
    "format_rfc3339_seconds",
    "from_db_naive",
    "is_go_zero",
    "now_in_zone",
    "parse_go_time",
    "to_zone",
    "window_start",
]
