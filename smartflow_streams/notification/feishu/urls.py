"""Feishu webhook URL rules: which URLs a channel of each kind may point at (checked on save and again at send).

Invariants: error messages never contain the URL (its path token is the credential); strict mode accepts only
``https`` on port 443 to the kind's hosts and path, permissive mode (tests) only the hosts in ``allowed_hosts``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from config import NotificationSettings
from smartflow_streams.core.errors import ContractError

KIND_FLOW = "flow"
KIND_BOT = "bot"

FLOW_HOSTS = frozenset({"feishu.cn", "www.feishu.cn"})
BOT_HOSTS = frozenset({"open.feishu.cn", "open.larksuite.com"})
FLOW_PATH_PREFIX = "/flow/api/trigger-webhook/"
_BOT_PATH_RE = re.compile(r"/open-apis/bot/v2/hook/[A-Za-z0-9._~-]+")
_FLOW_PATH_RE = re.compile(re.escape(FLOW_PATH_PREFIX) + r"[A-Za-z0-9._~-]+")
_KIND_HOSTS = {KIND_FLOW: FLOW_HOSTS, KIND_BOT: BOT_HOSTS}


class InvalidWebhookURL(ContractError):
    """The webhook URL breaks the rules of its kind or the host allow-list. The message never contains the URL."""

    code = "invalid_url"



def validate_webhook_url(url: str, kind: str, settings: NotificationSettings) -> None:
    """Raise :class:`InvalidWebhookURL` unless ``url`` is acceptable for ``kind``.

    Strict (default): ``https``, port 443, host in the kind's hosts **and** in ``settings.allowed_hosts``, and
    the kind's path with exactly one token segment (flow: ``/flow/api/trigger-webhook/<token>``; bot:
    ``/open-apis/bot/v2/hook/<token>``; token characters ``A-Za-z0-9._~-``).
    With ``settings.allow_plain_http``: ``http`` or ``https``, any port, any path, host in
    ``settings.allowed_hosts`` (e.g. ``127.0.0.1`` for tests), and port in ``settings.allowed_ports`` when that is
    set (the demo pins its receiver's port, so a user cannot aim a webhook at the worker's own admin routes).
    Always rejected: user info, whitespace or control characters, backslashes, ``.``/``..`` path segments.
    """
    if kind not in _KIND_HOSTS:
        raise InvalidWebhookURL(f"unknown webhook kind {kind!r}; expected 'flow' or 'bot'")
    text = (url or "").strip()
    if not text:
        raise InvalidWebhookURL("webhook URL is empty")
    if "\\" in text or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise InvalidWebhookURL("webhook URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        raise InvalidWebhookURL("webhook URL cannot be parsed") from None
    if "@" in parts.netloc:
        raise InvalidWebhookURL("webhook URL must not contain user info")
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        raise InvalidWebhookURL("webhook URL path must not contain '.' or '..' segments")
    allowed = {h.strip().lower() for h in settings.allowed_hosts if h.strip()}
    if settings.allow_plain_http:
        _check_permissive(parts.scheme, host, allowed)
        effective_port = port or {"http": 80, "https": 443}.get(parts.scheme)
        if settings.allowed_ports and effective_port not in settings.allowed_ports:
            raise InvalidWebhookURL("webhook URL port is not in notification.allowed_ports")
        return
    _check_strict(parts.scheme, host, port, parts.path, kind, allowed)


def _check_permissive(scheme: str, host: str, allowed: set[str]) -> None:
    if scheme not in ("http", "https"):
        raise InvalidWebhookURL("webhook URL scheme must be http or https")
    if host not in allowed:
        raise InvalidWebhookURL(f"webhook host {host!r} is not in notification.allowed_hosts")


def _check_strict(scheme: str, host: str, port: int | None, path: str, kind: str, allowed: set[str]) -> None:
    if scheme != "https":
        raise InvalidWebhookURL("webhook URL scheme must be https")
    permitted = _KIND_HOSTS[kind] & allowed
    if host not in permitted:
        raise InvalidWebhookURL(f"webhook host {host!r} is not allowed for {kind} webhooks: {sorted(permitted)}")
    if port not in (None, 443):
        raise InvalidWebhookURL("webhook URL port must be 443")
    if kind == KIND_FLOW and not _FLOW_PATH_RE.fullmatch(path):
        raise InvalidWebhookURL(f"flow webhook path must be {FLOW_PATH_PREFIX}<token> (one token segment)")
    if kind == KIND_BOT and not _BOT_PATH_RE.fullmatch(path):
        raise InvalidWebhookURL("bot webhook path must be /open-apis/bot/v2/hook/<token>")

