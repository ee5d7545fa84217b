"""``authmount apply`` and ``export`` (server/gitops) against a real application over HTTP:
plans field by field, idempotence, drift, secrets compared by fingerprint, prune, targets,
validation before any write, stopping (and rolling a new mount back) at a refused write."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.gitops import (
    GitopsError,
    HttpServer,
    ServerError,
    apply_plan,
    dump_yaml,
    export_state,
    from_sections,
    from_settings,
    make_plan,
    parse_target,
)
from server.gitops.desired import Desired
from server.gitops.live import AppServer, LiveMount
from server.gitops.plan import Plan
from server.http.listverb import make_test_server
from server.settings import Settings, SettingsError, StorageSettings, settings_from_mapping
from tests.plugin.keyfactory import default_claims, ec_key, make_token
from tests.server.httpkit import Client, app_of

ROOT = "root-token-for-gitops"
H = {"X-Vault-Token": ROOT}
KEY = ec_key()
PEM = KEY.pem
SECRET = "0123456789abcdef0123456789abcdef-one"
OTHER_SECRET = "0123456789abcdef0123456789abcdef-two"


def document(**changes: Any) -> dict[str, Any]:
    """A file with a mount (tune, config, two roles), an HMAC mount and a policy."""
    doc: dict[str, Any] = {
        "mounts": [
            {
                "path": "ci/jwt", "type": "jwt", "description": "CI pipelines",
                "tune": {"default_lease_ttl": "20m", "max_lease_ttl": "1h"},
                "config": {"bound_issuer": "https://ci.example.com", "jwt_validation_pubkeys": [PEM]},
                "roles": {
                    "deploy": {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["https://am"],
                               "bound_claims": {"ref": "refs/heads/main"}, "token_policies": ["deploy"],
                               "token_ttl": "10m"},
                    "read": {"role_type": "jwt", "user_claim": "sub", "bound_subject": "reader"},
                },
            },
            {"path": "hmac", "type": "jwt", "config": {"jwt_validation_hmac_secrets": ["${env:HMAC_SECRET}"]}},
        ],
        "policies": {"deploy": 'path "auth/token/lookup-self" {\n  capabilities = ["read"]\n}\n'},
    }
    doc.update(changes)
    return doc


def desired(doc: dict[str, Any], secret: str = SECRET) -> Desired:
    settings = settings_from_mapping(doc)
    return from_settings(settings, source="gitops.yaml", env={"HMAC_SECRET": secret})


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    base = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    return await aiohttp_client(make_test_server(create_app(base)))


@pytest.fixture
async def server(client: Client) -> AsyncIterator[HttpServer]:
    async with HttpServer(str(client.make_url("")).rstrip("/"), ROOT) as srv:
        yield srv


async def applied(server: HttpServer, doc: dict[str, Any], **kwargs: Any) -> Plan:
    plan = await make_plan(desired(doc, kwargs.pop("secret", SECRET)), server, **kwargs)
    await apply_plan(plan, server)
    return plan


def fields_of(plan: Plan, address: str) -> dict[str, tuple[str, str]]:
    [change] = [c for c in plan.changes if c.address == address]
    return {f.name: (f.before, f.after) for f in change.fields}


# -- create, idempotence, drift --------------------------------------------------------------
async def test_apply_creates_everything_then_plans_no_changes(server: HttpServer, client: Client) -> None:
    plan = await applied(server, document())
    assert [(c.action, c.address) for c in plan.changes] == [
        ("create", "policy deploy"), ("create", "mount ci/jwt/"), ("create", "config ci/jwt/"),
        ("create", "role ci/jwt/deploy"), ("create", "role ci/jwt/read"), ("create", "mount hmac/"),
        ("create", "config hmac/"),
    ]
    assert fields_of(plan, "config hmac/") == {"jwt_validation_hmac_secrets": ("", "(sensitive)")}
    assert SECRET not in plan.render()
    role = (await (await client.get("/v1/auth/ci/jwt/role/deploy", headers=H)).json())["data"]
    assert role["token_ttl"] == 600 and role["bound_claims"] == {"ref": "refs/heads/main"}
    tune = (await (await client.get("/v1/sys/auth/ci/jwt/tune", headers=H)).json())["data"]
    assert (tune["default_lease_ttl"], tune["max_lease_ttl"], tune["description"]) == (1200, 3600, "CI pipelines")
    again = await make_plan(desired(document()), server)
    assert again.changes == [] and again.extras == []
    assert "no changes" in again.render()


async def test_drift_through_the_api_is_shown_field_by_field_and_corrected(
    server: HttpServer, client: Client
) -> None:
    await applied(server, document())
    await client.post("/v1/auth/ci/jwt/role/deploy", headers=H,
                      json={"role_type": "jwt", "token_ttl": "30m", "bound_subject": "intruder"})
    await client.post("/v1/sys/auth/ci/jwt/tune", headers=H, json={"default_lease_ttl": "5m"})
    await client.put("/v1/sys/policies/acl/deploy", headers=H, json={"policy": 'path "*" { capabilities = ["sudo"] }'})
    plan = await make_plan(desired(document()), server)
    assert fields_of(plan, "role ci/jwt/deploy") == {"bound_subject": ('"intruder"', '""'), "token_ttl": ("1800", "600")}
    assert fields_of(plan, "mount ci/jwt/") == {"default_lease_ttl": ("300", "1200")}
    [policy] = [c for c in plan.changes if c.address == "policy deploy"]
    assert '-path "*" { capabilities = ["sudo"] }' in policy.text_diff
    await apply_plan(plan, server)
    assert (await make_plan(desired(document()), server)).changes == []
    role = (await (await client.get("/v1/auth/ci/jwt/role/deploy", headers=H)).json())["data"]
    assert (role["bound_subject"], role["token_ttl"]) == ("", 600)


async def test_an_apply_keeps_a_policys_check_and_set_and_expiration(server: HttpServer, client: Client) -> None:
    """A policy an operator guards with ``cas_required`` or lets expire (OpenBao's fields) is
    rewritten by apply as a check-and-set on the version it read, and keeps both: a policy
    meant to expire does not become permanent by an apply."""
    await applied(server, document())
    guarded = {"policy": 'path "*" { capabilities = ["sudo"] }', "cas": 1, "cas_required": True, "ttl": "1h"}
    assert (await client.put("/v1/sys/policies/acl/deploy", headers=H, json=guarded)).status == 204
    before = (await (await client.get("/v1/sys/policies/acl/deploy", headers=H)).json())["data"]
    await apply_plan(await make_plan(desired(document()), server), server)
    after = (await (await client.get("/v1/sys/policies/acl/deploy", headers=H)).json())["data"]
    assert after["policy"] == document()["policies"]["deploy"]
    assert (after["version"], after["cas_required"], after["expiration"]) == (3, True, before["expiration"])


@pytest.mark.parametrize("engine", ["http", "app"])
@pytest.mark.parametrize(("name", "refusal"), [
    ("deploy", "check-and-set parameter 1 did not match the current version 2"),  # changed after the plan
    ("late", "check-and-set parameter set to -1 on existing entry"),  # made after the plan
])
async def test_a_policy_changed_after_the_plan_is_not_overwritten(server: HttpServer, client: Client, engine: str,
                                                                   name: str, refusal: str) -> None:
    """The apply's check-and-set is on the version the plan read: a policy someone changes (or
    creates) between the plan and the apply refuses the write, naming the policy, and keeps
    what they wrote; a new plan shows it. ``app``: the same through ``AppServer`` (seeding)."""
    target: HttpServer | AppServer = server if engine == "http" else AppServer(app_of(client))
    await applied(server, document())
    doc = document()
    doc["policies"][name] = 'path "auth/ci/jwt/role/*" { capabilities = ["read"] }'
    plan = await make_plan(desired(doc), target)
    theirs = 'path "sys/mounts" { capabilities = ["read"] }'
    assert (await client.put(f"/v1/sys/policies/acl/{name}", headers=H, json={"policy": theirs})).status == 204
    with pytest.raises(GitopsError) as refused:
        await apply_plan(plan, target)
    assert refused.value.address == f"policy {name}" and refusal in str(refused.value)
    read = (await (await client.get(f"/v1/sys/policies/acl/{name}", headers=H)).json())["data"]
    assert read["policy"] == theirs
    again = await make_plan(desired(doc), target)
    assert [c.address for c in again.changes] == [f"policy {name}"]
    await apply_plan(again, target)


async def test_a_field_removed_from_the_file_is_reset_on_the_server(server: HttpServer, client: Client) -> None:
    await applied(server, document())
    doc = document()
    del doc["mounts"][0]["roles"]["deploy"]["bound_claims"]
    del doc["mounts"][0]["tune"]["max_lease_ttl"]
    plan = await applied(server, doc)
    assert fields_of(plan, "role ci/jwt/deploy") == {"bound_claims": ('{"ref": "refs/heads/main"}', "null")}
    assert fields_of(plan, "mount ci/jwt/") == {"max_lease_ttl": ("3600", "0")}  # 0: the server's
    role = (await (await client.get("/v1/auth/ci/jwt/role/deploy", headers=H)).json())["data"]
    assert not role["bound_claims"]
    assert (await make_plan(desired(doc), server)).changes == []


# -- secrets -----------------------------------------------------------------------------------
async def test_secrets_are_compared_by_fingerprint_never_rewritten_when_equal(
    server: HttpServer, client: Client
) -> None:
    await applied(server, document())
    config = (await (await client.get("/v1/auth/hmac/config", headers=H)).json())["data"]
    fingerprint = config["sensitive_fingerprints"]["jwt_validation_hmac_secrets"]
    assert fingerprint.startswith("hmac-sha256:") and SECRET not in str(config)
    assert (await make_plan(desired(document()), server)).changes == []  # same secret: no perpetual diff
    plan = await make_plan(desired(document(), OTHER_SECRET), server)
    assert fields_of(plan, "config hmac/") == {
        "jwt_validation_hmac_secrets": ("(sensitive)", "(sensitive) (changed)")
    }
    assert OTHER_SECRET not in plan.render()
    await apply_plan(plan, server)
    config = (await (await client.get("/v1/auth/hmac/config", headers=H)).json())["data"]
    assert config["sensitive_fingerprints"]["jwt_validation_hmac_secrets"] != fingerprint
    assert (await make_plan(desired(document(), OTHER_SECRET), server)).changes == []


async def test_fingerprints_survive_a_key_rotation(server: HttpServer, client: Client) -> None:
    await applied(server, document())
    assert (await client.post("/v1/sys/rotate", headers=H)).status == 204
    assert (await make_plan(desired(document()), server)).changes == []


async def test_sys_fingerprint_needs_update_on_the_secrets_path(server: HttpServer, client: Client) -> None:
    await applied(server, document())
    body = {"path": "auth/hmac/config", "values": {"jwt_validation_hmac_secrets": [SECRET]}}
    answer = await client.post("/v1/sys/fingerprint", headers=H, json=body)
    stored = (await (await client.get("/v1/auth/hmac/config", headers=H)).json())["data"]["sensitive_fingerprints"]
    assert (await answer.json())["data"]["fingerprints"] == stored
    policy = 'path "sys/fingerprint" { capabilities = ["update"] }\npath "auth/hmac/config" { capabilities = ["read"] }'
    await client.put("/v1/sys/policies/acl/fp", headers=H, json={"policy": policy})
    token = (await (await client.post("/v1/auth/token/create", headers=H, json={"policies": ["fp"]})).json())
    limited = {"X-Vault-Token": token["auth"]["client_token"]}
    assert (await client.post("/v1/sys/fingerprint", headers=limited, json=body)).status == 403
    refused = await client.post("/v1/sys/fingerprint", headers=H,
                                json={"path": "auth/hmac/config", "values": {"bound_issuer": "x"}})
    assert refused.status == 400
    assert (await refused.json())["errors"] == ['"bound_issuer" is not a secret field of auth/hmac/config']


async def test_a_secret_removed_from_the_file_is_shown_and_cleared(server: HttpServer) -> None:
    await applied(server, document())
    doc = document()
    doc["mounts"][1]["config"] = {"jwt_validation_pubkeys": [PEM]}
    plan = await applied(server, doc)
    assert fields_of(plan, "config hmac/")["jwt_validation_hmac_secrets"] == ("(sensitive)", "(none)")
    assert (await make_plan(desired(doc), server)).changes == []


# -- prune and targets -------------------------------------------------------------------------
async def test_extras_are_listed_and_deleted_only_with_prune(server: HttpServer, client: Client) -> None:
    await applied(server, document())
    await client.post("/v1/auth/ci/jwt/role/extra", headers=H, json={"role_type": "jwt", "user_claim": "sub",
                                                                     "bound_subject": "x"})
    await client.post("/v1/sys/auth/other", headers=H, json={"type": "jwt"})
    await client.put("/v1/sys/policies/acl/other", headers=H, json={"policy": 'path "x" { capabilities = ["read"] }'})
    plan = await applied(server, document())
    assert plan.changes == []
    assert plan.extras == ["policy other", "role ci/jwt/extra", "mount other/"]
    assert "--prune deletes them" in plan.render()
    assert (await client.get("/v1/auth/ci/jwt/role/extra", headers=H)).status == 200
    plan = await applied(server, document(), prune=True)
    assert [(c.action, c.address) for c in plan.changes] == [
        ("delete", "role ci/jwt/extra"), ("delete", "mount other/"), ("delete", "policy other"),
    ]
    assert (await client.get("/v1/auth/ci/jwt/role/extra", headers=H)).status == 404
    names = (await (await client.get("/v1/sys/policies/acl?list=true", headers=H)).json())["data"]["keys"]
    assert names == ["default", "deploy", "root"]  # built-ins are never pruned
    mounts = (await (await client.get("/v1/sys/auth", headers=H)).json())["data"]
    assert sorted(mounts) == ["ci/jwt/", "hmac/", "token/"]
    assert (await make_plan(desired(document()), server, prune=True)).changes == []


async def test_targets_narrow_the_plan(server: HttpServer, client: Client) -> None:
    await applied(server, document())
    await client.post("/v1/auth/ci/jwt/role/deploy", headers=H, json={"role_type": "jwt", "token_ttl": "30m"})
    await client.post("/v1/auth/ci/jwt/role/read", headers=H, json={"role_type": "jwt", "token_ttl": "30m"})
    await client.post("/v1/auth/ci/jwt/role/extra", headers=H, json={"role_type": "jwt", "user_claim": "sub",
                                                                     "bound_subject": "x"})
    plan = await make_plan(desired(document()), server, prune=True, targets=[parse_target("role:ci/jwt/READ")])
    assert [c.address for c in plan.changes] == ["role ci/jwt/read"]
    plan = await make_plan(desired(document()), server, prune=True, targets=[parse_target("mount:ci/jwt")])
    assert [c.address for c in plan.changes] == ["role ci/jwt/deploy", "role ci/jwt/read", "role ci/jwt/extra"]
    plan = await make_plan(desired(document()), server, prune=True, targets=[parse_target("policy:deploy")])
    assert plan.changes == [] and plan.unmatched == []
    plan = await make_plan(desired(document()), server, targets=[parse_target("role:ci/jwt/deplyo")])
    assert plan.unmatched == ["role:ci/jwt/deplyo"]
    assert "Targets that match nothing in the file or on the server: role:ci/jwt/deplyo" in plan.render()
    plan = await make_plan(desired(document()), server, prune=True, targets=[parse_target("role:ci/jwt/extra")])
    assert [(c.action, c.address) for c in plan.changes] == [("delete", "role ci/jwt/extra")]
    assert plan.unmatched == []
    with pytest.raises(ValueError, match="the kind is one of"):
        parse_target("secret:x")


# -- validation and failures ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["mounts"][0]["roles"]["deploy"].update(token_ttl="soon"),
         "gitops.yaml: mounts[0].roles.deploy: Field validation failed: error converting input soon for field "
         "\"token_ttl\""),
        (lambda d: d["mounts"][0]["roles"]["deploy"].update(bound_claim={"a": "b"}),
         "gitops.yaml: mounts[0].roles.deploy: unrecognized parameters: [bound_claim]; bound_claim: did you mean "
         "bound_claims?"),
        (lambda d: d["mounts"][0]["roles"]["read"].pop("bound_subject"),
         "gitops.yaml: mounts[0].roles.read: must have at least one bound constraint"),
        (lambda d: d["mounts"][0]["config"].update(bound_isuer="x"),
         "gitops.yaml: mounts[0].config: unrecognized parameters: [bound_isuer]; bound_isuer: did you mean "
         "bound_issuer?"),
        (lambda d: d["mounts"][0]["config"].update(jwks_url="https://idp/keys"),
         "gitops.yaml: mounts[0].config: exactly one of"),
        (lambda d: d["mounts"][0]["tune"].update(default_lease_tll="1h"),
         "gitops.yaml: mounts[0].tune: unrecognized parameters: [default_lease_tll]; default_lease_tll: did you "
         "mean default_lease_ttl?"),
        (lambda d: d["mounts"][1].update(type="ldap"),
         "gitops.yaml: mounts[1].type: plugin not found in the catalog: ldap"),
        (lambda d: d["mounts"].append({"path": "ci", "type": "jwt"}),
         "gitops.yaml: mounts[2].path: nested in ci/jwt/ (mounts[0]): mounts cannot nest"),
        (lambda d: d["policies"].update(bad='path "x" { capabilities = ["fly"] }'),
         "gitops.yaml: policies.bad: failed to parse policy"),
    ],
    ids=["bad duration", "typo in a role", "cross-field check", "typo in a config", "two key sources",
         "typo in a tune", "unknown type", "nested mounts", "bad policy"],
)
async def test_an_invalid_file_names_file_object_and_field_and_writes_nothing(
    server: HttpServer, client: Client, change: Any, message: str
) -> None:
    doc = document()
    change(doc)
    with pytest.raises(GitopsError) as caught:
        desired(doc)
    assert str(caught.value).startswith(message)
    mounts = (await (await client.get("/v1/sys/auth", headers=H)).json())["data"]
    assert sorted(mounts) == ["token/"]


async def test_a_refused_write_stops_the_apply_and_rolls_back_the_new_mount(
    server: HttpServer, client: Client
) -> None:
    doc = document()
    # Passes every offline check; the server refuses it when it fetches the keys.
    doc["mounts"][1]["config"] = {"jwks_url": "http://127.0.0.1:1/keys"}
    doc["mounts"].append({"path": "later", "type": "jwt"})
    plan = await make_plan(desired(doc), server)
    with pytest.raises(GitopsError) as caught:
        await apply_plan(plan, server)
    text = str(caught.value)
    assert text.startswith("gitops.yaml: mounts[1].config: POST auth/hmac/config: 400 ")
    assert "(applied 6 of 8 changes; nothing after this one); mount hmac/ created by this run was disabled again" \
        in text
    mounts = (await (await client.get("/v1/sys/auth", headers=H)).json())["data"]
    assert sorted(mounts) == ["ci/jwt/", "token/"]  # no half-made hmac/, nothing after it


async def test_a_mount_of_another_type_is_refused(server: HttpServer, client: Client) -> None:
    await client.post("/v1/sys/auth/hmac", headers=H, json={"type": "oidc"})
    with pytest.raises(GitopsError, match=r"^gitops\.yaml: mounts\[1\]\.type: hmac/ is mounted with type oidc"):
        await make_plan(desired(document()), server)


async def test_a_server_without_fingerprints_is_an_error_not_a_guess(client: Client) -> None:
    async with HttpServer(str(client.make_url("")).rstrip("/"), "not-a-token") as srv:
        with pytest.raises(ServerError, match="403 permission denied"):
            await make_plan(desired(document()), srv)


# -- export ---------------------------------------------------------------------------------------
async def test_export_then_apply_to_another_server_round_trips(
    server: HttpServer, aiohttp_client: AiohttpClient
) -> None:
    await applied(server, document())
    exported = await export_state(server)
    assert exported.document["mounts"][0]["tune"] == {"default_lease_ttl": "20m", "max_lease_ttl": "1h"}
    assert exported.document["mounts"][1]["config"] == {
        "jwt_validation_hmac_secrets": "${env:AUTHMOUNT_HMAC_JWT_VALIDATION_HMAC_SECRETS}"
    }
    assert any("AUTHMOUNT_HMAC_JWT_VALIDATION_HMAC_SECRETS" in note for note in exported.notes)
    text = dump_yaml(exported, header="exported")
    assert text.startswith("# exported\n") and "-----BEGIN PUBLIC KEY-----\n" in text
    import yaml

    doc = yaml.safe_load(text)
    base = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    other: Client = await aiohttp_client(make_test_server(create_app(dataclasses.replace(base))))
    settings = settings_from_mapping(doc)
    fresh = from_sections(settings.mounts, settings.policies, source="export.yaml",
                          env={"AUTHMOUNT_HMAC_JWT_VALIDATION_HMAC_SECRETS": SECRET})
    async with HttpServer(str(other.make_url("")).rstrip("/"), ROOT) as target:
        plan = await make_plan(fresh, target)
        await apply_plan(plan, target)
        assert (await make_plan(fresh, target)).changes == []
        assert (await export_state(target)).document == exported.document
    # and the file applies to the server it came from without a change (the secret included)
    assert (await make_plan(fresh, server)).changes == []


class VaultLike:
    """What Vault or OpenBao answer (no fingerprints, fields authmount lacks, other methods)."""

    name = "https://vault.example.com"

    async def mounts(self) -> dict[str, LiveMount]:
        return {
            "token/": LiveMount("token/", "token", "", {}),
            "people/": LiveMount("people/", "userpass", "", {}),
            "sso/": LiveMount("sso/", "oidc", "SSO", {"default_lease_ttl": 0, "max_lease_ttl": 0,
                                                       "force_no_cache": False, "token_type": "default-service"}),
        }

    async def read(self, path: str) -> dict[str, Any] | None:
        if path == "auth/sso/config":
            return {"oidc_discovery_url": "https://idp.example.com", "oidc_client_id": "app", "status": "valid",
                    "override_allowed_server_names": ["idp.internal"], "provider_config": {},
                    "oidc_fips_mode": True}  # a field of a later Vault, which authmount lacks
        if path == "auth/sso/role/web":
            return {"role_type": "oidc", "user_claim": "email", "allowed_redirect_uris": ["https://app/cb"],
                    "callback_mode": "client", "oidc_disable_confirmation": True, "token_ttl": 3600}
        return None

    async def keys(self, path: str) -> list[str]:
        return ["web"] if path == "auth/sso/role" else []

    async def policies(self) -> list[str]:
        return ["default", "root"]

    async def read_policy(self, name: str) -> str | None:
        return None

    async def fingerprints(self, path: str, values: dict[str, Any]) -> dict[str, str]:
        raise ServerError("https://vault.example.com has no sys/fingerprint (not an authmount server?)", 404)


async def test_export_from_a_vault_names_what_it_cannot_carry() -> None:
    exported = await export_state(VaultLike())  # type: ignore[arg-type]  # reads only
    [mount] = exported.document["mounts"]
    assert mount == {
        "path": "sso", "type": "oidc", "description": "SSO",
        "config": {"oidc_discovery_url": "https://idp.example.com", "oidc_client_id": "app",
                   "override_allowed_server_names": ["idp.internal"],  # OpenBao's field, carried
                   "oidc_client_secret": "${env:AUTHMOUNT_SSO_OIDC_CLIENT_SECRET}"},
        "roles": {"web": {"role_type": "oidc", "user_claim": "email", "allowed_redirect_uris": ["https://app/cb"],
                          "oidc_disable_confirmation": True, "token_ttl": "1h"}},  # OpenBao's field, carried
    }
    assert exported.notes == [
        "not exported: mount people/ of type userpass (authmount has jwt and oidc)",
        "secret: mounts[0].config.oidc_client_secret is written as ${env:AUTHMOUNT_SSO_OIDC_CLIENT_SECRET}: set "
        "that variable before apply",
        "not exported: mounts[0].config.oidc_fips_mode = True (authmount has no such field)",
        "not exported: the built-in policies default and root (declare default to manage it)",
    ]



# -- token roles -----------------------------------------------------------------------------
TOKEN_ROLES = {
    "ci": {"allowed_policies": ["deploy"], "orphan": True, "token_period": "1h", "path_suffix": "v1.0"},
    "Batch": {"token_type": "batch", "orphan": True, "renewable": False, "token_bound_cidrs": ["10.0.0.0/8"]},
}


async def test_token_roles_are_applied_compared_and_pruned(server: HttpServer, client: Client) -> None:
    """Token roles in the file: created, then no changes, drift corrected field by field, a
    role not in the file listed, deleted only with prune; names keep their case. Only the
    current spellings are written: no deprecated one beside them, which the server warns of."""
    plan = await make_plan(desired({"token_roles": TOKEN_ROLES}), server)
    lines: list[str] = []
    await apply_plan(plan, server, report=lines.append)
    assert lines == ["+ token-role ci: created", "+ token-role Batch: created"]
    assert [(c.action, c.address) for c in plan.changes] == [("create", "token-role ci"),
                                                             ("create", "token-role Batch")]
    assert fields_of(plan, "token-role ci")["token_period"] == ("", "3600")
    role = (await (await client.get("/v1/auth/token/roles/Batch", headers=H)).json())["data"]
    assert role["token_type"] == "batch" and role["token_bound_cidrs"] == ["10.0.0.0/8"]
    assert (await make_plan(desired({"token_roles": TOKEN_ROLES}), server)).changes == []
    await client.post("/v1/auth/token/roles/ci", headers=H, json={"allowed_policies": ["deploy", "admin"],
                                                                   "token_num_uses": 2})
    await client.post("/v1/auth/token/roles/extra", headers=H, json={})
    plan = await make_plan(desired({"token_roles": TOKEN_ROLES}), server)
    assert fields_of(plan, "token-role ci") == {"allowed_policies": ('["admin", "deploy"]', '["deploy"]'),
                                                "token_num_uses": ("2", "0")}
    assert plan.extras == ["token-role extra"]
    await apply_plan(await make_plan(desired({"token_roles": TOKEN_ROLES}), server, prune=True), server)
    assert (await make_plan(desired({"token_roles": TOKEN_ROLES}), server, prune=True)).changes == []
    keys = (await (await client.request("LIST", "/v1/auth/token/roles", headers=H)).json())["data"]["keys"]
    assert sorted(keys) == ["Batch", "ci"]
    narrowed = await make_plan(desired({"token_roles": {}}), server, prune=True,
                               targets=[parse_target("token-role:Batch")])
    assert [(c.action, c.address) for c in narrowed.changes] == [("delete", "token-role Batch")]


@pytest.mark.parametrize(("roles", "message"), [
    ({"ci": {"allowed_policy": ["a"]}}, "gitops.yaml: token_roles.ci: unrecognized parameters: [allowed_policy]; "
                                         "allowed_policy: did you mean allowed_policies?"),
    ({"ci": {"token_type": "batch"}}, "'token_type' cannot be 'batch' when role is set to generate non-orphan tokens"),
    ({"a b": {}}, "invalid token role name 'a b'"),
])
async def test_an_invalid_token_role_is_refused_before_any_write(
    server: HttpServer, client: Client, roles: dict[str, Any], message: str
) -> None:
    with pytest.raises(GitopsError) as exc:
        desired({"token_roles": roles})
    assert message in str(exc.value)
    assert (await client.request("LIST", "/v1/auth/token/roles", headers=H)).status == 404


async def test_token_roles_export_and_apply_round_trip(server: HttpServer, client: Client) -> None:
    await applied(server, {"token_roles": TOKEN_ROLES})
    exported = await export_state(server)
    assert exported.document["token_roles"] == {
        "Batch": {"orphan": True, "renewable": False, "token_type": "batch", "token_bound_cidrs": ["10.0.0.0/8"]},
        "ci": {"allowed_policies": ["deploy"], "orphan": True, "path_suffix": "v1.0", "token_period": "1h"},
    }
    assert (await make_plan(desired(exported.document), server)).changes == []


# -- identity groups -----------------------------------------------------------------------------
GROUPS: dict[str, dict[str, Any]] = {
    "Platform-Admins": {"policies": ["admin", "Audit"], "metadata": {"team": "platform"},
                        "alias": {"mount": "ci/jwt", "name": "platform-admins@corp"}},
    "readers": {"policies": ["read"]},
    "ops": {"type": "external", "policies": ["ops"]},
}


async def _identity(client: Client, path: str) -> dict[str, Any]:
    """``GET identity/<path>``'s data (``group/name/ops``, ``entity/name/alice``)."""
    resp = await client.get(f"/v1/identity/{path}", headers=H)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = (await resp.json())["data"]
    return data


