"""WebhookProvider against real aiohttp servers on 127.0.0.1: bodies, signing, classification, limits, secrecy."""

from __future__ import annotations

# Size (~870 lines): one test per Feishu rule (URLs, bodies, signing, every answer class, redaction, rate
# limits) against one real local HTTP server; the sections follow the provider package's modules.

import asyncio
import contextlib
import json
import time
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from config import NotificationSettings
from smartflow_streams.core.errors import ContractError
from smartflow_streams.core.errors import ContractError
from smartflow_streams.core.masking import scrub_text
from smartflow_streams.notification.limiter import RateLimiter
from smartflow_streams.notification.feishu import (
    ChannelConfig,
    InvalidWebhookURL,
    Outcome,
    SendRequest,
    SendResult,
    WebhookProvider,
    build_action_url,
    sign_bot_request,
    validate_webhook_url,
)

FLOW_TOKEN = "flowtok-7f3a9c2e51b84d06a1e2"
BOT_TOKEN = "b0t7c1e9a-4f6d-4e3b-9a8c-2d5f1e0b7a6c"
BEARER = "bearer-secret-9f8e7d6c5b4a"
SIGN_SECRET = "orbit-test-secret"
T0 = 1_756_800_000  # 2025-09-02T08:00:00Z
KNOWN_SIGN = "sN+9ZKa5w6BQmKyxCaxNA1DWEgtEnZaOcfEOCqZ26fg="
FLOW_PATH = f"/flow/api/trigger-webhook/{FLOW_TOKEN}"
BOT_PATH = f"/open-apis/bot/v2/hook/{BOT_TOKEN}"
PROVIDER_LOGGER = "smartflow_streams.notification.feishu.provider"


# ------------------------------------------------------------------------------------------------ fake Feishu


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: {"code": 0, "msg": "success", "data": {}})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Captured:
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.raw.decode("utf-8"))


class FakeFeishu:
    """Records every request and answers with queued :class:`Reply` objects (default: code 0)."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self.replies: deque[Reply] = deque()
        self.release = asyncio.Event()
        self.server: TestServer | None = None

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Captured(request.path, dict(request.headers), await request.read()))
        reply = self.replies.popleft() if self.replies else Reply()
        if reply.delay:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.release.wait(), reply.delay)
        if isinstance(reply.body, (dict, list)):
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        data = reply.body.encode("utf-8") if isinstance(reply.body, str) else reply.body
        return web.Response(status=reply.status, body=data, headers=reply.headers, content_type="text/plain")


@pytest_asyncio.fixture
async def feishu() -> AsyncIterator[FakeFeishu]:
    fake = FakeFeishu()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.server = server
    yield fake
    fake.release.set()
    await server.close()


@pytest_asyncio.fixture
async def truncating_server() -> AsyncIterator[str]:
    """A raw HTTP server that promises 1000 body bytes, sends 9 and hangs up (a body read error)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"code\":0")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}{FLOW_PATH}"
    server.close()
    await server.wait_closed()


class WallClock:
    def __init__(self, now: float = float(T0)) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(**overrides: Any) -> NotificationSettings:
    values: dict[str, Any] = {"allow_plain_http": True, "allowed_hosts": ["127.0.0.1"]}
    values.update(overrides)
    return NotificationSettings(**values)


@pytest_asyncio.fixture
async def make_provider() -> AsyncIterator[Callable[..., WebhookProvider]]:
    created: list[WebhookProvider] = []

    def factory(
        clock: Callable[[], float] | None = None, limiter: RateLimiter | None = None, zone: Any = None, **overrides: Any
    ) -> WebhookProvider:
        kwargs: dict[str, Any] = {"limiter": limiter}
        if zone is not None:
            kwargs["zone"] = zone
        provider = WebhookProvider(settings(**overrides), clock=clock or WallClock(), **kwargs)
        created.append(provider)
        return provider

    yield factory
    for provider in created:
        await provider.close()


def request(**overrides: Any) -> SendRequest:
    values: dict[str, Any] = {
        "notification_id": 42,
        "user_id": 7,
        "trigger_id": "ast_1",
        "preview_id": "asp_1",
        "trigger_type": "important_urgent_task",
        "target_type": "task_pool",
        "target_id": 99,
        "target_url": "/assistant/asp_1",
        "message_text": "明天下午有两个任务冲突，建议调整。\n/assistant/asp_1",
        "fallback_used": False,
        "trace_id": "trace-abc",
        "attempt_count": 1,
    }
    values.update(overrides)
    return SendRequest(**values)


