"""The token code at its edges (server.tokens: ttl, ids, batch, entry, store): TTL arithmetic
at each bound, the random sources, the batch wire format, stored rows with missing fields,
every limit one either side of its boundary, races between a read and its write, scans that
let requests run, and the exact Vault messages. Found by mutation testing (docs/mutation.md)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from plugin.errors import InvalidRequest, PermissionDenied
from plugin.framework import Alias, Auth
from plugin.storage import InMemoryStorage, decode, encode
from server.tokens import ids
from server.tokens.batch import decode_batch
from server.tokens.entry import (
    InlineEntry,
    MountInfo,
    TokenEntry,
    check_assignable,
    login_display_name,
    resolve_token_type,
)
from server.tokens.store import ID_PREFIX, TokenStore
from server.tokens.ttl import DEFAULT_MAX_TTL, calculate_ttl
from tests.server.tokenkit import JWT, T0, Clock

ROOT = Path(__file__).resolve().parent.parent.parent
H = 3600


def login(**kw: Any) -> Auth:
    kw.setdefault("policies", ["dev"])
    kw.setdefault("alias", Alias(name="alice"))
    return Auth(**kw)


async def issued(store: TokenStore, **kw: Any) -> tuple[str, TokenEntry]:
    block, _ = await store.issue(login(**kw), mount=JWT)
    entry = await store.lookup(block["client_token"])
    assert entry is not None
    return block["client_token"], entry


async def started(storage: Any, clock: Clock, **kw: Any) -> TokenStore:
    store = TokenStore(storage, clock=clock, **kw)
    await store.start(sweep=False)
    return store


# -- TTL arithmetic (Vault framework.CalculateTTL) ------------------------------------------------

TTLS: list[tuple[str, dict[str, Any], int, int]] = [
    ("no mount max: 768 hours", {"default_ttl": 10**9, "mount_max": 0}, 768 * H, 1),
    ("a mount max of 1 s", {"default_ttl": 10, "mount_max": 1}, 1, 1),
    ("a backend max of 1 s", {"default_ttl": 10, "mount_max": 100, "backend_max": 1}, 1, 1),
    ("an explicit max of 1 s", {"default_ttl": 10, "mount_max": 100, "explicit_max": 1}, 1, 1),
    ("a period of 1 s", {"default_ttl": 50, "mount_max": 100, "period": 1}, 1, 0),
    ("a period equal to the max", {"default_ttl": 50, "mount_max": 100, "period": 100}, 100, 0),
    ("a period over the max", {"default_ttl": 50, "mount_max": 100, "period": 101}, 100, 1),
    ("periodic, capped by what the explicit max leaves",
     {"now": 95, "start": 0, "default_ttl": 50, "mount_max": 1000, "period": 10, "explicit_max": 100}, 5, 1),
    ("an increment of 1 s", {"default_ttl": 50, "mount_max": 100, "increment": 1, "backend_ttl": 30}, 1, 0),
    ("a backend TTL of 1 s", {"default_ttl": 50, "mount_max": 100, "backend_ttl": 1}, 1, 0),
    ("one second left", {"now": 9, "start": 0, "default_ttl": 50, "mount_max": 10}, 1, 1),
]


@pytest.mark.parametrize(("kw", "ttl", "warnings"), [c[1:] for c in TTLS], ids=[c[0] for c in TTLS])
def test_ttl_bounds(kw: dict[str, Any], ttl: int, warnings: int) -> None:
    got, warned = calculate_ttl(**{"now": 0, **kw})
    assert (got, len(warned)) == (ttl, warnings), warned


def test_default_max_ttl_is_32_days() -> None:
    assert DEFAULT_MAX_TTL == 768 * H == calculate_ttl(now=0, default_ttl=10**9, mount_max=0)[0]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"now": 101, "start": 100, "default_ttl": 50, "mount_max": 1000, "period": 100, "explicit_max": 1},
         "past the max TTL, cannot renew"),
        ({"now": 10, "start": 0, "default_ttl": 50, "mount_max": 10}, "past the max TTL, cannot renew"),
        ({"now": 0, "default_ttl": 0, "mount_max": 100}, "token TTL must be positive"),
    ],
    ids=["periodic past its explicit max", "past the mount max", "no TTL at all"],
)
def test_ttl_refusals(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        calculate_ttl(**kw)
    assert exc.value.messages == [message]


# -- random ids ---------------------------------------------------------------------------------

def test_random_b62_drops_the_bytes_that_would_bias_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes 248-255 are dropped (62 * 4 = 248), every other byte b is character b % 62."""
    blocks = iter([bytes([247, 248, 249, 255, 0, 61]), bytes([62, 123, 124, 185, 186, 246, 250])])
    monkeypatch.setattr(os, "urandom", lambda n: next(blocks))
    monkeypatch.setattr(ids, "_pool", ids._Pool())  # empty: the next draw asks the OS
    assert ids.random_b62(9) == "Z0Z0Z0Z0Y"


