"""Soak mode of the fault-injection suite: the same cases and invariants as ``tests/faults``, longer and heavier.

    .venv/bin/python bench/soak.py                       # every case, 120 s of load each at 10 triggers/s
    .venv/bin/python bench/soak.py --cases a,d --duration 600 --rate 20

Starts its own MariaDB (the test kit's MariaDB starter, private data folder under ``var/``), creates a fresh database per
case, and runs :data:`tests.faults.harness.CASES`. Each case appends one JSON line to ``var/fault-results.jsonl``
(the same file the CI cases write) and prints a summary line; the exit status is non-zero when any case failed.
Case ``e`` (database restart) starts its own private MariaDB, as in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root: bench.common, tests.kit, tests.faults.harness

from tests.faults import harness  # noqa: E402
from bench.common import mariadb, new_mysql_database  # noqa: E402


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(harness.CASES), help="letters of harness.CASES, e.g. a,b,d")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load per case")
    parser.add_argument("--rate", type=float, default=10.0, help="triggers per second")
    args = parser.parse_args()
    failed = 0
    with mariadb() as server:
        for letter in args.cases.split(","):
            fn = harness.CASES[letter]
            name = f"soak_{fn.__name__.removeprefix('case_')}"
            url = None if letter == "e" else await new_mysql_database(server, "soak")
            workdir = ROOT / "var" / "soak" / f"{name}-{uuid.uuid4().hex[:6]}"
            try:
                result = await harness.run_case(name, fn, url, workdir, rate=args.rate, duration=args.duration)
                print(harness.brief(result), flush=True)
            except Exception as exc:  # noqa: BLE001 - report and go on with the next case
                failed += 1
                print(f"{name}: FAILED: {type(exc).__name__}: {str(exc)[:2000]} (logs: {workdir})", flush=True)
    print(f"{failed} case(s) failed" if failed else "all cases passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
