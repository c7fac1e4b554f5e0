"""Bearer checks: repeated failures throttled per client, non-UTF-8 headers refused (fake clock, no server)."""

from __future__ import annotations

import config
from smartflow_streams.web.auth import AUTH_FAILURE_LIMIT, AuthFailures, api_user, check_admin


def test_repeated_failures_from_one_client_are_throttled_for_the_window() -> None:
    now = [0.0]
    failures = AuthFailures(clock=lambda: now[0])
    for _ in range(AUTH_FAILURE_LIMIT - 1):
        failures.failed("10.0.0.1")
        now[0] += 1.0
    assert failures.throttled("10.0.0.1") is None
    failures.failed("10.0.0.1")
    denial = failures.throttled("10.0.0.1")
    assert denial is not None and denial.status == 429 and denial.retry_after == 41  # oldest failure at t=0
    assert failures.throttled("10.0.0.2") is None  # other clients unaffected
    now[0] = 60.5
    assert failures.throttled("10.0.0.1") is None  # the oldest failure left the window


def test_a_non_utf8_authorization_header_is_unauthorized_not_an_error() -> None:
    settings = config.load_settings(admin_token="adm-token-123456", api_tokens={"api-token-1234": 7})
    header = "Bearer \udcff\udcfe"  # how aiohttp hands over bytes that are not UTF-8
    assert check_admin(settings, header).status == 401
    assert api_user(settings, header) is None
