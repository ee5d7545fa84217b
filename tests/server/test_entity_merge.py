"""Entity merges (``identity/entity/merge``) and batch deletes: what the tokens and logins of
the entities merged get afterwards, groups, chains of merges, a merge cut short, restarts and
refusals that change nothing. The answers themselves are compared with OpenBao 2.7.2 in
tests/e2e/test_identity_peer.py (``test_entity_merges_as_openbao``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.http.listverb import make_test_server
from server.identity.entities import MAX_BATCH
from server.identity.store import IdentityStore
from server.settings import Settings, StorageSettings
from tests.server.test_identity import ROOT, Api, _mount


def _settings(db: Path) -> Settings:
    return Settings(storage=StorageSettings(type="sqlite", path=str(db)), dev=True, dev_root_token_id=ROOT)


async def _api(aiohttp_client: AiohttpClient, db: Path, *, mounts: bool = True) -> tuple[Api, dict[str, str]]:
    api = Api(await aiohttp_client(make_test_server(create_app(_settings(db)))))
    accessors = {m: await _mount(api, m) for m in ("jwt", "jwt2")} if mounts else {}
    return api, accessors


async def _identity_policies(api: Api, token: str) -> Any:
    status, out = await api.call("GET", "auth/token/lookup-self", token=token)
    return out["data"].get("identity_policies") if status == 200 else status


async def test_one_persons_entities_of_two_mounts_merged(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    """The entity merged from is gone; its tokens get the other's policies and groups at their
    next use, its logins get the other entity, its external groups through the mount of the
    alias that moved are the other's at once, and a restart keeps all of it."""
    db = tmp_path / "id.db"
    api, acc = await _api(aiohttp_client, db)
    gid = await api.group("ci", ["grp"], "ci-idp", acc["jwt2"])
    first = await api.login("alice", [])
    second = await api.login("alice", ["ci-idp"], mount="jwt2")
    into, source = first["entity_id"], second["entity_id"]
    assert into != source
    await api.ok("POST", f"identity/entity/id/{into}", {"policies": ["ops"]})
    assert await _identity_policies(api, second["client_token"]) == ["grp"]

    await api.ok("POST", "identity/entity/merge", {"to_entity_id": into, "from_entity_ids": [source]})
    assert await _identity_policies(api, second["client_token"]) == ["grp", "ops"]
    assert await _identity_policies(api, first["client_token"]) == ["grp", "ops"]
    entity = (await api.ok("GET", f"identity/entity/id/{into}"))["data"]
    assert entity["merged_entity_ids"] == [source] and entity["group_ids"] == [gid]
    assert sorted(a["mount_accessor"] for a in entity["aliases"]) == sorted(acc.values())
    assert (await api.call("GET", f"identity/entity/id/{source}"))[0] == 404
    members = (await api.ok("GET", f"identity/group/id/{gid}"))["data"]["member_entity_ids"]
    assert members == [into]
    again = await api.login("alice", ["ci-idp"], mount="jwt2")
    assert again["entity_id"] == into and again["identity_policies"] == ["grp", "ops"]

    await api.client.close()
    api, _ = await _api(aiohttp_client, db, mounts=False)
    assert await _identity_policies(api, second["client_token"]) == ["grp", "ops"]
    assert (await api.login("alice", [], mount="jwt2"))["entity_id"] == into


