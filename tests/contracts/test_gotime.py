"""Go time interop: parsing Go JSON times, rendering like MarshalJSON / RFC3339, windows, DB naive times."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

import config
from smartflow_streams.core.errors import ContractError
from smartflow_streams.contracts.gotime import (
    GO_ZERO_TIME,
    GO_ZERO_TIME_TEXT,
    db_naive,
    format_go_time,
    format_rfc3339_seconds,
    from_db_naive,
    is_go_zero,
    parse_go_time,
    to_zone,
    window_start,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
CST = timezone(timedelta(hours=8))


@pytest.fixture(autouse=True)
def _shanghai_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_settings", config.load_settings(time_zone="Asia/Shanghai"))


# -- parse ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-04-30T10:12:13+08:00", datetime(2026, 4, 30, 10, 12, 13, tzinfo=CST)),
        ("2026-04-30T10:12:13.1+08:00", datetime(2026, 4, 30, 10, 12, 13, 100000, tzinfo=CST)),
        ("2026-04-30T10:12:13.123456+08:00", datetime(2026, 4, 30, 10, 12, 13, 123456, tzinfo=CST)),
        ("2026-04-30T10:12:13.1234567+08:00", datetime(2026, 4, 30, 10, 12, 13, 123456, tzinfo=CST)),
        ("2026-04-30T10:12:13.123456789+08:00", datetime(2026, 4, 30, 10, 12, 13, 123456, tzinfo=CST)),
        ("2026-04-30T10:12:13.999999999+08:00", datetime(2026, 4, 30, 10, 12, 13, 999999, tzinfo=CST)),
        ("2026-04-30T10:12:13.12345678901+08:00", datetime(2026, 4, 30, 10, 12, 13, 123456, tzinfo=CST)),
        ("2026-04-30T02:12:13.5Z", datetime(2026, 4, 30, 2, 12, 13, 500000, tzinfo=timezone.utc)),
        ("2026-04-30T10:12:13-05:30", datetime(2026, 4, 30, 15, 42, 13, tzinfo=timezone.utc)),
        ("2026-04-30T02:12:13-00:00", datetime(2026, 4, 30, 2, 12, 13, tzinfo=timezone.utc)),
    ],
)
def test_parse_go_time_values(text: str, expected: datetime) -> None:
    parsed = parse_go_time(text)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is not None


def test_parse_truncates_nanoseconds_never_rounds() -> None:
    parsed = parse_go_time("2026-04-30T10:12:13.123456999+08:00")
    assert parsed is not None and parsed.microsecond == 123456


def test_parse_attaches_configured_zone_when_offset_matches() -> None:
    parsed = parse_go_time("2026-04-30T10:12:13+08:00")
    assert parsed is not None and parsed.tzinfo == SHANGHAI


def test_parse_keeps_fixed_offset_for_other_zones() -> None:
    parsed = parse_go_time("2026-04-30T10:12:13-05:30")
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(hours=-5, minutes=-30)
    assert format_go_time(parsed) == "2026-04-30T10:12:13-05:30"


def test_parse_z_is_utc() -> None:
    parsed = parse_go_time("2026-04-30T02:12:13Z")
    assert parsed is not None and parsed.tzinfo == timezone.utc


@pytest.mark.parametrize("text", [None, "", GO_ZERO_TIME_TEXT, "0001-01-01T08:00:00+08:00", "0001-01-01T00:00:00.000Z"])
def test_parse_zero_and_empty_is_none(text: str | None) -> None:
    assert parse_go_time(text) is None


def test_parse_keep_zero_returns_zero_instant() -> None:
    assert parse_go_time(GO_ZERO_TIME_TEXT, keep_zero=True) == GO_ZERO_TIME
    assert parse_go_time(None, keep_zero=True) is None


@pytest.mark.parametrize(
    "text",
    [
        "2026-04-30 10:12:13+08:00",
        "2026-04-30t10:12:13Z",
        "2026-04-30T10:12:13z",
        "2026-04-30T10:12:13",
        "2026-04-30T10:12:13+0800",
        "2026-04-30T10:12:13+08",
        "2026-4-30T10:12:13Z",
        "2026-04-30T1:12:13Z",
        "2026-04-30T24:00:00Z",
        "2026-04-30T10:60:00Z",
        "2026-04-30T10:12:60Z",
        "2026-02-30T10:12:13Z",
        "2026-13-01T10:12:13Z",
        "2026-04-30T10:12:13+24:00",
        "2026-04-30T10:12:13+08:60",
        "2026-04-30T10:12:13.Z",
        "2026-04-30T10:12:13,5Z",
        "0000-01-01T00:00:00Z",
        " 2026-04-30T10:12:13Z",
        "2026-04-30T10:12:13Z\n",
        "\uff12\uff10\uff12\uff16-04-30T10:12:13Z",
        "not a time",
    ],
)
def test_parse_rejects_invalid(text: str) -> None:
    with pytest.raises(ContractError):
        parse_go_time(text)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(ContractError):
        parse_go_time(1714443133)  # type: ignore[arg-type]


# -- format --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        (datetime(2026, 4, 30, 10, 12, 13, tzinfo=SHANGHAI), "2026-04-30T10:12:13+08:00"),
        (datetime(2026, 4, 30, 10, 12, 13, 120000, tzinfo=SHANGHAI), "2026-04-30T10:12:13.12+08:00"),
        (datetime(2026, 4, 30, 10, 12, 13, 123456, tzinfo=SHANGHAI), "2026-04-30T10:12:13.123456+08:00"),
        (datetime(2026, 4, 30, 10, 12, 13, 100, tzinfo=SHANGHAI), "2026-04-30T10:12:13.0001+08:00"),
        (datetime(2026, 4, 30, 2, 12, 13, tzinfo=timezone.utc), "2026-04-30T02:12:13Z"),
        (datetime(2026, 4, 30, 2, 12, 13, tzinfo=ZoneInfo("UTC")), "2026-04-30T02:12:13Z"),
        (datetime(2026, 4, 30, 2, 12, 13, tzinfo=timezone(timedelta(0))), "2026-04-30T02:12:13Z"),
        (datetime(2026, 4, 30, 10, 12, 13, tzinfo=timezone(-timedelta(hours=5, minutes=30))), "2026-04-30T10:12:13-05:30"),
        (datetime(2026, 7, 1, 9, 0, tzinfo=ZoneInfo("America/New_York")), "2026-07-01T09:00:00-04:00"),
        (GO_ZERO_TIME, GO_ZERO_TIME_TEXT),
        (None, GO_ZERO_TIME_TEXT),
    ],
)
def test_format_go_time(dt: datetime | None, expected: str) -> None:
    assert format_go_time(dt) == expected


def test_format_naive_uses_configured_zone_or_argument() -> None:
    naive = datetime(2026, 4, 30, 10, 12, 13)
    assert format_go_time(naive) == "2026-04-30T10:12:13+08:00"
    assert format_go_time(naive, timezone.utc) == "2026-04-30T10:12:13Z"


def test_format_drops_offset_seconds_like_go() -> None:
    # Asia/Shanghai before 1901 is LMT +08:05:43; Go renders hh:mm only.
    assert format_go_time(datetime(1900, 1, 1, tzinfo=SHANGHAI)) == "1900-01-01T00:00:00+08:05"


@pytest.mark.parametrize(
    "text",
    [
        "2026-04-30T10:12:13+08:00",
        "2026-04-30T10:12:13.5+08:00",
        "2026-04-30T10:12:13.000001+08:00",
        "2026-04-30T10:12:13.123456+08:00",
        "2026-04-30T02:12:13.25Z",
        "2026-04-30T10:12:13.1-05:30",
        "1999-12-31T23:59:59.999999+14:00",
    ],
)
def test_microsecond_times_round_trip_exactly(text: str) -> None:
    assert format_go_time(parse_go_time(text)) == text


def test_nanosecond_times_are_truncated_on_round_trip() -> None:
    assert format_go_time(parse_go_time("2026-04-30T10:12:13.123456789+08:00")) == "2026-04-30T10:12:13.123456+08:00"
    assert format_go_time(parse_go_time("2026-04-30T10:12:13.000000999+08:00")) == "2026-04-30T10:12:13+08:00"


def test_format_rfc3339_seconds_has_no_fraction() -> None:
    dt = datetime(2026, 4, 30, 10, 12, 13, 999999, tzinfo=SHANGHAI)
    assert format_rfc3339_seconds(dt) == "2026-04-30T10:12:13+08:00"
    assert format_rfc3339_seconds(dt.astimezone(timezone.utc)) == "2026-04-30T02:12:13Z"
    assert format_rfc3339_seconds(None) == GO_ZERO_TIME_TEXT


# -- windows -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-04-30T10:12:13+08:00", "2026-04-30T10:00:00+08:00"),
        ("2026-04-30T10:00:00+08:00", "2026-04-30T10:00:00+08:00"),
        ("2026-04-30T10:29:59.999+08:00", "2026-04-30T10:00:00+08:00"),
        ("2026-04-30T10:29:59.999999999+08:00", "2026-04-30T10:00:00+08:00"),
        ("2026-04-30T10:30:00+08:00", "2026-04-30T10:30:00+08:00"),
        ("2026-04-30T23:59:59+08:00", "2026-04-30T23:30:00+08:00"),
        ("2026-04-30T02:12:13Z", "2026-04-30T02:00:00Z"),
        ("2026-04-30T10:12:13+05:30", "2026-04-30T10:00:00+05:30"),
        ("2026-04-30T10:12:13+05:45", "2026-04-30T09:45:00+05:45"),
        ("1969-12-31T23:59:59Z", "1969-12-31T23:30:00Z"),
    ],
)
def test_window_start(text: str, expected: str) -> None:
    parsed = parse_go_time(text)
    assert parsed is not None
    assert format_rfc3339_seconds(window_start(parsed)) == expected


def test_window_start_matches_unix_floor_formula() -> None:
    dt = datetime(2026, 4, 30, 10, 12, 13, 456789, tzinfo=SHANGHAI)
    for step in range(0, 200_000, 577):
        probe = dt + timedelta(seconds=step * 7.3)
        start = window_start(probe)
        unix = int((probe - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds() // 1)
        assert int(start.timestamp()) == unix // 1800 * 1800


def test_window_start_keeps_zone_and_handles_naive() -> None:
    start = window_start(datetime(2026, 4, 30, 10, 12, 13, tzinfo=SHANGHAI))
    assert start.tzinfo == SHANGHAI
    naive = window_start(datetime(2026, 4, 30, 10, 12, 13))
    assert format_rfc3339_seconds(naive) == "2026-04-30T10:00:00+08:00"


def test_window_start_other_sizes_and_non_positive() -> None:
    dt = datetime(2026, 4, 30, 10, 12, 13, tzinfo=SHANGHAI)
    assert format_rfc3339_seconds(window_start(dt, 600)) == "2026-04-30T10:10:00+08:00"
    assert window_start(dt, 0) == dt
    assert window_start(dt, -5) == dt


# -- zones and DB naive times --------------------------------------------------------------------------------------


def test_to_zone_and_db_naive_round_trip() -> None:
    utc = datetime(2026, 4, 30, 2, 12, 13, 5, tzinfo=timezone.utc)
    assert to_zone(utc, SHANGHAI) == utc
    assert to_zone(utc, SHANGHAI).tzinfo == SHANGHAI
    naive = db_naive(utc, SHANGHAI)
    assert naive == datetime(2026, 4, 30, 10, 12, 13, 5)
    assert naive is not None and naive.tzinfo is None
    back = from_db_naive(naive, SHANGHAI)
    assert back == utc and back is not None and back.tzinfo == SHANGHAI


def test_db_helpers_default_zone_and_none() -> None:
    assert db_naive(None) is None
    assert from_db_naive(None) is None
    assert db_naive(datetime(2026, 4, 30, 2, 0, tzinfo=timezone.utc)) == datetime(2026, 4, 30, 10, 0)
    assert from_db_naive(datetime(2026, 4, 30, 10, 0)) == datetime(2026, 4, 30, 2, 0, tzinfo=timezone.utc)
    assert db_naive(datetime(2026, 4, 30, 10, 0)) == datetime(2026, 4, 30, 10, 0)  # naive = already local
    assert to_zone(datetime(2026, 4, 30, 10, 0), timezone.utc).tzinfo == timezone.utc


def test_configured_zone_is_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_settings", config.load_settings(time_zone="UTC"))
    assert format_go_time(datetime(2026, 4, 30, 10, 0)) == "2026-04-30T10:00:00Z"
    parsed = parse_go_time("2026-04-30T10:00:00+00:00")
    assert parsed is not None and format_go_time(parsed) == "2026-04-30T10:00:00Z"


def test_is_go_zero() -> None:
    assert is_go_zero(None)
    assert is_go_zero(GO_ZERO_TIME)
    assert is_go_zero(datetime(1, 1, 1, 8, tzinfo=CST))
    assert not is_go_zero(datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert not is_go_zero(datetime(1, 1, 1))  # naive is never the zero instant