def flow_channel(feishu: FakeFeishu, **overrides: Any) -> ChannelConfig:
    return ChannelConfig(webhook_url=feishu.url(FLOW_PATH), **overrides)


def bot_channel(feishu: FakeFeishu, **overrides: Any) -> ChannelConfig:
    values: dict[str, Any] = {"kind": "bot", "msg_type": "text"}
    values.update(overrides)
    return ChannelConfig(webhook_url=feishu.url(BOT_PATH), **values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------ basics


def test_outcome_values_and_retriable() -> None:
    assert [o.value for o in Outcome] == ["success", "temporary_fail", "permanent_fail", "skipped"]
    assert [o for o in Outcome if o.retriable] == [Outcome.TEMPORARY]


def test_channel_repr_hides_credentials() -> None:
    channel = ChannelConfig(
        webhook_url=f"https://open.feishu.cn{BOT_PATH}", kind="bot", bearer_token=BEARER, sign_secret=SIGN_SECRET
    )
    text = repr(channel)
    assert BOT_TOKEN not in text and BEARER not in text and SIGN_SECRET not in text
    assert BOT_TOKEN not in channel.webhook_url_mask


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "channel",
    [
        None,
        ChannelConfig(webhook_url="http://127.0.0.1:1/x", enabled=False),
        ChannelConfig(webhook_url=""),
        ChannelConfig(webhook_url="   "),
    ],
    ids=["none", "disabled", "empty", "blank"],
)
async def test_missing_or_disabled_channel_is_skipped_without_http(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider], channel: ChannelConfig | None
) -> None:
    result = await make_provider().send(channel, request())

    assert result.outcome is Outcome.SKIPPED
    assert result.error_code == "recipient_missing"
    assert feishu.requests == []


# ------------------------------------------------------------------------------------------------ flow bodies


@pytest.mark.asyncio
async def test_flow_body_exactly_per_spec(feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]) -> None:
    provider = make_provider(frontend_base_url="https://app.example.com/")

    result = await provider.send(flow_channel(feishu), request())

    assert result.outcome is Outcome.SUCCESS
    [sent] = feishu.requests
    assert sent.path == FLOW_PATH
    assert sent.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "Authorization" not in sent.headers
    expected = {
        "event": "smartflow.schedule_adjustment_ready",
        "version": "1",
        "notification_id": 42,
        "user_id": 7,
        "preview_id": "asp_1",
        "trigger_id": "ast_1",
        "trigger_type": "important_urgent_task",
        "target_type": "task_pool",
        "target_id": 99,
        "message": {
            "title": "SmartFlow 日程调整建议",
            "summary": "明天下午有两个任务冲突，建议调整。\n/assistant/asp_1",
            "action_text": "查看并确认调整",
            "action_url": "https://app.example.com/assistant/asp_1",
        },
        "trace_id": "trace-abc",
        "sent_at": "2025-09-02T08:00:00Z",
    }
    assert sent.json == expected
    assert list(sent.json) == list(expected)
    assert "日程".encode() in sent.raw  # UTF-8, not \u escapes
    assert result.request_json == expected
    assert result.provider_message_id == f"feishu_webhook_42_{T0 * 1_000_000_000}"
    assert result.response_json == {"status_code": 200, "body": '{"code": 0, "msg": "success", "data": {}}'}
    assert result.latency_seconds > 0


