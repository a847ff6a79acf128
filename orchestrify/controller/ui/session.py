"""Sign-in to the web status page: signed session cookies, CSRF tokens, and a limit on
wrong admin tokens per client address.

Stateless on purpose: a session is a random id and an expiry, signed with HMAC-SHA256
under a key derived from the admin token. Nothing is stored, so any controller sharing
the token accepts the cookie, and a new admin token (a restart with another one) ends
every session at once. The price: signing out clears the browser's cookie but cannot
revoke a copy of it before its expiry (``ui_session_s``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections import deque
from dataclasses import dataclass

__all__ = [
    "LOGIN_CSRF_COOKIE",
    "SESSION_COOKIE",
    "LoginLimiter",
    "Session",
    "SessionSigner",
    "clear_cookie",
    "set_cookie",
]

SESSION_COOKIE = "orchestrify_session"
LOGIN_CSRF_COOKIE = "orchestrify_csrf"
SESSION_PATH = "/ui"
LOGIN_PATH = "/ui/login"
KEY_LABEL = b"orchestrify-ui-session-v1"

# A session cookie is "<id>.<expiry>.<signature>": url-safe id, unix seconds, hex HMAC.
# Anything longer or of another shape is refused before any HMAC is computed.
_SESSION_VALUE = re.compile(r"([A-Za-z0-9_-]{16,64})\.([0-9]{1,12})\.([0-9a-f]{64})")
_LOGIN_CSRF_VALUE = re.compile(r"[A-Za-z0-9_-]{32,64}")


@dataclass(frozen=True)
class Session:
    """A signed-in browser: its random id and when its sign-in ends (unix seconds)."""

    id: str
    expires: int


class SessionSigner:
    """Issues and checks session cookies and the CSRF tokens of signed-in forms, under
    a key derived from the admin token (never the token itself: a leaked signature
    tells nothing of it)."""

    def __init__(self, admin_token: str) -> None:
        self._key = hmac.new(
            admin_token.encode("utf-8", "surrogatepass"), KEY_LABEL, hashlib.sha256
        ).digest()

    def _sign(self, message: str) -> str:
        return hmac.new(self._key, message.encode("ascii"), hashlib.sha256).hexdigest()

    def issue(self, *, now: float, lifetime_s: int) -> tuple[Session, str]:
        """A new session lasting ``lifetime_s`` from ``now``, and its cookie value."""
        session = Session(id=secrets.token_urlsafe(24), expires=int(now) + lifetime_s)
        payload = f"{session.id}.{session.expires}"
        return session, f"{payload}.{self._sign(payload)}"

    def verify(self, value: str | None, *, now: float) -> Session | None:
        """The session a cookie value carries; None when it is missing, malformed,
        signed under another key, or expired."""
        if not value:
            return None
        match = _SESSION_VALUE.fullmatch(value)
        if match is None:
            return None
        sid, expires, signature = match.groups()
        if not hmac.compare_digest(signature, self._sign(f"{sid}.{expires}")):
            return None
        if int(expires) <= now:
            return None
        return Session(id=sid, expires=int(expires))

    def csrf(self, session: Session) -> str:
        """The CSRF token every form of this session carries (hex)."""
        return self._sign(f"csrf:{session.id}")

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        """Whether ``given`` is this session's CSRF token (constant time)."""
        if not given:
            return False
        return hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), self.csrf(session).encode("ascii")
        )


def new_login_csrf() -> str:
    """The login form's double-submit token (the cookie and the form's field)."""
    return secrets.token_urlsafe(32)


def login_csrf_ok(cookie: str | None, given: str | None) -> bool:
    """Whether the login form's ``csrf`` field matches its cookie (constant time)."""
    if not cookie or not given or _LOGIN_CSRF_VALUE.fullmatch(cookie) is None:
        return False
    return hmac.compare_digest(cookie.encode("ascii"), given.encode("utf-8", "surrogatepass"))


def usable_login_csrf(cookie: str | None) -> str | None:
    """The login CSRF cookie's value when it is one this controller could have set
    (kept, so two open login tabs both work); None otherwise."""
    if cookie and _LOGIN_CSRF_VALUE.fullmatch(cookie):
        return cookie
    return None


def set_cookie(name: str, value: str, *, path: str, max_age: int | None, secure: bool) -> str:
    """A ``Set-Cookie`` header value: HttpOnly and SameSite=Strict always, Secure when
    the controller serves HTTPS (a browser drops a Secure cookie sent over plain HTTP).
    ``max_age`` None: a cookie that ends with the browser session."""
    parts = [f"{name}={value}", f"Path={path}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    parts += ["HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def clear_cookie(name: str, *, path: str, secure: bool) -> str:
    """A ``Set-Cookie`` header value that removes cookie ``name`` at ``path``."""
    return set_cookie(name, "", path=path, max_age=0, secure=secure)


class LoginLimiter:
    """Wrong admin tokens per client address: after ``tries`` within ``window_s``
    seconds, sign-ins from that address are refused, without checking the token, until
    the oldest of them leaves the window. Addresses are forgotten when their window
    passes; at most ``max_addresses`` are kept (the oldest dropped first), so a flood
    from many addresses cannot grow it without end."""

    def __init__(
        self, *, tries: int = 5, window_s: float = 60.0, max_addresses: int = 10_000
    ) -> None:
        self.tries = tries
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._wrong: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._wrong.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._wrong[address]
            return None
        return times

    def retry_after(self, address: str, *, now: float) -> int | None:
        """Whole seconds until ``address`` may try again; None: it may try now."""
        times = self._recent(address, now)
        if times is None or len(times) < self.tries:
            return None
        return max(1, math.ceil(times[-self.tries] + self.window_s - now))

    def wrong(self, address: str, *, now: float) -> None:
        """Count one wrong token from ``address``."""
        times = self._recent(address, now)
        if times is None:
            if len(self._wrong) >= self.max_addresses:
                del self._wrong[next(iter(self._wrong))]
            times = self._wrong[address] = deque(maxlen=self.tries)
        times.append(now)

    def right(self, address: str) -> None:
        """A right token from ``address``: its count starts again."""
        self._wrong.pop(address, None)