def test_random_b62_hands_each_pooled_character_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool is refilled by one OS call when a draw does not fit; what is left of the old
    pool is dropped, never handed out again; a draw longer than a pool still works."""
    calls: list[int] = []
    counter = iter(range(10**9))

    def urandom(n: int) -> bytes:
        calls.append(n)
        return bytes(next(counter) % 248 for _ in range(n))  # no byte is dropped

    monkeypatch.setattr(os, "urandom", urandom)
    monkeypatch.setattr(ids, "_pool", ids._Pool())
    size = ids._POOL_BYTES
    drawn = [ids.random_b62(40) for _ in range(size // 40 + 1)]
    assert calls == [size, size]  # the 103rd draw did not fit in the first pool
    text = "".join(drawn)
    expected = bytes(i % 248 for i in range(size // 40 * 40)).translate(ids._B62_TABLE).decode()
    assert text[: len(expected)] == expected
    assert text[len(expected):] == bytes(i % 248 for i in range(size, size + 40)).translate(ids._B62_TABLE).decode()
    assert len(ids.random_b62(3 * size)) == 3 * size and calls[-1] == 6 * size


def test_threads_never_share_a_pool() -> None:
    """Each thread draws from its own pool: two threads minting at once never get the same
    characters (a shared position read by both before either moved it would hand them out twice)."""
    out: dict[str, list[str]] = {}

    def draw(name: str) -> None:
        out[name] = [ids.random_b62(40) for _ in range(3000)]

    threads = [threading.Thread(target=draw, args=(str(i),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for values in out.values() for value in values]
    assert len(every) == 12000 and len(set(every)) == len(every)
    ids.random_b62()  # this thread's pool is not empty now
    fresh: list[bytes] = []
    thread = threading.Thread(target=lambda: fresh.append(ids._pool.chars))
    thread.start()
    thread.join()
    assert ids._pool.chars and fresh == [b""]


def test_random_b62_default_length_and_alphabet() -> None:
    value = ids.random_b62()
    assert len(value) == 24 and value.isascii() and value.isalnum()


def test_random_ids_never_repeat() -> None:
    drawn = [ids.random_b62(22) for _ in range(2000)]
    assert len(set(drawn)) == len(drawn)


def test_a_fresh_process_starts_with_fresh_bytes() -> None:
    code = "from server.tokens.ids import random_b62; print(random_b62(22))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
        for _ in range(2)
    }
    assert len(outs) == 2


def _in_child(draw: Callable[[], bytes]) -> bytes:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, draw())
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return data


def test_a_forked_child_never_reuses_the_parents_bytes() -> None:
    """The pool of pre-drawn characters is dropped in a forked child: without that, two
    children forked from one parent would hand out the same token secrets."""

    def draw() -> bytes:
        return ids.random_b62(4).encode() + ids.random_b62(32).encode()

    draw()  # the parent's pool is full when it forks
    first, second = _in_child(draw), _in_child(draw)
    mine = draw()
    assert len(first) == len(second) == 36
    assert len({first, second, mine}) == 3


def test_selector_layout_and_never() -> None:
    start, end, _ = ids.due_cutoff(T0)
    never, _, _ = ids.mint_ids(T0)  # no expiry given: never
    assert never[start:end] == "zzzzzz" and ids.selector_due(never) == 0.0
    assert ids.mint_ids(T0, 0.0)[0][start:end] == "zzzzzz"
    due, _, _ = ids.mint_ids(T0, T0 + 60.9)
    assert ids.selector_due(due) == T0 + 60


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("hvs." + "a" * 46, True),
        ("hvs.!" + "a" * 45, False),
        ("hvs." + "a" * 45 + "!", False),
        ("hvs." + "a" * 45, False),
        ("hvs." + "a" * 47, False),
        ("hvs." + "\u00e9" * 46, False),
        ("hvb." + "a" * 46, False),
    ],
    ids=["minted shape", "bad first character", "bad last character", "short", "long", "non-ASCII", "batch"],
)
def test_token_selector_shape(raw: str, ok: bool) -> None:
    assert (ids.token_selector(raw) == raw[4:28]) if ok else ids.token_selector(raw) is None


# -- batch tokens -------------------------------------------------------------------------------

BATCH_FIELDS = {"v", "p", "m", "c", "t", "e", "x", "d", "a", "b", "i", "path", "o", "n"}


def _payload(raw: str) -> dict[str, Any]:
    body = raw.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


async def test_batch_wire_format_version_1(store: TokenStore) -> None:
    """hvb. + base64url(JSON) + . + base64url(HMAC): nodes of one version read each other's."""
    raw, _ = await issued(store, token_type="batch", metadata={"k": "v"})
    payload = _payload(raw)
    assert set(payload) == BATCH_FIELDS and payload["v"] == 1
    assert payload["p"] == ["default", "dev"] and payload["m"] == {"k": "v"} and payload["o"] is None


async def test_decoded_batch_entry(store: TokenStore) -> None:
    raw, _ = await issued(store, token_type="batch")
    assert store._batch is not None
    entry = decode_batch(raw, store._batch.verifying)
    assert entry is not None
    assert (entry.id_hash, entry.accessor, entry.type, entry.renewable, entry.orphan) == ("", "", "batch", False, True)
    data = store.lookup_data(entry, raw)
    assert (data["accessor"], data["renewable"], data["orphan"], data["type"]) == ("", False, True, "batch")


async def test_batch_child_of_a_service_token_is_not_an_orphan(store: TokenStore) -> None:
    _, parent = await issued(store)
    child = TokenEntry(id_hash="", accessor="", policies=["dev"], ttl=60, expire_time=T0 + 60, type="batch",
                       creation_time=int(T0))
    raw = await store.mint(child, parent=parent)
    entry = await store.lookup(raw)
    assert entry is not None and entry.orphan is False and entry.parent == parent.id_hash


async def test_batch_token_with_a_lone_surrogate_in_its_metadata(store: TokenStore) -> None:
    """orjson refuses lone surrogates; the json fallback escapes them and the token still works."""
    raw, entry = await issued(store, token_type="batch", metadata={"odd": "\ud800x"})
    assert entry.meta == {"odd": "\ud800x"} and entry.type == "batch"


#: (case, policies, seconds from creation to expiry (None: none), the mount exists, refused for)
FORGED: list[tuple[str, list[str], int | None, bool, str | None]] = [
    ("as minting makes them", ["default", "dev"], 3600, True, None),
    ("root policy", ["default", "root"], 3600, True, "root policy"),
    ("root policy spelled otherwise", ["default", " ROOT "], 3600, True, "root policy"),
    ("no expiry", ["default"], None, True, "expiry missing or beyond max_lease_ttl"),
    ("expiry at max_lease_ttl + 1 s", ["default"], DEFAULT_MAX_TTL + 1, True, None),
    ("expiry at max_lease_ttl + 2 s", ["default"], DEFAULT_MAX_TTL + 2, True, "expiry missing or beyond max_lease_ttl"),
    ("a mount that no longer exists", ["default"], 3600, False, "mount does not exist"),
]


@pytest.mark.parametrize(("policies", "lifetime", "mount_exists", "refused"), [c[1:] for c in FORGED],
                         ids=[c[0] for c in FORGED])
async def test_a_batch_token_signed_with_the_key_is_still_checked(
    store: TokenStore, policies: list[str], lifetime: int | None, mount_exists: bool, refused: str | None
) -> None:
    """A valid signature alone (a stolen key, a bug) yields no root policy, no expiry missing
    or beyond max_lease_ttl, no token of a removed mount: lookup refuses it and logs why."""
    from server.tokens.batch import encode_batch

    assert store._batch is not None
    store.mount_exists = lambda accessor: mount_exists and accessor == "auth_jwt_1"
    entry = TokenEntry(id_hash="", accessor="", policies=policies, creation_time=int(T0), ttl=lifetime or 0,
                       expire_time=T0 + lifetime if lifetime else 0, type="batch", mount_accessor="auth_jwt_1",
                       renewable=False)
    raw = encode_batch(entry, store._batch.signing)
    with structlog.testing.capture_logs() as logs:
        found = await store.lookup(raw)
    refusals = [e for e in logs if e["event"] == "batch_token_refused"]
    if refused is None:
        assert found is not None and found.policies == policies and found.id_hash == store.hash(raw)
        assert refusals == []
    else:
        assert found is None
        assert refusals == [{"event": "batch_token_refused", "log_level": "error", "reason": refused,
                             "mount_accessor": "auth_jwt_1"}]


