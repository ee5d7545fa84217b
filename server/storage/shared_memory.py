"""``storage: memory`` run by ``--workers N``: one SQLite database in shared memory.

A Go server such as OpenBao keeps its in-memory storage in one process and still uses every
core; a Python server uses several cores through several processes, which cannot share a
dict. So with more than one worker the supervisor makes a private directory in
``/dev/shm`` (POSIX shared memory, a tmpfs: nothing reaches a disk; the system temporary
directory where ``/dev/shm`` is missing), the workers share one SQLite database there
exactly as they share a file on disk (``server.storage.sqlite_shared``) but with
``synchronous=OFF`` (there is no disk to wait for), and the supervisor deletes the
directory when it stops. The storage key that seals the secrets lives in the same
directory (mode 0600, directory 0700), so it is gone with the data.

What a user sees is still memory storage: everything is lost when the server stops, and
only this server's processes can read it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time

from server.storage.sqlite_shared import owner_lock

__all__ = ["MEMORY_DIR_ENV", "SHM", "make_dir", "remove_stale", "shared_dir", "db_path", "key_path"]

#: The directory the workers share; set by the supervisor for its workers only.
MEMORY_DIR_ENV = "AUTHMOUNT_MEMORY_DIR"
#: Where the directory is made (when it exists and is writable).
SHM = "/dev/shm"


PREFIX = "authmount-memory-"
#: A directory younger than this is never taken for stale: its server may be starting
#: (between making the directory and taking the owner lock in it).
STALE_AFTER_SECONDS = 60.0


def base_dir() -> str:
    """Where the directories are made: ``/dev/shm``, else the system temporary directory."""
    return SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK | os.X_OK) else tempfile.gettempdir()


def make_dir(base: str | None = None) -> str:
    """A new private directory (mode 0700) for the workers' database, in shared memory."""
    return tempfile.mkdtemp(prefix=PREFIX, dir=base or base_dir())


def remove_stale(base: str | None = None, *, now: float | None = None) -> list[str]:
    """Delete the directories of memory servers that are gone; return their paths.

    A supervisor killed with SIGKILL (the OOM killer, a container runtime) cannot delete
    its directory, and a container that restarts keeps its ``/dev/shm``, so each crash
    would leave its tokens there until shared memory is full. A directory is stale when
    it is this user's, older than ``STALE_AFTER_SECONDS``, and the owner lock of its
    database is free: the supervisor and its workers hold that lock (``flock``) as long as
    any of them runs, in whatever PID namespace, and the kernel drops it when the last one
    dies. Anything else (a held lock, another owner, a symlink, a young directory) is left.
    """
    base = base or base_dir()
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(base) if n.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(base, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or now - info.st_mtime < STALE_AFTER_SECONDS:
            continue
        if _owner_gone(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _owner_gone(directory: str) -> bool:
    """Whether the owner lock of ``directory``'s database is free (``sqlite_shared.owner_lock``
    takes it; a missing lock file is made, and goes with the directory). No server takes
    it again once it is free: only the supervisor that made a directory (and its workers)
    use it, and a new server makes a new one."""
    try:
        os.close(owner_lock(db_path(directory)))
    except (RuntimeError, OSError):  # held by a running server, or not ours to open
        return False
    return True


def shared_dir() -> str | None:
    """The shared directory when this process is a worker of memory storage (its supervisor
    set the variable), else None: outside a worker the variable means nothing."""
    from server.supervisor import WORKER_ENV

    if os.environ.get(WORKER_ENV) is None:
        return None
    return os.environ.get(MEMORY_DIR_ENV) or None


def db_path(directory: str) -> str:
    """The workers' SQLite database in ``directory``."""
    return os.path.join(directory, "authmount.db")


def key_path(directory: str) -> str:
    """The storage key file in ``directory`` (created by the first worker)."""
    return os.path.join(directory, "storage.key")
