"""Issue 15 section 2: anonymous OIDC calls cannot exhaust the server.

``oidc/auth_url`` costs no storage at all (the state travels sealed in the ``state``
parameter); a state is redeemed once, cannot be extended, moved or forged; and every value
an anonymous caller sends is bounded in bytes before any other work.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from plugin.errors import InvalidRequest
from plugin.framework import Operation
from plugin.oidc_state import STATE_CONTEXT, USED_PREFIX, FlowState, sweep_used
from plugin.path_oidc import LIMITS
from plugin.sealing import EphemeralSealer, NewerTermError, b64d, b64e, format_sealed, parse_sealed
from plugin.storage import InMemoryStorage
from server.keyring import Keyring, PrefixSealer
from tests.plugin.oidc_fakes import BOB, CLI_REDIRECT, REDIRECT, Harness, query

DOCS = Path(__file__).resolve().parents[2] / "docs"


class WriteCountingStorage(InMemoryStorage):
    """The in-memory engine, counting every call that could write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, str]] = []

    async def put(self, key: str, value: object) -> None:
        self.writes.append(("put", key))
        await super().put(key, value)

    async def update(self, key: str, fn: Any) -> Any:
        self.writes.append(("update", key))
        return await super().update(key, fn)

    async def delete(self, key: str) -> None:
        self.writes.append(("delete", key))
        await super().delete(key)

    async def delete_prefix(self, prefix: str) -> int:
        self.writes.append(("delete_prefix", prefix))
        return await super().delete_prefix(prefix)


@pytest.fixture
async def h() -> Harness:
    harness = Harness()
    await harness.configure()
    await harness.role()
    return harness


# ---------------------------------------------------------------------------
# auth_url costs no storage


async def test_ten_thousand_anonymous_auth_urls_write_nothing() -> None:
    """Issue 15: each auth_url stored a state row (0.9 MB with a big client_nonce), and
    10,000 of them closed the mount's browser login for 10 minutes."""
    storage = WriteCountingStorage()
    h = Harness(storage=storage)
    await h.configure(namespace_in_state=True)
    await h.role()
    before = storage.dump()
    storage.writes.clear()
    client_nonce = "x" * LIMITS["client_nonce"]
    for i in range(10_000):
        h.remote = f"10.{i % 250}.{i // 250}.1"
        await h.auth_url(redirect_uri=REDIRECT + "?namespace=" + "n" * 200, client_nonce=client_nonce)
    assert storage.writes == []
    assert storage.dump() == before
    # ... and a browser login still starts and finishes afterwards
    assert (await h.login(**BOB)).auth is not None


def test_state_is_url_safe_and_short() -> None:
    sealer = EphemeralSealer()
    state = FlowState.new(role="test", redirect_uri=CLI_REDIRECT, client_nonce="c" * 20, max_age=0, now=1e9)
    wire = state.seal(sealer)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", wire)
    # am1.1. + base64url(salt 16 | nonce 12 | tag 16 | compact JSON of 152 bytes): measured
    # 262 characters for the Vault CLI's redirect URI and client_nonce (Vault's state: 23)
    assert len(wire) <= 270
    body = json.loads(sealer.unseal(wire, STATE_CONTEXT))
    assert set(body) == {"k", "r", "o", "e", "c"}  # short keys; the client_nonce only as a hash
    assert "c" * 20 not in json.dumps(body)


def test_nonce_verifier_and_id_are_derived_and_distinct() -> None:
    a = FlowState.new(role="r", redirect_uri=REDIRECT, client_nonce="", max_age=0, now=1e9)
    b = FlowState.new(role="r", redirect_uri=REDIRECT, client_nonce="", max_age=0, now=1e9)
    assert len({a.id, a.nonce, a.code_verifier, b.id, b.nonce, b.code_verifier}) == 6
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", a.code_verifier)  # RFC 7636: 43-128 unreserved
    assert a.nonce.startswith("n_") and len(a.nonce) == 22
    assert a.used_key == f"{USED_PREFIX}{int(1e9) + 600:010d}-{a.id}"


# ---------------------------------------------------------------------------
# A state is redeemed once, and cannot be extended, moved or forged


async def test_state_cannot_be_replayed_on_another_node(h: Harness) -> None:
    other = Harness(storage=h.storage, idp=h.idp)  # a second node: same storage, same keyring
    other.clock = h.clock
    other.system.clock = h.clock
    url = await h.auth_url()
    state = query(url)["state"]
    code = h.idp.authorize(url, **BOB)
    h.idp.reusable_codes = True  # the IdP would accept the code again: authmount must not
    assert (await other.callback(state=state, code=code)).auth is not None
    with pytest.raises(InvalidRequest, match="Expired or missing OAuth state"):
        await h.callback(state=state, code=code)