async def _group(client: Client, name: str) -> dict[str, Any]:
    return await _identity(client, f"group/name/{name}")


async def test_groups_with_aliases_are_applied_compared_and_pruned(server: HttpServer, client: Client) -> None:
    """An external group and its alias on a mount the same run makes (its accessor looked up
    at the write), an internal group, an external one without alias: created after the
    mounts, then no changes; drift in policies and the alias shown field by field and
    corrected; a group not in the file listed, deleted only with prune."""
    doc = document(groups=GROUPS)
    plan = await applied(server, doc)
    assert [c.address for c in plan.changes if c.kind == "group"] == [
        "group Platform-Admins", "group readers", "group ops"]
    assert [c.kind for c in plan.changes].index("group") > [c.kind for c in plan.changes].index("mount")
    assert fields_of(plan, "group Platform-Admins")["alias"] == ("", '{"mount": "ci/jwt/", "name": '
                                                                    '"platform-admins@corp"}')
    admins = await _group(client, "platform-admins")
    accessor = (await (await client.get("/v1/sys/auth", headers=H)).json())["data"]["ci/jwt/"]["accessor"]
    assert (admins["name"], admins["type"], admins["policies"]) == ("Platform-Admins", "external", ["admin", "audit"])
    assert (admins["alias"]["name"], admins["alias"]["mount_accessor"]) == ("platform-admins@corp", accessor)
    assert (await _group(client, "readers"))["type"] == "internal"
    assert (await make_plan(desired(doc), server)).changes == []

    await client.post(f"/v1/identity/group/id/{admins['id']}", headers=H, json={"policies": ["admin"]})
    await client.post(f"/v1/identity/group-alias/id/{admins['alias']['id']}", headers=H,
                      json={"name": "someone-else", "mount_accessor": accessor, "canonical_id": admins["id"]})
    await client.post("/v1/identity/group", headers=H, json={"name": "extra"})
    plan = await make_plan(desired(doc), server)
    assert fields_of(plan, "group Platform-Admins") == {
        "policies": ('["admin"]', '["admin", "audit"]'),
        "alias": ('{"mount": "ci/jwt/", "name": "someone-else"}', '{"mount": "ci/jwt/", "name": "platform-admins@corp"}'),
    }
    assert plan.extras == ["group extra"]
    await apply_plan(await make_plan(desired(doc), server, prune=True), server)
    assert (await make_plan(desired(doc), server, prune=True)).changes == []
    fixed = await _group(client, "platform-admins")
    assert fixed["alias"]["id"] == admins["alias"]["id"] and fixed["alias"]["name"] == "platform-admins@corp"
    assert (await client.get("/v1/identity/group/name/extra", headers=H)).status == 404

    without_alias = {**GROUPS, "Platform-Admins": {k: v for k, v in GROUPS["Platform-Admins"].items() if k != "alias"}}
    without_alias["Platform-Admins"]["type"] = "external"
    plan = await applied(server, document(groups=without_alias))
    assert fields_of(plan, "group Platform-Admins") == {"alias": ('{"mount": "ci/jwt/", "name": '
                                                                  '"platform-admins@corp"}', "(none)")}
    assert (await _group(client, "platform-admins"))["alias"] == {}
    narrowed = await make_plan(desired(document(groups={})), server, prune=True, targets=[parse_target("group:OPS")])
    assert [(c.action, c.address) for c in narrowed.changes] == [("delete", "group ops")]