@pytest.mark.asyncio
async def test_flow_body_omits_empty_trace_and_defaults_summary(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    await make_provider().send(flow_channel(feishu), request(trace_id="", message_text="  "))

    body = feishu.requests[0].json
    assert "trace_id" not in body
    assert body["message"]["summary"] == "我为你生成了一份日程调整建议，请回到系统确认是否应用。"
    assert body["message"]["action_url"] == "https://smartflow.example.com/assistant/asp_1"


@pytest.mark.asyncio
async def test_flow_sent_at_uses_configured_zone(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    await make_provider(zone=ZoneInfo("Asia/Shanghai")).send(flow_channel(feishu), request())

    assert feishu.requests[0].json["sent_at"] == "2025-09-02T16:00:00+08:00"


@pytest.mark.parametrize(
    ("target", "base", "expected"),
    [
        ("/assistant/1", "https://a.example.com/", "https://a.example.com/assistant/1"),
        ("assistant/1", "https://a.example.com", "https://a.example.com/assistant/1"),
        ("//assistant/1", "https://a.example.com//", "https://a.example.com/assistant/1"),
        ("/assistant/1", "", "https://smartflow.example.com/assistant/1"),
        ("https://x.example.com/p?q=1", "https://a.example.com", "https://x.example.com/p?q=1"),
        ("HTTP://x.example.com/p", "https://a.example.com", "HTTP://x.example.com/p"),
    ],
)
def test_action_url_rules(target: str, base: str, expected: str) -> None:
    assert build_action_url(target, base) == expected


@pytest.mark.asyncio
async def test_flow_absolute_target_url_is_kept(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    await make_provider().send(flow_channel(feishu), request(target_url="https://elsewhere.example.com/a/b"))

    assert feishu.requests[0].json["message"]["action_url"] == "https://elsewhere.example.com/a/b"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "auth_type", "token", "expected"),
    [
        ("flow", "bearer", BEARER, f"Bearer {BEARER}"),
        ("flow", "bearer", "", None),
        ("flow", "none", BEARER, None),
        ("bot", "bearer", BEARER, None),
    ],
)
async def test_bearer_header(
    feishu: FakeFeishu,
    make_provider: Callable[..., WebhookProvider],
    kind: str,
    auth_type: str,
    token: str,
    expected: str | None,
) -> None:
    path = FLOW_PATH if kind == "flow" else BOT_PATH
    channel = ChannelConfig(webhook_url=feishu.url(path), kind=kind, auth_type=auth_type, bearer_token=token)

    result = await make_provider().send(channel, request())

    assert result.outcome is Outcome.SUCCESS
    assert feishu.requests[0].headers.get("Authorization") == expected


# ------------------------------------------------------------------------------------------ flow classification


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("reply", "outcome", "code", "message"),
    [
        (Reply(200, {"code": 0, "msg": "success"}), Outcome.SUCCESS, "", ""),
        (Reply(200, "accepted"), Outcome.SUCCESS, "", ""),
        (Reply(204, ""), Outcome.SUCCESS, "", ""),
        (Reply(200, {"code": 1254, "msg": "flow disabled"}), Outcome.PERMANENT, "payload_invalid", "flow disabled"),
        (Reply(200, {"code": 5}), Outcome.PERMANENT, "payload_invalid", "code=5"),
        (Reply(429, "slow down"), Outcome.TEMPORARY, "provider_rate_limited", "HTTP 429"),
        (Reply(500, "boom"), Outcome.TEMPORARY, "provider_5xx", "HTTP 500"),
        (Reply(503, ""), Outcome.TEMPORARY, "provider_5xx", "HTTP 503"),
        (Reply(401, ""), Outcome.PERMANENT, "provider_auth_failed", "HTTP 401"),
        (Reply(403, ""), Outcome.PERMANENT, "provider_auth_failed", "HTTP 403"),
        (Reply(400, "bad"), Outcome.PERMANENT, "payload_invalid", "HTTP 400"),
        (Reply(404, ""), Outcome.PERMANENT, "payload_invalid", "HTTP 404"),
        (Reply(302, "", headers={"Location": "http://127.0.0.1:1/"}), Outcome.PERMANENT, "payload_invalid", "302"),
    ],
)
async def test_flow_classification_table(
    feishu: FakeFeishu,
    make_provider: Callable[..., WebhookProvider],
    reply: Reply,
    outcome: Outcome,
    code: str,
    message: str,
) -> None:
    feishu.reply(reply)

    result = await make_provider().send(flow_channel(feishu), request())

    assert (result.outcome, result.error_code) == (outcome, code)
    assert message in result.error_message
    assert result.response_json["status_code"] == reply.status
    assert len(feishu.requests) == 1  # redirects are not followed
    assert bool(result.provider_message_id) is (outcome is Outcome.SUCCESS)


