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
import tempfile

__all__ = ["MEMORY_DIR_ENV", "SHM", "make_dir", "shared_dir", "db_path", "key_path"]

#: The directory the workers share; set by the supervisor for its workers only.
MEMORY_DIR_ENV = "AUTHMOUNT_MEMORY_DIR"
#: Where the directory is made (when it exists and is writable).
SHM = "/dev/shm"


def make_dir(base: str | None = None) -> str:
    """A new private directory (mode 0700) for the workers' database, in shared memory."""
    if base is None:
        base = SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK | os.X_OK) else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="authmount-memory-", dir=base)


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
