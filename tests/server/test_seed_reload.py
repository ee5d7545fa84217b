"""Seeding at start is ``apply`` without prune (only what differs is written, a failure names
file, object and field, no half-made mount), and SIGHUP's reload hooks (server/reload.py)."""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
from aiohttp import web

from plugin.storage import InMemoryStorage
from server.app import StartupError, create_app, seed
from server.appkeys import IDENTITY, MOUNTS, POLICIES, RELOAD_HOOKS
from server.http import log as http_log
from server.http.ratelimit import LIMITER
from server.keyring import ENV_KEY
from server.mounts import MOUNTS_KEY
from server.reload import add_reload_hook, reload_settings
from server.settings import Settings, settings_from_mapping
from tests.plugin.keyfactory import ec_key

PEM = ec_key().pem


def seeded(**changes: Any) -> Settings:
    raw: dict[str, Any] = {
        "storage": {"type": "memory"},
        "mounts": [{
            "path": "ci/jwt", "type": "jwt", "tune": {"default_lease_ttl": "20m"},
            "config": {"jwt_validation_pubkeys": [PEM]},
            "roles": {"deploy": {"role_type": "jwt", "user_claim": "sub", "bound_subject": "ci",
                                 "token_ttl": "10m"}},
        }],
        "policies": {"deploy": 'path "auth/token/lookup-self" { capabilities = ["read"] }'},
    }
    raw.update(changes)
    return settings_from_mapping(raw, source="seed.yaml")


@pytest.fixture(autouse=True)
def storage_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # Memory storage shared by two starts: both must open the same keyring.
    monkeypatch.setenv(ENV_KEY, base64.b64encode(bytes(range(32))).decode())


@asynccontextmanager
async def started(settings: Settings, storage: Any) -> AsyncIterator[web.Application]:
    app = create_app(settings, storage=storage)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        yield app
    finally:
        await runner.cleanup()


async def test_a_second_start_writes_nothing_and_drift_is_corrected() -> None:
    storage = InMemoryStorage()
    async with started(seeded(), storage) as app:
        assert sorted(app[MOUNTS].mounts) == ["ci/jwt/", "token/"]
        mount = app[MOUNTS].mounts["ci/jwt/"]
        await mount.storage.put("role/extra", {"role_type": "jwt", "user_claim": "sub", "bound_subject": "x"})
        role = await mount.storage.get("role/deploy")
        assert role is not None
        await mount.storage.put("role/deploy", {**role, "token_ttl": 1800})
    writes: list[str] = []
    put = storage.put

    async def counting_put(key: str, value: Any) -> None:
        writes.append(key)
        await put(key, value)

    update = storage.update

    async def counting_update(key: str, fn: Any) -> Any:  # a role write merges into the stored role
        writes.append(key)
        return await update(key, fn)

    storage.put = counting_put  # type: ignore[method-assign]
    storage.update = counting_update  # type: ignore[method-assign]
    async with started(seeded(), storage) as app:
        mount = app[MOUNTS].mounts["ci/jwt/"]
        role = await mount.storage.get("role/deploy")
        assert role is not None and role["token_ttl"] == 600  # drift corrected
        assert await mount.storage.get("role/extra") is not None  # no prune at start
        assert [k for k in writes if k.endswith(("config", "role/deploy"))] == [f"auth/{mount.entry.uuid}/role/deploy"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"roles": {"r": {"token_ttl": "nope"}}},
         "seed.yaml: mounts[0].roles.r: Field validation failed: error converting input nope for field "
         "\"token_ttl\""),
        ({"roles": {"r": {"role_type": "jwt", "user_claim": "sub", "bound_claim": {"a": "b"}}}},
         "seed.yaml: mounts[0].roles.r: unrecognized parameters: [bound_claim]; bound_claim: did you mean "
         "bound_claims?"),
        ({"config": {"jwks_url": "http://127.0.0.1:1/keys"}},
         "seed.yaml: mounts[0].config: error checking jwks URL http://127.0.0.1:1/keys: "),
    ],
    ids=["bad value", "unknown field", "refused by the write"],
)
async def test_a_failed_seed_names_the_object_and_leaves_no_half_made_mount(
    change: dict[str, Any], message: str
) -> None:
    base = seeded()
    mount = dataclasses.replace(base.mounts[0], **change)
    storage = InMemoryStorage()
    with pytest.raises(StartupError) as caught:
        async with started(dataclasses.replace(base, mounts=(mount,)), storage):
            pass
    assert str(caught.value).startswith(message)
    table = await storage.get(MOUNTS_KEY)
    assert table is not None and [e["path"] for e in table["entries"]] == ["token/"]
    if "refused" in message or "config" in message:
        assert "mount ci/jwt/ created by this run was disabled again" in str(caught.value)