@pytest.mark.asyncio
async def test_flow_timeout_is_temporary_provider_timeout(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    feishu.reply(Reply(delay=5.0))

    result = await make_provider(http_timeout_seconds=0.3).send(flow_channel(feishu), request())

    assert (result.outcome, result.error_code) == (Outcome.TEMPORARY, "provider_timeout")
    assert 0.25 < result.latency_seconds < 2.0
    assert result.response_json == {}


@pytest.mark.asyncio
async def test_connection_refused_is_temporary_network_error(make_provider: Callable[..., WebhookProvider]) -> None:
    channel = ChannelConfig(webhook_url=f"http://127.0.0.1:{free_port()}{FLOW_PATH}")

    result = await make_provider().send(channel, request())

    assert (result.outcome, result.error_code) == (Outcome.TEMPORARY, "network_error")
    assert FLOW_TOKEN not in repr(result)


@pytest.mark.asyncio
async def test_body_read_error_is_temporary_network_error(
    truncating_server: str, make_provider: Callable[..., WebhookProvider]
) -> None:
    result = await make_provider().send(ChannelConfig(webhook_url=truncating_server), request())

    assert (result.outcome, result.error_code) == (Outcome.TEMPORARY, "network_error")
    assert result.response_json["status_code"] == 200
    assert result.response_json["read_error"]


@pytest.mark.asyncio
async def test_response_body_is_read_up_to_64_kib(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    feishu.reply(Reply(200, "x" * 100_000))

    result = await make_provider().send(flow_channel(feishu), request())

    assert result.outcome is Outcome.SUCCESS
    assert len(result.response_json["body"]) == 64 * 1024


@pytest.mark.asyncio
async def test_invalid_url_at_send_is_permanent_and_not_sent(feishu: FakeFeishu) -> None:
    provider = WebhookProvider(NotificationSettings())  # strict: http and 127.0.0.1 are refused
    try:
        result = await provider.send(flow_channel(feishu), request())
    finally:
        await provider.close()

    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "invalid_url")
    assert feishu.requests == []
    assert FLOW_TOKEN not in result.error_message


# ------------------------------------------------------------------------------------------------ bot bodies


@pytest.mark.asyncio
async def test_bot_text_body(feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]) -> None:
    result = await make_provider().send(bot_channel(feishu), request())

    assert result.outcome is Outcome.SUCCESS
    assert feishu.requests[0].path == BOT_PATH
    assert feishu.requests[0].json == {
        "msg_type": "text",
        "content": {"text": "明天下午有两个任务冲突，建议调整。\n/assistant/asp_1"},
    }
    assert result.provider_message_id.startswith("feishu_bot_42_")


@pytest.mark.asyncio
async def test_bot_post_body(feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]) -> None:
    await make_provider(frontend_base_url="https://app.example.com").send(
        bot_channel(feishu, msg_type="post"), request()
    )

    assert feishu.requests[0].json == {
        "msg_type": "post",
        "content": {
            "post": {
                "zh_cn": {
                    "title": "SmartFlow 日程调整建议",
                    "content": [
                        [{"tag": "text", "text": "明天下午有两个任务冲突，建议调整。\n/assistant/asp_1"}],
                        [{"tag": "a", "text": "查看并确认调整", "href": "https://app.example.com/assistant/asp_1"}],
                    ],
                }
            }
        },
    }


@pytest.mark.asyncio
async def test_bot_interactive_body(feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]) -> None:
    await make_provider(frontend_base_url="https://app.example.com").send(
        bot_channel(feishu, msg_type="interactive"), request()
    )

    body = feishu.requests[0].json
    assert set(body) == {"msg_type", "card"}
    assert body["msg_type"] == "interactive"
    card = body["card"]
    assert card["header"]["title"] == {"tag": "plain_text", "content": "SmartFlow 日程调整建议"}
    markdown, action = card["elements"]
    assert markdown == {"tag": "markdown", "content": "明天下午有两个任务冲突，建议调整。\n/assistant/asp_1"}
    [button] = action["actions"]
    assert action["tag"] == "action"
    assert button["tag"] == "button"
    assert button["text"] == {"tag": "plain_text", "content": "查看并确认调整"}
    assert button["url"] == "https://app.example.com/assistant/asp_1"


@pytest.mark.asyncio
async def test_bot_unknown_msg_type_is_permanent_without_http(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    result = await make_provider().send(bot_channel(feishu, msg_type="image"), request())

    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "payload_invalid")
    assert feishu.requests == []


# ------------------------------------------------------------------------------------------------ signing


def test_sign_known_answer() -> None:
    assert sign_bot_request("orbit-test-secret", 1756800000) == KNOWN_SIGN


