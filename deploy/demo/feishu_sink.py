"""Demo webhook receiver for compose.yaml: answers every Feishu Flow webhook POST like Feishu does (code 0) and
prints one line per delivered notification. Not for production: it accepts anything on port 8080."""

from __future__ import annotations

import json

from aiohttp import web


async def receive(request: web.Request) -> web.Response:
    body = await request.json()
    message = body.get("message", {}) if isinstance(body, dict) else {}
    print(f"[feishu-sink] delivered to user {body.get('user_id')}: {json.dumps(message, ensure_ascii=False)[:300]}",
          flush=True)
    return web.json_response({"code": 0, "msg": "success"})


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


app = web.Application()
app.router.add_post("/flow/api/trigger-webhook/{token}", receive)
app.router.add_get("/health", health)

if __name__ == "__main__":
    web.run_app(app, host="0.0.0.0", port=8080, access_log=None)