async def test_a_minted_batch_entry_is_named_by_its_token(store: TokenStore) -> None:
    child = TokenEntry(id_hash="", accessor="", policies=["dev"], ttl=60, expire_time=T0 + 60, type="batch",
                       creation_time=int(T0))
    raw = await store.mint(child)
    assert child.id_hash == store.hash(raw) != ""


async def test_batch_token_length_boundary(store: TokenStore) -> None:
    """The longest batch token lookup takes (8192 characters) is minted and works; a longer
    one is refused at minting, naming its length."""

    def payload_bytes(raw: str) -> int:
        return 3 * len(raw.split(".")[1]) // 4  # unpadded base64url back to bytes

    base, _ = await issued(store, token_type="batch", metadata={"pad": ""})
    pad = (8144 * 3 // 4) - payload_bytes(base)  # 8192 = "hvb." + 8144 + "." + 43
    raw, _ = await issued(store, token_type="batch", metadata={"pad": "x" * pad})
    assert len(raw) == 8192
    assert (await store.authenticate(raw, "127.0.0.1")).meta["pad"] == "x" * pad
    with pytest.raises(InvalidRequest) as exc:
        await issued(store, token_type="batch", metadata={"pad": "x" * (pad + 1)})
    assert exc.value.messages == ["batch token would be 8194 bytes (limit 8192); reduce its metadata or policies"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"policies": ["root"]}, "batch tokens cannot be root tokens"),
        ({"num_uses": 3}, "batch tokens cannot have a limited number of uses"),
        ({"period": 60}, "batch tokens cannot be periodic"),
    ],
    ids=["root", "num_uses", "period"],
)
async def test_batch_refusals(store: TokenStore, kw: dict[str, Any], message: str) -> None:
    entry = TokenEntry(id_hash="", accessor="", **{"policies": ["dev"], **kw}, ttl=60, expire_time=T0 + 60,
                       type="batch")
    with pytest.raises(InvalidRequest) as exc:
        await store.mint(entry)
    assert exc.value.messages == [message]


# -- stored entries -----------------------------------------------------------------------------

DEFAULTS = {
    "id_hash": "h", "accessor": "a", "policies": ["p"], "meta": {}, "display_name": "", "path": "",
    "mount_accessor": "", "creation_time": 0, "ttl": 0, "expire_time": 0.0, "explicit_max_ttl": 0,
    "max_expire_time": 0.0, "period": 0, "num_uses": 0, "bound_cidrs": [], "parent": None, "orphan": True,
    "type": "service", "renewable": True, "entity_id": "", "internal_data": {}, "last_renewal_time": 0,
    "revoke_pending_at": 0.0, "verifier": "", "role": "",
}


def test_a_row_with_only_the_required_fields_reads_with_the_defaults() -> None:
    """Rows written by earlier versions lack later fields: they read as documented."""
    minimal = {"id_hash": "h", "accessor": "a", "policies": ["p"]}
    assert TokenEntry.from_dict(minimal).to_dict() == DEFAULTS
    assert TokenEntry.from_dict({**minimal, "a_later_field": 1}).to_dict() == DEFAULTS
    assert MountInfo("auth/x/", "acc", 1, 2).token_type == "default-service"


def test_to_dict_is_a_json_copy() -> None:
    entry = TokenEntry(id_hash="h", accessor="a", policies=["p"], meta={"m": "1"}, bound_cidrs=["10.0.0.0/8"],
                       internal_data={"role": "r"})
    out = entry.to_dict()
    out["policies"].append("x")
    out["meta"]["y"] = "2"
    out["bound_cidrs"].append("x")
    out["internal_data"]["z"] = 1
    assert entry.to_dict() == {**DEFAULTS, "meta": {"m": "1"}, "bound_cidrs": ["10.0.0.0/8"],
                               "internal_data": {"role": "r"}}


@pytest.mark.parametrize(
    "data",
    [{"nested": {"x": [1]}}, {"t": (1, 2)}, {1: "an int key"}, {"flat": "s", "nested": {"x": [1]}}],
    ids=["nested", "tuple", "int key", "mixed"],
)
def test_to_dict_internal_data_is_what_json_gives(data: dict[Any, Any]) -> None:
    entry = TokenEntry(id_hash="h", accessor="a", policies=[], internal_data=data)
    out = entry.to_dict()["internal_data"]
    assert out == json.loads(json.dumps(data))
    if "nested" in data:
        out["nested"]["x"].append(2)
        assert data["nested"] == {"x": [1]}


#: Internal data with a key that is not a string (not what the type says; JSON turns it into one).
INT_KEYED: dict[Any, Any] = {1: "an int key"}


@pytest.mark.parametrize(
    "entry",
    [
        TokenEntry(id_hash="h", accessor="a", policies=["p"]),
        TokenEntry(id_hash="sel", accessor="acc", policies=["default", "ops"], meta={"role": "r", "sub": "é"},
                   display_name="jwt-bob", path="auth/jwt/login", mount_accessor="auth_jwt_1", creation_time=17,
                   ttl=60, expire_time=77.5, explicit_max_ttl=90, max_expire_time=107.25, period=0, num_uses=3,
                   bound_cidrs=["10.0.0.0/8"], parent="p", orphan=False, type="service", renewable=False,
                   entity_id="e", internal_data={"role": "r", "n": 1, "b": True, "none": None},
                   last_renewal_time=5, revoke_pending_at=0.0, verifier="v" * 64),
        TokenEntry(id_hash="h", accessor="a", policies=[], internal_data={"nested": {"x": [1]}}),
        TokenEntry(id_hash="h", accessor="a", policies=[], internal_data=INT_KEYED),
        TokenEntry(id_hash="h", accessor="a", policies=[], internal_data={"t": (1, 2), "f": 0.5}),
    ],
    ids=["defaults", "every field", "nested", "int key", "tuple and float"],
)
def test_what_is_stored_is_to_dicts_encoding(entry: TokenEntry) -> None:
    """``stored()`` hands storage the entry itself where orjson encodes it exactly as
    ``to_dict()`` (flat internal data), else ``to_dict()``: the stored bytes are the same."""
    stored = entry.stored()
    assert encode(stored) == encode(entry.to_dict())
    assert (stored is entry) == all(type(k) is str and not isinstance(v, (dict, list, tuple, float))
                                    for k, v in entry.internal_data.items())
    assert TokenEntry.from_dict(decode(encode(stored))) == TokenEntry.from_dict(entry.to_dict())


