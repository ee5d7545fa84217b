"""Snapshots of the storage: taken through the API by a running server
(``GET sys/storage/raft/snapshot``, what ``vault operator raft snapshot save`` reads), restored
with every server stopped (``authmount operator restore``), into either engine.

A snapshot is a gzipped tar, as Vault's are, holding:

- ``meta.json``: the format and its version, when and by which version it was taken, the
  cluster id, the engine it came from, the number of rows;
- ``state.jsonl``: one row a line, ``[key, value]``, in key order, the values as stored (every
  secret in them sealed: a snapshot is no more a credential than the storage is);
- ``SHA256SUMS``: the SHA-256 of the two files above;
- ``SHA256SUMS.sealed``: ``SHA256SUMS`` sealed by the keyring (the Vault CLI checks that this
  last file is there and not empty, and refuses a snapshot cut short).

A restore checks everything before it writes anything: every member, both sums, that the
storage key opens the snapshot's keyring and that the sealed sums open with it and match (so
a snapshot changed after it was taken, or one taken under another storage key, is refused),
every line, key and the order. Then it replaces the whole storage in one transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
import tempfile
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from plugin.storage import check_key
from server.keyring import KEYRING_KEY, Keyring, SealError, StorageKeyError, load_storage_key
from server.nodes import STALE_AFTER, live_rows
from server.settings import Settings
from server.storage import Engine, open_storage
from server.storage.sqlite import replace_rows as sqlite_replace_rows
from server.sys.status import REPORTED_VERSION

__all__ = ["FORMAT", "SnapshotError", "take", "chunks", "read", "restore", "Snapshot"]

FORMAT = "authmount-snapshot"
FORMAT_VERSION = 1
SEAL_CONTEXT = "snapshot/SHA256SUMS"
MEMBERS = ("meta.json", "state.jsonl", "SHA256SUMS", "SHA256SUMS.sealed")
#: A snapshot up to this size stays in memory while it is built; a larger one goes to a temporary file.
SPOOL_BYTES = 32 << 20
CHUNK = 64 << 10


class SnapshotError(ValueError):
    """A snapshot file that cannot be restored; the message names the failing check."""


def _sums(meta: bytes, state_digest: str) -> bytes:
    return f"{hashlib.sha256(meta).hexdigest()}  meta.json\n{state_digest}  state.jsonl\n".encode()


def _member(tar: tarfile.TarFile, name: str, data: IO[bytes], size: int, now: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(now), 0o600
    tar.addfile(info, data)


async def take(storage: Engine, keyring: Keyring, *, cluster_id: str, version: str, engine: str) -> IO[bytes]:
    """A snapshot of ``storage`` as a file positioned at its start (in memory up to
    ``SPOOL_BYTES``). The rows come from one consistent read while writes go on."""
    state: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (returned)
    digest = hashlib.sha256()

    def write(key: str, value: bytes) -> None:
        line = orjson.dumps([key, orjson.Fragment(value)]) + b"\n"
        state.write(line)
        digest.update(line)

    count = await storage.export_rows(write)
    now = time.time()
    meta = orjson.dumps({"format": FORMAT, "version": FORMAT_VERSION, "created": now, "authmount_version": version,
                         "cluster_id": cluster_id, "storage_type": engine, "keys": count}, option=orjson.OPT_INDENT_2)
    sums = _sums(meta, digest.hexdigest())
    sealed = keyring.seal(sums, SEAL_CONTEXT).encode()
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (returned)

    def pack() -> None:
        size = state.tell()
        state.seek(0)
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            _member(tar, "meta.json", io.BytesIO(meta), len(meta), now)
            _member(tar, "state.jsonl", state, size, now)
            _member(tar, "SHA256SUMS", io.BytesIO(sums), len(sums), now)
            _member(tar, "SHA256SUMS.sealed", io.BytesIO(sealed), len(sealed), now)
        state.close()
        out.seek(0)

    try:
        await asyncio.to_thread(pack)
    except BaseException:
        out.close()
        raise
    return out


async def chunks(snapshot: IO[bytes]) -> AsyncGenerator[bytes, None]:
    """The snapshot's bytes a chunk at a time; closes the file at the end (or when left)."""
    try:
        while chunk := snapshot.read(CHUNK):
            yield chunk
    finally:
        snapshot.close()


