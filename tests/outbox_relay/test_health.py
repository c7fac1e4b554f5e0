"""The relay's /health serves table errors scrubbed (real aiohttp server on 127.0.0.1; the relay's tables are
stand-ins carrying the error text a failed batch records)."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp

import config
from outbox_relay.__main__ import _metrics_server
from outbox_relay.relay import TableStats
from smartflow_streams.cli.embedded import free_port


async def test_health_serves_no_password_or_row_data() -> None:
    port = free_port()
    settings = config.load_settings(relay={"metrics_port": port})
    error = ("OperationalError: (2003, \"Can't connect\") [SQL: SELECT ...] [parameters: ('row-data-91ab',)] "
             "url mysql+aiomysql://relay:s3cretpass@db/x")
    table = SimpleNamespace(route=SimpleNamespace(service_name="notification"), stats=TableStats(errors=1,
                                                                                                last_error=error))
    runner = await _metrics_server(settings, SimpleNamespace(owner="o", topics_ready=True, tables=[table]))
    assert runner is not None
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/health") as resp:
            body = await resp.json()
    finally:
        await runner.cleanup()
    served = body["tables"]["notification"]["last_error"]
    assert served.startswith("OperationalError") and body["tables"]["notification"]["errors"] == 1
    assert "s3cretpass" not in served and "row-data-91ab" not in served