#: (objects, message): identity objects a file declares wrongly, groups then entities.
GROUP_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"g": {"policy": ["a"]}}, "gitops.yaml: groups.g: unrecognized parameters: [policy]; policy: did you mean "
                               "policies?"),
    ({"g": {"policies": ["root"]}}, "policies cannot contain root"),
    ({"g": {"type": "weird"}}, 'invalid group type "weird"'),
    ({"g": {"type": "internal", "alias": {"mount": "ci/jwt", "name": "x"}}}, "an alias is for an external group"),
    ({"g": {"alias": {"mount": "ci/jwt"}}}, "alias: give {mount: <mount path>, name: <the IdP's group name>}"),
    ({"g": {"alias": {"mount": "ci/jwt", "name": "x", "mnt": "y"}}}, "(unknown keys: mnt)"),
    ({"g": {"alias": {"mount": "nowhere", "name": "x"}}}, "gitops.yaml: groups.g.alias.mount: no mount at nowhere/ on "
                                                          "the server or in the file"),
    ({"g": {"type": "external", "member_entity_ids": ["x"]}}, "member entities can't be set manually"),
    ({"a/b": {}}, 'invalid group name "a/b"'),
    ({"g": {"metadata": {"a b": "v"}}}, 'invalid group metadata: failed to load metadata pair ("a b", "v"): key '
                                       "contains invalid characters"),
    ({"g": {}, "G": {}}, "declared twice (group names are case-insensitive)"),
]


