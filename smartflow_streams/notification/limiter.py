"""Per-webhook rate limiting: a per-second token bucket plus a sliding per-minute window, per key.

Feishu custom bots accept at most **5 requests/second and 100 requests/minute** per bot
(docs/upstream.md#feishu-custom-bot); going
over answers ``11232 frequency limited``. :class:`RateLimiter` keeps, for every key (the webhook URL):

* a token bucket of capacity ``max(1, rate_per_second)`` (default 5) refilled at ``rate_per_second`` tokens/s,
  so a burst of 5 passes at once and the 6th waits 0.2 s;
* a sliding 60-second window admitting at most ``max(1, floor(rate_per_minute))`` (default 100) grants, so the
  sustained rate is bounded by 100/60 ≈ 1.67 requests/s whatever the bucket allows. At the extreme a token
  bucket lets 2 × rate_per_second (10) through within one sliding second (a full burst, then the refill);
  a resulting 11232 is retriable.

A request is granted only when both allow it. Invariants and limits:

* keys are stored as SHA-256 digests, never in plaintext (a webhook URL embeds its credential);
* callers of one key are served in arrival order: each caller reserves the earliest slot after the ones already
  reserved (no lock is held while sleeping); keys never block each other;
* ``acquire(key, max_wait=s)`` never sleeps longer than ``s``: when the reserved slot would be further away it
  reserves nothing and raises :class:`RateLimitWait` carrying the wait, which the provider turns into a temporary
  failure with that wait as retry-after (a bot past its 100/min quota answers at once instead of sleeping ~40 s
  in front of everyone else's sends);
* limiting is per process; several workers sending to one bot each get the full quota;
* at most ``max_keys`` (default 10,000) key states are kept; idle ones (bucket full, window empty) are dropped
  first when the limit is reached;
* ``enabled=False`` turns :meth:`RateLimiter.acquire` into a free no-op returning ``0.0``;
* ``clock`` (monotonic seconds) and ``sleep`` are injectable so tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

WINDOW_SECONDS = 60.0
_EPSILON = 1e-9  # float slack so a wait of exactly the computed delay always suffices
DEFAULT_MAX_KEYS = 10_000

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]


@dataclass
class _KeyState:
    tokens: float
    refilled_at: float
    grants: deque[float] = field(default_factory=deque)  # granted or reserved slot times, ascending


class RateLimitWait(Exception):
    """The next slot of a key is ``wait_seconds`` away, more than the caller's ``max_wait``; nothing reserved."""

    def __init__(self, wait_seconds: float) -> None:
        super().__init__(f"rate limit: next slot in {wait_seconds:.1f}s")
        self.wait_seconds = wait_seconds


class RateLimiter:
    """Dual limit per key; see the module docstring for the exact semantics."""

    def __init__(
        self,
        rate_per_second: float = 5.0,
        rate_per_minute: float = 100.0,
        *,
        enabled: bool = True,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if rate_per_second <= 0 or rate_per_minute <= 0:
            raise ValueError("rates must be positive")
        self.enabled = enabled
        self.rate_per_second = float(rate_per_second)
        self.capacity = max(1.0, float(rate_per_second))
        self.per_minute = max(1, math.floor(rate_per_minute))
        self.max_keys = max(1, max_keys)
        self.waits_total = 0
        self.wait_seconds_total = 0.0
        self._clock = clock
        self._sleep = sleep
        self._states: dict[bytes, _KeyState] = {}

    def __len__(self) -> int:
        """Number of keys currently tracked."""
        return len(self._states)

    async def acquire(self, key: str, max_wait: float | None = None) -> float:
        """Reserve the next slot of ``key``, sleep until it, and return the seconds waited (0.0 when free now).

        Raises :class:`RateLimitWait` (reserving nothing) when the slot is more than ``max_wait`` seconds away."""
        if not self.enabled:
            return 0.0
        state = self._state_for(key)
        now = self._clock()
        delay = self._delay(state, now)
        if max_wait is not None and delay > max_wait + _EPSILON:
            raise RateLimitWait(delay)
        self._take(state, now + delay)
        if delay <= 0:
            return 0.0
        await self._sleep(delay)
        self.waits_total += 1
        self.wait_seconds_total += delay
        return delay

    def _state_for(self, key: str) -> _KeyState:
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        state = self._states.get(digest)
        if state is None:
            if len(self._states) >= self.max_keys:
                self._evict()
            state = _KeyState(tokens=self.capacity, refilled_at=self._clock())
            self._states[digest] = state
        return state

    def _refill(self, state: _KeyState, now: float) -> None:
        elapsed = max(0.0, now - state.refilled_at)
        state.tokens = min(self.capacity, state.tokens + elapsed * self.rate_per_second)
        state.refilled_at = now
        while state.grants and state.grants[0] <= now - WINDOW_SECONDS + _EPSILON:
            state.grants.popleft()

    def _delay(self, state: _KeyState, now: float) -> float:
        """Seconds until both limits admit one more request after every slot already reserved (0: admitted now).
        Reserved slots are negative tokens (the bucket's debt) and future entries in ``grants``."""
        self._refill(state, now)
        bucket_wait = 0.0 if state.tokens >= 1.0 - _EPSILON else (1.0 - state.tokens) / self.rate_per_second
        window_wait = 0.0
        if len(state.grants) >= self.per_minute:
            window_wait = state.grants[-self.per_minute] + WINDOW_SECONDS - now
        order_wait = state.grants[-1] - now if state.grants else 0.0  # never ahead of an earlier reservation
        delay = max(bucket_wait, window_wait, order_wait)
        return delay if delay > _EPSILON else 0.0

    def _take(self, state: _KeyState, at: float) -> None:
        state.tokens -= 1.0  # below zero: slots reserved ahead, repaid by the refill
        state.grants.append(at)

    def _evict(self) -> None:
        now = self._clock()
        for digest, state in list(self._states.items()):
            self._refill(state, now)
            if not state.grants and state.tokens >= self.capacity:
                del self._states[digest]
        while len(self._states) >= self.max_keys:
            digest = next((d for d, s in self._states.items() if not s.grants or s.grants[-1] <= now), None)
            if digest is None:
                break
            del self._states[digest]