@pytest.mark.asyncio
async def test_signed_bot_request_carries_timestamp_and_sign(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    result = await make_provider().send(bot_channel(feishu, sign_secret=SIGN_SECRET), request())

    body = feishu.requests[0].json
    assert body["timestamp"] == "1756800000"
    assert body["sign"] == KNOWN_SIGN
    assert result.request_json["timestamp"] == "1756800000"
    assert "sign" not in result.request_json
    assert KNOWN_SIGN not in repr(result)


@pytest.mark.asyncio
async def test_every_attempt_is_signed_with_a_fresh_timestamp(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    clock = WallClock()
    provider = make_provider(clock=clock)
    channel = bot_channel(feishu, sign_secret=SIGN_SECRET)

    await provider.send(channel, request(attempt_count=1))
    clock.now += 3700  # a retry more than an hour later
    await provider.send(channel, request(attempt_count=2))

    first, second = (captured.json for captured in feishu.requests)
    assert (first["timestamp"], second["timestamp"]) == (str(T0), str(T0 + 3700))
    assert first["sign"] != second["sign"]
    assert second["sign"] == sign_bot_request(SIGN_SECRET, T0 + 3700)


@pytest.mark.asyncio
async def test_signature_timestamp_is_taken_after_the_rate_limit_wait(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    clock = WallClock()
    mono = [0.0]

    async def sleep(seconds: float) -> None:
        mono[0] += seconds
        clock.now += seconds

    limiter = RateLimiter(1.0, 100.0, clock=lambda: mono[0], sleep=sleep)
    provider = make_provider(clock=clock, limiter=limiter)
    channel = bot_channel(feishu, sign_secret=SIGN_SECRET)

    first = await provider.send(channel, request())
    second = await provider.send(channel, request())

    assert first.rate_limit_wait_seconds == 0.0
    assert second.rate_limit_wait_seconds == pytest.approx(1.0)
    assert feishu.requests[1].json["timestamp"] == str(T0 + 1)
    assert feishu.requests[1].json["sign"] == sign_bot_request(SIGN_SECRET, T0 + 1)


# ------------------------------------------------------------------------------------------- bot classification


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("reply", "outcome", "code"),
    [
        (Reply(200, {"code": 0, "msg": "success", "data": {}}), Outcome.SUCCESS, ""),
        (Reply(200, {"StatusCode": 0, "StatusMessage": "success"}), Outcome.SUCCESS, ""),
        (
            Reply(200, {"code": 11232, "msg": "frequency limited psm[lark.oapi.app_platform_runtime]appID[1500]"}),
            Outcome.TEMPORARY,
            "provider_rate_limited",
        ),
        (
            Reply(200, {"code": 99991400, "msg": "request trigger frequency limit"}),
            Outcome.TEMPORARY,
            "provider_rate_limited",
        ),
        (Reply(200, {"code": 9499, "msg": "too many request"}), Outcome.TEMPORARY, "provider_rate_limited"),
        (Reply(200, {"code": 9499, "msg": "Too Many Requests"}), Outcome.TEMPORARY, "provider_rate_limited"),
        (Reply(200, {"code": 9499, "msg": "Bad Request"}), Outcome.PERMANENT, "payload_invalid"),
        (Reply(400, {"code": 9499, "msg": "fail to parse content"}), Outcome.PERMANENT, "payload_invalid"),
        (Reply(200, {"code": 19002, "msg": "param invalid: msg_type"}), Outcome.PERMANENT, "payload_invalid"),
        (
            Reply(200, {"code": 19001, "msg": "param invalid: incoming webhook access token invalid"}),
            Outcome.PERMANENT,
            "bot_token_invalid",
        ),
        (
            Reply(200, {"code": 19021, "msg": "sign match fail or timestamp is not within one hour"}),
            Outcome.PERMANENT,
            "bot_sign_failed",
        ),
        (Reply(200, {"code": 19022, "msg": "Ip Not Allowed"}), Outcome.PERMANENT, "bot_ip_denied"),
        (Reply(200, {"code": 19024, "msg": "Key Words Not Found"}), Outcome.PERMANENT, "bot_keyword_missing"),
        (Reply(200, {"StatusCode": 19021, "StatusMessage": "sign match fail"}), Outcome.PERMANENT, "bot_sign_failed"),
        (Reply(200, {"code": 12345, "msg": "unknown"}), Outcome.PERMANENT, "payload_invalid"),
        (Reply(500, "internal error"), Outcome.TEMPORARY, "provider_5xx"),
        (Reply(502, {"code": 19021, "msg": "x"}), Outcome.TEMPORARY, "provider_5xx"),
        (Reply(200, "<html>gateway</html>"), Outcome.TEMPORARY, "network_error"),
        (Reply(200, {"msg": "no code at all"}), Outcome.TEMPORARY, "network_error"),
        (Reply(401, ""), Outcome.PERMANENT, "provider_auth_failed"),
        (Reply(404, "not found"), Outcome.PERMANENT, "payload_invalid"),
    ],
)
async def test_bot_classification(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider], reply: Reply, outcome: Outcome, code: str
) -> None:
    feishu.reply(reply)

    result = await make_provider().send(bot_channel(feishu), request())

    assert (result.outcome, result.error_code) == (outcome, code)
    assert result.outcome.retriable is (outcome is Outcome.TEMPORARY)
    if outcome is not Outcome.SUCCESS:
        assert result.error_message
        assert result.provider_message_id == ""


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"x-ogw-ratelimit-reset": "7", "x-ogw-ratelimit-limit": "100"}, 7.0),
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "Tue, 02 Sep 2025 08:00:30 GMT"}, 30.0),
        ({}, None),
    ],
)
async def test_bot_http_429_is_rate_limited_with_retry_after(
    feishu: FakeFeishu,
    make_provider: Callable[..., WebhookProvider],
    headers: dict[str, str],
    retry_after: float | None,
) -> None:
    feishu.reply(Reply(429, {"code": 99991400, "msg": "request trigger frequency limit"}, headers=headers))

    result = await make_provider().send(bot_channel(feishu), request())

    assert (result.outcome, result.error_code) == (Outcome.TEMPORARY, "provider_rate_limited")
    assert result.retry_after_seconds == retry_after


