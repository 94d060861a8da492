"""Lock files that name their owner (host and process), so concurrent commands leave each other's live work alone.

A lock whose owner has died (killed, rebooted) is taken over: only a process on this host
that still runs, or one on another host (which cannot be checked), keeps its lock.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def process_gone(host: str, pid: int) -> bool:
    """True only for a process of this host that no longer runs."""
    if host != HOST or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False


def lock_owner(path: str | Path) -> tuple[str, int] | None:
    """(host, pid) written in the lock file, None if there is none (or it is unreadable)."""
    try:
        host, pid = Path(path).read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def acquire(path: str | Path) -> tuple[str, int] | None:
    """Take the lock at `path` for this process; None on success, else the (host, pid) of its live owner."""
    path = Path(path)
    mine = f"{HOST} {os.getpid()}\n"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = lock_owner(path)
            if owner is not None and not process_gone(*owner):
                return owner
            path.unlink(missing_ok=True)  # its owner died: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(mine)
        return None
    return lock_owner(path) or (HOST, -1)


def release(path: str | Path) -> None:
    """Remove the lock at `path` if this process holds it."""
    if lock_owner(path) == (HOST, os.getpid()):
        Path(path).unlink(missing_ok=True)
