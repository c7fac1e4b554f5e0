"""Bearer-token checks for the admin routes and the upstream-compatible HTTP APIs.

Invariants:
- Tokens are compared with :func:`hmac.compare_digest` over their UTF-8 bytes; an API token lookup walks every
  configured token (no early exit), so timing does not tell which prefix matched.
- ``Settings.admin_token`` unset (or empty) disables every admin route: 403 with :data:`ADMIN_DISABLED`. A missing,
  malformed or wrong ``Authorization: Bearer`` header is 401. Nothing else is accepted (no query-string tokens, so a
  token never lands in an access log or a browser history).
- API tokens map to user ids > 0 only; anything else is "no user" (upstream 40014).
- The audit actor is ``"admin:" + X-Actor`` (printable, at most 64 characters, secrets scrubbed) or ``"admin:token"``.
- Repeated failures are throttled (:class:`AuthFailures`): after ``worker.auth_failures_per_minute`` (20) wrong
  bearer tokens within 60 s from one client address (a missing header is a plain 401 and not counted), that
  address gets 429 with ``Retry-After`` for every admin/API request until the oldest failure leaves the 60 s
  window (at most 10,000 addresses tracked, least recent dropped; limit 0 disables it).
- :func:`register_secrets` puts every configured token into :data:`smartflow_streams.core.masking.SECRETS` (logs) and
  :data:`smartflow_streams.web.responses.SERVED_SECRETS` (bodies), so neither can echo one.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from config import Settings
from smartflow_streams.core.masking import SECRETS, scrub_text
from smartflow_streams.web.responses import SERVED_SECRETS

ADMIN_DISABLED = "admin actions disabled: set SMARTFLOW_ADMIN_TOKEN"
ACTOR_MAX = 64


@dataclass(frozen=True)
class Denial:
    """Why a request is refused: HTTP status and a message safe to serve."""

    status: int
    message: str
    retry_after: int | None = None


AUTH_FAILURE_LIMIT = 20
AUTH_FAILURE_WINDOW_SECONDS = 60.0
AUTH_FAILURE_MAX_CLIENTS = 10_000


class AuthFailures:
    """Failed bearer checks per client address in a sliding window; see the module invariants for the numbers."""

    def __init__(self, limit: int = AUTH_FAILURE_LIMIT, window: float = AUTH_FAILURE_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float]:
        times = self._failures.get(client)
        if times is None:
            return deque()
        cutoff = self._clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[client]
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or ``None`` when it is not throttled."""
        if self.limit <= 0:
            return None
        times = self._recent(client)
        if len(times) < self.limit:
            return None
        return max(0.0, times[0] + self.window - self._clock())

    def failed(self, client: str) -> None:
        times = self._failures.setdefault(client, deque())
        times.append(self._clock())
        self._failures.move_to_end(client)
        while len(self._failures) > AUTH_FAILURE_MAX_CLIENTS:
            self._failures.popitem(last=False)

    def throttled(self, client: str) -> Denial | None:
        """The 429 :class:`Denial` for a throttled ``client`` (its ``retry_after`` in whole seconds), else None."""
        wait = self.retry_after(client)
        if wait is None:
            return None
        return Denial(429, f"too many failed authentications: retry after {max(1, math.ceil(wait))} s",
                      retry_after=max(1, math.ceil(wait)))


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison; a header that is not valid UTF-8 (aiohttp hands it over with surrogate escapes)
    matches nothing."""
    try:
        given_bytes = given.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given_bytes, expected.encode("utf-8"))


def check_admin(settings: Settings, authorization: str | None) -> Denial | None:
    """``None`` when the request carries the admin token, else the :class:`Denial` to answer with."""
    expected = settings.admin_token.get_secret_value() if settings.admin_token is not None else ""
    if not expected:
        return Denial(403, ADMIN_DISABLED)
    given = bearer_token(authorization)
    if given is None:
        return Denial(401, "unauthorized: missing bearer token")
    if not _same(given, expected):
        return Denial(401, "unauthorized: invalid admin token")
    return None


def api_user(settings: Settings, authorization: str | None) -> int | None:
    """The user id of the request's API bearer token (``Settings.api_tokens``), or ``None``."""
    given = bearer_token(authorization)
    if given is None:
        return None
    user: int | None = None
    for token, uid in settings.api_tokens.items():
        if _same(given, token):
            user = uid
    return user if user is not None and user > 0 else None


def admin_actor(x_actor: str | None) -> str:
    """Audit actor for an admin request: ``admin:<X-Actor>`` or ``admin:token``."""
    name = "".join(ch for ch in (x_actor or "").strip() if ch.isprintable())
    name = scrub_text(name)[:ACTOR_MAX].strip()
    return "admin:" + (name or "token")


def register_secrets(settings: Settings) -> None:
    """Register the admin token and every API token with the log scrubber and the served-body scrubber."""
    tokens = list(settings.api_tokens)
    if settings.admin_token is not None:
        tokens.append(settings.admin_token.get_secret_value())
    for token in tokens:
        SECRETS.add(token, pin=True)
        SERVED_SECRETS.add(token, pin=True)