# -- restore ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Snapshot:
    """A snapshot file checked whole: its ``meta`` and its rows (read again from the file)."""

    meta: dict[str, Any]
    state: IO[bytes]

    def rows(self) -> Iterator[tuple[str, bytes]]:
        self.state.seek(0)
        for line in self.state:
            key, value = orjson.loads(line)
            yield key, orjson.dumps(value)


def _row(line: bytes, number: int) -> tuple[str, Any]:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"state.jsonl line {number}: not JSON ({exc})") from None
    if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)):
        raise SnapshotError(f"state.jsonl line {number}: not a [key, value] pair")
    try:
        check_key(row[0])
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"state.jsonl line {number}: {exc}") from None
    return row[0], row[1]


def read(path: Path, storage_key: bytes) -> Snapshot:
    """Check the snapshot at ``path`` whole (see the module docstring).

    :raises SnapshotError: naming the first check that failed.
    """
    try:
        tar = tarfile.open(path, mode="r:gz")
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise SnapshotError(f"{path}: not a snapshot (a gzipped tar): {exc}") from None
    state: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (kept by the Snapshot)
    try:
        with tar:
            found: dict[str, bytes] = {}
            digest = hashlib.sha256()
            try:
                for info in tar:
                    if info.name not in MEMBERS or info.name in found or not info.isfile():
                        raise SnapshotError(f"{path}: unexpected member {info.name!r}")
                    member = tar.extractfile(info)
                    assert member is not None
                    if info.name == "state.jsonl":
                        while block := member.read(CHUNK):
                            state.write(block)
                            digest.update(block)
                        found[info.name] = b""
                    else:
                        found[info.name] = member.read(1 << 20)
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise SnapshotError(f"{path}: cut short or damaged: {exc}") from None
        missing = [name for name in MEMBERS if name not in found]
        if missing:
            raise SnapshotError(f"{path}: incomplete snapshot, missing {', '.join(missing)}")
        sums = _sums(found["meta.json"], digest.hexdigest())
        if sums != found["SHA256SUMS"]:
            raise SnapshotError(f"{path}: SHA256SUMS does not match meta.json and state.jsonl (changed or damaged)")
        try:
            meta = orjson.loads(found["meta.json"])
        except orjson.JSONDecodeError as exc:
            raise SnapshotError(f"{path}: meta.json is not JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SnapshotError(f"{path}: not an authmount snapshot (meta.json format is not {FORMAT!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise SnapshotError(f"{path}: snapshot format version {meta.get('version')!r}; this authmount reads "
                                f"version {FORMAT_VERSION}")
        _check_version(meta, path)
        ring_rows = _check_rows(state, path, meta)
        _check_seal(ring_rows, storage_key, found["SHA256SUMS.sealed"], sums, path)
    except BaseException:
        state.close()
        raise
    return Snapshot(meta, state)


def _release(version: Any) -> tuple[int, ...]:
    """authmount's own release in a reported version (``2.7.2+authmount.0.1.0`` -> (0, 1, 0))."""
    text = str(version).rpartition("+authmount.")[2]
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return ()


def _check_version(meta: dict[str, Any], path: Path) -> None:
    """A snapshot taken by a newer authmount may hold rows this one does not know how to read
    (docs/operations.md, "Upgrade"): restoring it would be a downgrade."""
    theirs, ours = _release(meta.get("authmount_version")), _release(REPORTED_VERSION)
    if not theirs:
        raise SnapshotError(f"{path}: meta.json names no authmount version ({meta.get('authmount_version')!r})")
    if theirs > ours:
        raise SnapshotError(f"{path}: taken by authmount {meta.get('authmount_version')}, newer than this "
                            f"{REPORTED_VERSION}: restore it with that version or a later one")


def _check_rows(state: IO[bytes], path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Every line a [key, value] pair, keys in strictly increasing order, as many as meta says;
    the keyring's rows."""
    state.seek(0)
    previous, count, ring = "", 0, {}
    for count, line in enumerate(state, start=1):  # noqa: B007 (count read after the loop)
        key, value = _row(line, count)
        if key <= previous:
            raise SnapshotError(f"state.jsonl line {count}: key {key!r} out of order or repeated")
        previous = key
        if key == KEYRING_KEY:
            ring[key] = value
    if count != meta.get("keys"):
        raise SnapshotError(f"{path}: state.jsonl holds {count} rows, meta.json says {meta.get('keys')!r}")
    return ring


def _check_seal(ring_rows: dict[str, Any], storage_key: bytes, sealed: bytes, sums: bytes, path: Path) -> None:
    if KEYRING_KEY not in ring_rows:
        raise SnapshotError(f"{path}: the snapshot holds no keyring ({KEYRING_KEY})")
    try:
        keyring = Keyring.from_stored(storage_key, ring_rows[KEYRING_KEY])
    except StorageKeyError as exc:
        raise SnapshotError(f"{path}: the storage key does not open this snapshot's keyring ({exc}); "
                            f"restore with the key that was in use when it was taken") from None
    try:
        opened = keyring.unseal(sealed.decode(errors="replace"), SEAL_CONTEXT)
    except SealError as exc:
        raise SnapshotError(f"{path}: SHA256SUMS.sealed does not open with the snapshot's keyring ({exc})") from None
    if opened != sums:
        raise SnapshotError(f"{path}: SHA256SUMS.sealed does not match SHA256SUMS (changed after it was taken)")


def restore(settings: Settings, path: Path, *, check_only: bool = False) -> str:
    """Replace the whole storage of ``settings`` with the snapshot at ``path``, every server
    stopped; a line to print. ``check_only``: check the snapshot whole and write nothing (a
    backup tested while the server runs).

    :raises SnapshotError: the snapshot fails a check (nothing was written).
    :raises StorageKeyError: the storage key is missing.
    :raises RuntimeError: memory storage, or a server is using the storage.
    """
    stype = settings.storage.type
    if stype == "memory" and not check_only:
        raise RuntimeError("memory storage holds nothing once its server stops: restore into sqlite or postgres")
    key, _ = load_storage_key(key_file=settings.storage.key_path or None, create=False)
    snapshot = read(path, key)
    try:
        meta = snapshot.meta
        taken = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(meta.get("created", 0))))
        origin = (f"taken {taken} by authmount {meta.get('authmount_version')} on {meta.get('storage_type')}, "
                  f"cluster {meta.get('cluster_id')}")
        if check_only:
            return (f"{path}: a sound snapshot of {meta.get('keys')} rows ({origin}), sealed under this storage "
                    f"key; nothing was written.")
        if stype == "sqlite":
            count = sqlite_replace_rows(settings.storage.path, snapshot.rows())
        else:
            count = asyncio.run(_restore_postgres(settings, snapshot))
    finally:
        snapshot.state.close()
    return (f"Restored {count} rows from {path} ({origin}) into {stype} storage. "
            f"Tokens issued after it was taken are gone; start the server.")


async def _restore_postgres(settings: Settings, snapshot: Snapshot) -> int:
    from server.storage.postgres import PostgresStorage

    storage = await open_storage(settings.storage.as_mapping())
    try:
        assert isinstance(storage, PostgresStorage)
        live = sorted(str(row.get("api_address", "")) for row in await live_rows(storage))
        if live:
            raise RuntimeError(f"nodes are serving this storage ({', '.join(live)}): stop every node first "
                               f"(a node killed less than {STALE_AFTER:.0f} s ago still counts: wait)")
        return await storage.replace_rows(snapshot.rows())
    finally:
        await storage.close()