@pytest.mark.asyncio
async def test_bot_slow_response_beyond_timeout(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    feishu.reply(Reply(delay=5.0))

    result = await make_provider(http_timeout_seconds=0.3).send(bot_channel(feishu), request())

    assert (result.outcome, result.error_code) == (Outcome.TEMPORARY, "provider_timeout")
    assert result.latency_seconds < 2.0


# ------------------------------------------------------------------------------------------------ body size


@pytest.mark.asyncio
async def test_payload_too_large_is_permanent_and_not_sent(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    result = await make_provider(max_body_bytes=256).send(bot_channel(feishu), request(message_text="日" * 100))

    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "payload_too_large")
    assert feishu.requests == []
    assert "256" in result.error_message


@pytest.mark.asyncio
async def test_body_size_is_measured_in_utf8_bytes(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    # 40 CJK characters: 120 bytes in UTF-8 but 240 as \\uXXXX escapes, so only the UTF-8 body fits in 256.
    result = await make_provider(max_body_bytes=256).send(bot_channel(feishu), request(message_text="日" * 40))

    assert result.outcome is Outcome.SUCCESS
    assert len(feishu.requests[0].raw) <= 256
    assert ("日" * 40).encode("utf-8") in feishu.requests[0].raw


# ------------------------------------------------------------------------------------------------ rate limiting


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "enabled", "expected_waits"), [("bot", False, 1), ("flow", True, 1), ("flow", False, 0)]
)
async def test_rate_limiter_use_by_kind(
    feishu: FakeFeishu,
    make_provider: Callable[..., WebhookProvider],
    kind: str,
    enabled: bool,
    expected_waits: int,
) -> None:
    mono = [0.0]

    async def sleep(seconds: float) -> None:
        mono[0] += seconds

    limiter = RateLimiter(5.0, 100.0, clock=lambda: mono[0], sleep=sleep)
    provider = make_provider(limiter=limiter, rate_limit_enabled=enabled)
    channel = bot_channel(feishu) if kind == "bot" else flow_channel(feishu)

    results = [await provider.send(channel, request()) for _ in range(6)]

    assert all(r.outcome is Outcome.SUCCESS for r in results)
    assert limiter.waits_total == expected_waits
    if expected_waits:
        assert results[-1].rate_limit_wait_seconds == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------------ URL rules


