"""What every page of the status page shares: its templates, its answers (pages, error
pages, redirects), the sign-in check, forms with their CSRF token, and the live poll.

The page modules (``routes``: sign-in, fleet, services; ``jobs``; ``alerts``) add their
routes to their own routers; ``orchestrify.controller.ui`` puts them together, with the
static files and the catch-all 404 last.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote

import jinja2
from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from orchestrify import clock
from orchestrify.controller.deps import ControllerState
from orchestrify.controller.ui.services import time_text
from orchestrify.controller.ui.session import (
    LOGIN_PATH,
    SESSION_COOKIE,
    LoginLimiter,
    Session,
    SessionSigner,
)
from orchestrify.errors import StoreUnavailable
from orchestrify.store import Store

__all__ = [
    "LIVE_END_HEADER",
    "LIVE_WAIT_S",
    "PAGE_HEADERS",
    "SECURITY_HEADERS",
    "TEMPLATES",
    "VERSION_HEADER",
    "DoneNotice",
    "FormError",
    "UIAccess",
    "act",
    "after_action",
    "checked_form",
    "decode_versions",
    "done_notice",
    "encode_versions",
    "error_page",
    "first_error",
    "html_page",
    "live_poll",
    "read_form",
    "redirect",
    "safe_next",
    "signed_form",
    "to_login",
    "ui_access",
    "unix_now",
]

HERE = Path(__file__).resolve().parent
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    # Every template, fragment and string escaped: nothing a node, a service or a
    # request names can become markup.
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not ""
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,  # the package's files do not change under a running controller
)

# Every UI answer: scripts and styles from this origin only (so no inline script can
# run, whatever gets into a page), never framed, types as declared.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Pages carry a session's CSRF token and the fleet's state: never kept by a cache.
PAGE_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}

LIVE_WAIT_S = 5.0
"""Longest a live poll waits for a change, seconds: the table is re-rendered at least
this often, so the heartbeat ages move."""
LIVE_WAIT_MAX_S = 25.0  # never longer, whatever LIVE_WAIT_S is set to (proxies' timeouts)
# Every live answer's versions (the fleet's and the services pages'): the name is the
# fleet's, which came first.
VERSION_HEADER = "X-Orchestrify-Fleet-Version"
# On a live answer: what the page shows is final (a finished job), so its script stops
# polling; the page's data-final says so in words.
LIVE_END_HEADER = "X-Orchestrify-Live-End"
# One to eight versions, as the pages' live polls send them back.
_VERSION = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20}){0,7}")

FORM_MAX_BYTES = 16_384  # a sign-in or a button's form is well under 1 KiB
FORM_MAX_FIELDS = 16
# Where a sign-in may send the browser on: a path of this page, never another site
# ("//host", "/\\host" and "https://..." all fail it).
_NEXT = re.compile(r"/ui/[A-Za-z0-9._~/?=&%+-]{0,500}")


@dataclass
class UIAccess:
    """The sign-in state of one running app: its signer (keyed by this run's admin
    token) and its limit on wrong tokens."""

    owner: ControllerState
    signer: SessionSigner
    limiter: LoginLimiter
    lifetime_s: int
    secure: bool

    def session(self, request: Request) -> Session | None:
        return self.signer.verify(request.cookies.get(SESSION_COOKIE), now=unix_now())


def ui_access(request: Request) -> UIAccess:
    """This app's ``UIAccess``, made with the state of its current run (the admin token
    is known only once the app has started)."""
    state: ControllerState = request.app.state.controller
    found: UIAccess | None = getattr(request.app.state, "ui", None)
    if found is None or found.owner is not state:
        found = UIAccess(
            owner=state,
            signer=SessionSigner(state.admin_token),
            limiter=LoginLimiter(),
            lifetime_s=state.settings.ui_session_s,
            secure=state.settings.tls,
        )
        request.app.state.ui = found
    return found


def unix_now() -> float:
    return clock.utcnow().timestamp()


# --- answers ---------------------------------------------------------------------------
def html_page(
    template: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    body = TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def error_page(
    status: int,
    message: str,
    *,
    signed_in: bool = True,
    headers: Mapping[str, str] | None = None,
    back: tuple[str, str] | None = None,
) -> HTMLResponse:
    """The error page; ``back``: the link (path, words) back to where the user was."""
    titles = {
        400: "The form could not be read",
        401: "Not signed in",
        403: "Refused",
        404: "Not found",
        405: "Not allowed here",
        409: "Not possible now",
        413: "Too large",
        415: "Not a form",
        422: "Not a valid value",
        426: "Protocol version not served",
        429: "Too many tries",
        500: "Internal error",
        503: "The controller cannot answer now",
    }
    return html_page(
        "error.html",
        status=status,
        headers=headers,
        title=titles.get(status, "Error"),
        code=status,
        message=message,
        signed_in=signed_in,
        back=back,
    )


_T = TypeVar("_T")
# An action's event, named in the page's ``done`` parameter after the action: digits only.
_EVENT_ID = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class DoneNotice:
    """The event an action wrote, as the page it returns to shows it at the top."""

    id: int
    message: str
    outcome: str
    time_text: str


def act(store: Store, call: Callable[[], _T], *, action: str) -> tuple[_T, int | None]:
    """``call()`` (a store write, run in this worker thread) and the id of the event it
    wrote for ``action`` (None if it wrote none): what the page then shows as done."""
    with store.capturing_events() as seen:
        result = call()
    return result, next((e.id for e in seen if e.action == action), None)


def after_action(page: str, event_id: int | None) -> RedirectResponse:
    """Back to ``page`` after an action, naming the event it wrote (shown at the top)."""
    return redirect(page if event_id is None else f"{page}?done={event_id}")


async def done_notice(request: Request, state: ControllerState) -> DoneNotice | None:
    """The event named by the page's ``done`` parameter (an action's own, given by
    ``after_action``), or None: none named, not a number, gone, or the store not
    readable now (the page shows without it)."""
    text = request.query_params.get("done")
    if text is None or _EVENT_ID.fullmatch(text) is None:
        return None
    try:
        event = await asyncio.to_thread(state.store.get_event, int(text))
    except StoreUnavailable:
        return None
    if event is None:
        return None
    return DoneNotice(
        id=event.id,
        message=event.message,
        outcome=event.outcome or "info",
        time_text=time_text(event.time),
    )


def redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=PAGE_HEADERS)


def to_login(next_path: str = "/ui/") -> RedirectResponse:
    return redirect(f"{LOGIN_PATH}?next={quote(next_path, safe='/')}")


def safe_next(value: str | None) -> str | None:
    if value and _NEXT.fullmatch(value) and "//" not in value and "/.." not in value:
        return value
    return None


class FormError(Exception):
    """A form that cannot be read: its status and what to tell the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request, *, fields: frozenset[str]) -> dict[str, str]:
    """The URL-encoded form of a POST: the ``fields`` it gives (others ignored), read up
    to ``FORM_MAX_BYTES``. ``FormError`` when it is not such a form, too large, not
    UTF-8, or gives a field twice."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BYTES:
            raise FormError(413, f"The form is larger than {FORM_MAX_BYTES} bytes.")
    if kind != "application/x-www-form-urlencoded":
        if not kind and not body:
            return {}  # no form at all: every field is missing
        raise FormError(415, "Send the page's form (application/x-www-form-urlencoded).")
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            max_num_fields=FORM_MAX_FIELDS,
            encoding="utf-8",
            errors="strict",
        )
    except ValueError as exc:  # UnicodeDecodeError too
        raise FormError(400, "The form is not URL-encoded UTF-8 text.") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name not in fields:
            continue
        if name in form:
            raise FormError(400, f"The form gives the field {name!r} more than once.")
        form[name] = value
    return form


# --- sign-in ---------------------------------------------------------------------------
async def signed_form(
    request: Request, access: UIAccess, session: Session, *, fields: frozenset[str]
) -> dict[str, str] | HTMLResponse:
    """The POST's form (``fields`` and its ``csrf``) when it carries this session's CSRF
    token; else the error page to answer (nothing has been done)."""
    try:
        form = await read_form(request, fields=fields | {"csrf"})
    except FormError as exc:
        return error_page(exc.status, exc.message)
    if not access.signer.csrf_ok(session, form.get("csrf")):
        return error_page(
            403,
            "Refused: the form's CSRF token is missing or wrong, so nothing was done. "
            "Load the page again and use its buttons.",
        )
    return form


async def checked_form(request: Request, access: UIAccess, session: Session) -> HTMLResponse | None:
    """None when the POST's form carries this session's CSRF token; else the error page
    to answer (nothing has been done)."""
    form = await signed_form(request, access, session, fields=frozenset())
    return form if isinstance(form, HTMLResponse) else None


def encode_versions(versions: tuple[int, ...]) -> str:
    return "-".join(str(v) for v in versions)


def decode_versions(text: str | None) -> tuple[int, ...] | None:
    if text is None or _VERSION.fullmatch(text) is None:
        return None  # none, or not one of ours: answered at once
    return tuple(int(part) for part in text.split("-"))


async def live_poll(
    request: Request,
    kinds: tuple[str, ...],
    render: Callable[[ControllerState, tuple[int, ...], str], Awaitable[str | None]],
) -> Response:
    """A live poll: ``render``'s fragment once any of ``kinds`` has moved past the
    versions in ``v`` (at once when ``v`` is not the current one), or after
    ``LIVE_WAIT_S``; the new versions in ``VERSION_HEADER``. 401 without a session (the
    page then goes to the sign-in), 404 when ``render`` finds nothing to show. Every
    live page's poll: ``render`` is given the feed's versions and the session's CSRF
    token (for the forms in the fragment)."""
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return error_page(401, "Your sign-in has ended: sign in again.", signed_in=False)
    state = access.owner
    since = decode_versions(request.query_params.get("v"))
    if since is not None and len(since) != len(kinds):
        since = None
    wait = min(LIVE_WAIT_S, LIVE_WAIT_MAX_S)
    versions = await state.feed.wait_any(kinds, since, wait)
    if state.feed.closed:
        return error_page(503, "The controller is shutting down.", headers={"Retry-After": "2"})
    try:
        body = await render(state, versions, access.signer.csrf(session))
    except StoreUnavailable as exc:
        return error_page(503, f"The store cannot be read now ({exc}).")
    if body is None:
        return error_page(404, "There is no such service (it may have been deleted).")
    return HTMLResponse(body, headers={**PAGE_HEADERS, VERSION_HEADER: encode_versions(versions)})


def first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors()
        if found:
            return str(found[0].get("msg", exc))
    return str(exc)
