"""The secret registry behind log and served-body scrubbing: matches, eviction bound, pinned tokens, the length
rules; per-request redaction."""

from __future__ import annotations

import pytest

from smartflow_streams.core.masking import MAX_SECRET_CHARS, SecretRegistry, mask_webhook_url, redact


def test_scrub_replaces_every_registered_secret_longest_first() -> None:
    reg = SecretRegistry()
    url = "https://open.feishu.cn/open-apis/bot/v2/hook/0123456789abcdef"
    reg.add_webhook_url(url)
    reg.add("s3cr3t-sign")
    reg.add("shortish")  # 8 characters: masked
    reg.add("short77")  # < 8 characters: ignored
    text = f"POST {url} failed; token 0123456789abcdef; sign s3cr3t-sign; short77 stays; {url}"
    masked = "https://open.feishu.cn/open-apis/bot/v2/hook/****"
    assert reg.scrub(text) == f"POST {masked} failed; token ****; sign ****; short77 stays; {masked}"
    assert reg.scrub("a shortish word") == "a **** word"
    reg.add_webhook_url("https://hooks.example.com/flow/abc?key=query-secret-1")
    assert reg.scrub("https://hooks.example.com/flow/abc?key=query-secret-1") == "https://hooks.example.com/flow/abc?****"
    assert reg.scrub("nothing here") == "nothing here"
    assert reg.scrub("s3cr3t-sig") == "s3cr3t-sig"  # a prefix of a secret is not the secret


def test_registry_is_bounded_and_keeps_pinned_tokens() -> None:
    reg = SecretRegistry(capacity=100)
    reg.add("admin-token-123456", pin=True)
    for i in range(1000):
        reg.add(f"user-token-{i:06d}")
    assert len(reg) == 101
    assert reg.scrub("admin-token-123456 user-token-000999 user-token-000000") == \
        "**** **** user-token-000000"  # the oldest was evicted, the newest and the pinned one are masked
    reg.add("user-token-000900")  # re-registering refreshes: survives the next 99 additions
    for i in range(1000, 1099):
        reg.add(f"user-token-{i:06d}")
    assert reg.scrub("user-token-000900") == "****"


def test_scrub_of_overlapping_secrets_sharing_a_prefix() -> None:
    reg = SecretRegistry()
    reg.add("abcdefgh")
    reg.add("abcdefghijkl", "[long]")
    assert reg.scrub("xx abcdefghijkl yy abcdefghij") == "xx [long] yy ****ij"


def test_registry_refuses_short_and_huge_strings() -> None:
    reg = SecretRegistry()
    reg.add("1234567")  # 7 characters: would blank ordinary words out of logs
    reg.add("x" * (MAX_SECRET_CHARS + 1))
    reg.add("y" * MAX_SECRET_CHARS)
    assert len(reg) == 1
    assert reg.scrub("1234567 " + "y" * MAX_SECRET_CHARS) == "1234567 ****"


def test_scrub_with_a_full_registry_of_shared_prefixes_matches_exactly() -> None:
    """The case that took 6.4 s with the old index (secrets sharing a prefix): the automaton finds exactly the
    registered ones, leftmost-longest (the timing is in bench/scrub_bench.py)."""
    reg = SecretRegistry(capacity=20_000)
    for i in range(20_000):
        reg.add(f"notification_id={i:08d}")
    text = ("notification_id=00000042 notification_id=0000004 " * 5) + "notification_id=00019999"
    assert reg.scrub(text) == ("**** notification_id=0000004 " * 5) + "****"


def test_redact_replaces_one_requests_credentials_longest_first() -> None:
    text = "POST https://h/hook/tok-abcdef-1234 with Bearer abc and tok-abcdef-1234x sign sec"
    assert redact(text, ["tok-abcdef-1234", "tok-abcdef-1234x", "sec", None, ""]) == (
        "POST https://h/hook/**** with Bearer abc and **** sign sec")  # "sec": under 4 characters, kept


@pytest.mark.parametrize(("url", "masked"), [
    ("https://open.feishu.cn/open-apis/bot/v2/hook/0123456789abcdef",
     "https://open.feishu.cn/open-apis/bot/v2/hook/0123...cdef"),
    ("https://open.feishu.cn/open-apis/bot/v2/hook/0123456789abcdef/",  # trailing "/": the token stays masked
     "https://open.feishu.cn/open-apis/bot/v2/hook/0123...def/"),
    ("https://www.feishu.cn/flow/api/trigger-webhook/0123456789abcdef/more?k=v",  # a segment after the token
     "https://www.feishu.cn/flow/api/trigger-webhook/0123...more"),
    ("https://www.feishu.cn/flow/api/trigger-webhook/short", "https://www.feishu.cn/flow/api/trigger-webhook/****"),
    ("http://127.0.0.1:8080/any/secret-path-here/", "http://127.0.0.1:8080/any/secr...ere/"),
])
def test_webhook_mask_hides_everything_after_the_fixed_prefix(url: str, masked: str) -> None:
    assert mask_webhook_url(url) == masked
    assert "456789ab" not in mask_webhook_url(url)
