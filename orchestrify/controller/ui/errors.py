"""The status page's answer to what the app refuses before (or around) the page's own
routes: a method a page does not take (405), a body over ``max_body_bytes`` (413), a
value FastAPI's validation refuses (422), a protocol version it cannot serve (426), an
error escaping a page's route (4xx from ``OrchestrifyError``, 500). Under ``/ui`` the
app's handlers and middlewares answer these with the page's HTML error page (its
security headers, a message naming what was wrong) instead of the API's JSON; every
other path keeps the API's answers as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import HTMLResponse

from orchestrify.controller.ui.pages import error_page

__all__ = ["UI_ROOT", "method_not_allowed", "ui_error", "under_ui"]

UI_ROOT = "/ui"


def under_ui(path: str) -> bool:
    """Whether a request's path is one of the status page's (``/ui``, ``/ui/...``;
    ``/uix`` is not)."""
    return path == UI_ROOT or path.startswith(UI_ROOT + "/")


def ui_error(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """The error page for a refusal made outside the page's routes. Whether the browser
    is signed in is not looked at (a middleware answers some before any session is
    read): the page links both to the sign-in and to the fleet, and either works."""
    return error_page(status, message, signed_in=False, headers=headers)


def method_not_allowed(method: str, allowed: list[str]) -> str:
    """The 405's message: the method refused and those the page takes."""
    takes = ", ".join(allowed) if allowed else "no method"
    return (
        f"This page does not take a {method} request (it takes {takes}): "
        "use the page's links and buttons."
    )
