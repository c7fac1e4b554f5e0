"""``smartflow notify-test`` and ``smartflow load`` as real commands on a scratch SQLite database: the first says
why a demo (plain-http) channel fails after the demo, the second warns about users without channels and reports
notification dedupe truthfully."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import sqlalchemy as sa

from smartflow_streams.core import clock
from smartflow_streams.db.engine import create_engine
from smartflow_streams.db.models import user_notification_channels
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.cli.embedded import free_port
import config

pytestmark = pytest.mark.slow


async def scratch_db(tmp_path: pathlib.Path, channels: dict[int, str]) -> dict[str, str]:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    engine = create_engine(config.load_settings(database_url=url))
    await upgrade_schema(engine)
    now = clock.db_now()
    async with engine.begin() as conn:
        for uid, webhook in channels.items():
            await conn.execute(sa.insert(user_notification_channels).values(
                user_id=uid, channel="feishu_webhook", enabled=True, webhook_url=webhook, auth_type="none",
                webhook_kind="flow", created_at=now, updated_at=now))
    await engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
    env["SMARTFLOW_DATABASE_URL"] = url
    return env


def smartflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smartflow_streams.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)


async def test_notify_test_after_the_demo_says_why_it_fails(tmp_path: pathlib.Path) -> None:
    port = free_port()  # the demo receiver's port, closed now that the demo stopped
    url = f"http://127.0.0.1:{port}/flow/api/trigger-webhook/demo-user-1001-token"
    env = await scratch_db(tmp_path, {1001: url})
    result = smartflow(env, "notify-test", "1001")
    assert result.returncode == 1
    assert '"message": "invalid_url: webhook URL scheme must be https"' in result.stdout
    assert result.stderr.splitlines() == [
        f"note: user 1001's channel is a plain-http URL (http://127.0.0.1:{port}/flow/api/trigger-webhook/demo...oken), "
        "written by `smartflow up --demo`.",
        "  Plain http is refused unless SMARTFLOW_NOTIFICATION__ALLOW_PLAIN_HTTP=true and the host is in "
        "SMARTFLOW_NOTIFICATION__ALLOWED_HOSTS; the demo sets both for its own run only.",
        f"  Nothing listens on 127.0.0.1:{port} now (the demo receiver stops with the demo), so even that would fail.",
        "  To test it: SMARTFLOW_NOTIFICATION__ALLOW_PLAIN_HTTP=true SMARTFLOW_NOTIFICATION__ALLOWED_HOSTS="
        "'[\"127.0.0.1\"]' smartflow notify-test 1001 while the demo runs, or give the user a real https Feishu "
        "webhook."]
    assert "demo-user-1001-token" not in result.stdout + result.stderr


async def test_notify_test_without_a_channel_says_so(tmp_path: pathlib.Path) -> None:
    env = await scratch_db(tmp_path, {})
    result = smartflow(env, "notify-test", "42")
    assert result.returncode == 1
    assert "note: user 42 has no enabled feishu_webhook channel" in result.stderr


async def test_load_warns_about_users_without_channels_and_counts_notification_dedupe(tmp_path: pathlib.Path) -> None:
    env = await scratch_db(tmp_path, {3: "https://open.feishu.cn/flow/api/trigger-webhook/abcdefghijkl"})
    result = smartflow(env, "load", "--users", "20", "--count", "100")
    assert result.returncode == 0, result.stderr
    assert ("warning: 19 of 20 users (1-2, 4-20) have no enabled feishu_webhook channel: their notifications end "
            "`skipped`") in result.stderr
    lines = result.stdout.splitlines()
    assert "100 new triggers, 0 trigger dedupe hits (an open trigger for the same user and target)." in lines
    assert ("notifications: the 100 new triggers share 20 notification dedupe key(s) (one per user, trigger type "
            "and 30-minute window), so the worker sends at most 20 and counts 80 as deduplicated; 19 user(s) without "
            "a channel end skipped.") in lines, result.stdout