STRICT_VALID = [
    ("flow", f"https://www.feishu.cn{FLOW_PATH}"),
    ("flow", f"https://feishu.cn{FLOW_PATH}"),
    ("flow", f"https://FEISHU.cn:443{FLOW_PATH}"),
    ("bot", f"https://open.feishu.cn{BOT_PATH}"),
    ("bot", f"https://open.larksuite.com{BOT_PATH}"),
]

STRICT_INVALID = [
    ("flow", f"http://www.feishu.cn{FLOW_PATH}"),
    ("flow", f"https://evil.example.com{FLOW_PATH}"),
    ("flow", f"https://feishu.cn.evil.example.com{FLOW_PATH}"),
    ("flow", f"https://open.feishu.cn{FLOW_PATH}"),
    ("flow", f"https://www.feishu.cn/other/{FLOW_TOKEN}"),
    ("flow", f"https://www.feishu.cn:8443{FLOW_PATH}"),
    ("flow", f"https://user:pw@www.feishu.cn{FLOW_PATH}"),
    ("flow", f"https://www.feishu.cn/flow/api/trigger-webhook/../../admin/{FLOW_TOKEN}"),
    ("flow", f"https://www.feishu.cn{FLOW_PATH} x"),
    ("flow", ""),
    ("bot", f"https://www.feishu.cn{BOT_PATH}"),
    ("bot", f"https://open.feishu.cn{BOT_PATH}/extra"),
    ("bot", f"https://open.feishu.cn/open-apis/bot/hook/{BOT_TOKEN}"),
    ("bot", "https://open.feishu.cn/open-apis/bot/v2/hook/"),
    ("bot", f"http://127.0.0.1:8080{BOT_PATH}"),
    ("email", f"https://open.feishu.cn{BOT_PATH}"),
]


@pytest.mark.parametrize(("kind", "url"), STRICT_VALID)
def test_strict_rules_accept(kind: str, url: str) -> None:
    validate_webhook_url(url, kind, NotificationSettings())


@pytest.mark.parametrize(("kind", "url"), STRICT_INVALID)
def test_strict_rules_reject_without_leaking_the_url(kind: str, url: str) -> None:
    with pytest.raises(InvalidWebhookURL) as info:
        validate_webhook_url(url, kind, NotificationSettings())

    assert isinstance(info.value, ContractError)
    assert info.value.code == "invalid_url"
    assert FLOW_TOKEN not in str(info.value) and BOT_TOKEN not in str(info.value)


def test_allowed_hosts_is_enforced_even_for_feishu_hosts() -> None:
    narrowed = NotificationSettings(allowed_hosts=["feishu.cn"])
    validate_webhook_url(f"https://feishu.cn{FLOW_PATH}", "flow", narrowed)
    with pytest.raises(InvalidWebhookURL):
        validate_webhook_url(f"https://www.feishu.cn{FLOW_PATH}", "flow", narrowed)
    with pytest.raises(InvalidWebhookURL):
        validate_webhook_url(f"https://open.feishu.cn{BOT_PATH}", "bot", narrowed)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8080/anything/at/all", True),
        ("https://127.0.0.1:8443/x", True),
        ("http://127.0.0.1/", True),
        ("http://10.0.0.1/x", False),
        ("http://localhost:8080/x", False),
        ("ftp://127.0.0.1/x", False),
        (f"https://open.feishu.cn{BOT_PATH}", False),  # not in this allow-list
    ],
)
@pytest.mark.parametrize("kind", ["flow", "bot"])
def test_permissive_rules_for_tests(kind: str, url: str, ok: bool) -> None:
    permissive = settings()
    if ok:
        validate_webhook_url(url, kind, permissive)
    else:
        with pytest.raises(InvalidWebhookURL):
            validate_webhook_url(url, kind, permissive)


# ------------------------------------------------------------------------------------------------ secrecy


