"""The notification sliding window: one hanging webhook and one bot over its quota do not delay the other users
(real MariaDB, real HTTP servers on 127.0.0.1; the scenario is the one ``bench/notify_window_bench.py`` times)."""

from __future__ import annotations

import pytest

from bench.notify_window_bench import BOT_USER, HANG_USER, run_scenario

# The stated bound: with the bad neighbours, the normal users' p99 send latency is at most 1.5x the clean run's
# plus 0.5 s (a shared 2-core machine's noise). Before the window, each chunk of 16 holding a hanging record
# waited the 2 s timeout and the bot's limiter slept ~60 s in front of its chunk-mates.
P99_FACTOR = 1.5
P99_SLACK_SECONDS = 0.5


@pytest.mark.timeout(240)
@pytest.mark.parametrize("db_kind", ["mariadb"])
async def test_hanging_webhook_and_throttled_bot_do_not_delay_normal_users(db) -> None:
    clean = await run_scenario(db.url, bad=False, timeout=2.0)
    dirty = await run_scenario(db.url, bad=True, bad_records=5, timeout=2.0, user_offset=10_000)

    assert len(clean.normal_latencies) == len(dirty.normal_latencies) == 100
    assert dirty.percentile(0.99) <= P99_FACTOR * clean.percentile(0.99) + P99_SLACK_SECONDS, (
        clean.percentile(0.99), dirty.percentile(0.99))
    assert all(s == [("sent", "")] for u, s in dirty.statuses.items() if u not in (HANG_USER, BOT_USER))
    # the hanging user's first record times out (one slot); the rest of its batch is deferred without a POST
    assert sorted(dirty.statuses[HANG_USER]) == [("failed", "deferred_after_timeout")] * 4 + [
        ("failed", "provider_timeout")]
    # the bot: 2 within its quota, the rest a temporary failure right away (no sleep of ~60 s)
    assert sorted(dirty.statuses[BOT_USER]) == [("failed", "rate_limited_local")] * 3 + [("sent", "")] * 2
    assert dirty.batch_seconds < 2.0 + 5.0, dirty.batch_seconds  # one 2 s timeout, not five in a row, plus slack
    print(f"normal p99 clean {clean.percentile(0.99):.3f} s, with bad users {dirty.percentile(0.99):.3f} s")