@pytest.mark.parametrize(
    ("mount", "auth", "name"),
    [
        ("auth/jwt/", Auth(display_name="", alias=None), "jwt"),
        ("auth/jwt/", Auth(display_name="", alias=Alias(name="bob")), "jwt-bob"),
        ("auth/team/jwt/", Auth(display_name="carol"), "team-jwt-carol"),
    ],
    ids=["no name", "alias", "nested mount"],
)
def test_login_display_name(mount: str, auth: Auth, name: str) -> None:
    assert login_display_name(mount, auth) == name


@pytest.mark.parametrize(
    ("value", "mount", "result"),
    [
        ("", "default-service", "service"),
        (" ", "default-service", "service"),
        ("default", "default-batch", "batch"),
        ("default-service", "default-batch", "batch"),
        ("default-batch", "default-service", "service"),
        ("default-service", "default-service", "service"),
        (" Batch ", "default-service", "batch"),
        ("service", "default-batch", "service"),
        ("batch", "service", "service"),
        ("service", "batch", "batch"),
        ("default", "", "service"),
    ],
)
def test_resolve_token_type(value: str, mount: str, result: str) -> None:
    assert resolve_token_type(value, mount) == result


def test_token_type_and_policy_refusals() -> None:
    with pytest.raises(InvalidRequest) as exc:
        resolve_token_type("periodic")
    assert exc.value.messages == ['invalid token type "periodic"']
    assert resolve_token_type("default") == "service"
    with pytest.raises(InvalidRequest) as exc:
        check_assignable(["dev", "response-wrapping"])
    assert exc.value.messages == ['cannot assign policy "response-wrapping"']


# -- the store: its secrets and layout ----------------------------------------------------------

async def test_secrets_are_32_random_bytes_stored_sealed(store: TokenStore) -> None:
    assert store._salt is not None and store._batch is not None
    assert len(store._salt) == 32 and len(store._batch.signing) == 32 and store._salt != store._batch.signing
    salt = await store.storage.get("sys/token/salt")
    batch = await store.storage.get("sys/token/batch_key")
    assert salt is not None and batch is not None
    assert store.sealer.unseal(salt["sealed"], "sys/token/salt#sealed") == store._salt
    assert store.sealer.unseal(batch["keys"][0]["sealed"], "sys/token/batch_key#sealed") == store._batch.signing


@pytest.mark.parametrize("stored", ["a string", {"value": 5}, {"other": "x"}], ids=["string", "number", "no value"])
async def test_a_corrupt_secret_stops_the_start(clock: Clock, stored: Any) -> None:
    storage = InMemoryStorage()
    await storage.put("sys/token/salt", stored)
    with pytest.raises(RuntimeError) as exc:
        await started(storage, clock)
    assert str(exc.value) == "storage returned no token store secret at sys/token/salt"


async def test_a_store_that_was_not_started_refuses_work(clock: Clock) -> None:
    store = TokenStore(InMemoryStorage(), clock=clock)
    for call in (store.lookup("hvs.x"), store.lookup_accessor("x"), store.create_root()):
        with pytest.raises(RuntimeError) as exc:
            await call
        assert str(exc.value) == "TokenStore.start() was not awaited"


async def test_the_sweeper_runs_only_when_asked(clock: Clock) -> None:
    def sweepers() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "token-sweeper"]

    store = await started(InMemoryStorage(), clock)
    assert sweepers() == []
    await store.close()
    store = TokenStore(InMemoryStorage(), clock=clock)
    await store.start()
    assert len(sweepers()) == 1
    await store.close()
    assert sweepers() == []


async def test_sweeper_logs(clock: Clock) -> None:
    store = TokenStore(InMemoryStorage(), clock=clock, sweep_interval=0.01)
    await store.start()
    try:
        await store.issue(login(ttl=10), mount=JWT)
        clock.now += 11
        with structlog.testing.capture_logs() as logs:
            for _ in range(200):
                await asyncio.sleep(0.01)
                if any(e["event"] == "token_sweep" for e in logs):
                    break
        assert {"event": "token_sweep", "removed": 1, "log_level": "info"} in logs

        async def broken(*args: Any) -> Any:
            raise OSError("disk gone")

        store.storage.list_page = broken  # type: ignore[method-assign,assignment]
        with structlog.testing.capture_logs() as logs:
            for _ in range(200):
                await asyncio.sleep(0.01)
                if any(e["event"] == "token_sweep_failed" for e in logs):
                    break
        assert any(e["event"] == "token_sweep_failed" and e["log_level"] == "error" for e in logs)
    finally:
        await store.close()


async def test_chosen_root_id_layout_and_length(store: TokenStore) -> None:
    token_id = "r" * 256
    assert await store.create_root(token_id) == token_id
    row = await store.storage.get("sys/token/id/" + store.hash(token_id))
    assert row is not None and len(row["accessor"]) == 24 and row["accessor"].isalnum()
    index = await store.storage.get("sys/token/accessor/" + store.hash(row["accessor"]))
    assert index == {"id_hash": store.hash(token_id)}
    with pytest.raises(InvalidRequest) as exc:
        await store.create_root("r" * 257)
    assert exc.value.messages == ["invalid root token id"]


async def known_salt(clock: Clock) -> tuple[TokenStore, uuid.UUID]:
    """A store whose salt is bytes 0..31, and the UUID namespace its ids derive from."""
    storage = InMemoryStorage()
    salt = bytes(range(32))
    await storage.put("sys/token/salt", {"value": base64.b64encode(salt).decode()})
    namespace = uuid.UUID(bytes=hmac.new(salt, b"entity-namespace", hashlib.sha256).digest()[:16])
    return await started(storage, clock), namespace


async def test_entity_ids_are_uuid5_of_mount_and_alias(clock: Clock) -> None:
    """A known answer: entity ids must not change across versions or nodes (same salt)."""
    store, namespace = await known_salt(clock)
    want = str(uuid.uuid5(namespace, "auth_jwt_1a2b3c4d:alice"))
    assert want == "5013f28c-2421-5960-bb4f-ca090a23b505"
    assert store.entity_id("auth_jwt_1a2b3c4d", "alice") == want
    assert store.entity_id("auth_jwt_1a2b3c4d", "alice") == want  # cached: the same
    assert store.entity_id("auth_jwt_1a2b3c4d", "bob") == "1798b023-7ecf-562c-86af-eced531192bf"
    assert str(uuid.uuid5(namespace, "auth_jwt_1a2b3c4d:bob")) == "1798b023-7ecf-562c-86af-eced531192bf"
    block, _ = await store.issue(login(), mount=JWT)
    assert block["entity_id"] == want
    block, _ = await store.issue(login(alias=None), mount=JWT)
    assert block["entity_id"] == ""


