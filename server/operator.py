"""``authmount operator ...``: maintenance run where the storage and its key are, with the
server stopped (SQLite allows one owner; on PostgreSQL stop every node first).

``rekey --new-key-file PATH``: seal the keyring under a new storage key, written to PATH
(mode 0600, must not exist). The data keys and every sealed value stay as they are; only
the storage key changes. Afterwards point ``storage.key_file`` at PATH (or replace the old
file with it) on every node, and keep the old key only until the new one is backed up.

``generate-root``: create a new root token (the recovery for a lost one) and return it, to
be printed once; like every token it is stored as an HMAC only. Older root tokens stay
valid: revoke them (``vault token revoke -accessor``) if they may be in the wrong hands.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from server.keyring import KEY_BYTES, Keyring, StorageKeyError, key_fingerprint, load_storage_key, write_key_file
from server.settings import Settings
from server.storage import open_storage
from server.tokens.store import TokenStore

__all__ = ["rekey", "generate_root"]


async def rekey(settings: Settings, new_key_file: str) -> str:
    """Rewrap the keyring under a new storage key saved at ``new_key_file``; returns a line
    to print.

    :raises StorageKeyError: no keyring yet, the current key is missing or wrong, or the new
        file exists.
    """
    target = Path(new_key_file)
    if target.exists():
        raise StorageKeyError(f"{target} exists: name a new file for the new storage key")
    storage = await open_storage(settings.storage.as_mapping())
    try:
        if not await Keyring.exists(storage):
            raise StorageKeyError("the storage holds no keyring yet: start the server once first")
        old, _ = load_storage_key(key_file=settings.storage.key_path or None, create=False)
        keyring = await Keyring.open(storage, old)
        new = secrets.token_bytes(KEY_BYTES)
        write_key_file(target, new)
        await keyring.rewrap(storage, new)
    finally:
        await storage.close()
    return (
        f"Storage key rotated: {key_fingerprint(old)} -> {key_fingerprint(new)}, new key in {target}. "
        f"Set storage.key_file to it on every node before starting them."
    )


async def generate_root(settings: Settings) -> str:
    """A new root token in the storage of ``settings`` (the server stopped); returns it.

    :raises StorageKeyError: no keyring yet (the server never started), or the storage key
        is missing or wrong.
    :raises RuntimeError: ``memory`` storage (nothing outlives a process), or the storage
        is in use (SQLite allows one owner: stop the server).
    """
    if settings.storage.type == "memory":
        raise RuntimeError("memory storage keeps nothing between processes: there is no root token to recover")
    storage = await open_storage(settings.storage.as_mapping())
    try:
        if not await Keyring.exists(storage):
            raise StorageKeyError("the storage holds no keyring yet: start the server once first")
        key, _ = load_storage_key(key_file=settings.storage.key_path or None, create=False)
        keyring = await Keyring.open(storage, key)
        tokens = TokenStore(storage, default_lease_ttl=settings.default_lease_ttl,
                            max_lease_ttl=settings.max_lease_ttl, sealer=keyring)
        await tokens.start(sweep=False)
        try:
            return await tokens.create_root()
        finally:
            await tokens.close()
    finally:
        await storage.close()