async def test_a_groups_type_cannot_change(server: HttpServer, client: Client) -> None:
    await applied(server, document(groups={"g": {}}))
    with pytest.raises(GitopsError, match="its type is internal on the server and external in the file"):
        await make_plan(desired(document(groups={"g": {"type": "external"}})), server)


async def test_groups_export_and_apply_round_trip(server: HttpServer, client: Client) -> None:
    await applied(server, document(groups=GROUPS))
    exported = await export_state(server)
    assert exported.document["groups"] == {
        "ops": {"type": "external", "policies": ["ops"]},
        "Platform-Admins": {"policies": ["admin", "audit"], "metadata": {"team": "platform"},
                            "alias": {"mount": "ci/jwt", "name": "platform-admins@corp"}},
        "readers": {"policies": ["read"]},
    }
    assert (await make_plan(desired({"groups": exported.document["groups"]}), server)).changes == []


async def test_the_settings_groups_are_applied_at_start(aiohttp_client: AiohttpClient) -> None:
    """Seeding writes groups through the identity backend itself (``AppServer``), the alias on
    a mount the same seeding makes."""
    settings = dataclasses.replace(settings_from_mapping({
        "storage": {"type": "memory"},
        "mounts": [{"path": "sso", "type": "oidc"}],
        "groups": {"admins": {"policies": ["admin"], "alias": {"mount": "sso", "name": "admins@corp"}}},
    }), dev=True, dev_root_token_id=ROOT)
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    group = await _group(client, "admins")
    accessor = (await (await client.get("/v1/sys/auth", headers=H)).json())["data"]["sso/"]["accessor"]
    assert (group["policies"], group["alias"]["name"], group["alias"]["mount_accessor"]) == (
        ["admin"], "admins@corp", accessor)


# -- entities ---------------------------------------------------------------------------------------
ENTITIES: dict[str, dict[str, Any]] = {
    "Alice": {"policies": ["ops"], "metadata": {"team": "platform"},
              "aliases": [{"mount": "ci/jwt", "name": "alice@corp"}, {"mount": "hmac", "name": "alice"}]},
    "svc-deploy": {"policies": ["deploy"], "disabled": True},
}


async def _entity(client: Client, name: str) -> dict[str, Any]:
    return await _identity(client, f"entity/name/{name}")