async def test_default_mount_is_the_store_ttls(clock: Clock) -> None:
    store = await started(InMemoryStorage(), clock, default_lease_ttl=100, max_lease_ttl=300)
    assert store.default_mount == MountInfo("auth/token/", "", 100, 300)
    raw, entry = await issued(store)
    block, warnings = await store.renew(entry, 10_000)  # no mount: the store's TTLs
    assert block["lease_duration"] == 300 and len(warnings) == 1
    assert block["client_token"] == ""


# -- the store: issue, lookup, use ----------------------------------------------------------------

async def test_issue_refuses_negative_uses(store: TokenStore) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await store.issue(login(num_uses=-1), mount=JWT)
    assert exc.value.messages == ["number of uses cannot be negative"]


async def test_a_one_second_token_is_renewable(store: TokenStore, clock: Clock) -> None:
    block, _ = await store.issue(login(ttl=1), mount=JWT)
    assert block["renewable"] is True and block["lease_duration"] == 1
    entry = await store.lookup(block["client_token"])
    assert entry is not None
    renewed, _ = await store.renew(entry, 30, mount=JWT, raw_token=block["client_token"])
    assert renewed["lease_duration"] == 30


async def test_lookup_of_something_that_is_not_a_string(store: TokenStore) -> None:
    assert await store.lookup(5) is None  # type: ignore[arg-type]
    assert await store.lookup_accessor(5) is None  # type: ignore[arg-type]
    assert await store.revoke_accessor(b"x" * 30) is False  # type: ignore[arg-type]


async def test_a_lone_surrogate_token_is_just_unknown(store: TokenStore) -> None:
    assert await store.lookup("\ud800 not a token") is None
    with pytest.raises(PermissionDenied):
        await store.authenticate("\ud800", "127.0.0.1")


@pytest.mark.parametrize(
    ("policies", "ttl", "allowed_elsewhere"),
    [(["root"], 0, True), (["root"], 100, False), (["dev"], 0, False), (["dev"], 100, False)],
    ids=["non-expiring root", "expiring root", "non-expiring other", "expiring other"],
)
async def test_only_non_expiring_root_tokens_ignore_bound_cidrs(store: TokenStore, policies: list[str], ttl: int,
                                                               allowed_elsewhere: bool) -> None:
    entry = TokenEntry(id_hash="", accessor="", policies=policies, ttl=ttl, expire_time=T0 + ttl if ttl else 0.0,
                       bound_cidrs=["10.0.0.0/8"], creation_time=int(T0))
    raw = await store.mint(entry)
    assert (await store.authenticate(raw, "10.1.2.3")).policies == policies
    if allowed_elsewhere:
        assert (await store.authenticate(raw, "192.0.2.1")).policies == policies
    else:
        with pytest.raises(PermissionDenied):
            await store.authenticate(raw, "192.0.2.1")


async def test_parent_chains_longer_than_32_are_refused(store: TokenStore) -> None:
    chain: list[tuple[str, TokenEntry]] = [await issued(store)]
    for _ in range(33):
        entry = TokenEntry(id_hash="", accessor="", policies=["dev"], ttl=600, expire_time=T0 + 600,
                           creation_time=int(T0))
        raw = await store.mint(entry, parent=chain[-1][1])
        chain.append((raw, entry))
    assert await store.lookup(chain[32][0]) is not None  # 32 ancestors
    assert await store.lookup(chain[33][0]) is None  # 33


async def test_list_accessors_skips_used_up_and_expired_tokens(store: TokenStore, clock: Clock) -> None:
    used, _ = await issued(store, num_uses=1)
    assert (await store.authenticate(used, "127.0.0.1")).num_uses == -1  # its last use; not released
    short_raw, short = await issued(store, ttl=10)
    _, live = await issued(store, ttl=600)
    clock.now += 10  # exactly the expiry of the short one
    assert await store.list_accessors() == [live.accessor]
    assert short_raw and short.accessor not in await store.list_accessors()


# -- the store: renewal ---------------------------------------------------------------------------

async def test_renew_refusals(store: TokenStore) -> None:
    _, batch = await issued(store, token_type="batch")
    with pytest.raises(InvalidRequest) as exc:
        await store.renew(batch)
    assert exc.value.messages == ["batch tokens cannot be renewed"]
    _, fixed = await issued(store, renewable=False)
    with pytest.raises(InvalidRequest) as exc:
        await store.renew(fixed)
    assert exc.value.messages == ["lease is not renewable"]

    async def other_policies(entry: TokenEntry) -> Auth:
        return Auth(policies=["ops"])

    _, entry = await issued(store)
    with pytest.raises(InvalidRequest) as exc:
        await store.renew(entry, mount=JWT, renew_hook=other_policies)
    assert exc.value.messages == ["policies have changed, not renewing"]


@pytest.mark.parametrize(("hook_max", "left"), [(0, 100), (50, 50)], ids=["hook sets none", "hook sets one"])
async def test_renew_keeps_the_explicit_max(store: TokenStore, hook_max: int, left: int) -> None:
    _, entry = await issued(store, explicit_max_ttl=100)

    async def hook(current: TokenEntry) -> Auth:
        return Auth(policies=["dev"], explicit_max_ttl=hook_max)

    block, _ = await store.renew(entry, 5000, mount=JWT, renew_hook=hook)
    assert block["lease_duration"] == left


class RacyStorage(InMemoryStorage):
    """Runs ``before_update`` on a key's stored value just before an update reads it: another
    request (or node) changing the row between a read and the write that follows it."""

    def __init__(self) -> None:
        super().__init__()
        self.before_update: Callable[[str], Any] | None = None

    async def update(self, key: str, fn: Any) -> Any:
        if self.before_update is not None:
            hook, self.before_update = self.before_update, None
            await hook(key)
        return await super().update(key, fn)


@pytest.mark.parametrize("race", ["last use", "revoked"])
async def test_renew_loses_a_race_with_a_last_use_or_a_revocation(clock: Clock, race: str) -> None:
    storage = RacyStorage()
    store = await started(storage, clock)
    raw, entry = await issued(store, num_uses=5)

    async def interfere(key: str) -> None:
        if race == "revoked":
            await storage.delete(key)
        else:
            row = await storage.get(key)
            assert row is not None
            await storage.put(key, {**row, "num_uses": -1, "revoke_pending_at": clock.now})

    storage.before_update = interfere
    with pytest.raises(InvalidRequest, match="^token not found$"):  # Vault's text and 400
        await store.renew(entry, 600, mount=JWT)
    row = await storage.get(ID_PREFIX + entry.id_hash)
    assert row is None or row["expire_time"] == entry.expire_time


# -- the store: lookup data -----------------------------------------------------------------------

LOOKUP_KEYS = [
    "accessor", "creation_time", "creation_ttl", "display_name", "entity_id", "expire_time", "explicit_max_ttl",
    "id", "issue_time", "meta", "num_uses", "orphan", "path", "policies", "renewable", "ttl", "type",
]


