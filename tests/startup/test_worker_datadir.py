"""The documented worker command from a clean folder: ``faust -A smartflow_streams worker`` with no ``./var``.

Each case runs the real command in a new empty working directory (the package importable through PYTHONPATH, as
from a fresh checkout), waits for Faust's "Worker ready", and checks where the data directory was created:

* nothing given -> the config default ``./var/faust`` (missing parents ``var/`` created);
* ``faust --datadir DIR`` -> DIR (and no ``./var``), even with ``SMARTFLOW_WORKER__DATADIR`` set;
* ``F_DATADIR=DIR`` -> DIR, Faust's environment convention, over the config default.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.cli.embedded import free_port
from tests.kit.support import ROOT, SPAWNED, terminate, wait_worker_ready, worker_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("how", ["default", "--datadir", "F_DATADIR"])
async def test_worker_starts_from_a_clean_folder(how: str, tmp_path, kafka_bootstrap) -> None:
    from conftest import make_database

    db = await make_database("sqlite", tmp_path, None)
    await upgrade_schema(db.engine)
    await db.engine.dispose()
    clean = tmp_path / "checkout"
    clean.mkdir()
    port = free_port()
    env = worker_env(db.url, kafka_bootstrap, uuid.uuid4().hex[:8], port, PYTHONPATH=str(ROOT))
    env.pop("SMARTFLOW_WORKER__DATADIR")
    target = tmp_path / "state" / "deep" / "faust"  # none of these folders exists yet
    args = [sys.executable, "-m", "faust", "-A", "smartflow_streams"]
    if how == "--datadir":
        args += ["--datadir", str(target)]
        env["SMARTFLOW_WORKER__DATADIR"] = str(tmp_path / "not-this-one")
    elif how == "F_DATADIR":
        env["F_DATADIR"] = str(target)
    args += ["worker", "-l", "info", "--web-port", str(port), "--web-host", "127.0.0.1"]
    log_path = tmp_path / "worker.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, env=env, cwd=str(clean), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    SPAWNED.append(proc)
    try:
        await wait_worker_ready(log_path, timeout=60)
    finally:
        code = terminate(proc)
    text = log_path.read_text(errors="replace")
    assert "FileNotFoundError" not in text and code == 0, text[-3000:]
    if how == "default":
        assert (clean / "var" / "faust").is_dir() and not target.exists()
    else:
        assert target.is_dir() and any(target.iterdir()) and not (clean / "var").exists()
        assert not (tmp_path / "not-this-one").exists()


def test_datadir_precedence() -> None:
    import config
    from smartflow_streams.startup.faust_app import worker_datadir

    settings = config.load_settings(worker={"datadir": "/configured"})
    cli = ["/venv/lib/python3.11/site-packages/faust/__main__.py", "-A", "smartflow_streams"]
    assert worker_datadir(settings, {}, [*cli, "--datadir", "/cli", "worker"]) == "/cli"
    assert worker_datadir(settings, {"F_DATADIR": "/env"}, ["/venv/bin/faust", "--datadir=/cli", "worker"]) == "/cli"
    assert worker_datadir(settings, {"F_DATADIR": "/env"}, [*cli, "worker"]) == "/env"
    # Faust's CLI exports its own default when --datadir is absent: that is not a choice, the config wins
    assert worker_datadir(settings, {"F_DATADIR": "{conf.name}-data"}, [*cli, "worker"]) == "/configured"
    assert worker_datadir(settings, {}, ["pytest", "-D", "/not-faust"]) == "/configured"
