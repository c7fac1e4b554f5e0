"""``smartflow up`` supervision, run as the real command in a scratch directory with its own ports: ports checked
before anything starts, readiness only from this run's own children, a killed child noticed and reported with its
own log, and a second ``--demo`` within the dedupe window still delivering."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from aiohttp import web

import config
from smartflow_streams.cli.embedded import free_port
from smartflow_streams.cli.launcher import Child, Stack
from tests.kit.support import SPAWNED, kill9

pytestmark = pytest.mark.slow

NOTICE_WITHIN_SECONDS = 10.0  # kill -9 -> launcher exited (polls every 0.2 s, then stops the relay and the broker)


def up_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
    env.update(SMARTFLOW_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}", SMARTFLOW_WORKER__WEB_PORT=str(free_port()),
               SMARTFLOW_RELAY__METRICS_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def spawn_up(cwd: pathlib.Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "smartflow_streams.cli", "up", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    SPAWNED.append(proc)  # type: ignore[arg-type]
    return proc


def run_up(cwd: pathlib.Path, env: dict[str, str], *args: str, timeout: float = 240) -> tuple[int, str]:
    proc = spawn_up(cwd, env, *args)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)  # type: ignore[arg-type]
        raise
    return proc.returncode, out


def no_leftovers(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


def test_taken_port_is_named_with_its_setting_and_nothing_starts(tmp_path: pathlib.Path) -> None:
    env = up_env()
    port = int(env["SMARTFLOW_RELAY__METRICS_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        code, out = run_up(tmp_path, env, "--exit-after", "5", timeout=60)
    assert code == 2, out
    assert (f"relay metrics endpoint: port 127.0.0.1:{port} is not free (OSError: [Errno 98] Address already in use); "
            "stop what listens there or set SMARTFLOW_RELAY__METRICS_PORT to a free port") in out, out
    assert "nothing was started" in out
    assert not (tmp_path / "var" / "logs").exists()  # no child was spawned


def test_same_port_for_worker_and_relay_is_refused(tmp_path: pathlib.Path) -> None:
    port = str(free_port())
    code, out = run_up(tmp_path, up_env(SMARTFLOW_WORKER__WEB_PORT=port, SMARTFLOW_RELAY__METRICS_PORT=port),
                       timeout=60)
    assert code == 2, out
    assert (f"relay metrics endpoint and worker web server are both set to port {port}: change "
            "SMARTFLOW_RELAY__METRICS_PORT or SMARTFLOW_WORKER__WEB_PORT") in out


def test_killed_worker_is_noticed_reported_with_its_log_and_the_run_exits_1(tmp_path: pathlib.Path) -> None:
    proc = spawn_up(tmp_path, up_env())
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C to stop."):
            break
    out = "".join(lines)
    assert "Ctrl-C to stop." in out, out
    worker = int(re.search(r"- worker: pid (\d+)", out).group(1))  # type: ignore[union-attr]
    relay = int(re.search(r"- relay: pid (\d+)", out).group(1))  # type: ignore[union-attr]
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    rest, _ = proc.communicate(timeout=60)
    noticed = time.monotonic() - killed
    assert proc.returncode == 1, rest
    assert noticed < NOTICE_WITHIN_SECONDS, f"launcher took {noticed:.1f} s to exit"
    assert f"! worker (pid {worker}) was killed by SIGKILL; last lines of var/logs/worker.log:" in rest, rest
    assert f"] [{worker}] [INFO]" in rest  # the worker's own log tail (Faust lines carry its pid), not the relay's
    assert "- relay stopped (exit 0)" in rest and "- broker stopped" in rest
    assert no_leftovers([worker, relay]) == []


async def test_ready_is_not_fooled_by_another_process_on_the_worker_port(tmp_path: pathlib.Path) -> None:
    """A stranger answering /health and /ready on the worker's port (as another stack's worker would) is named and
    never counted as this run's worker."""
    port = free_port()

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": 1})

    async def ready(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        settings = config.load_settings(worker={"web_port": port}, relay={"metrics_port": 0})
        stack = Stack(settings, demo=False, var=tmp_path)
        stack.children.append(Child("worker", sleeper, tmp_path / "worker.log", f"http://127.0.0.1:{port}/health"))
        problem = await stack.wait_ready(timeout=3)
        assert problem is not None
        assert (f"http://127.0.0.1:{port}/health is answered by another process (pid 1), not this run's worker "
                f"(pid {sleeper.pid})") in problem
    finally:
        sleeper.kill()
        sleeper.wait()
        await runner.cleanup()


def test_second_demo_within_the_window_still_delivers(tmp_path: pathlib.Path) -> None:
    code, first = run_up(tmp_path, up_env(), "--demo", "--exit-after", "8")
    assert code == 0, first[-3000:]
    assert "demo webhook received 5 notification(s): [1001, 1002, 1003, 1004, 1005]" in first, first[-3000:]
    assert ("user 1001: ast_" in first and "dedupe_hit=False (a new trigger, but its notification is deduplicated: "
            "user 1001 already has one for this trigger type in this 30-minute window)") in first
    assert "(same user and window: the notification is deduplicated)" not in first
    code, second = run_up(tmp_path, up_env(), "--demo", "--exit-after", "8")  # same ./var, new ports
    assert code == 0, second[-3000:]
    assert ("demo users 1001-1005 were already notified in this 30-minute dedupe window (one notification per "
            "user, trigger type and window, kept in sqlite+aiosqlite:///./var/smartflow.db): this run uses users "
            "1011-1015") in second, second[-3000:]
    assert "demo webhook received 5 notification(s): [1011, 1012, 1013, 1014, 1015]" in second, second[-3000:]
