"""``sys/internal/counters/tokens`` and ``entities``: what each counts (compared with OpenBao
2.7.2 in tests/e2e/test_openbao_differential.py, ``test_counters_as_openbao``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from plugin.framework import Operation, Request
from plugin.storage import InMemoryStorage
from server.identity import store as identity_module
from server.identity.store import IdentityStore, MountRef
from server.sys import counters
from server.tokens.store import TokenStore
from tests.server.test_token_selectors import login
from tests.server.tokenkit import JWT, Clock


async def _read(tokens: TokenStore, kind: str) -> Any:
    [path] = [p for p in counters.paths(SimpleNamespace(core=SimpleNamespace(tokens=tokens)))  # type: ignore[arg-type]
              if p.pattern.endswith(kind)]
    resp = await path.operations[Operation.READ](Request(Operation.READ, "internal/counters/" + kind), {})
    assert resp is not None and resp.data is not None
    return resp.data["counters"]


async def test_service_token_rows_are_counted(store: TokenStore, clock: Clock) -> None:
    """Batch tokens have no row; an expired token counts until the sweep removes its row, as
    OpenBao counts (the ``vault_token_count`` gauge has the live ones)."""
    assert await _read(store, "tokens") == {"service_tokens": {"total": 0}}
    await store.issue(login(ttl=3600), mount=JWT)
    await store.issue(login(ttl=5), mount=JWT)
    await store.issue(login(ttl=3600, token_type="batch"), mount=JWT)
    assert await _read(store, "tokens") == {"service_tokens": {"total": 2}}
    clock.now += 10
    assert await _read(store, "tokens") == {"service_tokens": {"total": 2}}
    await store.sweep()
    assert await _read(store, "tokens") == {"service_tokens": {"total": 1}}


async def test_every_entity_is_counted_page_by_page(store: TokenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _read(store, "entities") == {"entities": {"total": 0}}  # no identity store: none
    monkeypatch.setattr(identity_module, "_COUNT_PAGE", 2)
    identity = IdentityStore(InMemoryStorage(), mounts=lambda accessor: MountRef(accessor, "auth/jwt/", "jwt"))
    await identity.load()
    store.identity = identity
    for n in range(5):
        assert await _read(store, "entities") == {"entities": {"total": n}}
        await identity.create_entity(f"e{n}", lambda attrs: None)
    assert await _read(store, "entities") == {"entities": {"total": 5}}
