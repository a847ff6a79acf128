"""The controller's data dir is private: the dir 0700, the SQLite store (with its -wal
and -shm journal) and the token files 0600.

The store holds node tokens and the event trail, the token files the admin and join
tokens: nobody but the controller's user may read them. Older builds left the dir 0755
and the database 0644 (the process umask), so an existing data dir is tightened at
start, and the start-up log says what was changed.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = [
    "DB_FILE",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "create_private_file",
    "ensure_private_dir",
    "secure_data_dir",
]

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
DB_FILE = "orchestrify.db"
# SQLite's journal in WAL mode; SQLite creates both with the database file's own mode.
DB_JOURNAL_SUFFIXES = ("-wal", "-shm", "-journal")
TOKEN_GLOB = "*.token"


def ensure_private_dir(path: Path) -> bool:
    """Create ``path`` (and its parents) with the dir itself 0700, or tighten it to 0700.

    Returns whether an existing dir was wider (so the caller can say so).
    """
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    # Followed if it is a symlink: a data dir on another disk is still the data dir.
    return _tighten(path.resolve(), PRIVATE_DIR_MODE)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists, so that whatever writes it next
    (SQLite, which copies the database's mode to its journal) never makes it readable."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def secure_data_dir(data_dir: Path) -> list[Path]:
    """Make ``data_dir`` 0700 and its store and token files 0600; create the SQLite file
    0600 when it does not exist yet. Returns (and logs once) what was tightened."""
    tightened: list[Path] = []
    if ensure_private_dir(data_dir):
        tightened.append(data_dir)
    db = data_dir / DB_FILE
    create_private_file(db)
    files = [db, *(db.with_name(db.name + s) for s in DB_JOURNAL_SUFFIXES)]
    files += sorted(data_dir.glob(TOKEN_GLOB))
    for path in files:
        if _tighten(path, PRIVATE_FILE_MODE):
            tightened.append(path)
    if tightened:
        log.warning(
            "tightened permissions in the data dir: it is now 0700 and its store and token "
            "files 0600 (an older build left them readable by other users)",
            extra={"paths": [str(p) for p in tightened]},
        )
    return tightened


def _tighten(path: Path, mode: int) -> bool:
    """chmod ``path`` to ``mode`` if it grants more; never follows a symlink."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False  # not ours to change: the link's target may be anything
    if stat.S_IMODE(st.st_mode) & ~mode == 0:
        return False
    os.chmod(path, mode)
    return True
