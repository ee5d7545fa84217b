"""The OIDC flow state (``plugin/oidc_state.py``) at its edges: the sealed JSON and the
values derived from its seed, checked against the documented format (a state issued by one
node is redeemed on another, maybe of another version); malformed states; the used-state
records and their sweep (issue 16; found by mutation testing, docs/mutation.md). Storage
keys and contexts are written out."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from plugin.oidc_state import FlowState, redeem, sweep_used, take_result
from plugin.sealing import EphemeralSealer
from plugin.storage import InMemoryStorage

SEALER = EphemeralSealer()
SEED = bytes(range(32))
NOW = 1_700_000_000


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def derived(label: bytes) -> str:
    return b64url(hmac.new(SEED, label, hashlib.sha256).digest())


def sealed(body: dict[str, Any]) -> str:
    return SEALER.seal(json.dumps(body).encode(), "oidc/state")


BODY: dict[str, Any] = {"k": b64url(SEED), "r": "https://app/cb", "o": "dev", "e": NOW + 600}


def test_values_derived_from_the_seed_are_the_documented_ones() -> None:
    state = FlowState(seed=SEED, redirect_uri="https://app/cb", role="dev", expires_at=NOW + 600)
    assert state.id == derived(b"id")[:22]
    assert state.nonce == "n_" + derived(b"nonce")[:20]
    assert state.code_verifier == derived(b"pkce")
    assert state.used_key == f"oidc/used/{NOW + 600:010d}-{derived(b'id')[:22]}"
    # defaults: no client_nonce (any one matches) and no max_age
    assert state.client_nonce_matches("anything") and state.max_age == 0
    assert json.loads(SEALER.unseal(state.seal(SEALER), "oidc/state")) == BODY


def test_a_state_written_in_the_documented_form_opens() -> None:
    cn_hash = b64url(hashlib.sha256(b"client-nonce").digest()[:16])
    state = FlowState.open(SEALER, sealed({**BODY, "c": cn_hash, "a": 30}), NOW)
    assert state == FlowState(SEED, "https://app/cb", "dev", NOW + 600, cn_hash, 30)
    assert state.client_nonce_matches("client-nonce") and not state.client_nonce_matches("other")
    assert FlowState.open(SEALER, sealed(BODY) + ",ns=team-a", NOW) == FlowState(SEED, "https://app/cb", "dev", NOW + 600)


@pytest.mark.parametrize(("client_nonce", "max_age"), [("", 0), ("cn", 0), ("", 45), ("cn", 45)])
def test_seal_and_open_round_trip(client_nonce: str, max_age: int) -> None:
    state = FlowState.new(role="dev", redirect_uri="https://app/cb", client_nonce=client_nonce, max_age=max_age, now=NOW)
    body = json.loads(SEALER.unseal(state.seal(SEALER), "oidc/state"))
    assert set(body) == {"k", "r", "o", "e"} | ({"c"} if client_nonce else set()) | ({"a"} if max_age else set())
    assert len(base64.urlsafe_b64decode(body["k"] + "=")) == 32 and "=" not in body["k"]
    assert FlowState.open(SEALER, state.seal(SEALER), NOW) == state
    assert state.max_age == max_age and state.client_nonce_matches(client_nonce)


@pytest.mark.parametrize("body", [
    {**BODY, "k": b64url(SEED + b"x")},  # a seed of 33 bytes
    {**BODY, "k": b64url(SEED[:31])},
    {**BODY, "e": str(NOW + 600)},
    {**BODY, "e": True},
    {**BODY, "e": NOW},  # expired: valid until NOW only
    {**BODY, "a": "30"},
    {**BODY, "a": False},
    {**BODY, "c": 5},
    {**BODY, "r": None},
    {**BODY, "o": 1},
    {k: v for k, v in BODY.items() if k != "o"},
    [BODY],
], ids=lambda b: json.dumps(b)[:40])
def test_malformed_or_expired_states_do_not_open(body: Any) -> None:
    assert FlowState.open(SEALER, sealed(body), NOW) is None


def test_a_state_sealed_for_another_purpose_does_not_open() -> None:
    assert FlowState.open(SEALER, SEALER.seal(json.dumps(BODY).encode(), "oidc/other"), NOW) is None
    assert FlowState.open(SEALER, sealed(BODY), NOW) is not None


async def test_redeem_records_the_state_once_and_a_result_is_taken_once() -> None:
    storage = InMemoryStorage()
    state = FlowState(SEED, "https://app/cb", "dev", NOW + 600)
    key = f"oidc/used/{NOW + 600:010d}-{derived(b'id')[:22]}"
    assert await take_result(storage, state) is None  # never redeemed
    assert await redeem(storage, state, {"claims": {"sub": "bob"}, "warnings": []})
    assert not await redeem(storage, state)
    assert await storage.get(key) == {"expires_at": NOW + 600, "claims": {"sub": "bob"}, "warnings": []}
    assert await take_result(storage, state) == {"expires_at": NOW + 600, "claims": {"sub": "bob"}, "warnings": []}
    assert await storage.get(key) == {"expires_at": NOW + 600}  # still marks the state used
    assert await take_result(storage, state) is None
    other = FlowState(bytes(32), "https://app/cb", "dev", NOW + 600)
    assert await redeem(storage, other)
    assert await take_result(storage, other) is None  # redeemed without a result: nothing to take
    assert await storage.get(other.used_key) == {"expires_at": NOW + 600}


async def test_sweep_deletes_expired_records_after_the_grace_oldest_first() -> None:
    storage = InMemoryStorage()
    names = [f"{NOW + i:010d}-id{i}" for i in (0, 1, 2)]
    foreign = ["000-early", "12345-short", "abc", "0000000005-folder/child"]
    for name in names + foreign:
        await storage.put("oidc/used/" + name, {"expires_at": 0})
    assert await sweep_used(storage, NOW + 300 - 1) == 0  # within the 300 s grace of the oldest
    assert await sweep_used(storage, NOW + 300 + 1) == 2  # the grace ends at expiry + 300 exactly
    assert sorted(await storage.list("oidc/used/")) == sorted(
        [names[2], "000-early", "12345-short", "abc", "0000000005-folder/"])
    assert await sweep_used(storage, NOW + 10**6) == 1
    assert await storage.get("oidc/used/0000000005-folder/child") is not None


async def test_sweep_deletes_at_most_a_batch() -> None:
    storage = InMemoryStorage()
    for i in range(501):
        await storage.put(f"oidc/used/{NOW + i:010d}-x", {"expires_at": NOW + i})
    assert await sweep_used(storage, NOW + 10**6) == 500
    assert await storage.list("oidc/used/") == [f"{NOW + 500:010d}-x"]
    assert await sweep_used(storage, NOW + 10**6, limit=1) == 1