async def test_concurrent_callbacks_on_two_nodes_exactly_one_wins(h: Harness) -> None:
    other = Harness(storage=h.storage, idp=h.idp)
    other.clock = h.clock
    other.system.clock = h.clock
    h.idp.reusable_codes = True
    url = await h.auth_url()
    state, code = query(url)["state"], h.idp.authorize(url, **BOB)
    calls = [node.callback(state=state, code=code) for node in (h, other) * 3]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all("Expired or missing OAuth state" in r.messages[0] for r in results if isinstance(r, InvalidRequest))
    assert len(await h.storage.list(USED_PREFIX)) == 1


async def test_state_expiry_cannot_be_extended(h: Harness) -> None:
    url = await h.auth_url()
    state = query(url)["state"]
    h.clock.now += 599
    assert FlowState.open(h.system.sealer, state, h.clock.now) is not None
    h.clock.now += 1
    assert FlowState.open(h.system.sealer, state, h.clock.now) is None
    with pytest.raises(InvalidRequest, match="Expired or missing OAuth state"):
        await h.callback(state=state, code=h.idp.authorize(url, **BOB))


async def test_failed_callbacks_write_nothing(h: Harness) -> None:
    """An anonymous caller holding a real state, but no real login at the IdP, cannot make
    the server write: wrong codes, wrong client_nonce, IdP errors, forged states."""
    url = await h.auth_url(client_nonce="cn")
    state = query(url)["state"]
    before = h.storage.dump()
    attempts: list[dict[str, Any]] = [
        {"state": state, "code": "guess", "client_nonce": "cn"},
        {"state": state, "code": "guess", "client_nonce": "other"},
        {"state": state, "code": "no_code", "client_nonce": "cn"},
        {"state": state, "client_nonce": "cn", "error_description": "denied"},
        {"state": state[:-4] + "AAAA", "code": "guess", "client_nonce": "cn"},
    ]
    for data in attempts:
        with pytest.raises(InvalidRequest):
            await h.callback(**data)
    assert h.storage.dump() == before


def _flip(sealed: str, i: int) -> str:
    term, blob = parse_sealed(sealed)
    mangled = bytearray(blob)
    mangled[i] ^= 0x01
    return format_sealed(term, bytes(mangled))


async def test_state_cannot_be_forged_or_tampered(h: Harness) -> None:
    """Moving a state to another role or extending it means changing its sealed bytes: any
    change of any byte makes it refuse to open."""
    state = query(await h.auth_url())["state"]
    sealer = h.system.sealer
    blob_len = len(parse_sealed(state)[1])
    for i in range(blob_len):
        assert FlowState.open(sealer, _flip(state, i), h.clock.now) is None, i
    assert FlowState.open(sealer, state, h.clock.now) is not None
    # the same JSON sealed for another purpose, or by another server's keyring
    plain = sealer.unseal(state, STATE_CONTEXT)
    body = json.loads(plain)
    body["o"], body["e"] = "admin", body["e"] + 86400
    forged_plain = json.dumps(body).encode()
    for forged in (
        sealer.seal(plain, "config#oidc_client_secret"),
        EphemeralSealer().seal(forged_plain, STATE_CONTEXT),
        "am1.1." + b64e(b64d(state.split(".")[2])[:40]),
    ):
        assert FlowState.open(sealer, forged, h.clock.now) is None
        with pytest.raises(InvalidRequest, match="Expired or missing OAuth state"):
            await h.callback(state=forged, code="x")


async def test_a_made_up_newer_term_is_an_expired_state_not_a_keyring_reload() -> None:
    """The state is the caller's input: a term beyond any the keyring has (``NewerTermError``,
    which makes the server re-read its keyring and answer 503 for values read from storage)
    is refused like any forgery, so no anonymous caller can make a node re-read its keyring."""
    storage = InMemoryStorage()
    ring = await Keyring.open(storage, b"k" * 32)
    sealed = ring.seal(b'{"k": "x"}', STATE_CONTEXT)
    made_up = format_sealed(999_999, parse_sealed(sealed)[1])
    with pytest.raises(NewerTermError):
        ring.unseal(made_up, STATE_CONTEXT)
    assert FlowState.open(ring, made_up, 0) is None


async def test_state_cannot_move_to_another_mount() -> None:
    """The server's sealer binds the mount's storage prefix into every context."""
    keyring = EphemeralSealer()  # one server keyring, two mounts
    a, b = Harness(), Harness(idp=None)
    a.system.sealer = PrefixSealer(keyring, "auth/aaaa/")
    b.system.sealer = PrefixSealer(keyring, "auth/bbbb/")
    b.idp = a.idp
    b.system.fetcher = a.idp
    for node in (a, b):
        await node.configure()
        await node.role()
    url = await a.auth_url()
    state, code = query(url)["state"], a.idp.authorize(url, **BOB)
    with pytest.raises(InvalidRequest, match="Expired or missing OAuth state"):
        await b.callback(state=state, code=code)
    assert (await a.callback(state=state, code=code)).auth is not None