async def test_merges_chain_and_disabling_follows_them(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    """A into B, then B into C: A's and B's tokens get C's policies and ``disabled``."""
    api, acc = await _api(aiohttp_client, tmp_path / "id.db")
    a, b = await api.login("ann", []), await api.login("ann", [], mount="jwt2")
    c = (await api.ok("POST", "identity/entity", {"name": "ann", "policies": ["c-only"]}))["data"]["id"]
    await api.ok("POST", "identity/entity/merge", {"to_entity_id": b["entity_id"], "from_entity_ids": [a["entity_id"]]})
    await api.ok("POST", "identity/entity/merge", {"to_entity_id": c, "from_entity_ids": [b["entity_id"]]})
    merged = (await api.ok("GET", f"identity/entity/id/{c}"))["data"]["merged_entity_ids"]
    assert sorted(merged) == sorted([a["entity_id"], b["entity_id"]])
    for token in (a["client_token"], b["client_token"]):
        assert await _identity_policies(api, token) == ["c-only"]
    await api.ok("POST", f"identity/entity/id/{c}", {"disabled": True})
    for token in (a["client_token"], b["client_token"]):
        assert await _identity_policies(api, token) == 403
    aliases = (await api.ok("GET", f"identity/entity/id/{c}"))["data"]["aliases"]
    assert {x["mount_accessor"]: len(x["merged_from_canonical_ids"]) for x in aliases} == {
        acc["jwt"]: 2, acc["jwt2"]: 1}


async def test_a_merge_cut_short_is_finished_by_sending_it_again(
    aiohttp_client: AiohttpClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _ = await _api(aiohttp_client, tmp_path / "id.db")
    a, b = await api.login("bo", []), await api.login("bo", [], mount="jwt2")
    real = IdentityStore.delete_entity
    failures = [RuntimeError("disk gone")]

    async def failing(self: IdentityStore, entity: Any) -> None:
        if failures:
            raise failures.pop()
        await real(self, entity)

    monkeypatch.setattr(IdentityStore, "delete_entity", failing)
    body = {"to_entity_id": a["entity_id"], "from_entity_ids": [b["entity_id"]]}
    assert (await api.call("POST", "identity/entity/merge", body))[0] == 500
    # Cut short before the entity merged from was deleted: its tokens still work.
    assert (await api.call("GET", "auth/token/lookup-self", token=b["client_token"]))[0] == 200
    await api.ok("POST", "identity/entity/merge", body)
    assert (await api.call("GET", f"identity/entity/id/{b['entity_id']}"))[0] == 404
    entity = (await api.ok("GET", f"identity/entity/id/{a['entity_id']}"))["data"]
    assert entity["merged_entity_ids"] == [b["entity_id"]] and len(entity["aliases"]) == 2


@pytest.mark.parametrize("body, message", [
    ({"from_entity_ids": ["x"]}, "missing entity id to merge to"),
    ({"to_entity_id": "TO"}, "missing entity ids to merge from"),
    ({"to_entity_id": "TO", "from_entity_ids": ["FROM", "nope"]}, "entity id to merge from is invalid"),
    ({"to_entity_id": "TO", "from_entity_ids": ["FROM"], "conflicting_alias_ids_to_keep": ["nope"]},
     "conflicting mount accessors in following alias IDs and neither were present"),
    ({"to_entity_id": "TO", "from_entity_ids": ["FROM"]}, "toEntity and at least one fromEntity have aliases"),
    ({"to_entity_id": "TO", "from_entity_ids": ["FROM"], "conflicting_alias_ids_to_keep": ["FROM_ALIAS"]},
     "is the one a login made entity"),
])
async def test_refused_merges_change_nothing(aiohttp_client: AiohttpClient, tmp_path: Path,
                                             body: dict[str, Any], message: str) -> None:
    """Every check runs before the first write: a refused merge leaves both entities as they were."""
    api, acc = await _api(aiohttp_client, tmp_path / "id.db")
    into = (await api.login("cy", []))["entity_id"]
    source = (await api.ok("POST", "identity/entity", {"name": "cy"}))["data"]["id"]
    alias = (await api.ok("POST", "identity/entity-alias", {"name": "cy-op", "mount_accessor": acc["jwt"],
                                                            "canonical_id": source}))["data"]["id"]
    await api.ok("POST", "identity/entity-alias", {"name": "cy", "mount_accessor": acc["jwt2"], "canonical_id": source})
    before = [(await api.ok("GET", f"identity/entity/id/{e}"))["data"] for e in (into, source)]
    names = {"TO": into, "FROM": source, "FROM_ALIAS": alias}
    sent = {k: [names.get(x, x) for x in v] if isinstance(v, list) else names.get(v, v) for k, v in body.items()}
    status, out = await api.call("POST", "identity/entity/merge", sent)
    assert status == 400 and message in out["errors"][0], out
    after = [(await api.ok("GET", f"identity/entity/id/{e}"))["data"] for e in (into, source)]
    assert after == before


async def test_the_clash_refusal_lists_both_aliases(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    """As Vault: ``data`` beside ``errors`` names each clashing alias, its entity and mount."""
    api, _ = await _api(aiohttp_client, tmp_path / "id.db")
    a, b = (await api.login("dee", []))["entity_id"], (await api.login("eve", []))["entity_id"]
    status, out = await api.call("POST", "identity/entity/merge", {"to_entity_id": a, "from_entity_ids": [b]})
    assert status == 400 and out["errors"][0].startswith("2 errors occurred:\n\t* toEntity and")
    assert [(c["alias"], c["entity_id"], c["mount_path"]) for c in out["data"]] == [
        ("dee", a, "auth/jwt/"), ("eve", b, "auth/jwt/")]


async def test_batch_delete(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    api, _ = await _api(aiohttp_client, tmp_path / "id.db")
    ids = [(await api.login(name, []))["entity_id"] for name in ("f1", "f2", "f3")]
    status, out = await api.call("POST", "identity/entity/batch-delete", {"entity_ids": ["x"] * (MAX_BATCH + 1)})
    assert status == 400 and out["errors"] == [f"at most {MAX_BATCH} entity ids at once (given {MAX_BATCH + 1})"]
    await api.ok("POST", "identity/entity/batch-delete", {"entity_ids": f"{ids[0]},nope,{ids[1]},{ids[0]}"})
    assert [(await api.call("GET", f"identity/entity/id/{e}"))[0] for e in ids] == [404, 404, 200]
