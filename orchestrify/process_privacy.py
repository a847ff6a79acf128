"""Keep a process's memory and environment from other processes of the same user.

The provisioned edge runs as the same user as its Nginx (so that it can reload it
without privilege, see roles/orchestrify_edge), and Nginx faces untrusted traffic. The
edge holds the admin token in its environment, which any process of the same user could
read from ``/proc/PID/environ`` (or take by attaching a debugger). A process that is not
"dumpable" has its ``/proc/PID`` files owned by root and cannot be ptraced but by root,
so a compromised Nginx worker cannot read the token from it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["PR_GET_DUMPABLE", "PR_SET_DUMPABLE", "forbid_same_user_inspection", "is_dumpable"]

log = logging.getLogger(__name__)

# From <linux/prctl.h>.
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return int(libc.prctl(option, arg, 0, 0, 0))


def forbid_same_user_inspection() -> bool:
    """Make this process non-dumpable; True when it is (Linux), False where there is no
    such thing or the call failed (logged: the process still runs, just less private)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _prctl(PR_SET_DUMPABLE, 0) != 0:
            log.warning("cannot make the process non-dumpable", extra={"errno": ctypes.get_errno()})
            return False
    except (OSError, AttributeError) as exc:
        log.warning("cannot make the process non-dumpable", extra={"error": str(exc)})
        return False
    return True


def is_dumpable() -> bool:
    """Whether other processes of this user may read this one's memory and environment."""
    if not sys.platform.startswith("linux"):
        return True
    return _prctl(PR_GET_DUMPABLE) != 0