async def test_entities_with_aliases_are_applied_compared_and_pruned(server: HttpServer, client: Client) -> None:
    """People and workloads declared by name with their aliases on two mounts the same run
    makes: created, then no changes; an alias a login already used moves to the entity;
    drift shown and corrected; the entities logins made are never listed or pruned."""
    plan = await applied(server, document(entities=ENTITIES))
    assert [c.address for c in plan.changes if c.kind == "entity"] == ["entity Alice", "entity svc-deploy"]
    alice = await _entity(client, "alice")
    assert (alice["name"], alice["policies"], alice["metadata"]) == ("Alice", ["ops"], {"team": "platform"})
    assert sorted((a["mount_path"], a["name"]) for a in alice["aliases"]) == [
        ("auth/ci/jwt/", "alice@corp"), ("auth/hmac/", "alice")]
    assert (await _entity(client, "svc-deploy"))["disabled"] is True
    assert (await make_plan(desired(document(entities=ENTITIES)), server)).changes == []

    # drift: a policy, an alias deleted, an entity made through the API
    await client.post(f"/v1/identity/entity/id/{alice['id']}", headers=H, json={"policies": ["ops", "extra"]})
    hmac_alias = next(a for a in alice["aliases"] if a["mount_path"] == "auth/hmac/")
    await client.delete(f"/v1/identity/entity-alias/id/{hmac_alias['id']}", headers=H)
    await client.post("/v1/identity/entity", headers=H, json={"name": "bob"})
    await client.post("/v1/identity/entity", headers=H, json={})  # named entity_<hex>: never apply's
    plan = await make_plan(desired(document(entities=ENTITIES)), server)
    assert fields_of(plan, "entity Alice") == {
        "policies": ('["extra", "ops"]', '["ops"]'),
        "aliases": ('[{"mount": "ci/jwt/", "name": "alice@corp"}]',
                    '[{"mount": "ci/jwt/", "name": "alice@corp"}, {"mount": "hmac/", "name": "alice"}]'),
    }
    assert plan.extras == ["entity bob"]
    await apply_plan(await make_plan(desired(document(entities=ENTITIES)), server, prune=True), server)
    assert (await make_plan(desired(document(entities=ENTITIES)), server, prune=True)).changes == []
    names = (await (await client.request("LIST", "/v1/identity/entity/name", headers=H)).json())["data"]["keys"]
    assert sorted(n for n in names if not n.startswith("entity_")) == ["Alice", "svc-deploy"] and len(names) == 3

    fewer = {"Alice": {**ENTITIES["Alice"], "aliases": [{"mount": "hmac", "name": "alice"}]}}
    plan = await applied(server, document(entities=fewer), prune=True)
    assert [(c.action, c.address) for c in plan.changes] == [("update", "entity Alice"),
                                                           ("delete", "entity svc-deploy")]
    assert [a["mount_path"] for a in (await _entity(client, "alice"))["aliases"]] == ["auth/hmac/"]


ENTITY_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"e": {"policy": ["a"]}}, "gitops.yaml: entities.e: unrecognized parameters: [policy]; policy: did you mean "
                               "policies?"),
    ({"e": {"policies": ["root"]}}, "policies cannot contain root"),
    ({"e": {"aliases": [{"mount": "ci/jwt"}]}}, "aliases[0]: give {mount: <mount path>, name: <the login's alias "
                                                "name>}"),
    ({"e": {"aliases": [{"mount": "ci/jwt", "name": "a"}, {"mount": "ci/jwt/", "name": "b"}]}},
     "two aliases on ci/jwt/: an entity has one alias per mount"),
    ({"e": {"aliases": [{"mount": "ci/jwt", "name": "a"}]}, "f": {"aliases": [{"mount": "ci/jwt", "name": "a"}]}},
     "alias a on ci/jwt/ is also e's"),
    ({"e": {"aliases": [{"mount": "nowhere", "name": "a"}]}}, "no mount at nowhere/ on the server or in the file"),
    ({"entity_0123456789abcdef": {}}, "invalid entity name 'entity_0123456789abcdef'"),
    ({"a b": {}}, "invalid entity name 'a b'"),
    ({"e": {"metadata": {"vault-k": "v"}}}, 'entities.e.metadata: invalid entity metadata: failed to load metadata '
                                           'pair ("vault-k", "v"): key prefix "vault-" is reserved for internal use'),
    ({"e": {}, "E": {}}, "declared twice (entity names are case-insensitive)"),
]


@pytest.mark.parametrize(("section", "objects", "message"), [
    *(("groups", o, m) for o, m in GROUP_REFUSALS), *(("entities", o, m) for o, m in ENTITY_REFUSALS)])
async def test_an_invalid_identity_object_is_refused_before_any_write(
    server: HttpServer, client: Client, section: str, objects: dict[str, Any], message: str
) -> None:
    with pytest.raises(GitopsError) as exc:
        await make_plan(desired(document(**{section: objects})), server)
    assert message in str(exc.value)
    for listing in ("group/id", "entity/id"):
        assert (await client.request("LIST", f"/v1/identity/{listing}", headers=H)).status == 404
    assert (await client.get("/v1/sys/auth/ci/jwt", headers=H)).status == 400  # no mount made either


async def test_entities_export_and_apply_round_trip(server: HttpServer, client: Client) -> None:
    await applied(server, document(entities=ENTITIES))
    exported = await export_state(server)
    assert exported.document["entities"] == {
        "Alice": {"policies": ["ops"], "metadata": {"team": "platform"},
                  "aliases": [{"mount": "ci/jwt", "name": "alice@corp"}, {"mount": "hmac", "name": "alice"}]},
        "svc-deploy": {"policies": ["deploy"], "disabled": True},
    }
    assert (await make_plan(desired({"entities": exported.document["entities"]}), server)).changes == []


async def test_an_entity_alias_a_login_already_used_moves_to_the_declared_entity(
    server: HttpServer, client: Client
) -> None:
    await applied(server, document())

    async def login() -> str:
        claims = {k: v for k, v in default_claims(sub="reader", iss="https://ci.example.com").items() if k != "aud"}
        jwt = make_token(claims, key=KEY)
        resp = await client.post("/v1/auth/ci/jwt/login", json={"role": "read", "jwt": jwt})
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["auth"]["entity_id"])

    made_by_login = await login()
    await applied(server, document(entities={"reader-bot": {"aliases": [{"mount": "ci/jwt", "name": "reader"}]}}))
    declared = (await _entity(client, "reader-bot"))["id"]
    assert declared != made_by_login and await login() == declared


async def test_identity_names_with_spaces_and_other_characters_apply_and_export(server: HttpServer) -> None:
    """Names a ``identity/<kind>/name/<name>`` path would not take (a space) or would take
    quoted (``%``, ``?``, non-ASCII): apply finds them by lookup, so a second run has no
    changes, and export writes them back."""
    groups = {"Release Team": {"policies": ["a"], "alias": {"mount": "ci/jwt", "name": "Release Team@corp"}},
              "ünïcode": {"policies": ["b"]}, "pct%20x": {}, "q?x": {}}
    entities = {"Zoë": {"policies": ["c"], "aliases": [{"mount": "ci/jwt", "name": "zoe@corp"}]}}
    doc = document(groups=groups, entities=entities)
    await applied(server, doc)
    assert (await make_plan(desired(doc), server)).changes == []
    exported = await export_state(server)
    assert set(exported.document["groups"]) == set(groups) and set(exported.document["entities"]) == {"Zoë"}
    plan = await make_plan(desired(document(groups={}, entities={})), server, prune=True)
    assert sorted(c.address for c in plan.changes if c.action == "delete" and c.kind in ("group", "entity")) == [
        "entity Zoë", "group Release Team", "group pct%20x", "group q?x", "group ünïcode"]
    await apply_plan(plan, server)
    assert (await export_state(server)).document.get("groups") is None


async def test_groups_that_swap_their_aliases_apply_in_one_run(server: HttpServer, client: Client) -> None:
    """A name one group gives up and another takes in the same file (here two groups swap):
    the changed aliases are deleted first, so no write finds its name taken."""
    before = {"a": {"alias": {"mount": "ci/jwt", "name": "x"}}, "b": {"alias": {"mount": "ci/jwt", "name": "y"}}}
    after = {"a": {"alias": {"mount": "ci/jwt", "name": "y"}}, "b": {"alias": {"mount": "ci/jwt", "name": "x"}}}
    await applied(server, document(groups=before))
    plan = await applied(server, document(groups=after))
    assert [c.address for c in plan.changes] == ["group a", "group b"]
    assert [(await _group(client, g))["alias"]["name"] for g in ("a", "b")] == ["y", "x"]
    assert (await make_plan(desired(document(groups=after)), server)).changes == []


async def test_a_group_pruned_gives_up_its_alias_name_to_another_in_the_same_run(
    server: HttpServer, client: Client
) -> None:
    await applied(server, document(groups={"old": {"alias": {"mount": "ci/jwt", "name": "admins"}}}))
    plan = await applied(server, document(groups={"new": {"alias": {"mount": "ci/jwt", "name": "admins"}}}),
                         prune=True)
    assert [(c.action, c.address) for c in plan.changes] == [("delete", "group old"), ("create", "group new")]
    assert (await _group(client, "new"))["alias"]["name"] == "admins"


# -- policies with identity templates and their flags ------------------------------------------
TEMPLATED = 'path "auth/ci/jwt/role/{{identity.entity.aliases.auth_jwt_1.metadata.project}}" { capabilities = ["read"] }\n'


