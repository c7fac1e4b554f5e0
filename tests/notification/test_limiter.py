"""RateLimiter: 5/s token bucket, 100/min sliding window, per-key isolation, disabled mode (fake clock)."""

from __future__ import annotations

import asyncio

import pytest

from smartflow_streams.notification.limiter import RateLimiter, RateLimitWait

URL_A = "https://open.feishu.cn/open-apis/bot/v2/hook/aaaaaaaa-1111-2222-3333-444444444444"
URL_B = "https://open.feishu.cn/open-apis/bot/v2/hook/bbbbbbbb-5555-6666-7777-888888888888"


class FakeTime:
    """Monotonic clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)  # let other tasks start "during" the sleep
        self.now += seconds


def make_limiter(fake: FakeTime, per_second: float = 5.0, per_minute: float = 100.0, **kwargs) -> RateLimiter:
    return RateLimiter(per_second, per_minute, clock=fake.clock, sleep=fake.sleep, **kwargs)


@pytest.mark.asyncio
async def test_burst_of_five_then_waits_one_fifth_second() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake)

    burst = [await limiter.acquire(URL_A) for _ in range(5)]
    sixth = await limiter.acquire(URL_A)
    seventh = await limiter.acquire(URL_A)

    assert burst == [0.0] * 5
    assert sixth == pytest.approx(0.2)
    assert seventh == pytest.approx(0.2)
    assert fake.now == pytest.approx(0.4)
    assert limiter.waits_total == 2
    assert limiter.wait_seconds_total == pytest.approx(0.4)


@pytest.mark.asyncio
async def test_bucket_refills_after_one_second() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake)
    for _ in range(5):
        await limiter.acquire(URL_A)

    fake.now += 1.0
    waits = [await limiter.acquire(URL_A) for _ in range(5)]

    assert waits == [0.0] * 5
    assert limiter.waits_total == 0


@pytest.mark.asyncio
async def test_minute_window_caps_at_one_hundred() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake, per_second=1000.0, per_minute=100.0)

    waits = [await limiter.acquire(URL_A) for _ in range(100)]
    hundred_first = await limiter.acquire(URL_A)

    assert waits == [0.0] * 100
    assert hundred_first == pytest.approx(60.0)
    assert limiter.waits_total == 1


@pytest.mark.asyncio
async def test_default_rates_never_exceed_either_limit() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake)
    grants: list[float] = []
    for _ in range(130):
        await limiter.acquire(URL_A)
        grants.append(fake.now)

    for start in grants:
        in_minute = [t for t in grants if start <= t < start + 60.0 - 1e-9]
        in_second = [t for t in grants if start <= t < start + 1.0 - 1e-9]
        assert len(in_minute) <= 100
        assert len(in_second) <= 10  # bucket: 5 burst + 5 refilled within one second at most
    assert grants[99] == pytest.approx(19.0)  # 5 at t=0, then one every 0.2 s
    assert grants[100] == pytest.approx(60.0)  # the window, not the bucket, holds the 101st


@pytest.mark.asyncio
async def test_disabled_limiter_is_free() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake, per_second=1.0, per_minute=1.0, enabled=False)

    waits = [await limiter.acquire(URL_A) for _ in range(500)]

    assert waits == [0.0] * 500
    assert fake.sleeps == []
    assert limiter.waits_total == 0
    assert limiter.wait_seconds_total == 0.0
    assert len(limiter) == 0


@pytest.mark.asyncio
async def test_keys_are_isolated() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake)
    for _ in range(5):
        await limiter.acquire(URL_A)

    other = [await limiter.acquire(URL_B) for _ in range(5)]
    blocked = await limiter.acquire(URL_A)

    assert other == [0.0] * 5
    assert blocked == pytest.approx(0.2)
    assert len(limiter) == 2


@pytest.mark.asyncio
async def test_concurrent_callers_are_served_in_order() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake)

    waits = await asyncio.gather(*(limiter.acquire(URL_A) for _ in range(7)))

    assert list(waits[:5]) == [0.0] * 5
    assert waits[5] == pytest.approx(0.2)
    assert waits[6] == pytest.approx(0.4)
    assert limiter.waits_total == 2


@pytest.mark.asyncio
async def test_keys_are_stored_hashed() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake)
    await limiter.acquire(URL_A)

    state_dump = repr(vars(limiter))
    assert "open-apis" not in state_dump
    assert "aaaaaaaa-1111" not in state_dump
    assert len(limiter) == 1


@pytest.mark.asyncio
async def test_fractional_rate_still_admits_one_request() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake, per_second=0.5, per_minute=100.0)

    first = await limiter.acquire(URL_A)
    second = await limiter.acquire(URL_A)

    assert first == 0.0
    assert second == pytest.approx(2.0)


@pytest.mark.asyncio
async def test_idle_keys_are_evicted_at_max_keys() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake, max_keys=2)
    await limiter.acquire(URL_A)
    await limiter.acquire(URL_B)
    fake.now += 61.0  # both keys idle: bucket full, window empty

    await limiter.acquire("https://open.feishu.cn/open-apis/bot/v2/hook/cccccccc")

    assert len(limiter) == 1


def test_rates_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 100)
    with pytest.raises(ValueError):
        RateLimiter(5, -1)


@pytest.mark.asyncio
async def test_real_clock_waits_a_few_milliseconds() -> None:
    limiter = RateLimiter(rate_per_second=20.0, rate_per_minute=10_000.0)

    for _ in range(20):
        assert await limiter.acquire(URL_A) == 0.0
    waited = await limiter.acquire(URL_A)

    assert 0.01 <= waited < 0.5  # about 50 ms: one token at 20/s
    assert limiter.waits_total == 1


@pytest.mark.asyncio
async def test_wait_longer_than_max_wait_raises_and_reserves_nothing() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake, per_second=1000.0, per_minute=100.0)
    for _ in range(100):
        await limiter.acquire(URL_A, max_wait=1.0)

    with pytest.raises(RateLimitWait) as over:
        await limiter.acquire(URL_A, max_wait=1.0)  # the 101st within a minute: ~60 s away

    assert over.value.wait_seconds == pytest.approx(60.0)
    assert fake.sleeps == []  # nothing slept, nothing reserved
    fake.now += 60.0
    assert await limiter.acquire(URL_A, max_wait=1.0) == 0.0


@pytest.mark.asyncio
async def test_max_wait_counts_the_slots_reserved_by_earlier_callers() -> None:
    fake = FakeTime()
    limiter = make_limiter(fake)  # 5 at once, then one per 0.2 s

    calls = [limiter.acquire(URL_A, max_wait=1.0) for _ in range(12)]
    results = await asyncio.gather(*calls, return_exceptions=True)

    waits = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, RateLimitWait)]
    assert waits == pytest.approx([0.0] * 5 + [0.2, 0.4, 0.6, 0.8, 1.0])
    assert len(refused) == 2 and refused[0].wait_seconds == pytest.approx(1.2)
