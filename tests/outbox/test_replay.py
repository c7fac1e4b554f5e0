"""`smartflow replay` selection, dry run, copies and audit on real MariaDB and SQLite, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa

import config
from smartflow_streams.core import clock
from smartflow_streams.db.models import outbox_admin_audit, outbox_table
from smartflow_streams.outbox.replay import ReplayError, Selection, execute, plan
from tests.kit.support import ROOT, base_env

N_TABLE = outbox_table("notification_outbox_messages")


async def add_rows(db, statuses: list[str], age_hours: float = 0.0) -> list[int]:
    at = clock.db_now() - timedelta(hours=age_hours)
    ids = []
    async with db.engine.begin() as conn:
        for i, status in enumerate(statuses):
            shell = {"event_id": f"asp_{i}", "event_type": "notification.feishu.requested", "event_version": "1",
                     "aggregate_id": f"asp_{i}", "payload": {"n": i}}
            result = await conn.execute(sa.insert(N_TABLE).values(
                biz_type="notification.feishu.requested", service_name="notification", topic="t.n",
                message_key=str(i % 3), payload=json.dumps(shell), status=status, retry_count=3, max_retry=20,
                created_at=at, updated_at=at, consumed_at=at if status == "consumed" else None))
            ids.append(int(result.inserted_primary_key[0]))
    return ids


async def rows(db) -> list[dict]:
    async with db.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(sa.select(N_TABLE).order_by(N_TABLE.c.id))).mappings()]


async def audit(db) -> list[dict]:
    async with db.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(
            sa.select(outbox_admin_audit).order_by(outbox_admin_audit.c.id))).mappings()]


async def test_dry_run_counts_and_changes_nothing_but_the_audit(db) -> None:
    ids = await add_rows(db, ["consumed", "consumed", "dead", "pending", "published", "consumed"])
    before = await rows(db)
    p = await plan(db.engine, Selection("notification", from_id=ids[0], to_id=ids[4]), actor="op")
    assert (p.matched, p.by_status, p.first_id, p.last_id) == (2, {"consumed": 2}, ids[0], ids[1])
    assert p.sample_ids == ids[:2] and p.by_event_type == {"notification.feishu.requested": 2}
    with_dead = await plan(db.engine, Selection("notification", from_id=ids[0], statuses=("consumed", "dead")),
                           actor="op")
    assert with_dead.by_status == {"consumed": 3, "dead": 1}
    assert await rows(db) == before
    trail = await audit(db)
    assert [a["action"] for a in trail] == ["replay-dry-run", "replay-dry-run"]
    assert json.loads(trail[0]["detail"])["matched"] == 2 and trail[0]["actor"] == "op"


@pytest.mark.parametrize("sel", [
    Selection("notification"),                                     # no bound at all
    Selection("notification", from_id=1, statuses=("published",)),  # in flight: never replayed
    Selection("notification", from_id=5, to_id=2),
])
async def test_bad_selections_are_refused_and_change_nothing(db, sel: Selection) -> None:
    await add_rows(db, ["consumed"])
    before = await rows(db)
    with pytest.raises(ReplayError):
        await execute(db.engine, sel, actor="op")
    assert await rows(db) == before and await audit(db) == []


async def test_execute_copies_finished_rows_as_new_pending_rows_in_id_order(db) -> None:
    old = await add_rows(db, ["consumed", "dead", "consumed", "pending"], age_hours=5)
    new = await add_rows(db, ["consumed"])  # outside the time range
    originals = await rows(db)
    since = clock.db_now() - timedelta(hours=6)
    until = clock.db_now() - timedelta(hours=1)
    copied = await execute(db.engine, Selection("notification", since=since, until=until), actor="cli:op")
    assert copied == 2
    after = await rows(db)
    assert after[:len(originals)] == originals  # originals untouched: terminal stays terminal
    copies = after[len(originals):]
    assert [c["status"] for c in copies] == ["pending", "pending"]
    assert [c["payload"] for c in copies] == [originals[0]["payload"], originals[2]["payload"]]
    assert [c["message_key"] for c in copies] == [originals[0]["message_key"], originals[2]["message_key"]]
    assert all(c["retry_count"] == 0 and c["next_retry_at"] is not None and c["id"] > new[0] for c in copies)
    trail = [a for a in await audit(db) if a["action"] == "replay"]
    assert len(trail) == 1 and trail[0]["actor"] == "cli:op"
    detail = json.loads(trail[0]["detail"])
    assert (detail["copied"], detail["first_id"], detail["last_id"]) == (2, old[0], old[2])


async def test_copies_are_never_selected_again_in_the_same_run(db) -> None:
    await add_rows(db, ["consumed"] * 3)
    # open-ended time range: the copies (created now) fall inside it, but only rows that existed are copied
    assert await execute(db.engine, Selection("notification", since=clock.db_now() - timedelta(days=1)),
                         actor="op") == 3
    assert len(await rows(db)) == 6


async def test_command_line_is_a_dry_run_unless_execute(db) -> None:
    ids = await add_rows(db, ["consumed", "consumed"])
    env = base_env(db.url, "127.0.0.1:1")
    cmd = [sys.executable, "-m", "smartflow_streams.cli", "replay", "notification", "--from-id", str(ids[0]),
           "--to-id", str(ids[1])]
    dry = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert '"dry_run": true' in dry.stdout and "2 row(s) would be republished" in dry.stdout
    assert len(await rows(db)) == 2
    done = subprocess.run(cmd + ["--execute", "--actor", "ops-team"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "replayed 2 row(s)" in done.stdout and len(await rows(db)) == 4
    bad = subprocess.run(cmd[:5], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "give an id range" in bad.stderr
    assert [a["actor"] for a in await audit(db) if a["action"] == "replay"] == ["ops-team"]
    config.set_settings(None)
