"""scrub() cost whatever the registry holds: the log scrubber on worst-case inputs, figures printed side by side.

The issue that replaced the per-prefix index measured 6.4 s for one ``scrub()`` of a 26 KB text with 20,000
registered secrets sharing a prefix (that index walked every secret of the bucket at every position). This bench
times the Aho-Corasick registry on that case and on harder ones (the text made of the shared prefix itself, a text
10x longer) and prints milliseconds per call and the ratio to the published 6.4 s. Linear means: time grows with
the text, not with the number of secrets.

    .venv/bin/python -m bench.scrub_bench [--repeat 20]
"""

from __future__ import annotations

import argparse
import time

from smartflow_streams.core.masking import SecretRegistry

PUBLISHED_SECONDS = 6.4  # the figure: 20,000 shared-prefix secrets, 26 KB text, old index
PREFIX = "notification_id="


def _registry(n: int) -> SecretRegistry:
    reg = SecretRegistry(capacity=max(1, n))
    for i in range(n):
        reg.add(f"{PREFIX}{i:08d}-{'s' * 8}")
    return reg


def _log_text(size: int) -> str:
    line = ("2026-12-02 17:45:00 INFO smartflow_streams.notification.service: notification.feishu.requested consumed:"
            f" outbox_id=1234 {PREFIX}5678 status=sent delivered=True reused=False attempt_count=1\n")
    return (line * (size // len(line) + 1))[:size]


def _time(reg: SecretRegistry, text: str, repeat: int) -> float:
    reg.scrub(text)  # builds the automaton once
    started = time.perf_counter()
    for _ in range(repeat):
        reg.scrub(text)
    return (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    cases = [
        ("26 KB log text", _log_text(26_000)),
        ("26 KB of the shared prefix", (PREFIX * 2000)[:26_000]),
        ("260 KB log text", _log_text(260_000)),
    ]
    print(f"{'secrets':>8}  {'text':<28} {'ms/call':>9} {'MB/s':>8} {'vs 6.4 s':>9}")
    for n in (0, 1_000, 20_000):
        started = time.perf_counter()
        reg = _registry(n)
        if n:
            reg.scrub("x" * 16)
        build = time.perf_counter() - started
        for name, text in cases:
            seconds = _time(reg, text, args.repeat)
            ratio = PUBLISHED_SECONDS / seconds if seconds else float("inf")
            print(f"{n:8d}  {name:<28} {seconds * 1000:9.3f} {len(text) / seconds / 1e6:8.1f} {ratio:8.0f}x")
        print(f"{'':8}  (registering {n} secrets and building the automaton: {build * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
