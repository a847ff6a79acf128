"""The edge's optional JSON access log (``--access-log PATH``): one line per request.

Nginx writes it itself (``log_format orchestrify_json escape=json`` in
``templates/nginx/nginx.conf.j2``, buffered like the telemetry log), so no Python runs on
the request's path. Its fields are named the way Filebeat/Logstash and Promtail users
expect (``ACCESS_LOG_FIELDS``). The path goes into nginx.conf, so it is checked here,
at start, before anything is rendered: nothing from input reaches the config unchecked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["ACCESS_LOG_FIELDS", "NUMERIC_FIELDS", "check_access_log_path"]

# Every line is one JSON object with exactly these keys, in this order.
ACCESS_LOG_FIELDS = (
    "@timestamp",  # ISO 8601 with milliseconds and the host's UTC offset
    "service",
    "replica",  # the replica's id; the upstream address when the config does not know it
    "client_ip",
    "method",
    "uri",  # as the client sent it (percent-encoding kept), query string included
    "protocol",
    "status",
    "bytes_sent",  # bytes of the response body
    "request_time",  # seconds, millisecond resolution
    "upstream_addr",  # strings: "" without an upstream, "a, b" after a retry
    "upstream_status",
    "upstream_response_time",
    "host",
    "user_agent",
    "referer",
    "request_id",  # the X-Request-Id the replica saw and the client got back
)
# JSON numbers; every other field is a JSON string.
NUMERIC_FIELDS = frozenset({"status", "bytes_sent", "request_time"})

# The characters a path Nginx is given may have: no whitespace, control character,
# quote, brace, semicolon, `$` (an Nginx variable), `#` (a comment) or backslash can
# reach nginx.conf this way.
_SAFE_CHAR = re.compile(r"[A-Za-z0-9._+@=,:~/-]")
MAX_PATH_CHARS = 4095  # PATH_MAX less its NUL
_ALLOWED = "letters, digits and . _ - + @ = , : ~ /"


def check_access_log_path(value: str) -> Path:
    """``value`` as a Path, if Nginx can be given it and this user can write it there.

    A ValueError says what is wrong in one line (the path is shown with ``repr``, so a
    control character in it cannot break the line).
    """
    if not value.startswith("/"):
        raise ValueError(f"access log {value!r}: want an absolute path (starting with /)")
    bad = sorted({c for c in value if not _SAFE_CHAR.fullmatch(c)})
    if bad:
        raise ValueError(
            f"access log {value!r} has {', '.join(repr(c) for c in bad)}, which cannot go "
            f"into nginx.conf; use {_ALLOWED}"
        )
    if len(value) > MAX_PATH_CHARS:
        raise ValueError(f"access log path longer than {MAX_PATH_CHARS} characters")
    path = Path(value)
    if value.endswith("/") or path.is_dir():
        raise ValueError(f"access log {value!r} is a directory; name a file in it")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"access log {value!r}: directory {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(
            f"access log {value!r}: directory {str(folder)!r} is not writable by "
            f"uid {os.geteuid()} (Nginx runs as the edge's user)"
        )
    if path.exists() and not (path.is_file() and os.access(path, os.W_OK)):
        raise ValueError(f"access log {value!r} exists and is not a file this user can write")
    return path
