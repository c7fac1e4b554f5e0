"""The secret registry behind log and served-body scrubbing: matches, eviction bound, pinned tokens."""

from __future__ import annotations

from smartflow_streams.core.masking import SecretRegistry


def test_scrub_replaces_every_registered_secret_longest_first() -> None:
    reg = SecretRegistry()
    url = "https://open.feishu.cn/open-apis/bot/v2/hook/0123456789abcdef"
    reg.add_webhook_url(url)
    reg.add("s3cr3t-sign")
    reg.add("short")  # < 6 characters: ignored
    text = f"POST {url} failed; token 0123456789abcdef; sign s3cr3t-sign; short stays; {url}"
    masked = "https://open.feishu.cn/open-apis/bot/v2/hook/****"
    assert reg.scrub(text) == f"POST {masked} failed; token ****; sign ****; short stays; {masked}"
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
    reg.add("abcdef")
    reg.add("abcdefghij", "[long]")
    assert reg.scrub("xx abcdefghij yy abcdefgh") == "xx [long] yy ****gh"
