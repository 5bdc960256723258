"""The data directory is private: created 0700, and every file a server writes in it 0600.

Why: it holds the cluster's whole state (journal, dumps, the search index) and, once auth is on,
token hashes and the audit log; on a shared machine anyone who can read it reads everything.
A directory that others can enter (an existing one, made by hand or by an older version) is
tightened to 0700 with a warning: the directory is the server's own, and leaving it open is
never what an operator wants from a control plane's data (etcd warns on the same condition).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

log = structlog.get_logger("controlplane.datadir")

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_directory(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700, or tighten it to 0700 if others can enter it."""
    path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, DIRECTORY_MODE)
        log.warning(
            "data_dir_permissions_tightened",
            path=str(path),
            was=oct(mode),
            now=oct(DIRECTORY_MODE),
            why="the data directory holds the cluster's whole state",
        )


def create_private_file(path: Path) -> None:
    """Make sure ``path`` exists with mode 0600 (before a library that creates files 0644 opens it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, FILE_MODE)


def open_private_for_writing(path: Path) -> int:
    """A new or truncated file at ``path``, mode 0600, opened for writing: a raw descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode on O_CREAT
    return fd
