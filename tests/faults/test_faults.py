"""Fault injection with real processes: a private Tansu broker, MariaDB, relays, Faust workers, a fake Feishu.

Each case runs a small steady load (about 6-8 triggers/s for about 10 s, every 5th trigger a second one for the
same user inside the dedupe window), injects its fault, waits for the system to settle and checks the invariants
of :meth:`harness.Scenario.check_invariants`: every committed trigger reaches ``preview_generated``, no outbox row
is left ``pending``/``published``, one notification record per dedupe key in its expected terminal state, exactly
one delivered POST per dedupe key (duplicates reported separately and only tolerated where the case documents
why), relay counters consistent with the database. Every case writes one JSON line to ``var/fault-results.jsonl``.

All cases run on MariaDB: ``db_kind`` is parametrised here to ``["mariadb"]`` only, which overrides the
conftest's two-backend ``db_kind`` fixture for this module (the ``db`` fixture then creates a MariaDB database).
The case logic lives in :mod:`harness` so ``bench/soak.py`` can run the same cases longer.
"""

from __future__ import annotations

import logging

import pytest

import harness

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_kind", ["mariadb"])]
log = logging.getLogger("faults")


async def _run(name: str, db, tmp_path, **params):
    result = await harness.run_case(name, harness.CASES[name[0]], db.url if db is not None else None,
                                    tmp_path / name, **params)
    log.warning("fault case %s", harness.brief(result))
    return result


async def test_a_relay_kill9_mid_batch_three_times(db, tmp_path):
    """kill -9 of the relay while it holds claimed rows, 3 times, restarted each time: nothing lost; rows left
    claimed by the dead relay are published after the 3 s claim lease by the next one."""
    res = await _run("a_relay_kill9", db, tmp_path, rate=8, duration=10)
    assert res["relay_kills"] == 3
    assert res["duplicate_deliveries"] == 0


async def test_b_worker_kill9_mid_post(db, tmp_path):
    """Two workers; the one with a webhook POST in flight is killed, then restarted. Tolerated: the in-flight POST
    is delivered again after the 4 s sending lease
    (docs/architecture.md#at-most-one-webhook-post-per-dedupe-key-in-flight)."""
    res = await _run("b_worker_kill9", db, tmp_path, rate=8, duration=10)
    assert res["worker_kills"] == 1


async def test_c_two_relays_two_workers_one_of_each_killed(db, tmp_path):
    """Two relays and two workers; the leading relay and one worker killed at once, not restarted."""
    res = await _run("c_two_of_each_one_killed", db, tmp_path, rate=8, duration=10)
    assert res["relay_kills"] == 1 and res["worker_kills"] == 1


async def test_d_broker_outage_under_load(db, tmp_path):
    """Broker unavailable for 8 s under load (frozen, data kept), then back: everything settles on its own, no
    process restarted, nothing lost, no duplicate POST."""
    res = await _run("d_broker_restart", db, tmp_path, rate=8, duration=12)
    assert res["recovery_seconds"] < 60 and res["duplicate_deliveries"] == 0


async def test_e_database_restart_under_load(db, tmp_path):
    """A private MariaDB (scripts/mariadb.sh) stopped for 3 s under load and started again; no process dies."""
    res = await _run("e_database_restart", None, tmp_path, rate=8, duration=12)
    assert res["insert_failures"] >= 0


async def test_f_replayed_topics_and_new_consumer_group_post_nothing_twice(db, tmp_path):
    """All envelopes produced again, plus a worker in a new consumer group reading from the beginning."""
    res = await _run("f_duplicate_deliveries", db, tmp_path, rate=8, duration=10)
    assert res["posts_after_settle_delta"] == 0 and res["duplicate_deliveries"] == 0


async def test_g_poison_messages_and_rows(db, tmp_path):
    """Garbage bytes, bad versions, invalid payloads, bad shells: dead with reasons; good events unaffected."""
    res = await _run("g_poison", db, tmp_path, rate=8, duration=10)
    assert res["dead_messages"] >= 6


async def test_h_webhook_5xx_429_11232_timeouts_then_recovery(db, tmp_path):
    """Webhook failing, throttling and timing out, then recovering: all sent, retries visible."""
    res = await _run("h_webhook_failures", db, tmp_path, rate=6, duration=10)
    assert res["records"] == {"sent": res["records"]["sent"]} and res["max_attempts"] > 1


async def test_i_bot_signer_clock_skew(db, tmp_path):
    """Feishu's clock 2 h off: dead bot_sign_failed after one POST; 30 min off: sent."""
    res = await _run("i_signer_clock_skew", db, tmp_path, rate=6, duration=8)
    assert res["skew2h_posts"] == res["skew2h_users"] and res["records"].get("sent", 0) > 0