@pytest.mark.asyncio
async def test_secrets_never_reach_results_or_logs(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=PROVIDER_LOGGER)
    provider = make_provider()
    bot = bot_channel(feishu, sign_secret=SIGN_SECRET, msg_type="interactive")
    flow = flow_channel(feishu, auth_type="bearer", bearer_token=BEARER)
    refused = ChannelConfig(webhook_url=f"http://127.0.0.1:{free_port()}{BOT_PATH}", kind="bot")
    echo = f"Bad Request: {feishu.url(BOT_PATH)} token={BOT_TOKEN} auth=Bearer {BEARER}"
    # each webhook echoes its own request's credentials (a send redacts its own channel's secrets; they are not
    # registered process-wide, so users cannot grow or poison the log scrubber)
    flow_echo = f"Bad Request: {flow.webhook_url} token={FLOW_TOKEN} auth=Bearer {BEARER}"
    feishu.reply(Reply(200), Reply(200, {"code": 9499, "msg": echo}), Reply(500, flow_echo), Reply(200))

    results: list[SendResult] = [
        await provider.send(bot, request()),
        await provider.send(bot, request()),
        await provider.send(flow, request()),
        await provider.send(flow, request()),
        await provider.send(refused, request()),
        await provider.send(bot, request(message_text="日" * 10_000)),
    ]

    assert [r.error_code for r in results] == [
        "",
        "payload_invalid",
        "provider_5xx",
        "",
        "network_error",
        "payload_too_large",
    ]
    dumped = repr(results) + json.dumps([r.request_json for r in results] + [r.response_json for r in results])
    records = [r for r in caplog.records if r.name == PROVIDER_LOGGER]
    for secret in (FLOW_TOKEN, BOT_TOKEN, BEARER, SIGN_SECRET, KNOWN_SIGN):
        assert secret not in dumped
        assert secret not in caplog.text
    assert len(records) == len(results)
    assert all(r.levelno == logging.DEBUG for r in records)
    assert "/open-apis/bot/v2/hook/b0t7...7a6c" in records[0].getMessage()
    assert "outcome=success" in records[0].getMessage()
    assert scrub_text(f"x {BOT_TOKEN} {BEARER} {SIGN_SECRET}") == (
        f"x {BOT_TOKEN} {BEARER} {SIGN_SECRET}")  # nothing of a channel entered the process-wide registry


# ------------------------------------------------------------------------------------------------ sessions


@pytest.mark.asyncio
async def test_close_closes_only_an_owned_session(feishu: FakeFeishu) -> None:
    owned = WebhookProvider(settings())
    await owned.send(flow_channel(feishu), request())
    session = owned._session
    await owned.close()
    await owned.close()

    async with aiohttp.ClientSession() as borrowed_session:
        borrowed = WebhookProvider(settings(), session=borrowed_session)
        result = await borrowed.send(flow_channel(feishu), request())
        await borrowed.close()
        assert not borrowed_session.closed

    assert session is not None and session.closed
    assert result.outcome is Outcome.SUCCESS


# ------------------------------------------------------------------------------------------------ rate-limit wait


@pytest.mark.asyncio
async def test_a_rate_limit_wait_over_one_second_is_a_temporary_failure_not_a_sleep(
    feishu: FakeFeishu, make_provider: Callable[..., WebhookProvider]
) -> None:
    provider = make_provider(rate_per_minute=2.0)  # the bot's quota: 2 per minute
    bot = bot_channel(feishu)
    feishu.reply(Reply(200), Reply(200))

    first, second = await provider.send(bot, request()), await provider.send(bot, request())
    started = time.perf_counter()
    third = await provider.send(bot, request())

    assert (first.outcome, second.outcome) == (Outcome.SUCCESS, Outcome.SUCCESS)
    assert time.perf_counter() - started < 0.5  # answered at once, not after ~60 s
    assert (third.outcome, third.error_code) == (Outcome.TEMPORARY, "rate_limited_local")
    assert third.retry_after_seconds == pytest.approx(60.0, abs=2.0)
    assert len(feishu.requests) == 2  # nothing sent for the third


def test_permissive_mode_pins_ports_when_configured() -> None:
    pinned = settings(allowed_ports=[8080])
    validate_webhook_url("http://127.0.0.1:8080/hook/x", "flow", pinned)
    for url in ("http://127.0.0.1:6066/admin/dead/task/requeue", "http://127.0.0.1/x"):
        with pytest.raises(InvalidWebhookURL, match="allowed_ports"):
            validate_webhook_url(url, "flow", pinned)


@pytest.mark.parametrize("path", ["/flow/api/trigger-webhook/abc/", "/flow/api/trigger-webhook/abc/extra",
                                  "/flow/api/trigger-webhook/"])
def test_strict_flow_url_has_exactly_one_token_segment(path: str) -> None:
    with pytest.raises(InvalidWebhookURL, match="one token segment"):
        validate_webhook_url(f"https://www.feishu.cn{path}", "flow", NotificationSettings())
