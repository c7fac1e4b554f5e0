"""Secret masking for logs, views, metrics and stored audit JSON.

Invariant: nothing this project prints or serves contains a webhook path token, a bearer token, a signing
secret or a database password. Webhook URLs are masked the upstream way (docs/upstream.md#webhook-url-masking): the
last path segment
keeps its first 4 and last 4 characters joined by ``...`` (8 characters or fewer become ``****``); query and
fragment are dropped.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

import ahocorasick_rs


WEBHOOK_PATH_PREFIXES = ("/flow/api/trigger-webhook/", "/open-apis/bot/v2/hook/")


def _mask_part(text: str) -> str:
    return "****" if len(text) <= 8 else f"{text[:4]}...{text[-4:]}"


def mask_webhook_url(url: str | None) -> str:
    """Scheme, host, port and the fixed path prefix kept; everything after the prefix masked as ONE part (so a
    trailing ``/`` or an extra segment cannot leave the token whole): its first 4 and last 4 characters joined
    by ``...``, or ``****`` when 8 characters or fewer. A path without a known prefix keeps only its first
    segment. Query and fragment are dropped."""
    if not url:
        return ""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "****"
    path = parts.path
    prefix = next((p for p in WEBHOOK_PATH_PREFIXES if path.startswith(p)), None)
    if prefix is None:
        first, sep, _rest = path.lstrip("/").partition("/")
        prefix = f"/{first}/" if sep else "/"
    rest = path[len(prefix):]
    masked_path = prefix + (_mask_part(rest) if rest else "")
    return urlunsplit((parts.scheme, host, masked_path, "", ""))


_SECRET_QUERY_KEYS = re.compile(r"(?i)pass|pwd|secret|token|key|credential")
_URL_PASSWORD_RE = re.compile(r"(://[^:/@\s]*:)[^\s/]*@")  # user:password@ (password up to the LAST @ of the netloc)
_QUERY_SECRET_RE = re.compile(r"(?i)([?&;](?:[a-z_]*(?:pass|pwd|secret|token|credential)[a-z_]*)=)[^&;\s'\"]*")


def mask_database_url(url: str) -> str:
    """A database URL (or free text holding one) with its password masked.

    A parseable URL goes through SQLAlchemy's own rendering (``render_as_string(hide_password=True)``; also
    ``://:secret@``) and query parameters whose name looks like a credential (``password``, ``pwd``, ``secret``,
    ``token``, ...) become ``****``. Free text (an error message), and a URL with more than one ``@`` before its
    path (``app:p@ss@db``: SQLAlchemy would split at the first ``@``), get the same by pattern: everything between
    ``user:`` and the last ``@`` of the address, and ``?password=...``-style parameters."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = url.strip()
    netloc = text.partition("://")[2].partition("/")[0]
    if text and not any(ch.isspace() for ch in text) and netloc.count("@") <= 1:
        try:
            parsed = make_url(text)
        except (ArgumentError, ValueError):
            parsed = None
        if parsed is not None:
            query = {k: ("****" if _SECRET_QUERY_KEYS.search(k) else v) for k, v in parsed.query.items()}
            rendered = parsed.set(query=query).render_as_string(hide_password=True)
            return rendered.replace(":***@", ":****@").replace("%2A%2A%2A%2A", "****")
    return _QUERY_SECRET_RE.sub(r"\1****", _URL_PASSWORD_RE.sub(r"\1****@", url))


_SQL_PARAMETERS_RE = re.compile(r"\[parameters: .*?(?=\(Background on this error|\Z)", re.S)  # to the end if need be


def scrub_error(text: str) -> str:
    """An error text as it may be stored or served: registered secrets and bearer credentials masked
    (:func:`scrub_text`), database URL passwords masked, and any SQLAlchemy ``[parameters: ...]`` section (row data
    of the failed statement; the engines set ``hide_parameters=True``, this also cleans texts stored before)
    replaced by ``[parameters hidden]``, up to SQLAlchemy's ``(Background on this error ...)`` or the end of the
    text (parameters may contain any character, so nothing after them is trusted)."""
    return scrub_text(mask_database_url(_SQL_PARAMETERS_RE.sub("[parameters hidden]", text)))