async def test_lookup_data_shape(store: TokenStore, clock: Clock) -> None:
    raw, entry = await issued(store, ttl=600, explicit_max_ttl=900, metadata={"k": "v"})
    data = store.lookup_data(entry, raw)
    assert list(data) == LOOKUP_KEYS
    assert data == {
        "accessor": entry.accessor, "creation_time": int(T0), "creation_ttl": 600, "display_name": "jwt-alice",
        "entity_id": entry.entity_id, "expire_time": "2027-01-15T08:10:00Z", "explicit_max_ttl": 900, "id": raw,
        "issue_time": "2027-01-15T08:00:00Z", "meta": {"k": "v"}, "num_uses": 0, "orphan": True,
        "path": "auth/jwt/login", "policies": ["default", "dev"], "renewable": True, "ttl": 600, "type": "service",
    }
    clock.now += 300
    renewed, _ = await store.renew(entry, 300, mount=JWT)
    after = await store.lookup(raw)
    assert after is not None
    data = store.lookup_data(after, raw)
    assert data["last_renewal_time"] == int(T0) + 300 and data["last_renewal"] == "2027-01-15T08:05:00Z"
    clock.now = after.expire_time - 0.5
    assert store.lookup_data(after, raw)["ttl"] == 0  # less than a second left


@pytest.mark.parametrize(("later", "ttl"), [(0.0, 600), (0.4, 600), (0.5, 599), (1.4, 599), (1.6, 598)])
async def test_lookup_ttl_counts_from_now_rounded_to_the_second(
    store: TokenStore, clock: Clock, later: float, ttl: int
) -> None:
    """Vault's ``leaseEntry.ttl``: the expiry less now rounded to the second, so a token looked
    up in the second it was made shows its whole TTL, as ``creation_ttl`` does."""
    raw, entry = await issued(store, ttl=600)
    clock.now += later
    assert store.lookup_data(entry, raw)["ttl"] == ttl


async def test_lookup_data_of_a_periodic_token(store: TokenStore) -> None:
    raw, entry = await issued(store, period=120)
    data = store.lookup_data(entry, raw)
    assert data["period"] == 120 and data["ttl"] == 120
    assert "period" not in store.lookup_data((await issued(store))[1])


# -- the store: revocation ----------------------------------------------------------------------

async def test_revocation_refusals_and_counts(store: TokenStore) -> None:
    _, batch = await issued(store, token_type="batch")
    for revoke in (store.revoke, store.revoke_orphan):
        with pytest.raises(InvalidRequest) as exc:
            await revoke(batch)
        assert exc.value.messages == ["batch tokens cannot be revoked"]
    _, parent = await issued(store)
    for _ in range(2):
        child = TokenEntry(id_hash="", accessor="", policies=["dev"], ttl=60, expire_time=T0 + 60,
                           creation_time=int(T0))
        await store.mint(child, parent=parent)
    assert await store.storage.list("sys/token/parent/") != []
    assert await store.revoke(parent) == 3
    assert await store.revoke(parent) == 0
    assert await store.storage.list("sys/token/parent/") == []


async def test_revoking_a_parent_whose_child_row_is_gone(store: TokenStore) -> None:
    """An index row left by a child whose own row is gone is removed with the parent."""
    _, parent = await issued(store)
    child = TokenEntry(id_hash="", accessor="", policies=["dev"], ttl=60, expire_time=T0 + 60, creation_time=int(T0))
    await store.mint(child, parent=parent)
    await store.storage.delete(ID_PREFIX + child.id_hash)
    assert await store.revoke(parent) == 1
    assert await store.storage.list("sys/token/parent/") == []


# -- the store: sweeping ------------------------------------------------------------------------

async def test_used_up_tokens_are_swept_after_30_seconds(store: TokenStore, clock: Clock) -> None:
    for _ in range(2):
        raw, _ = await issued(store, num_uses=1, ttl=3600)
        await store.authenticate(raw, "127.0.0.1")  # its last use, never released
    clock.now += 30
    assert await store.sweep() == 0
    clock.now += 0.001
    assert await store.sweep() == 2
    assert await store.storage.list(ID_PREFIX) == []


async def test_a_used_up_token_does_not_stop_the_sweep(store: TokenStore, clock: Clock) -> None:
    raw, _ = await issued(store, num_uses=1, ttl=3600)
    await store.authenticate(raw, "127.0.0.1")
    await issued(store, ttl=10)  # minted later: its row sorts after the used-up one
    clock.now += 31
    assert await store.sweep() == 2


async def test_sweep_at_the_renewed_expiry(store: TokenStore, clock: Clock) -> None:
    raw, entry = await issued(store, ttl=60)
    clock.now += 50
    await store.renew(entry, 600, mount=JWT)  # now expires at T0 + 650
    clock.now += 20  # past the minted expiry: the row is read and its renewal remembered
    assert await store.sweep(due_only=True) == 0
    later, _ = await issued(store, ttl=10)  # minted after: its row sorts after the remembered one
    clock.now = T0 + 100
    assert await store.sweep(due_only=True) == 1  # the remembered row is skipped, not the rest
    assert await store.lookup(later) is None and await store.lookup(raw) is not None
    clock.now = T0 + 650  # exactly the renewed expiry
    assert await store.sweep(due_only=True) == 1
    assert await store.lookup(raw) is None


class VanishingStorage(InMemoryStorage):
    """A row deleted (by another node) between the key scan and its read."""

    def __init__(self) -> None:
        super().__init__()
        self.vanish: set[str] = set()

    async def get(self, key: str) -> Any | None:
        if key in self.vanish:
            return None
        return await super().get(key)


async def test_a_row_gone_between_scan_and_read_does_not_stop_the_sweep(clock: Clock) -> None:
    storage = VanishingStorage()
    store = await started(storage, clock)
    entries = [(await issued(store, ttl=10))[1] for _ in range(2)]
    gone = min(entries, key=lambda e: e.id_hash)  # the first the scan meets: the sweep goes on past it
    storage.vanish.add(ID_PREFIX + gone.id_hash)
    clock.now += 11
    assert await store.sweep() == 1


class YieldCounter:
    """Counts the event-loop turns another task gets while ``scan`` runs."""

    async def measure(self, scan: Any) -> int:
        turns = 0
        done = False

        async def other() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        start = turns
        try:
            await scan
        finally:
            done = True
            await task
        return turns - start


async def test_full_scans_let_requests_run(store: TokenStore, clock: Clock) -> None:
    for _ in range(200):
        await issued(store, ttl=600)
    counter = YieldCounter()
    assert await counter.measure(store.list_accessors()) >= 3
    assert await counter.measure(store.sweep()) >= 3
    assert await counter.measure(store.revoke_mount("auth_nothing_here")) >= 3
    assert await counter.measure(store.usage()) >= 3


