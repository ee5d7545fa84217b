"""Snapshots (``server.snapshot``): taken through ``sys/storage/raft/snapshot`` while the server
runs, checked whole and restored with it stopped (``authmount operator restore``), into SQLite
files here and into PostgreSQL in tests/e2e/test_snapshot_e2e.py (with the real CLI)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import re
import secrets
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from plugin.storage import InMemoryStorage
from server import snapshot, telemetry
from server.app import create_app
from server.http.listverb import make_test_server
from server.keyring import Keyring, load_storage_key
from server.settings import Settings, StorageSettings
from server.snapshot import SnapshotError
from server.storage.sqlite import SQLiteStorage, dump_rows, replace_rows

ROOT = "root-token-for-tests"
KEY = bytes(range(32))


async def _filled(rows: dict[str, Any]) -> tuple[InMemoryStorage, Keyring]:
    storage = InMemoryStorage()
    keyring = await Keyring.open(storage, KEY)
    for key, value in rows.items():
        await storage.put(key, value)
    return storage, keyring


async def _snapshot_bytes(rows: dict[str, Any]) -> tuple[bytes, InMemoryStorage]:
    storage, keyring = await _filled(rows)
    taken = await snapshot.take(storage, keyring, cluster_id="c-1", version="2.7.2+authmount.0.0.1", engine="memory")
    return b"".join([chunk async for chunk in snapshot.chunks(taken)]), storage


def _members(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return {info.name: tar.extractfile(info).read() for info in tar}  # type: ignore[union-attr]


def _pack(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


ROWS = {"auth/jwt/role/ci": {"bound_audiences": ["x"], "n": 1.5}, "sys/policy/ops": {"rules": "path \"a\" {}"},
        "token/id/abc": {"policies": ["default"]}, "zz/ünïcode": {"v": "✓"}}


async def test_a_snapshot_holds_every_row_and_reads_back(tmp_path: Path) -> None:
    """The four members Vault's CLI expects the last of (``SHA256SUMS.sealed``), every row in
    key order as stored, and ``read`` gives them back."""
    blob, storage = await _snapshot_bytes(ROWS)
    members = _members(blob)
    assert list(members) == ["meta.json", "state.jsonl", "SHA256SUMS", "SHA256SUMS.sealed"]
    meta = orjson.loads(members["meta.json"])
    assert {k: meta[k] for k in ("format", "version", "cluster_id", "storage_type", "authmount_version")} == {
        "format": "authmount-snapshot", "version": 1, "cluster_id": "c-1", "storage_type": "memory",
        "authmount_version": "2.7.2+authmount.0.0.1"}
    stored: list[tuple[str, bytes]] = []
    await storage.export_rows(lambda k, v: stored.append((k, v)))
    assert meta["keys"] == len(stored) == len(ROWS) + 2  # the keyring and the fingerprint key
    path = tmp_path / "s.snap"
    path.write_bytes(blob)
    read = await asyncio.to_thread(snapshot.read, path, KEY)
    try:
        assert list(read.rows()) == stored
    finally:
        read.state.close()


def _resealed(members: dict[str, bytes], state: bytes, keyring: Keyring, meta: bytes | None = None) -> dict[str, bytes]:
    """Members with ``state`` (and ``meta``) and sums made again by someone holding the key."""
    meta = meta if meta is not None else members["meta.json"]
    sums = snapshot._sums(meta, hashlib.sha256(state).hexdigest())
    return {"meta.json": meta, "state.jsonl": state, "SHA256SUMS": sums,
            "SHA256SUMS.sealed": keyring.seal(sums, snapshot.SEAL_CONTEXT).encode()}


Tamper = Callable[[dict[str, bytes], Keyring], bytes]


def _changed_value(m: dict[str, bytes], k: Keyring) -> bytes:
    return _pack({**m, "state.jsonl": m["state.jsonl"].replace(b"default", b"root!!!")})


def _changed_with_sums(m: dict[str, bytes], k: Keyring) -> bytes:
    state = m["state.jsonl"].replace(b"default", b"root!!!")
    sums = snapshot._sums(m["meta.json"], hashlib.sha256(state).hexdigest())
    return _pack({**m, "state.jsonl": state, "SHA256SUMS": sums})


def _swapped_lines(m: dict[str, bytes], k: Keyring) -> bytes:
    lines = m["state.jsonl"].splitlines(keepends=True)
    return _pack(_resealed(m, b"".join([lines[1], lines[0], *lines[2:]]), k))


def _repeated_line(m: dict[str, bytes], k: Keyring) -> bytes:
    lines = m["state.jsonl"].splitlines(keepends=True)
    return _pack(_resealed(m, b"".join([*lines, lines[-1]]), k))


def _bad_line(m: dict[str, bytes], k: Keyring) -> bytes:
    return _pack(_resealed(m, m["state.jsonl"] + b'{"not": "a pair"}\n', k))


def _count(m: dict[str, bytes], k: Keyring) -> bytes:
    meta = orjson.loads(m["meta.json"])
    return _pack(_resealed(m, m["state.jsonl"], k, orjson.dumps({**meta, "keys": meta["keys"] + 1})))


def _newer(m: dict[str, bytes], k: Keyring) -> bytes:
    meta = orjson.loads(m["meta.json"])
    return _pack(_resealed(m, m["state.jsonl"], k, orjson.dumps({**meta, "authmount_version": "2.7.2+authmount.99.0.0"})))


def _format(m: dict[str, bytes], k: Keyring) -> bytes:
    meta = orjson.loads(m["meta.json"])
    return _pack(_resealed(m, m["state.jsonl"], k, orjson.dumps({**meta, "version": 2})))


TAMPERED: list[tuple[str, Tamper, str]] = [
    ("not gzip", lambda m, k: b"PK\x03\x04 a zip file", "not a snapshot (a gzipped tar)"),
    ("cut short", lambda m, k: _pack(m)[:-40], "cut short or damaged"),
    ("no sealed sums", lambda m, k: _pack({n: d for n, d in m.items() if n != "SHA256SUMS.sealed"}),
     "incomplete snapshot, missing SHA256SUMS.sealed"),
    ("an extra member", lambda m, k: _pack({**m, "evil.sh": b"rm -rf /"}), "unexpected member 'evil.sh'"),
    ("a value changed", _changed_value, "SHA256SUMS does not match meta.json and state.jsonl"),
    ("a value changed, sums made again", _changed_with_sums, "SHA256SUMS.sealed does not match SHA256SUMS"),
    ("rows out of order", _swapped_lines, "out of order or repeated"),
    ("a row repeated", _repeated_line, "out of order or repeated"),
    ("not a pair", _bad_line, "not a [key, value] pair"),
    ("a row count that differs", _count, "meta.json says"),
    ("a newer format", _format, "snapshot format version 2; this authmount reads version 1"),
    ("a newer authmount", _newer, "taken by authmount 2.7.2+authmount.99.0.0, newer than this"),
]


@pytest.mark.parametrize(("case", "tamper", "message"), TAMPERED, ids=[t[0] for t in TAMPERED])
async def test_a_damaged_or_changed_snapshot_is_refused(tmp_path: Path, case: str, tamper: Tamper,
                                                        message: str) -> None:
    blob, storage = await _snapshot_bytes(ROWS)
    keyring = await Keyring.open(storage, KEY)
    path = tmp_path / "s.snap"
    path.write_bytes(tamper(_members(blob), keyring))
    with pytest.raises(SnapshotError, match=re.escape(message)):
        await asyncio.to_thread(snapshot.read, path, KEY)


async def test_another_storage_key_does_not_open_it(tmp_path: Path) -> None:
    blob, _ = await _snapshot_bytes(ROWS)
    path = tmp_path / "s.snap"
    path.write_bytes(blob)
    with pytest.raises(SnapshotError, match="the storage key does not open this snapshot's keyring"):
        await asyncio.to_thread(snapshot.read, path, secrets.token_bytes(32))


# -- SQLite: a consistent read, an all-or-nothing replace --------------------------------------
def _content(path: Path) -> list[tuple[str, bytes]]:
    rows: list[tuple[str, bytes]] = []
    dump_rows(str(path), lambda k, v: rows.append((k, v)))
    return rows


async def test_sqlite_rows_are_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    """A restore replaces every row in one transaction: an error part-way (here the rows
    themselves) leaves the file as it was; a server on the file refuses the restore."""
    path = tmp_path / "a.db"
    store = await SQLiteStorage.open(str(path))
    await store.put_many([("a", {"v": 1}), ("b", {"v": 2})])
    with pytest.raises(RuntimeError, match="in use by another process"):
        replace_rows(str(path), iter([("x", b"{}")]))
    await store.close()
    before = _content(path)

    def failing() -> Iterator[tuple[str, bytes]]:
        yield "c", b'{"v":3}'
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        replace_rows(str(path), failing())
    assert _content(path) == before
    assert replace_rows(str(path), iter([("c", b'{"v":3}'), ("d", b"[1]")])) == 2
    assert _content(path) == [("c", b'{"v":3}'), ("d", b"[1]")]
    store = await SQLiteStorage.open(str(path))  # the engine opens what was restored
    try:
        assert await store.get("d") == [1] and await store.get("a") is None
    finally:
        await store.close()


async def test_a_sqlite_snapshot_is_one_instant_while_writes_go_on(tmp_path: Path) -> None:
    """Writes during the read change nothing it returns: every row of one commit or none."""
    store = await SQLiteStorage.open(str(tmp_path / "a.db"))
    try:
        await store.put_many([(f"k/{i:05d}", {"gen": 0}) for i in range(3000)])
        seen: list[tuple[str, bytes]] = []
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def write(key: str, value: bytes) -> None:
            seen.append((key, value))
            if len(seen) == 1:
                loop.call_soon_threadsafe(started.set)

        reading = asyncio.ensure_future(store.export_rows(write))
        await started.wait()
        await store.put_many([(f"k/{i:05d}", {"gen": 1}) for i in range(3000)])  # one commit, mid-read
        assert await reading == 3000
        assert len({value for _, value in seen}) == 1  # all of generation 0, or all of 1
    finally:
        await store.close()


# -- over HTTP --------------------------------------------------------------------------------
async def test_the_snapshot_path(aiohttp_client: Any, tmp_path: Path) -> None:
    """``read`` on the path (as in Vault); a restore through the API is refused with the way
    to do it; the snapshot streamed is one ``read`` accepts with the server's storage key."""
    settings = Settings(storage=StorageSettings(type="sqlite", path=str(tmp_path / "a.db")), dev=True,
                        dev_root_token_id=ROOT)
    client = await aiohttp_client(make_test_server(create_app(settings)))
    head = {"X-Vault-Token": ROOT}
    await client.post("/v1/sys/policies/acl/ops", headers=head, json={"policy": 'path "a" {capabilities=["read"]}'})
    resp = await client.get("/v1/sys/storage/raft/snapshot", headers=head)
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/gzip"
    blob = await resp.read()
    assert gzip.decompress(blob)[:9] == b"meta.json"
    path = tmp_path / "s.snap"
    path.write_bytes(blob)
    key, _ = load_storage_key(key_file=str(tmp_path / "a.key"), env={}, create=False)
    read = await asyncio.to_thread(snapshot.read, path, key)
    try:
        assert orjson.loads(dict(read.rows())["sys/policy/ops"])["name"] == "ops"
    finally:
        read.state.close()
    user = (await (await client.post("/v1/auth/token/create", headers=head, json={"policies": ["default"]})).json())
    denied = await client.get("/v1/sys/storage/raft/snapshot", headers={"X-Vault-Token": user["auth"]["client_token"]})
    assert denied.status == 403
    for path_ in ("sys/storage/raft/snapshot", "sys/storage/raft/snapshot-force"):
        refused = await client.post(f"/v1/{path_}", headers=head, data=blob)  # a gzipped tar, not JSON
        assert refused.status == 400
        assert (await refused.json())["errors"] == [
            "a snapshot is restored with every authmount server stopped: authmount operator restore "
            "--config <settings> <file> (docs/operations.md#backup)"]


