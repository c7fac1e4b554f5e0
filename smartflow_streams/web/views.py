"""Worker web views (placeholder: health only; the operations views come with the web issue)."""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View


def define_views(app: faust.App, runtime: Any) -> None:
    @app.page("/health")
    async def health(self: View, request: Request) -> Response:
        return self.json({"status": "ok"})
