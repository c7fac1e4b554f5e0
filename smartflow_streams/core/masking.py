"""Secret masking for logs, views, metrics and stored audit JSON.

Invariant: nothing this project prints or serves contains a webhook path token, a bearer token, a signing
secret or a database password. Webhook URLs are masked the upstream way (docs/upstream.md#webhook-url-masking): the
last path segment
keeps its first 4 and last 4 characters joined by ``...`` (8 characters or fewer become ``****``); query and
fragment are dropped.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
from collections import OrderedDict
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


def _longest_first(secret: str) -> int:
    return -len(secret)


class SecretRegistry:
    """Process-wide set of secret strings; :class:`MaskingFilter` scrubs them from every log record.

    Providers register webhook URLs, path tokens, bearer tokens and signing secrets before using them, so
    even an exception message that embeds a URL is scrubbed. Strings shorter than 6 characters are ignored
    (too likely to match ordinary text).

    Limits: holds at most ``capacity`` (20,000) secrets, least recently registered evicted first, except pinned ones
    (configured tokens). Providers register a channel's secrets right before each send, so every secret that can
    appear in an error of an in-flight send is present; output that embeds a URL on purpose masks it itself
    (:func:`mask_webhook_url`). :meth:`scrub` costs one dict lookup per character of the text, whatever the number
    of secrets (secrets are indexed by their first 6 characters; leftmost, then longest, match wins).
    """

    _KEY = 6

    def __init__(self, capacity: int = 20_000) -> None:
        self._lock = threading.Lock()
        self._capacity = capacity
        self._secrets: OrderedDict[str, str] = OrderedDict()
        self._pinned: set[str] = set()
        self._index: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._secrets)

    def add(self, secret: str | None, replacement: str | None = None, *, pin: bool = False) -> None:
        if not secret or len(secret) < self._KEY:
            return
        with self._lock:
            if secret in self._secrets:
                self._secrets.move_to_end(secret)
            else:
                # longest first; insort keeps a bucket of n secrets sharing a prefix O(n) per add, not O(n log n)
                bisect.insort(self._index.setdefault(secret[: self._KEY], []), secret, key=_longest_first)
            self._secrets[secret] = replacement or "****"
            if pin:
                self._pinned.add(secret)
            while len(self._secrets) - len(self._pinned) > self._capacity:
                oldest = next(s for s in self._secrets if s not in self._pinned)
                del self._secrets[oldest]
                bucket = self._index[oldest[: self._KEY]]
                bucket.remove(oldest)
                if not bucket:
                    del self._index[oldest[: self._KEY]]

    def add_webhook_url(self, url: str | None) -> None:
        """Register the secret parts of a webhook URL: its last path segment (the token) and its query. Not the
        whole URL: URLs share long prefixes, which would put them all in one index bucket; masking the token
        already leaves nothing secret (``.../hook/****``, stricter than :func:`mask_webhook_url`)."""
        if not url:
            return
        try:
            parts = urlsplit(url.strip())
        except ValueError:
            self.add(url.strip())
            return
        self.add(parts.path.rstrip("/").rpartition("/")[2], "****")
        self.add(parts.query, "****")

    def scrub(self, text: str) -> str:
        key = self._KEY
        if not self._secrets or len(text) < key:
            return text
        with self._lock:
            index, secrets = self._index, self._secrets
            parts: list[str] = []
            start = i = 0
            end = len(text) - key
            while i <= end:
                for secret in index.get(text[i:i + key], ()):
                    if text.startswith(secret, i):
                        parts.append(text[start:i])
                        parts.append(secrets[secret])
                        i = start = i + len(secret)
                        break
                else:
                    i += 1
        if not parts:
            return text
        parts.append(text[start:])
        return "".join(parts)


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
