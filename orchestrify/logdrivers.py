"""Docker logging drivers a service may choose, and the options each one takes.

A service's ``log_driver`` and ``log_opts`` become its containers' ``--log-driver`` and
``--log-opt``s. They are checked here, at the API's border, against the options the
Docker engine's own validators accept (moby's ``ValidateLogOpt`` of each driver, as of
Docker 20.10): a typo is a 422 naming the option when the service is created, not a
replica that fails to start on every node later.

The default stays ``json-file`` with rotation (the agent's ``--log-max-size`` and
``--log-max-file`` unless the service sets ``max-size``/``max-file`` itself). Docker
keeps what ``json-file``, ``local`` and ``journald`` write where ``docker logs`` can
read it back; ``syslog``, ``gelf`` and ``fluentd`` send it elsewhere (``READABLE``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Literal

__all__ = [
    "DEFAULT_LOG_DRIVER",
    "LOG_DRIVERS",
    "LOG_OPTS_MAX",
    "READABLE",
    "LogDriver",
    "log_opts_problem",
]

LogDriver = Literal["json-file", "local", "journald", "syslog", "gelf", "fluentd"]
DEFAULT_LOG_DRIVER: Final = "json-file"

# Options every driver takes: how a container's output reaches the driver.
_DELIVERY = ("mode", "max-buffer-size")
# Docker's extra attributes: which labels and env of the container go with each line.
_ATTRS = ("labels", "labels-regex", "env", "env-regex")
# Docker 20.10's "dual logging": a local copy that `docker logs` reads for drivers that
# cannot be read back.
_CACHE = ("cache-disabled", "cache-max-size", "cache-max-file", "cache-compress")

LOG_DRIVERS: Final[Mapping[str, frozenset[str]]] = {
    "json-file": frozenset(("max-size", "max-file", "compress", "tag", *_ATTRS, *_DELIVERY)),
    "local": frozenset(("max-size", "max-file", "compress", *_DELIVERY)),
    "journald": frozenset(("tag", *_ATTRS, *_DELIVERY, *_CACHE)),
    "syslog": frozenset(
        (
            "syslog-address",
            "syslog-facility",
            "syslog-format",
            "syslog-tls-ca-cert",
            "syslog-tls-cert",
            "syslog-tls-key",
            "syslog-tls-skip-verify",
            "tag",
            *_ATTRS,
            *_DELIVERY,
            *_CACHE,
        )
    ),
    "gelf": frozenset(
        (
            "gelf-address",
            "gelf-compression-type",
            "gelf-compression-level",
            "gelf-tcp-max-reconnect",
            "gelf-tcp-reconnect-delay",
            "tag",
            *_ATTRS,
            *_DELIVERY,
            *_CACHE,
        )
    ),
    "fluentd": frozenset(
        (
            "fluentd-address",
            "fluentd-async",
            "fluentd-async-connect",
            "fluentd-buffer-limit",
            "fluentd-max-retries",
            "fluentd-retry-wait",
            "fluentd-sub-second-precision",
            "fluentd-request-ack",
            "tag",
            *_ATTRS,
            *_DELIVERY,
            *_CACHE,
        )
    ),
}

READABLE: Final = frozenset({"json-file", "local", "journald"})
"""Drivers whose logs Docker reads back (``docker logs``; ``orchestrify service logs``)."""

LOG_OPTS_MAX = 32
"""Options per service: far more than any driver has."""

_VALUE_MAX = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The address schemes each driver's validator accepts.
_ADDRESS_SCHEMES: Final[Mapping[str, tuple[str, ...]]] = {
    "gelf-address": ("udp://", "tcp://"),
    "syslog-address": ("udp://", "tcp://", "tcp+tls://", "unix://", "unixgram://"),
    "fluentd-address": ("tcp://", "unix://", ""),
}
_CHOICES: Final[Mapping[str, frozenset[str]]] = {
    "mode": frozenset({"blocking", "non-blocking"}),
    "gelf-compression-type": frozenset({"gzip", "zlib", "none"}),
    "syslog-format": frozenset({"", "rfc5424", "rfc5424micro", "rfc3164"}),
    "syslog-facility": frozenset(
        {
            "kern",
            "user",
            "mail",
            "daemon",
            "auth",
            "syslog",
            "lpr",
            "news",
            "uucp",
            "cron",
            "authpriv",
            "ftp",
            *(f"local{n}" for n in range(8)),
            *(str(n) for n in range(24)),  # the facility's number works too
        }
    ),
}


def log_opts_problem(driver: str, opts: Mapping[str, str]) -> str | None:
    """What is wrong with ``opts`` for ``driver`` (None: nothing), naming the option."""
    known = LOG_DRIVERS.get(driver)
    if known is None:
        return f"unknown log driver {driver!r}; one of {', '.join(LOG_DRIVERS)}"
    if len(opts) > LOG_OPTS_MAX:
        return f"at most {LOG_OPTS_MAX} log options"
    for key, value in opts.items():
        if key not in known:
            return (
                f"unknown option {key!r} for log driver {driver}; "
                f"it takes {', '.join(sorted(known))}"
            )
        if len(value) > _VALUE_MAX or _CONTROL.search(value):
            return f"option {key!r}: at most {_VALUE_MAX} characters, no control characters"
        choices = _CHOICES.get(key)
        if choices is not None and value not in choices:
            return f"option {key!r}: {value!r} is not one of {', '.join(sorted(choices))}"
        schemes = _ADDRESS_SCHEMES.get(key)
        if schemes is not None and not _has_scheme(value, schemes):
            shown = ", ".join(s for s in schemes if s)
            return f"option {key!r}: {value!r} must start with {shown}"
    if "max-buffer-size" in opts and opts.get("mode") != "non-blocking":
        return "option 'max-buffer-size' needs mode=non-blocking"
    level = opts.get("gelf-compression-level")
    if level is not None and level not in {str(n) for n in range(-1, 10)}:
        return f"option 'gelf-compression-level': {level!r} is not an integer from -1 to 9"
    if driver == "gelf" and "gelf-address" not in opts:
        return "log driver gelf needs the option gelf-address, e.g. udp://HOST:12201"
    return None


def _has_scheme(value: str, schemes: tuple[str, ...]) -> bool:
    if "" in schemes and "://" not in value:
        return bool(value)  # fluentd takes a plain HOST:PORT too
    return any(s and value.startswith(s) and len(value) > len(s) for s in schemes)