def mask_token(token: str | None) -> str:
    return "****" if token else ""


MIN_SECRET_CHARS = 8
"""Shortest string the process-wide registries mask: shorter ones would blank ordinary words out of every log line
(configured tokens shorter than this are refused at start, :mod:`config`)."""
MAX_SECRET_CHARS = 4096
"""Longest string a registry accepts (a configured token or password is far shorter)."""


class SecretRegistry:
    """Process-wide set of operator-configured secret strings (admin and API tokens, database passwords);
    :class:`MaskingFilter` scrubs them from every log record, :mod:`smartflow_streams.web.responses` from every
    served body.

    User-chosen strings (webhook URLs, bearer tokens, signing secrets) are NOT registered here: each send and each
    failed channel request redacts its own credentials (:func:`redact`), so users cannot grow this registry nor
    choose a "secret" like ``notification_id=`` that would blank it out of every log.

    Limits: strings shorter than :data:`MIN_SECRET_CHARS` (8) or longer than :data:`MAX_SECRET_CHARS` (4,096) are
    ignored; at most ``capacity`` (1,000) secrets, least recently registered evicted first, except pinned ones.
    :meth:`scrub` runs one Aho-Corasick automaton (leftmost-longest match) over the text: linear in the text
    whatever the registry holds (measured by ``bench/scrub_bench.py``); the automaton is rebuilt on the first scrub
    after a change (O(total secret length), rare: secrets come from configuration).
    """

    def __init__(self, capacity: int = 1_000) -> None:
        self._lock = threading.Lock()
        self._capacity = capacity
        self._secrets: OrderedDict[str, str] = OrderedDict()
        self._pinned: set[str] = set()
        self._automaton: tuple[ahocorasick_rs.AhoCorasick, list[str]] | None = None

    def __len__(self) -> int:
        return len(self._secrets)

    def add(self, secret: str | None, replacement: str | None = None, *, pin: bool = False) -> None:
        if not secret or not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
            return
        with self._lock:
            if secret in self._secrets:
                self._secrets.move_to_end(secret)
            else:
                self._automaton = None
            self._secrets[secret] = replacement or "****"
            if pin:
                self._pinned.add(secret)
            while len(self._secrets) - len(self._pinned) > self._capacity:
                oldest = next(s for s in self._secrets if s not in self._pinned)
                del self._secrets[oldest]
                self._automaton = None

    def add_webhook_url(self, url: str | None) -> None:
        """Register the secret parts of a webhook URL: its last path segment (the token) and its query (for an
        operator-configured URL; user channels are redacted per request instead)."""
        if not url:
            return
        try:
            parts = urlsplit(url.strip())
        except ValueError:
            self.add(url.strip())
            return
        self.add(parts.path.rstrip("/").rpartition("/")[2], "****")
        self.add(parts.query, "****")

    def _matcher(self) -> tuple[ahocorasick_rs.AhoCorasick, list[str]] | None:
        with self._lock:
            if self._automaton is None and self._secrets:
                patterns = list(self._secrets)
                automaton = ahocorasick_rs.AhoCorasick(patterns, matchkind=ahocorasick_rs.MatchKind.LeftmostLongest)
                self._automaton = (automaton, [self._secrets[p] for p in patterns])
            return self._automaton

    def scrub(self, text: str) -> str:
        if len(text) < MIN_SECRET_CHARS:
            return text
        matcher = self._matcher()
        if matcher is None:
            return text
        automaton, replacements = matcher
        matches = automaton.find_matches_as_indexes(text)
        if not matches:
            return text
        parts: list[str] = []
        start = 0
        for index, begin, end in matches:
            parts.append(text[start:begin])
            parts.append(replacements[index])
            start = end
        parts.append(text[start:])
        return "".join(parts)


def redact(text: str, secrets: Iterable[str | None], replacement: str = "****") -> str:
    """``text`` with each of ``secrets`` (those of 4 characters or more; longest first) replaced: the per-request
    redaction of one channel's URL token, bearer token and signing secret. Cost: one pass per secret."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
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
