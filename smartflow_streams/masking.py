"""Secret masking for logs, views, metrics and stored audit JSON.

Invariant: nothing this project prints or serves contains a webhook path token, a bearer token, a signing
secret or a database password. Webhook URLs are masked the upstream way (spec 9.6): the last path segment
keeps its first 4 and last 4 characters joined by ``...`` (8 characters or fewer become ``****``); query and
fragment are dropped.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import urlsplit, urlunsplit


def mask_webhook_url(url: str | None) -> str:
    if not url:
        return ""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "****"
    path = parts.path
    head, sep, last = path.rpartition("/")
    if last:
        last = "****" if len(last) <= 8 else f"{last[:4]}...{last[-4:]}"
    masked_path = f"{head}{sep}{last}" if sep else last
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, masked_path, "", ""))


def mask_database_url(url: str) -> str:
    """``mysql+aiomysql://app:secret@h/db`` -> ``mysql+aiomysql://app:****@h/db``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1****@", url)


def mask_token(token: str | None) -> str:
    return "****" if token else ""


class SecretRegistry:
    """Process-wide set of secret strings; :class:`MaskingFilter` scrubs them from every log record.

    Providers register webhook URLs, path tokens, bearer tokens and signing secrets before using them, so
    even an exception message that embeds a URL is scrubbed. Strings shorter than 6 characters are ignored
    (too likely to match ordinary text).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, str] = {}

    def add(self, secret: str | None, replacement: str | None = None) -> None:
        if not secret or len(secret) < 6:
            return
        with self._lock:
            self._secrets[secret] = replacement or "****"

    def add_webhook_url(self, url: str | None) -> None:
        if not url:
            return
        self.add(url, mask_webhook_url(url))
        last = urlsplit(url).path.rstrip("/").rpartition("/")[2]
        self.add(last, "****")

    def scrub(self, text: str) -> str:
        if not self._secrets:
            return text
        with self._lock:
            items = sorted(self._secrets.items(), key=lambda kv: -len(kv[0]))
        for secret, replacement in items:
            if secret in text:
                text = text.replace(secret, replacement)
        return text


SECRETS = SecretRegistry()

_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def scrub_text(text: str) -> str:
    """Remove registered secrets and anything that looks like a bearer credential."""
    return _BEARER_RE.sub(r"\1****", SECRETS.scrub(text))


class MaskingFilter(logging.Filter):
    """Logging filter that renders the message once and scrubs secrets from it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not kill logging
            return True
        cleaned = scrub_text(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()  # not None: mode's formatter would wrap it as (None,)
        return True


def install_log_masking() -> None:
    """Attach :class:`MaskingFilter` to every handler of the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
