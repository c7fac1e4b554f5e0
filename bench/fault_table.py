"""Print the latest result of every fault case (``var/fault-results.jsonl``, written by ``tests/faults``) as a
markdown table: what was committed, delivered, suppressed and POSTed.

    .venv/bin/python bench/fault_table.py [path]
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    path = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "var" / "fault-results.jsonl"
    latest: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            result = json.loads(line)
            latest[result["case"]] = result
    print("| case | at | triggers committed | notification events | sent | suppressed as duplicates | POSTs | "
          "duplicate POSTs (tolerated) | dead rows / dead messages | kills relay/worker | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in sorted(latest):
        r = latest[case]
        dead_rows = sum(t["by_status"].get("dead", 0) for t in r["outbox"].values())
        print(f"| {case} | {r['at']} | {r['triggers_in_db']} (+{r['insert_failures']} failed inserts) | "
              f"{r['notification_events']} | {r['records'].get('sent', 0)} | {r['dedupe_suppressed']} | "
              f"{r['posts_total']} | {r['duplicate_deliveries']} ({r['tolerated_duplicates']}) | "
              f"{dead_rows} / {r['dead_messages']} | {r['relay_kills']}/{r['worker_kills']} | {r['ok']} |")


if __name__ == "__main__":
    main()