async def test_sweep_deletes_only_expired_records_in_batches() -> None:
    storage = InMemoryStorage()
    now = 1_000_000_000
    for i in range(5):
        state = FlowState.new(role="r", redirect_uri=REDIRECT, client_nonce="", max_age=0, now=now + i * 100)
        await storage.put(state.used_key, {"expires_at": state.expires_at})
    await storage.put(USED_PREFIX + "not-ours", {})
    later = now + 600 + 300 + 150  # states 0 and 1 expired more than the grace ago
    assert await sweep_used(storage, later, limit=1) == 1
    assert await sweep_used(storage, later, limit=10) == 1
    assert await sweep_used(storage, later, limit=10) == 0
    names = await storage.list(USED_PREFIX)
    assert len(names) == 4 and "not-ours" in names


# ---------------------------------------------------------------------------
# Every anonymous value is bounded in bytes, before any other work

AUTH_URL_FIELDS = ["role", "redirect_uri", "client_nonce"]
CALLBACK_FIELDS = ["state", "code", "id_token", "client_nonce", "error_description"]


@pytest.mark.parametrize(
    ("path", "op", "field"),
    [("oidc/auth_url", Operation.UPDATE, f) for f in AUTH_URL_FIELDS]
    + [("oidc/callback", Operation.READ, f) for f in CALLBACK_FIELDS]
    + [("oidc/callback", Operation.UPDATE, f) for f in CALLBACK_FIELDS],
)
@pytest.mark.parametrize("unit", ["a", "é", "🔑"], ids=["ascii", "2-byte", "4-byte"])
async def test_every_anonymous_value_has_a_byte_limit(path: str, op: Operation, field: str, unit: str) -> None:
    """Refused with 400 naming the field and the limit, before the config is even read
    (this mount has none) and before the IdP is asked anything."""
    h = Harness()  # no config: any work beyond the field check would fail differently
    limit = LIMITS[field]
    size = len(unit.encode())
    over = unit * (limit // size + 1)
    with pytest.raises(InvalidRequest) as exc:
        await h.call(op, path, {field: over})
    assert exc.value.messages == [f"{field} is too long: the limit is {limit} bytes"]
    assert h.idp.calls == []
    at_limit = unit * (limit // size)
    try:
        await h.call(op, path, {field: at_limit})
    except InvalidRequest as err:
        assert "too long" not in err.messages[0]
    except Exception as err:  # noqa: BLE001 - e.g. 405 for a POST without form_post
        assert "too long" not in str(err)


@pytest.mark.parametrize("field", ["client_nonce", "redirect_uri", "role"])
async def test_a_lone_surrogate_is_refused(h: Harness, field: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await h.auth_url(**{field: "a\ud800"})
    assert exc.value.messages == [f"{field} is not valid UTF-8 text"]


async def test_a_100_kb_client_nonce_is_refused(h: Harness) -> None:
    """Issue 15: 20 auth_url calls with big client_nonce values grew the database by 19 MB."""
    with pytest.raises(InvalidRequest) as exc:
        await h.auth_url(client_nonce="x" * 100_000)
    assert exc.value.messages == ["client_nonce is too long: the limit is 256 bytes"]
    assert h.storage.dump().keys() == {"config", "role/test"}


async def test_namespace_from_the_redirect_uri_is_bounded() -> None:
    h = Harness()
    await h.configure(namespace_in_state=True)
    await h.role()
    ok = query(await h.auth_url(redirect_uri=REDIRECT + "?namespace=" + "n" * 256))
    assert ok["state"].endswith(",ns=" + "n" * 256)
    assert len(ok["state"].encode()) <= LIMITS["state"]
    with pytest.raises(InvalidRequest) as exc:
        await h.auth_url(redirect_uri=REDIRECT + "?namespace=" + "é" * 129)
    assert exc.value.messages == ["namespace is too long: the limit is 256 bytes"]


@pytest.mark.parametrize("namespace", [0, 256], ids=["no-namespace", "longest-namespace"])
async def test_the_longest_state_auth_url_issues_is_accepted_back(namespace: int) -> None:
    """A redirect_uri at its limit (with or without the longest namespace in it): the state
    auth_url issues fits the callback's state limit."""
    prefix = "https://vault.example.com/v1/auth/oidc/oidc/callback?x="
    ns = "&namespace=" + "n" * namespace if namespace else ""
    uri = prefix + "y" * (LIMITS["redirect_uri"] - len(prefix) - len(ns))
    assert len(uri + ns) == LIMITS["redirect_uri"]
    h = Harness()
    await h.configure(namespace_in_state=True)
    await h.role(allowed_redirect_uris=[uri])
    url = await h.auth_url(redirect_uri=uri + ns)
    state = query(url)["state"]
    assert 2500 < len(state.encode()) <= LIMITS["state"]
    assert (await h.callback(state=state, code=h.idp.authorize(url, **BOB))).auth is not None


def test_messages_are_in_troubleshooting() -> None:
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    for message in (
        "`<field> is too long: the limit is <n> bytes`",
        "`<field> is not valid UTF-8 text`",
        "`Vault login failed. The identity provider returned an error.`",
        "`redirect_uri is too long: its state would exceed 4096 bytes`",
    ):
        assert message in text, message
    assert "too many pending OIDC logins" not in text
    for field, limit in LIMITS.items():
        assert f"`{field}` {limit:,}" in text or f"`{field}` {limit}" in text, field