async def test_a_full_disk_is_a_503_not_a_500(aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot is built in a temporary file; a full disk there is said, with Retry-After."""

    class Full(io.BytesIO):
        def write(self, data: Any) -> int:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("server.snapshot.tempfile.SpooledTemporaryFile", lambda **kw: Full())
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    client = await aiohttp_client(make_test_server(create_app(settings)))
    failed = telemetry.REGISTRY.get_sample_value("authmount_snapshots_total", {"result": "failed"}) or 0.0
    resp = await client.get("/v1/sys/storage/raft/snapshot", headers={"X-Vault-Token": ROOT})
    assert (resp.status, resp.headers["Retry-After"]) == (503, "60")
    assert telemetry.REGISTRY.get_sample_value("authmount_snapshots_total", {"result": "failed"}) == failed + 1
    assert await resp.json() == {"errors": ["snapshot: cannot write its temporary file: No space left on device"]}


async def test_one_snapshot_at_a_time(aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each snapshot copies the whole storage to a temporary file: a second one while the first
    is being sent is refused (429), and the next after it is served."""
    release = asyncio.Event()
    real_chunks = snapshot.chunks

    async def slow(taken: Any) -> Any:  # the first chunk, then the rest once released
        first = True
        async for chunk in real_chunks(taken):
            yield chunk
            if first:
                first = False
                await release.wait()

    monkeypatch.setattr(snapshot, "chunks", slow)
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    client = await aiohttp_client(make_test_server(create_app(settings)))
    head = {"X-Vault-Token": ROOT}
    first = await client.get("/v1/sys/storage/raft/snapshot", headers=head)
    assert first.status == 200
    second = await client.get("/v1/sys/storage/raft/snapshot", headers=head)
    assert second.status == 429 and (await second.json())["errors"] == [
        "a snapshot is being taken on this server; try again when it is done"]
    before = _snapshot_counts()
    release.set()
    assert gzip.decompress(await first.read())[:9] == b"meta.json"
    third = await client.get("/v1/sys/storage/raft/snapshot", headers=head)
    assert third.status == 200 and gzip.decompress(await third.read())[:9] == b"meta.json"
    after = _snapshot_counts()
    assert after["ok"] - before["ok"] == 2 and after["sent"] >= time.time() - 5  # what a backup alert reads


def _snapshot_counts() -> dict[str, float]:
    registry = telemetry.REGISTRY
    return {"ok": registry.get_sample_value("authmount_snapshots_total", {"result": "ok"}) or 0.0,
            "sent": registry.get_sample_value("authmount_snapshot_last_success_timestamp_seconds") or 0.0}