async def test_a_policys_template_flags_are_applied_compared_and_exported(server: HttpServer, client: Client) -> None:
    """``{policy, allow_slashes_in_identity_templates, ...}`` in the file: written with the
    policy, a flag changed on the server is drift shown as its own line, and export writes
    the flags back (a policy with none stays plain text)."""
    flagged = {"policy": TEMPLATED, "allow_slashes_in_identity_templates": True}
    doc = document(policies={"deploy": TEMPLATED, "tmpl": flagged})
    plan = await applied(server, doc)
    [change] = [c for c in plan.changes if c.address == "policy tmpl"]
    assert change.text_diff[-1] == "+ allow_slashes_in_identity_templates: true"
    read = (await (await client.get("/v1/sys/policies/acl/tmpl", headers=H)).json())["data"]
    assert read["allow_slashes_in_identity_templates"] is True and read["allow_wildcards_in_identity_templates"] is False
    assert (await make_plan(desired(doc), server)).changes == []
    await client.put("/v1/sys/policies/acl/tmpl", headers=H, json={"policy": TEMPLATED})  # the flag dropped
    drift = await make_plan(desired(doc), server)
    assert [(c.action, c.address, c.text_diff) for c in drift.changes] == [
        ("update", "policy tmpl", ["~ allow_slashes_in_identity_templates: false -> true"])]
    await apply_plan(drift, server)
    exported = (await export_state(server)).document["policies"]
    assert exported == {"deploy": TEMPLATED, "tmpl": flagged}
    unflagged = document(policies={"deploy": TEMPLATED, "tmpl": TEMPLATED})
    back = await applied(server, unflagged)
    assert [c.text_diff for c in back.changes if c.address == "policy tmpl"] == [
        ["~ allow_slashes_in_identity_templates: true -> false"]]
    assert (await (await client.get("/v1/sys/policies/acl/tmpl", headers=H)).json())["data"][
        "allow_slashes_in_identity_templates"] is False


@pytest.mark.parametrize(("value", "message"), [
    ({"policy": TEMPLATED, "allow_slashes": True},
     "policies.tmpl: unknown key 'allow_slashes' (a policy with its flags takes policy, "
     "allow_slashes_in_identity_templates, allow_wildcards_in_identity_templates)"),
    ({"policy": TEMPLATED, "allow_wildcards_in_identity_templates": "yes"},
     "policies.tmpl.allow_wildcards_in_identity_templates: must be true or false"),
    ({"policy": 5}, "policies.tmpl.policy: must be HCL or JSON text"),
])
def test_a_policys_flags_are_checked(value: Any, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        settings_from_mapping(document(policies={"tmpl": value}))


# -- nested groups by name -----------------------------------------------------------------------
async def test_nested_groups_are_applied_by_name_compared_and_exported(server: HttpServer, client: Client) -> None:
    """``member_groups`` names the groups nested in an internal group, also one the same run
    makes (declared after it in the file): written after every group, a nesting changed over
    the API is drift, and export writes the names back; a group left without ``member_groups``
    holds none."""
    groups = {
        "org": {"policies": ["org"], "member_groups": ["team"]},
        "team": {"policies": ["team"], "member_groups": ["IDP-devs"]},
        "idp-devs": {"type": "external"},
    }
    doc = document(groups=groups)
    plan = await applied(server, doc)
    nested = [(c.action, c.address, [(f.name, f.after) for f in c.fields]) for c in plan.changes
              if any(f.name == "member_groups" for f in c.fields)]
    assert nested == [("update", "group org", [("member_groups", '["team"]')]),
                      ("update", "group team", [("member_groups", '["IDP-devs"]')])]
    team = await _group(client, "team")
    idp = await _group(client, "idp-devs")
    assert team["member_group_ids"] == [idp["id"]] and team["parent_group_ids"] == [(await _group(client, "org"))["id"]]
    assert (await make_plan(desired(doc), server)).changes == []
    await client.post(f"/v1/identity/group/id/{team['id']}", headers=H, json={"member_group_ids": []})
    drift = await make_plan(desired(doc), server)
    assert [(c.address, [(f.name, f.before, f.after) for f in c.fields]) for c in drift.changes] == [
        ("group team", [("member_groups", "(none)", '["IDP-devs"]')])]
    await apply_plan(drift, server)
    exported = (await export_state(server)).document["groups"]
    assert (exported["org"]["member_groups"], exported["team"]["member_groups"]) == (["team"], ["idp-devs"])
    flat = await applied(server, document(groups={**groups, "org": {"policies": ["org"]}}))
    assert [c.address for c in flat.changes] == ["group org"]
    assert (await _group(client, "org"))["member_group_ids"] is None


@pytest.mark.parametrize(("groups", "message"), [
    ({"e": {"type": "external", "member_groups": ["x"]}}, "groups.e.member_groups: member groups can't be set for "
                                                          "external groups"),
    ({"g": {"member_groups": ["G"]}}, "groups.g.member_groups: a group cannot be its own member group"),
])
def test_nesting_a_file_cannot_hold_is_refused(groups: dict[str, Any], message: str) -> None:
    with pytest.raises(GitopsError, match=re.escape(message)):
        desired(document(groups=groups))


async def test_a_member_group_that_is_nowhere_is_refused_before_any_write(server: HttpServer, client: Client) -> None:
    with pytest.raises(GitopsError, match=re.escape("groups.g.member_groups: no group ghost on the server or in the file")):
        await make_plan(desired(document(groups={"g": {"member_groups": ["ghost"]}})), server)
    assert (await client.get("/v1/identity/group/name/g", headers=H)).status == 404


# -- identity tokens -----------------------------------------------------------------------------
ID_KEYS: dict[str, dict[str, Any]] = {
    "ci": {"algorithm": "ES256", "allowed_client_ids": ["deploy-service"], "verification_ttl": "2h"},
}
ID_ROLES: dict[str, dict[str, Any]] = {
    "deploy": {"key": "ci", "client_id": "deploy-service", "ttl": "1h",
               "template": '{"groups": {{identity.entity.groups.names}}}'},
    "Open": {"key": "default"},  # no client_id: the server makes one up, and apply keeps it
}


async def test_identity_tokens_are_applied_compared_and_pruned(server: HttpServer, client: Client) -> None:
    """Identity token keys and roles: created (keys first), then no changes (a role's made-up
    client_id is not compared), drift corrected, undeclared ones pruned (roles before their
    key; the server's default key never)."""
    doc = {"identity_token_keys": ID_KEYS, "identity_token_roles": ID_ROLES}
    plan = await applied(server, doc)
    assert [(c.action, c.address) for c in plan.changes] == [
        ("create", "oidc-key ci"), ("create", "oidc-role deploy"), ("create", "oidc-role Open")]
    assert fields_of(plan, "oidc-key ci")["verification_ttl"] == ("", "7200")
    key = (await (await client.get("/v1/identity/oidc/key/ci", headers=H)).json())["data"]
    assert key == {"algorithm": "ES256", "allowed_client_ids": ["deploy-service"], "rotation_period": 86400,
                   "verification_ttl": 7200}
    made_up = (await (await client.get("/v1/identity/oidc/role/Open", headers=H)).json())["data"]["client_id"]
    assert len(made_up) == 26
    assert (await make_plan(desired(doc), server)).changes == []
    await client.post("/v1/identity/oidc/role/deploy", headers=H, json={"ttl": "30m"})
    await client.post("/v1/identity/oidc/key/extra", headers=H, json={})
    await client.post("/v1/identity/oidc/role/extra", headers=H, json={"key": "extra"})
    plan = await make_plan(desired(doc), server)
    assert fields_of(plan, "oidc-role deploy") == {"ttl": ("1800", "3600")}
    assert plan.extras == ["oidc-key extra", "oidc-role extra"]
    pruned = await make_plan(desired(doc), server, prune=True)
    deletes = [c.address for c in pruned.changes if c.action == "delete"]
    assert deletes == ["oidc-role extra", "oidc-key extra"]  # the role first: a key in use is not deleted
    await apply_plan(pruned, server)
    assert (await make_plan(desired(doc), server, prune=True)).changes == []
    keys = (await (await client.request("LIST", "/v1/identity/oidc/key", headers=H)).json())["data"]["keys"]
    assert keys == ["ci", "default"]
    role = (await (await client.get("/v1/identity/oidc/role/Open", headers=H)).json())["data"]
    assert role["client_id"] == made_up
    narrowed = await make_plan(desired({"identity_token_roles": {"deploy": ID_ROLES["deploy"]}}), server, prune=True,
                               targets=[parse_target("oidc-role:Open")])
    assert [(c.action, c.address) for c in narrowed.changes] == [("delete", "oidc-role Open")]


@pytest.mark.parametrize(("doc", "message"), [
    ({"identity_token_keys": {"k": {"algorithm": "HS256"}}},
     'gitops.yaml: identity_token_keys.k: unknown signing algorithm "HS256"'),
    ({"identity_token_keys": {"k": {"rotation_period": "30s"}}}, "rotation_period must be at least one minute"),
    ({"identity_token_keys": {"k": {"algorith": "ES256"}}}, "algorith: did you mean algorithm?"),
    ({"identity_token_keys": {"a b": {}}}, "invalid key name 'a b'"),
    ({"identity_token_roles": {"r": {"ttl": "1h"}}}, "identity_token_roles.r: the key parameter is required"),
    ({"identity_token_roles": {"r": {"key": "default", "template": '{"iss": 1}'}}}, 'top level key "iss" not allowed'),
    ({"identity_token_keys": {"k": {"verification_ttl": "1h"}}, "identity_token_roles": {"r": {"key": "k"}}},
     "identity_token_roles.r.ttl: a role's token ttl cannot be longer than the verification_ttl of the key"),
])
async def test_an_invalid_identity_token_object_is_refused_before_any_write(
    server: HttpServer, client: Client, doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(GitopsError) as exc:
        desired(doc)
    assert message in str(exc.value)
    assert (await client.request("LIST", "/v1/identity/oidc/key", headers=H)).status == 404


async def test_identity_tokens_export_and_apply_round_trip(server: HttpServer, client: Client) -> None:
    """An export keeps every role's client_id (its tokens' audience, which services check)."""
    await applied(server, {"identity_token_keys": ID_KEYS, "identity_token_roles": ID_ROLES})
    exported = await export_state(server)
    made_up = exported.document["identity_token_roles"]["Open"]["client_id"]
    assert exported.document["identity_token_keys"] == {
        "ci": {"algorithm": "ES256", "allowed_client_ids": ["deploy-service"], "verification_ttl": "2h"},
        "default": {"allowed_client_ids": ["*"]},
    }
    assert exported.document["identity_token_roles"] == {
        "Open": {"key": "default", "client_id": made_up},
        "deploy": {"key": "ci", "client_id": "deploy-service", "ttl": "1h",
                   "template": '{"groups": {{identity.entity.groups.names}}}'},
    }
    assert (await make_plan(desired(exported.document), server)).changes == []


async def test_the_settings_identity_tokens_are_applied_at_start(aiohttp_client: AiohttpClient) -> None:
    base = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                    identity_token_keys=ID_KEYS, identity_token_roles=ID_ROLES)
    client: Client = await aiohttp_client(make_test_server(create_app(base)))
    role = (await (await client.get("/v1/identity/oidc/role/deploy", headers=H)).json())["data"]
    assert (role["key"], role["client_id"], role["ttl"]) == ("ci", "deploy-service", 3600)
    keys = (await (await client.get("/v1/identity/oidc/.well-known/keys")).json())["keys"]
    assert sorted(k["kty"] for k in keys) == ["EC", "EC", "RSA", "RSA"]


# -- rate limit quotas ----------------------------------------------------------------------------
QUOTAS_DECLARED: dict[str, dict[str, Any]] = {
    "logins": {"path": "auth/ci/jwt/login", "rate": 20, "block_interval": "1m"},
    "ci-mount": {"path": "auth/ci/jwt", "rate": 100, "interval": "1m"},  # the mount: the server adds its /
    "everything": {"rate": 1000},
}


async def test_rate_limit_quotas_are_applied_compared_and_pruned(server: HttpServer, client: Client) -> None:
    """Quotas after the mounts they name (one this run makes), then no changes (a mount's
    trailing / is the server's spelling), drift corrected, undeclared ones pruned."""
    doc = document(rate_limit_quotas=QUOTAS_DECLARED)
    plan = await applied(server, doc)
    quota_changes = [(c.action, c.address) for c in plan.changes if c.kind == "quota"]
    assert quota_changes == [("create", "quota logins"), ("create", "quota ci-mount"), ("create", "quota everything")]
    assert [c.kind for c in plan.changes].index("quota") > [c.kind for c in plan.changes].index("mount")
    read = (await (await client.get("/v1/sys/quotas/rate-limit/ci-mount", headers=H)).json())["data"]
    assert (read["path"], read["interval"], read["inheritable"]) == ("auth/ci/jwt/", 60, False)
    assert (await (await client.get("/v1/sys/quotas/rate-limit/everything", headers=H)).json())["data"]["inheritable"]
    assert (await make_plan(desired(doc), server)).changes == []
    await client.post("/v1/sys/quotas/rate-limit/logins", headers=H, json={"path": "auth/ci/jwt/login", "rate": 5})
    await client.post("/v1/sys/quotas/rate-limit/extra", headers=H, json={"path": "sys/mounts", "rate": 5})
    plan = await make_plan(desired(doc), server)
    assert fields_of(plan, "quota logins") == {"rate": ("5", "20"), "block_interval": ("0", "60")}
    assert plan.extras == ["quota extra"]
    await apply_plan(await make_plan(desired(doc), server, prune=True), server)
    keys = (await (await client.request("LIST", "/v1/sys/quotas/rate-limit", headers=H)).json())["data"]["keys"]
    assert keys == ["ci-mount", "everything", "logins"]


@pytest.mark.parametrize(("quotas", "message"), [
    ({"q": {"rate": 0}}, "gitops.yaml: rate_limit_quotas.q: 'rate' is invalid"),
    ({"q": {"rate": 1, "block_interval": "-1s"}}, "cannot provide negative value"),
    ({"q": {"rate": 1, "rat": 2}}, "rat: did you mean rate?"),
    ({"a b": {"rate": 1}}, "invalid quota name 'a b'"),
])
async def test_an_invalid_quota_is_refused_before_any_write(
    server: HttpServer, client: Client, quotas: dict[str, Any], message: str
) -> None:
    with pytest.raises(GitopsError) as exc:
        desired({"rate_limit_quotas": quotas})
    assert message in str(exc.value)
    assert (await client.request("LIST", "/v1/sys/quotas/rate-limit", headers=H)).status == 404


async def test_a_quota_naming_no_mount_stops_the_apply_with_the_servers_reason(server: HttpServer) -> None:
    plan = await make_plan(desired({"rate_limit_quotas": {"q": {"path": "auth/nowhere", "rate": 1}}}), server)
    with pytest.raises(GitopsError, match='rate_limit_quotas.q: POST sys/quotas/rate-limit/q: 400 invalid mount path '
                                          '"auth/nowhere"'):
        await apply_plan(plan, server)


async def test_rate_limit_quotas_export_and_apply_round_trip(server: HttpServer, client: Client) -> None:
    await applied(server, document(rate_limit_quotas=QUOTAS_DECLARED))
    exported = await export_state(server)
    assert exported.document["rate_limit_quotas"] == {
        "ci-mount": {"path": "auth/ci/jwt", "rate": 100.0, "interval": "1m"},
        "everything": {"rate": 1000.0},
        "logins": {"path": "auth/ci/jwt/login", "rate": 20.0, "block_interval": "1m"},
    }
    quotas_only = {"rate_limit_quotas": exported.document["rate_limit_quotas"]}
    assert (await make_plan(desired(quotas_only), server)).changes == []


async def test_the_settings_quotas_are_applied_at_start(aiohttp_client: AiohttpClient) -> None:
    base = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                    rate_limit_quotas={"mounts": {"path": "sys/mounts", "rate": 1, "interval": "1h"}})
    client: Client = await aiohttp_client(make_test_server(create_app(base)))
    codes = [(await client.get("/v1/sys/mounts", headers=H)).status for _ in range(2)]
    assert codes == [200, 429]


