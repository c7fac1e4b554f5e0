"""The dashboard in a real headless Chromium (Debian ``/usr/bin/chromium``), driven over the Chrome DevTools
Protocol with aiohttp's websocket client (no extra dependency), against a real worker + relay on Tansu and SQLite.

Checks: the page loads under its CSP without script errors, shows live numbers that change when triggers are
written to the DB (relay -> Kafka -> worker), accounts for every consumed notification event (sent, skipped,
failed, dead, deduplicated; database all time next to this worker since start, labelled), shows the admin-token
placeholder whole, stores the admin token typed by the user, and its Requeue button (clicked with real mouse events)
moves a dead row back to ``pending``. Saves ``var/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

import config
from smartflow_streams.core import clock
from smartflow_streams.db.models import outbox_admin_audit, outbox_table, user_notification_channels
from smartflow_streams.cli.embedded import free_port
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger
from tests.kit.support import FakeFeishu, ROOT, spawn_relay, spawn_worker, terminate, wait_for, worker_env

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADMIN = "adm-browser-4c2e8a91"
USERS = (501, 502, 503)
TASK_TABLE = outbox_table("task_outbox_messages")
SCREENSHOT = ROOT / "var" / "dashboard.png"


class CDP:
    """Minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next = 0
        self.problems: list[str] = []  # JS exceptions and console/log errors

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        mid = self._next
        await self.ws.send_json({"id": mid, "method": method, "params": params})
        while True:
            msg = await self.ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"devtools socket closed: {msg.type}")
            data = json.loads(msg.data)
            if data.get("id") == mid:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
            self._event(data)

    def _event(self, data: dict[str, Any]) -> None:
        method, params = data.get("method"), data.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.problems.append(json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            if not str(entry.get("url", "")).endswith("/favicon.ico"):
                self.problems.append(f"{entry.get('source')}: {entry.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.problems.append(json.dumps(params.get("args", []))[:500])

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = await self.eval(expression)
            except RuntimeError as exc:  # e.g. the page is still loading
                last = exc
            else:
                if last:
                    return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what} ({expression}): {last}")

    async def click(self, selector: str) -> None:
        """A real left click (mouse events at the element's centre), like a user's."""
        box = await self.eval(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            if (!e) return null;
            e.scrollIntoView({{block: "center"}});
            const r = e.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
        }})()""")
        assert box, f"no element {selector}"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left",
                            clickCount=1)

    async def type_into(self, selector: str, text: str) -> None:
        await self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    async def screenshot(self, path: pathlib.Path) -> None:
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture
async def browser(tmp_path: pathlib.Path) -> AsyncIterator[CDP]:
    port = free_port()
    log = open(tmp_path / "chromium.log", "wb")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", f"--remote-debugging-port={port}",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        async with aiohttp.ClientSession() as http:
            pages: list[dict[str, Any]] = []

            async def devtools_up() -> bool:
                nonlocal pages
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                        pages = [p for p in await resp.json() if p.get("type") == "page"]
                        return bool(pages)
                except aiohttp.ClientError:
                    return False

            await wait_for(devtools_up, 20, interval=0.1, what="chromium devtools")
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = CDP(ws)
                for domain in ("Page", "Runtime", "Log"):
                    await cdp.send(f"{domain}.enable")
                await cdp.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1,
                               mobile=False)
                yield cdp
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def card_count(service: str, status: str) -> str:
    return (f"Number((document.querySelector('.card[data-service=\"{service}\"] [data-count=\"{status}\"]') "
            f"|| {{textContent: '-1'}}).textContent.replace(/,/g, ''))")


def outcome(status: str, *, worker: bool = False) -> str:
    """The notification-outcomes cell of ``status``: database (all time) or this worker (since start)."""
    attr = "data-worker-count" if worker else "data-count"
    return (f"Number((document.querySelector('#notification-outcomes tr[data-status=\"{status}\"] [{attr}]') "
            f"|| {{textContent: '-1'}}).textContent.replace(/,/g, ''))")


async def dead_task_rows(db: Any) -> list[int]:
    now = clock.db_now()
    ids = []
    async with db.engine.begin() as conn:
        for i, reason in enumerate(("handler failed: task 77 not found", "payload invalid: due_at missing")):
            result = await conn.execute(sa.insert(TASK_TABLE).values(
                biz_type="task.urgency.promote.requested", service_name="task", topic="smartflow.task.outbox",
                message_key=str(70 + i), payload="{}", status="dead", retry_count=20, max_retry=20,
                next_retry_at=now, last_error=reason, created_at=now, updated_at=now))
            ids.append(int(result.inserted_primary_key[0]))
    return ids


@pytest.mark.parametrize("db_kind", ["sqlite"])  # the page is backend-agnostic; test_views covers MariaDB
async def test_dashboard_live_numbers_and_requeue(db, kafka_bootstrap, tmp_path, browser: CDP) -> None:
    tag, port = uuid.uuid4().hex[:8], free_port()
    env = worker_env(db.url, kafka_bootstrap, tag, port, SMARTFLOW_ADMIN_TOKEN=ADMIN)
    # the test process writes trigger rows too: it must route them to this test's topics, like the worker
    config.set_settings(config.load_settings(database_url=db.url, services={
        "active-scheduler": {"topic": f"t.{tag}.active-scheduler"},
        "notification": {"topic": f"t.{tag}.notification"}}))
    dead_ids = await dead_task_rows(db)
    async with FakeFeishu() as feishu:
        now = clock.db_now()
        async with db.engine.begin() as conn:
            for uid in USERS:
                await conn.execute(sa.insert(user_notification_channels).values(
                    user_id=uid, channel="feishu_webhook", enabled=True, webhook_url=feishu.url(uid),
                    auth_type="none", bearer_token="", webhook_kind="flow", created_at=now, updated_at=now))
        worker = spawn_worker(env, tmp_path / "worker.log")
        relay = spawn_relay(env, tmp_path / "relay.log")
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                async def ready() -> bool:
                    try:
                        async with http.get(f"{base}/ready") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False
                await wait_for(ready, 60, interval=0.2, what="worker /ready")

            await browser.send("Page.navigate", url=f"{base}/dashboard/")
            await browser.wait("document.querySelector('#last-updated').dataset.ts", 10, "first refresh")
            await browser.wait("document.querySelector('#ready').dataset.state === 'ready'", 10, "ready pill")
            assert await browser.eval(card_count("active-scheduler", "consumed")) == 0
            assert await browser.eval("document.querySelectorAll('.card[data-service]').length") >= 8
            first_ts = int(await browser.eval("document.querySelector('#last-updated').dataset.ts"))

            # Requeue without a token: refused in the page, nothing sent
            button = f'button.requeue[data-service="task"][data-id="{dead_ids[0]}"]'
            await browser.wait(f"!!document.querySelector('{button}')", 10, "dead row button")
            await browser.click(button)
            await browser.wait("document.querySelector('#action-message').textContent.includes('admin token first')",
                               5, "missing-token message")

            await browser.type_into("#admin-token", ADMIN)
            await browser.click("#save-token")
            assert await browser.eval("sessionStorage.getItem('smartflow.adminToken')") == ADMIN
            assert await browser.eval("localStorage.getItem('smartflow.adminToken')") is None  # not kept on disk
            assert await browser.eval("document.querySelector('#token-state').textContent") == "token saved"
            assert await browser.eval("document.querySelector('#admin-token').value") == ""

            # live numbers: triggers written to the DB flow relay -> Kafka -> worker, the page follows
            for i, uid in enumerate(USERS):
                async with db.sessions() as s, s.begin():
                    await create_trigger(s, TriggerRequest(
                        user_id=uid, trigger_type="important_urgent_task", source="api_trigger",
                        target_type="task_pool", target_id=900 + i), config.get_settings())
            await browser.wait(f"{card_count('active-scheduler', 'consumed')} === {len(USERS)}", 30,
                               "active-scheduler consumed count on the page")
            rate = float(await browser.eval(
                "document.querySelector('.card[data-service=\"active-scheduler\"] [data-field=\"throughput\"]')"
                ".dataset.value"))
            assert rate > 0
            await browser.wait(f"{card_count('notification', 'consumed')} === {len(USERS)}", 30,
                               "notification consumed count on the page")
            await browser.wait("document.querySelector('#notification-outcomes tr[data-status=\"sent\"] "
                               f"[data-count]').textContent === '{len(USERS)}'", 15, "sent notifications")
            assert len(feishu.posts) == len(USERS)
            assert int(await browser.eval("document.querySelector('#last-updated').dataset.ts")) > first_ts

            # every consumed event accounted for: two more triggers for one user in the same window are
            # consumed and deduplicated (no POST); the page shows them in both scopes, and the rows sum to consumed
            for i in range(2):
                async with db.sessions() as s, s.begin():
                    await create_trigger(s, TriggerRequest(
                        user_id=USERS[0], trigger_type="important_urgent_task", source="api_trigger",
                        target_type="task_pool", target_id=950 + i), config.get_settings())
            consumed = len(USERS) + 2
            await browser.wait(f"{card_count('notification', 'consumed')} === {consumed}", 30,
                               "notification consumed count with the duplicates")
            await browser.wait(f"{outcome('total')} === {consumed} && {outcome('deduplicated')} === 2", 15,
                               "deduplicated events in the outcomes table")
            plain = ("sent", "skipped", "failed", "dead", "pending", "sending", "deduplicated")
            assert sum([await browser.eval(outcome(s)) for s in plain]) == consumed
            assert await browser.eval(outcome("sent")) == len(USERS)
            await browser.wait(f"{outcome('deduplicated', worker=True)} === 2 && "
                               f"{outcome('total', worker=True)} === {consumed}", 15, "this worker's counters")
            assert await browser.eval(outcome("sent", worker=True)) == len(USERS)
            assert len(feishu.posts) == len(USERS)
            heads = await browser.eval("[...document.querySelectorAll('#notification-outcomes th')]"
                                       ".map(th => th.textContent)")
            assert heads[1:3] == ["database, all time", "this worker, since start"]
            card_text = await browser.eval("document.querySelector('.card[data-service=\"notification\"]').innerText")
            assert "rows above: database, all time" in card_text and "this worker, since start" in card_text
            # the admin-token field is wide enough for its whole placeholder (it was cut off)
            fit = await browser.eval("""(() => {
                const input = document.querySelector('#admin-token'), css = getComputedStyle(input);
                const ctx = document.createElement('canvas').getContext('2d');
                ctx.font = css.font;
                const room = input.clientWidth - parseFloat(css.paddingLeft) - parseFloat(css.paddingRight);
                return {text: ctx.measureText(input.placeholder).width, room};
            })()""")
            assert fit["text"] <= fit["room"], fit

            # Requeue with the token: a real click on the row's button
            await browser.click(button)
            await browser.wait("document.querySelector('#action-message').textContent.includes('Requeued 1 row')",
                               10, "requeue confirmation")

            async def requeued() -> bool:
                async with db.engine.connect() as conn:
                    status = (await conn.execute(sa.select(TASK_TABLE.c.status).where(
                        TASK_TABLE.c.id == dead_ids[0]))).scalar()
                return status == "pending"
            await wait_for(requeued, 10, what="requeued row pending in the DB")
            async with db.engine.connect() as conn:
                other = (await conn.execute(sa.select(TASK_TABLE.c.status).where(
                    TASK_TABLE.c.id == dead_ids[1]))).scalar()
                audit = (await conn.execute(sa.select(outbox_admin_audit))).mappings().all()
            assert other == "dead"
            assert [(a["action"], a["actor"], a["outbox_id"]) for a in audit] == [
                ("requeue", "admin:dashboard", dead_ids[0])]
            await browser.wait(f"!document.querySelector('{button}')", 10, "requeued row gone from the table")
            await browser.wait(f"{card_count('task', 'pending')} === 1 && {card_count('task', 'dead')} === 1", 10,
                               "task card counts")

            await browser.screenshot(SCREENSHOT)
            assert SCREENSHOT.stat().st_size > 10_000
            assert browser.problems == []
            html = await browser.eval("document.documentElement.outerHTML")
            assert ADMIN not in html and "secretpart" not in html
        finally:
            assert terminate(relay) == 0
            assert terminate(worker) == 0
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert ADMIN not in log and "secretpart" not in log
