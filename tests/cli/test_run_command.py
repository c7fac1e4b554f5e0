"""The README's main command, end to end, from a clean clone: set up a fresh venv, run the embedded stack with
``--demo``, see every demo user's notification delivered, stop cleanly with nothing left running."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from smartflow_streams.cli.embedded import free_port
from tests.kit.support import ROOT

pytestmark = pytest.mark.slow


def test_run_command_from_clean_clone(tmp_path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTFLOW_", "VIRTUAL_ENV"))}
    env.update(SMARTFLOW_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}", SMARTFLOW_WORKER__WEB_PORT=str(free_port()),
               SMARTFLOW_RELAY__METRICS_PORT=str(free_port()), SMARTFLOW_ADMIN_TOKEN="adm-secret-token-123",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run(["bash", "scripts/run.sh", "--demo", "--exit-after", "12"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "ready: dashboard http://127.0.0.1:" in out
    delivered = re.search(r"demo webhook received (\d+) notification\(s\): \[(.*)\]", out)
    assert delivered and delivered.group(1) == "5", out[-4000:]  # 6 triggers, one deduplicated
    assert "- worker stopped (exit 0)" in out and "- relay stopped (exit 0)" in out and "- broker stopped" in out
    assert "adm-secret-token-123" not in (clone / "var" / "logs" / "worker.log").read_text()
    assert "adm-secret-token-123" not in out  # an admin token the operator set is never printed
    leftovers = subprocess.run(["pgrep", "-f", str(clone)], capture_output=True, text=True).stdout.strip()
    assert leftovers == "", f"processes left running: {leftovers}"