# -- CORS -------------------------------------------------------------------------------------------
CORS_DECLARED = {"allowed_origins": ["https://app.example.com"], "allowed_headers": ["X-Custom"]}


async def test_cors_settings_are_applied_compared_and_pruned(server: HttpServer, client: Client) -> None:
    plan = await applied(server, {"cors": CORS_DECLARED})
    assert [(c.action, c.address) for c in plan.changes] == [("create", "cors cors")]
    data = (await (await client.get("/v1/sys/config/cors", headers=H)).json())["data"]
    assert data["allowed_origins"] == ["https://app.example.com"] and data["allowed_headers"][-1] == "X-Custom"
    assert (await make_plan(desired({"cors": CORS_DECLARED}), server)).changes == []
    await client.post("/v1/sys/config/cors", headers=H, json={"allowed_origins": "*"})
    plan = await make_plan(desired({"cors": CORS_DECLARED}), server)
    assert fields_of(plan, "cors cors")["allowed_origins"] == ('["*"]', '["https://app.example.com"]')
    await apply_plan(plan, server)
    assert (await make_plan(desired({}), server)).extras == ["cors cors"]  # on, and not declared: listed
    await apply_plan(await make_plan(desired({}), server, prune=True), server)
    assert (await (await client.get("/v1/sys/config/cors", headers=H)).json())["data"] == {"enabled": False}


async def test_cors_settings_are_checked_and_exported(server: HttpServer, client: Client) -> None:
    with pytest.raises(GitopsError, match="gitops.yaml: cors: allow_credentials cannot be true"):
        desired({"cors": {"allowed_origins": "*", "allow_credentials": True}})
    with pytest.raises(GitopsError, match="cors: unrecognized parameters: \\[allowed_origin\\]"):
        desired({"cors": {"allowed_origin": "*"}})
    assert (await export_state(server)).document.get("cors") is None
    await applied(server, {"cors": {**CORS_DECLARED, "allow_credentials": True}})
    exported = (await export_state(server)).document["cors"]
    assert exported == {**CORS_DECLARED, "allow_credentials": True}
    assert (await make_plan(desired({"cors": exported}), server)).changes == []


