"""The status page's static files and its 404 for every other path under /ui/: included
after every page's routes (the catch-all would hide any route after it)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from orchestrify.controller.ui.pages import HERE, SECURITY_HEADERS, error_page

__all__ = ["STATIC", "router"]

router = APIRouter(prefix="/ui")

# Static files by name: the only files ever served, whatever a request's path says.
STATIC = {
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
}

# Read once, at import: serving them reads no file.
_STATIC_BODIES = {name: (HERE / "static" / name).read_bytes() for name in STATIC}


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """``ui.js`` and ``ui.css`` from the package (by name from ``STATIC``: a request's
    path never names a file)."""
    media_type = STATIC.get(name)
    if media_type is None:
        return error_page(404, "No such file.", signed_in=False)
    return Response(
        _STATIC_BODIES[name],
        media_type=media_type,
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


@router.get("/{rest:path}")
async def not_found(rest: str) -> Response:
    return error_page(404, "There is no such page.", signed_in=False)