async def test_a_due_only_sweep_of_many_skipped_keys_lets_requests_run(store: TokenStore) -> None:
    for i in range(9000):  # keys only: the due-only sweep skips them without a read
        selector, _, _ = ids.mint_ids(T0 + i / 1000, T0 + 10**6)
        await store.storage.put(ID_PREFIX + selector, {})
    assert await YieldCounter().measure(store.sweep(due_only=True)) >= 2


async def test_another_nodes_mount_revocation_is_seen_within_a_second(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch token dies only by its mount's epoch: another node's revocation reaches this
    node once its cached epoch is older than a second."""
    import server.tokens.store as store_mod

    mono = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(store_mod, "time", SimpleNamespace(monotonic=lambda: mono.now, time=lambda: clock.now))
    storage = InMemoryStorage()
    here, there = await started(storage, clock), await started(storage, clock)
    raw, _ = await issued(here, token_type="batch")
    assert await here.lookup(raw) is not None  # the mount's epoch is now cached here
    clock.now += 1
    await there.revoke_mount(JWT.accessor)  # another node: this one is not told
    mono.now += 1.0
    assert await here.lookup(raw) is not None  # a second after its read: the cached epoch, no storage read
    mono.now += 0.001
    assert await here.lookup(raw) is None


async def test_fresh_epochs_see_another_workers_mount_revocation_at_once(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite ``--workers`` (``fresh_epochs``): the epoch is read at every use, so a batch
    token of a mount disabled on another worker is refused by the very next request."""
    import server.tokens.store as store_mod

    mono = SimpleNamespace(now=1000.0)  # the clock of the epoch cache does not move
    monkeypatch.setattr(store_mod, "time", SimpleNamespace(monotonic=lambda: mono.now, time=lambda: clock.now))
    storage = InMemoryStorage()
    here, there = await started(storage, clock, fresh_epochs=True), await started(storage, clock)
    raw, _ = await issued(here, token_type="batch")
    assert await here.lookup(raw) is not None
    clock.now += 1
    await there.revoke_mount(JWT.accessor)  # another worker: this one is not told
    assert await here.lookup(raw) is None


async def test_a_mount_revocation_kills_tokens_of_its_second(store: TokenStore) -> None:
    raw, _ = await issued(store, token_type="batch")
    assert not await store.accessor_retired(JWT.accessor)
    await store.revoke_mount(JWT.accessor)  # the same second as the token was issued
    assert await store.lookup(raw) is None
    assert await store.accessor_retired(JWT.accessor)  # a new mount may never take it


@pytest.mark.parametrize("token_type", ["service", "batch"])
async def test_a_token_minted_after_its_mount_was_disabled_is_dead(
    store: TokenStore, clock: Clock, token_type: str
) -> None:
    """A login still running when an operator disabled its mount (to cut off a compromised
    IdP) minted its token after the mount's epoch, so the token outlived the mount: only
    tokens made up to the epoch were refused. An epoch now kills every token of its mount."""
    await store.revoke_mount(JWT.accessor)
    clock.now += 5  # later, or on a node whose clock runs ahead
    block, _ = await store.issue(login(token_type=token_type), mount=JWT)
    assert await store.lookup(block["client_token"]) is None


# -- batch keys another node rotated, engines that cache nothing, usage, lookup output --------------

async def test_batch_keys_another_node_rotated_are_read_again_at_most_once_a_second(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch token signed with a key this node has not seen makes it re-read the keys, at
    most once a second however many unknown signatures arrive, at once when told the keys
    changed (``invalidate``); tokens of the older keys keep working."""
    import server.tokens.store as store_mod
    from server.tokens.keys import BATCH_KEY

    mono = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(store_mod, "time", SimpleNamespace(monotonic=lambda: mono.now, time=lambda: clock.now))
    storage = InMemoryStorage()
    here, there = await started(storage, clock), await started(storage, clock)
    old, _ = await issued(here, token_type="batch")
    await there.rotate_batch_key()
    first, _ = await issued(there, token_type="batch")
    assert await here.lookup(first) is not None  # unknown key: read again, found
    await there.rotate_batch_key()
    second, _ = await issued(there, token_type="batch")
    mono.now += 1.0
    assert await here.lookup(second) is None  # read a second ago: not again yet
    mono.now += 0.001
    assert await here.lookup(second) is not None
    await there.rotate_batch_key()
    third, _ = await issued(there, token_type="batch")
    assert await here.lookup(third) is None
    here.invalidate(BATCH_KEY)  # another node's write of the keys announced
    assert await here.lookup(third) is not None
    assert all([await here.lookup(t) for t in (old, first, second)])  # older keys still verify


async def test_a_valid_batch_token_reads_no_keys(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.tokens.store as store_mod
    from server.tokens.keys import BATCH_KEY

    mono = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(store_mod, "time", SimpleNamespace(monotonic=lambda: mono.now, time=lambda: clock.now))
    storage = InMemoryStorage()
    store = await started(storage, clock)
    raw, _ = await issued(store, token_type="batch")
    reads: list[str] = []
    real_get = storage.get

    async def counted(key: str) -> Any:
        reads.append(key)
        return await real_get(key)

    monkeypatch.setattr(storage, "get", counted)
    mono.now += 60
    assert await store.lookup(raw) is not None
    assert BATCH_KEY not in reads


async def test_the_store_is_given_which_mounts_exist(clock: Clock) -> None:
    """``mount_exists`` (the server passes its mount table's): a batch token of a mount that
    is gone is refused even with a good signature."""
    storage = InMemoryStorage()
    minted = await started(storage, clock)
    raw, _ = await issued(minted, token_type="batch")
    gone = await started(storage, clock, mount_exists=lambda accessor: False)
    kept = await started(storage, clock, mount_exists=lambda accessor: accessor == JWT.accessor)
    assert await gone.lookup(raw) is None and await kept.lookup(raw) is not None


@pytest.mark.parametrize("token_type", ["service", "batch"])
async def test_a_login_that_outlives_its_mount_gets_no_token(clock: Clock, token_type: str) -> None:
    """A mount disabled while a login ran (it leaves the table, then its tokens are revoked):
    the login's token may be written after that revocation's scan, so the login is refused and
    its row removed, where it used to answer 200 with a token dead at its first use."""
    storage = InMemoryStorage()
    mounted = {JWT.accessor}
    store = await started(storage, clock, mount_exists=lambda accessor: accessor in mounted)
    real_mint = store.mint

    async def disabled_meanwhile(entry: TokenEntry, **kw: Any) -> str:
        raw = await real_mint(entry, **kw)
        mounted.discard(JWT.accessor)  # the disable took the mount out of the table meanwhile
        return raw

    store.mint = disabled_meanwhile  # type: ignore[method-assign]
    before = set(await storage.list(""))
    with pytest.raises(InvalidRequest, match=r"^auth/jwt/ was disabled during this login; no token was issued$"):
        await store.issue(login(token_type=token_type), mount=JWT)
    assert set(await storage.list("")) == before and await storage.list(ID_PREFIX) == []


async def test_each_distinct_policy_list_is_remembered_apart(clock: Clock) -> None:
    """``_token_policies`` remembers the policies of each granted list (and ``no_default``):
    a second list, or the same one without ``default``, never gets the first one's."""
    store = await started(InMemoryStorage(), clock)
    asked = [(["a"], False), (["b", "a"], False), (["a"], True), (["a"], False), ([], True)]
    got = [(await store.issue(login(policies=p, no_default_policy=n), mount=JWT))[0]["policies"] for p, n in asked]
    assert got == [["a", "default"], ["a", "b", "default"], ["a"], ["a", "default"], []]


async def test_a_login_without_an_alias_has_no_entity(clock: Clock) -> None:
    store = await started(InMemoryStorage(), clock)
    block, _ = await store.issue(Auth(policies=["a"]), mount=JWT)
    assert block["entity_id"] == ""
    _, inline_block, _ = await store.inline(Auth(policies=["a"]), mount=JWT, path="auth/jwt/login")
    assert inline_block["entity_id"] == ""


@pytest.mark.parametrize("token_type", ["service", "batch"])
async def test_an_inline_login_is_checked_and_written_nowhere(clock: Clock, token_type: str) -> None:
    """``TokenStore.inline``: the entry a login would mint (its policies, TTL, type), with no
    id or accessor and no row; refused as minting refuses (a mount gone meanwhile, a batch
    token with uses)."""
    storage = InMemoryStorage()
    mounted = {JWT.accessor}
    store = await started(storage, clock, mount_exists=lambda accessor: accessor in mounted)
    before = set(await storage.list(""))
    entry, block, _ = await store.inline(login(token_type=token_type), mount=JWT, path="auth/jwt/login")
    assert isinstance(entry, InlineEntry) and (entry.id_hash, entry.accessor) == ("", "")
    assert (entry.type, entry.path, entry.renewable) == (token_type, "auth/jwt/login", token_type == "service")
    assert "client_token" not in block and block["token_type"] == token_type and block["accessor"] == ""
    assert set(await storage.list("")) == before
    if token_type == "batch":
        with pytest.raises(InvalidRequest, match=r"^batch tokens cannot have a limited number of uses$"):
            await store.inline(login(token_type="batch", num_uses=2), mount=JWT, path="auth/jwt/login")
    mounted.clear()
    with pytest.raises(InvalidRequest, match=r"^auth/jwt/ was disabled during this login; no token was issued$"):
        await store.inline(login(token_type=token_type), mount=JWT, path="auth/jwt/login")


@pytest.mark.parametrize("cache_entries", [0, 32768], ids=["no value cache (SQLite workers)", "value cache"])
async def test_tokens_on_sqlite_with_and_without_its_value_cache(
    tmp_path: Path, clock: Clock, cache_entries: int
) -> None:
    """With ``--workers`` SQLite caches no value: every lookup reads its row."""
    from server.storage import open_storage

    storage = await open_storage({"type": "sqlite", "path": str(tmp_path / "t.db"),
                                  "sqlite_cache_entries": cache_entries})
    try:
        store = await started(storage, clock)
        raw, entry = await issued(store)
        found = await store.lookup(raw)
        assert found is not None and found.accessor == entry.accessor and found.policies == ["default", "dev"]
        assert await store.lookup_accessor(entry.accessor) is not None
        await store.revoke(found)
        assert await store.lookup(raw) is None
    finally:
        await storage.close()


async def test_usage_counts_live_tokens_by_mount(store: TokenStore, clock: Clock) -> None:
    other = MountInfo(path="auth/gitlab/", accessor="auth_jwt_2", default_lease_ttl=60, max_lease_ttl=60)
    await issued(store)
    await issued(store)
    await store.issue(login(), mount=other)
    used, _ = await issued(store, num_uses=1)
    assert await store.authenticate(used, None) is not None  # its last use: not live any more
    await store.mint(TokenEntry(id_hash="", accessor="", policies=["p"], ttl=60, expire_time=clock.now,
                                mount_accessor="auth_jwt_3"))  # expires this very second
    await store.mint(TokenEntry(id_hash="", accessor="", policies=["p"], ttl=0, expire_time=0))  # of no mount
    usage = await store.usage()
    assert usage.by_accessor == {JWT.accessor: 2, "auth_jwt_2": 1, "": 1}
    assert usage.total == 4


def test_lookup_data_lists_identity_policies_as_vault(store: TokenStore) -> None:
    entry = TokenEntry(id_hash="", accessor="a", policies=["default"], ttl=0, expire_time=0, creation_time=int(T0))
    data = store.lookup_data(entry, "t", identity_policies=["team"])
    assert data["identity_policies"] == ["team"] and data["external_namespace_policies"] == {}
    assert "identity_policies" not in store.lookup_data(entry, "t")
    assert "external_namespace_policies" not in store.lookup_data(entry, "t")


async def test_entity_alias_ids_are_a_known_answer(clock: Clock) -> None:
    """Like entity ids: derived from the salt, the same on every node and version."""
    store, namespace = await known_salt(clock)
    want = str(uuid.uuid5(namespace, "alias:auth_jwt_1a2b3c4d:alice"))
    assert store.entity_alias_id("auth_jwt_1a2b3c4d", "alice") == want
    assert want != store.entity_id("auth_jwt_1a2b3c4d", "alice")


async def test_a_store_that_was_not_started_says_so() -> None:
    store = TokenStore(InMemoryStorage())
    with pytest.raises(RuntimeError, match=r"^TokenStore\.start\(\) was not awaited$"):
        await store.lookup("hvs.x")
    with pytest.raises(RuntimeError, match=r"^TokenStore\.start\(\) was not awaited$"):
        store.entity_id("a", "b")
    with pytest.raises(RuntimeError, match=r"^TokenStore\.start\(\) was not awaited$"):
        store.hash("x")


async def test_usage_skips_a_row_gone_between_the_scan_and_its_read(
    store: TokenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, gone = await issued(store)
    await issued(store)
    real_get = store.storage.get

    async def get(key: str) -> Any:
        return None if key == ID_PREFIX + gone.id_hash else await real_get(key)

    monkeypatch.setattr(store.storage, "get", get)
    usage = await store.usage()
    assert usage.total == 1 and usage.by_accessor == {JWT.accessor: 1}