async def test_the_settings_cors_is_applied_at_start(aiohttp_client: AiohttpClient) -> None:
    base = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                    cors={"allowed_origins": ["https://app.example.com"]})
    client: Client = await aiohttp_client(make_test_server(create_app(base)))
    resp = await client.get("/v1/sys/health", headers={"Origin": "https://evil.example.com"})
    assert resp.status == 403


# -- the OIDC provider ---------------------------------------------------------------------------
OIDC_DOC: dict[str, Any] = {
    "groups": {"release": {"policies": ["deploy"]}},
    "oidc_scopes": {"groups": {"template": '{"groups": {{identity.entity.groups.names}}}', "description": "groups"}},
    "oidc_assignments": {"releasers": {"groups": ["release"], "entity_ids": ["E1"]}},
    "oidc_clients": {"grafana": {"redirect_uris": ["https://grafana.example.com/cb"], "assignments": ["releasers"],
                                 "id_token_ttl": "1h"},
                     "cli": {"redirect_uris": ["http://127.0.0.1/cb"], "assignments": ["allow_all"],
                             "client_type": "public"}},
    "oidc_providers": {"apps": {"issuer": "https://sso.example.com", "allowed_clients": ["grafana"],
                                "scopes_supported": ["groups"]},
                       "default": {"allowed_client_ids": ["*"], "scopes_supported": ["groups"]}},
}


async def _read(client: Client, path: str) -> dict[str, Any]:
    data: dict[str, Any] = (await (await client.get(f"/v1/{path}", headers=H)).json())["data"]
    return data


async def test_the_oidc_provider_is_applied_by_name_compared_by_id_and_pruned(server: HttpServer,
                                                                               client: Client) -> None:
    """Scopes, assignments, clients and providers created in order, the groups and clients the
    file names written as the ids the server gave them; then no changes; drift corrected;
    undeclared objects pruned, a provider before its scope and a client before its assignment,
    never the built-in ones."""
    plan = await applied(server, OIDC_DOC)
    assert [(c.action, c.address) for c in plan.changes if c.kind.startswith("oidc")] == [
        ("create", "oidc-scope groups"), ("create", "oidc-assignment releasers"), ("create", "oidc-client grafana"),
        ("create", "oidc-client cli"), ("create", "oidc-provider apps"), ("update", "oidc-provider default")]
    group_id = (await _read(client, "identity/group/name/release"))["id"]
    assert await _read(client, "identity/oidc/assignment/releasers") == {"entity_ids": ["e1"], "group_ids": [group_id]}
    grafana = await _read(client, "identity/oidc/client/grafana")
    assert grafana["client_secret"].startswith("hvo_secret_") and grafana["id_token_ttl"] == 3600
    assert await _read(client, "identity/oidc/provider/apps") == {
        "issuer": "https://sso.example.com/v1/identity/oidc/provider/apps", "allowed_client_ids": [grafana["client_id"]],
        "scopes_supported": ["groups"]}
    assert (await make_plan(desired(OIDC_DOC), server)).changes == []
    await client.post("/v1/identity/oidc/provider/apps", headers=H, json={"allowed_client_ids": ["other"]})
    await client.post("/v1/identity/oidc/client/grafana", headers=H, json={"id_token_ttl": "30m"})
    await client.post("/v1/identity/oidc/scope/extra", headers=H, json={"template": "{}"})
    await client.post("/v1/identity/oidc/provider/extra", headers=H, json={"scopes_supported": ["extra"]})
    plan = await make_plan(desired(OIDC_DOC), server)
    assert fields_of(plan, "oidc-provider apps") == {"allowed_client_ids": ('["other"]', f'["{grafana["client_id"]}"]')}
    assert fields_of(plan, "oidc-client grafana") == {"id_token_ttl": ("1800", "3600")}
    assert plan.extras == ["oidc-scope extra", "oidc-provider extra"]
    pruned = await make_plan(desired(OIDC_DOC), server, prune=True)
    deletes = [c.address for c in pruned.changes if c.action == "delete"]
    assert deletes == ["oidc-provider extra", "oidc-scope extra"]
    await apply_plan(pruned, server)
    assert (await make_plan(desired(OIDC_DOC), server, prune=True)).changes == []
    # an export names the group and the client, and applies back with no change
    exported = await export_state(server)
    assert exported.document["oidc_assignments"] == {"releasers": {"groups": ["release"], "entity_ids": ["e1"]}}
    assert exported.document["oidc_providers"]["apps"] == {
        "issuer": "https://sso.example.com", "allowed_clients": ["grafana"], "scopes_supported": ["groups"]}
    assert any("new client_id and secret" in n for n in exported.notes)
    assert (await make_plan(desired(exported.document), server)).changes == []


@pytest.mark.parametrize(("doc", "message"), [
    ({"oidc_scopes": {"openid": {}}}, 'oidc_scopes.openid: the "openid" scope name is reserved'),
    ({"oidc_scopes": {"s": {"template": '{"aud": 1}'}}}, 'top level key "aud" not allowed'),
    ({"oidc_assignments": {"allow_all": {}}}, 'modification of assignment "allow_all" not allowed'),
    ({"oidc_clients": {"c": {"client_type": "other"}}}, 'oidc_clients.c: invalid client_type "other"'),
    ({"oidc_clients": {"c": {"client_id": "x"}}}, "unrecognized parameters: [client_id]"),
    ({"oidc_clients": {"c": {"client_type": "public", "client_credentials": True}}},
     "oidc_clients.c: the client credentials grant needs a confidential client"),
    ({"identity_token_keys": {"k": {"verification_ttl": "1h"}}, "oidc_clients": {"c": {"key": "k"}}},
     "oidc_clients.c.id_token_ttl: a client's id_token_ttl cannot be greater than the verification_ttl"),
    ({"oidc_providers": {"p": {"issuer": "https://x.example.com/"}}}, "invalid issuer"),
])
def test_an_invalid_oidc_provider_object_is_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(GitopsError) as exc:
        desired(doc)
    assert message in str(exc.value)


async def test_a_name_that_is_nowhere_is_refused_before_any_write(server: HttpServer, client: Client) -> None:
    with pytest.raises(GitopsError, match=re.escape("oidc_providers.p.clients: no client ghost on the server or in "
                                                    "the file")):
        await make_plan(desired({"oidc_providers": {"p": {"allowed_clients": ["ghost"]}}}), server)
    assert (await client.get("/v1/identity/oidc/provider/p", headers=H)).status == 404


async def test_the_quota_settings_are_applied_compared_and_exported(server: HttpServer, client: Client) -> None:
    doc = {"quota_config": {"rate_limit_exempt_paths": ["sys/health", "/auth/ci/login", "sys/metrics*"]}}
    plan = await applied(server, doc)
    assert [(c.action, c.address) for c in plan.changes] == [("update", "quota-config quota-config")]
    live = (await (await client.get("/v1/sys/quotas/config", headers=H)).json())["data"]
    assert live["rate_limit_exempt_paths"] == ["sys/health", "auth/ci/login", "sys/metrics*"]
    assert (await make_plan(desired(doc), server)).changes == []
    exported = await export_state(server)
    assert exported.document["quota_config"] == {"rate_limit_exempt_paths": ["sys/health", "auth/ci/login",
                                                                             "sys/metrics*"]}
    assert (await make_plan(desired({}), server, prune=True)).changes == []  # not declared: not managed
    with pytest.raises(GitopsError, match="enable_rate_limit_response_headers is not supported"):
        desired({"quota_config": {"enable_rate_limit_response_headers": True}})


async def test_the_key_rotation_settings_are_applied_compared_and_exported(server: HttpServer, client: Client) -> None:
    doc = {"rotate_config": {"interval": "30d"}}
    plan = await applied(server, doc)
    assert [(c.action, c.address, [f.name for f in c.fields]) for c in plan.changes] == \
        [("update", "rotate-config rotate-config", ["interval"])]
    live = (await (await client.get("/v1/sys/rotate/config", headers=H)).json())["data"]
    assert live == {"enabled": True, "interval": "720h0m0s", "max_operations": 3865470566}
    assert (await make_plan(desired(doc), server)).changes == []
    assert (await export_state(server)).document["rotate_config"] == {"interval": "720h"}
    # the file's settings are the whole of them: a field it leaves out goes back to Vault's default
    assert (await client.post("/v1/sys/rotate/config", json={"max_operations": 2000000, "enabled": False},
                              headers=H)).status == 204
    plan = await make_plan(desired(doc), server)
    assert [sorted(f.name for f in c.fields) for c in plan.changes] == [["enabled", "max_operations"]]
    assert (await make_plan(desired({}), server, prune=True)).changes == []  # not declared: not managed
    with pytest.raises(GitopsError, match="interval must be greater or equal to 24h0m0s"):
        desired({"rotate_config": {"interval": "1h"}})
    with pytest.raises(GitopsError, match=r"max_operations must be in the range \[1000000,3865470566\]"):
        desired({"rotate_config": {"max_operations": 10}})
