"""The web pages: the index and the studio placeholder."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

STUDIO = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>daygen studio</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto">
<h1>daygen studio</h1>
<p>The studio's web interface is not built yet. The API it will use is live:
see <a href="/docs">the API documentation</a>.</p>
<p>Images made without a provider key come from the <strong>offline engine</strong>:
deterministic pictures drawn locally, not an AI model.</p>
</body></html>"""


@router.get("/")
async def index() -> dict:
    return {"name": "daygen", "docs": "/docs", "studio": "/studio", "health": "/healthz", "ready": "/readyz"}


@router.get("/studio", response_class=HTMLResponse)
async def studio() -> str:
    return STUDIO
