"""The one fake Feishu: real aiohttp servers on 127.0.0.1 (never any other address).

* :class:`LocalWebhookServer` — the base of every fake webhook server here and in ``bench/``: a real aiohttp app on
  127.0.0.1 at a free port, its POST/GET routes named by the subclass.
* :class:`FakeFeishu` — the Flow webhook route; scripted replies per n-th POST or per user, every body and header
  kept; ``count_only=True`` (benchmarks) answers success at once and only counts.
* :class:`FaultFeishu` — plus the custom-bot route with signature verification, outages, per-POST log (fault
  harness). :func:`feishu_sign` is written from Feishu's documentation, independently of the product's code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from smartflow_streams.cli.embedded import free_port


class LocalWebhookServer:
    """A real aiohttp server on 127.0.0.1 (free port, no access log) serving :meth:`post_routes` and
    :meth:`get_routes` (``(path, handler)`` pairs); ``async with`` starts and stops it."""

    port = 0
    _runner: Any = None

    def post_routes(self) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def get_routes(self) -> list[tuple[str, Any]]:
        return []

    async def __aenter__(self) -> Any:
        from aiohttp import web

        app = web.Application()
        for path, handler in self.post_routes():
            app.router.add_post(path, handler)
        for path, handler in self.get_routes():
            app.router.add_get(path, handler)
        # on exit, a handler still running (a webhook made to hang) is cancelled after 1 s, not aiohttp's 60 s
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


class FakeFeishu(LocalWebhookServer):
    """A real aiohttp server on 127.0.0.1 playing the Feishu Flow webhook. ``script`` maps the n-th POST (1-based)
    to (http status, JSON body, delay seconds); unscripted POSTs succeed with code 0."""

    def __init__(self, script: dict[int, tuple[int, dict[str, Any], float]] | None = None,
                 per_user: dict[int, list[tuple[int, dict[str, Any], float]]] | None = None,
                 *, count_only: bool = False) -> None:
        from aiohttp import web

        self.count_only = count_only  # benchmarks: answer success at once, count, keep nothing
        self.count = 0
        self.script = script or {}
        self.per_user = {k: list(v) for k, v in (per_user or {}).items()}
        self.posts: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._web = web

    def post_routes(self) -> list[tuple[str, Any]]:
        return [("/flow/api/trigger-webhook/{token}", self._handle)]

    def get_routes(self) -> list[tuple[str, Any]]:
        return [("/posts", self._list)]

    async def _list(self, _request: Any) -> Any:
        return self._web.json_response(self.posts)

    async def _handle(self, request: Any) -> Any:
        self.count += 1
        if self.count_only:
            return self._web.json_response({"code": 0})
        body = await request.json()
        self.posts.append(body)
        self.headers.append(dict(request.headers))
        status, reply, delay = self.script.get(len(self.posts), (200, {"code": 0, "msg": "success"}, 0.0))
        queue = self.per_user.get(int(body.get("user_id", 0)))
        if queue:
            status, reply, delay = queue.pop(0)
        if delay:
            await asyncio.sleep(delay)
        return self._web.json_response(reply, status=status)

    def url(self, user_id: int) -> str:
        return f"http://127.0.0.1:{self.port}/flow/api/trigger-webhook/tok-user-{user_id}-secretpart"

    def posts_by_user(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for body in self.posts:
            counts[body["user_id"]] = counts.get(body["user_id"], 0) + 1
        return counts


BOT_OK = {"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}
FLOW_OK = {"code": 0, "msg": "success"}
SIGN_FAILED = {"code": 19021, "data": {}, "msg": "sign match fail or timestamp is not within one hour from current time"}

Reply = tuple[int, dict[str, Any], float]  # (HTTP status, JSON body, delay seconds)


def feishu_sign(secret: str, timestamp: int) -> str:
    """Feishu's custom-bot signature, written from the Feishu docs (independently of the product's code)."""
    string_to_sign = f"{timestamp}\n{secret}".encode("utf-8")
    return base64.b64encode(hmac.new(string_to_sign, digestmod=hashlib.sha256).digest()).decode("utf-8")


# ------------------------------------------------------------------------------------------------ fake Feishu


@dataclass
class Post:
    user_id: int
    kind: str
    at: float
    status: int
    code: int
    delay: float
    delivered: bool
    peer_port: int
    reason: str = ""


class FaultFeishu(FakeFeishu):
    """FakeFeishu plus the custom-bot route ``/open-apis/bot/v2/hook/{token}`` with signature verification.

    * ``per_user[uid]``: scripted replies, popped one per POST of that user (flow body ``user_id``; bot token
      ``bot-user-<uid>-...``); unscripted POSTs answer success after ``default_delay``.
    * ``outage``: while set, every POST gets this reply (a global failure window).
    * Bot channels with a secret in ``secrets[uid]`` must carry ``timestamp`` + ``sign``; the fake checks the HMAC
      and that the timestamp is within 1 hour of its own clock (``time.time() + skew_seconds``), else it answers
      HTTP 200 ``code 19021`` as Feishu does.
    * Every POST is logged as a :class:`Post`; ``delivered`` = HTTP 200, code 0 and answered before the client's
      timeout (``client_timeout``): a reply the worker never read is not counted as a delivery.
    * ``inflight`` holds the POSTs being answered (with the client's TCP port, to find the sending process).
    """

    def __init__(self, *, client_timeout: float = 2.0, skew_seconds: float = 0.0, default_delay: float = 0.0,
                 name: str = "feishu") -> None:
        super().__init__()
        self.name = name
        self.client_timeout = client_timeout
        self.skew_seconds = skew_seconds
        self.default_delay = default_delay
        self.outage: Reply | None = None
        self.secrets: dict[int, str] = {}
        self.log: list[Post] = []
        self.inflight: dict[int, Post] = {}
        self.sign_ok = 0
        self.sign_rejected = 0

    def post_routes(self) -> list[tuple[str, Any]]:
        return [("/flow/api/trigger-webhook/{token}", self._flow), ("/open-apis/bot/v2/hook/{token}", self._bot)]

    def get_routes(self) -> list[tuple[str, Any]]:
        return []

    def bot_url(self, user_id: int) -> str:
        return f"http://127.0.0.1:{self.port}/open-apis/bot/v2/hook/bot-user-{user_id}-secretpart"

    async def _flow(self, request: Any) -> Any:
        body = await request.json()
        return await self._answer(request, int(body.get("user_id", 0)), "flow", body, None)

    async def _bot(self, request: Any) -> Any:
        match = re.match(r"bot-user-(\d+)-", request.match_info["token"])
        uid = int(match.group(1)) if match else 0
        body = await request.json()
        return await self._answer(request, uid, "bot", body, self._verify(uid, body))

    def _verify(self, uid: int, body: dict[str, Any]) -> Reply | None:
        secret = self.secrets.get(uid)
        if not secret:
            return None
        try:
            timestamp = int(body.get("timestamp", ""))
        except (TypeError, ValueError):
            self.sign_rejected += 1
            return 200, SIGN_FAILED, 0.0
        now = time.time() + self.skew_seconds
        expected = feishu_sign(secret, timestamp)
        if abs(now - timestamp) > 3600 or not hmac.compare_digest(expected, str(body.get("sign", ""))):
            self.sign_rejected += 1
            return 200, SIGN_FAILED, 0.0
        self.sign_ok += 1
        return None

    async def _answer(self, request: Any, uid: int, kind: str, body: dict[str, Any], forced: Reply | None) -> Any:
        self.posts.append(body)
        self.headers.append(dict(request.headers))
        queue = self.per_user.get(uid)
        reason = ""
        if forced is not None:
            status, reply, delay = forced
            reason = "sign"
        elif self.outage is not None:
            status, reply, delay = self.outage
            reason = "outage"
        elif queue:
            status, reply, delay = queue.pop(0)
            reason = "script"
        else:
            status, reply, delay = 200, (FLOW_OK if kind == "flow" else BOT_OK), self.default_delay
        code = reply.get("code", 0) if isinstance(reply, dict) else 0
        peer = request.transport.get_extra_info("peername") if request.transport else None
        post = Post(uid, kind, time.time(), status, int(code or 0), delay,
                    status == 200 and not code and delay < self.client_timeout, int(peer[1]) if peer else 0, reason)
        self.log.append(post)
        self.inflight[id(post)] = post
        try:
            if delay:
                await asyncio.sleep(delay)
            return self._web.json_response(reply, status=status)
        finally:
            self.inflight.pop(id(post), None)

    def posts_by_user(self) -> dict[int, int]:
        return dict(Counter(p.user_id for p in self.log))

    def delivered_by_user(self) -> dict[int, int]:
        return dict(Counter(p.user_id for p in self.log if p.delivered))