async def test_reload_applies_log_level_rate_limits_and_seeds_and_names_what_needs_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_log, "_level", http_log._level)
    monkeypatch.setattr(http_log, "_request_sink", http_log._request_sink)
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)
    old = seeded()
    new = dataclasses.replace(
        seeded(policies={"deploy": 'path "auth/token/lookup-self" { capabilities = ["read", "update"] }'}),
        log_level="debug", listen_address="127.0.0.1:9999",
        rate_limit=dataclasses.replace(old.rate_limit, login_burst=7),
    )
    async with started(old, InMemoryStorage()) as app:
        calls: list[str] = []

        async def audit(app: web.Application, before: Settings, after: Settings) -> list[str]:
            calls.append(after.listen_address)
            return ["audit: reopened"]

        add_reload_hook(app, audit)
        changes = await reload_settings(app, old, new)
        assert changes == [
            "log_level: info -> debug",
            "rate_limit.login_burst: 100 -> 7",
            "seed: update policy deploy",
            "audit: reopened",
            "not applied until a restart: listen_address",
        ]
        assert calls == ["127.0.0.1:9999"]
        assert http_log._level == 10
        buckets = app[LIMITER].buckets
        assert buckets is not None and buckets.burst == 7
        assert '"update"' in (await app[POLICIES].get("deploy") or "")
        assert await reload_settings(app, new, new) == ["seed: no changes", "audit: reopened"]
        # the built-in hooks (log level, rate limits, seed, audit devices) and the test's
        assert len(app[RELOAD_HOOKS]) == 5


async def test_a_failing_reload_hook_is_reported_and_the_others_run() -> None:
    async with started(seeded(), InMemoryStorage()) as app:
        async def broken(app: web.Application, before: Settings, after: Settings) -> list[str]:
            raise RuntimeError("disk gone")

        app[RELOAD_HOOKS].insert(0, (broken, frozenset()))
        bad_role = seeded()
        mount = dataclasses.replace(bad_role.mounts[0], roles={"r": {"token_ttl": "nope"}})
        with structlog.testing.capture_logs() as logs:
            changes = await reload_settings(app, seeded(), dataclasses.replace(bad_role, mounts=(mount,)))
        assert changes[0] == "broken failed: disk gone"
        assert changes[1].startswith("_reseed failed: seed.yaml: mounts[0].roles.r: Field validation failed")
        assert [e["event"] for e in logs] == ["reload_hook_failed", "reload_hook_failed"]
        # the running objects stay as they were
        assert await app[MOUNTS].mounts["ci/jwt/"].storage.get("role/r") is None


async def test_seed_is_callable_again_and_returns_its_plan() -> None:
    async with started(seeded(), InMemoryStorage()) as app:
        plan = await seed(app)
        assert plan.changes == [] and "no changes" in plan.render()


async def test_token_roles_are_seeded_and_seeding_again_writes_nothing() -> None:
    settings = seeded(token_roles={"ci": {"allowed_policies": ["deploy"], "orphan": True, "token_period": "1h"}})
    async with started(settings, InMemoryStorage()) as app:
        token_mount = app[MOUNTS].mounts["token/"]
        stored = await token_mount.storage.get("role/ci")
        assert stored is not None and stored["allowed_policies"] == ["deploy"] and stored["token_period"] == 3600
        assert (await seed(app)).changes == []  # seeded again: nothing to write


async def test_reload_applies_token_roles_and_groups_without_asking_for_a_restart() -> None:
    """``token_roles`` and ``groups`` are seeded again on SIGHUP like ``mounts`` (they were
    applied, yet reported as needing a restart)."""
    old = seeded()
    new = seeded(token_roles={"ci": {"orphan": True}},
                 groups={"release": {"policies": ["deploy"], "alias": {"mount": "ci/jwt", "name": "main"}}})
    async with started(old, InMemoryStorage()) as app:
        changes = await reload_settings(app, old, new)
        assert changes == ["seed: create token-role ci", "seed: create group release"]
        assert await reload_settings(app, new, new) == ["seed: no changes"]


async def test_the_oidc_provider_is_seeded_through_the_app_and_seeding_again_writes_nothing() -> None:
    """The ``oidc_*`` sections at start (``AppServer``: the backends' own paths): a group named
    by an assignment and a client named by a provider get written as their ids."""
    settings = seeded(groups={"release": {"policies": ["deploy"]}},
                      oidc_scopes={"groups": {"template": '{"groups": {{identity.entity.groups.names}}}'}},
                      oidc_assignments={"releasers": {"groups": ["release"]}},
                      oidc_clients={"app": {"redirect_uris": ["https://app.example.com/cb"],
                                            "assignments": ["releasers"]}},
                      oidc_providers={"default": {"allowed_clients": ["app"], "scopes_supported": ["groups"]}})
    storage = InMemoryStorage()
    async with started(settings, storage) as app:
        client = await storage.get("identity/oidc/client/app")
        provider = await storage.get("identity/oidc/provider/default")
        assignment = await storage.get("identity/oidc/assignment/releasers")
        group = app[IDENTITY].group_by_name("release")
        assert isinstance(client, dict) and isinstance(provider, dict) and isinstance(assignment, dict) and group
        assert provider["allowed_client_ids"] == [client["client_id"]] and assignment["group_ids"] == [group.id]
        assert (await seed(app)).changes == []
