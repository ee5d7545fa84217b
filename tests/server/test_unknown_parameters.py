"""Typos never pass silently: a write that ignored parameters answers 200 with Vault's warning and
the field each one resembles, the setting ``refuse_unknown_parameters`` refuses it with a 400
instead, and a seeded object with an unknown key stops the start naming the file, the key and
the suggestion. Also the edge's own answers that the Vault CLI meets: ``X-Vault-Namespace``,
``?help=1`` (``vault path-help``) and ``sys/mounts``."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from server.app import StartupError, create_app
from server.http.listverb import make_test_server
from server.settings import MountSeed, Settings, StorageSettings, settings_from_mapping
from tests.server.httpkit import Client

ROOT = "root-token-for-tests"
H = {"X-Vault-Token": ROOT}
IGNORED = "Endpoint ignored these unrecognized parameters: [{}]"
JWT_ROLE = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "x"}


def _pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


PEM = _pem()


def make_settings(**overrides: Any) -> Settings:
    base = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    return dataclasses.replace(base, **overrides)


async def start(aiohttp_client: Any, **overrides: Any) -> Client:
    client: Client = await aiohttp_client(make_test_server(create_app(make_settings(**overrides))))
    resp = await client.post("/v1/sys/auth/jwt", json={"type": "jwt"}, headers=H)
    assert resp.status == 204
    return client


# -- the writes a new operator gets wrong -----------------------------------------------------
#: (path, body, the unknown keys Vault's warning names, the suggestions).
TYPOS = [
    ("/v1/auth/jwt/role/ci", {**JWT_ROLE, "bound_claim": {"ref": "main"}, "token_policy": "deploy"},
     "bound_claim token_policy", ["bound_claim: did you mean bound_claims?", "token_policy: did you mean token_policies?"]),
    ("/v1/auth/jwt/config", {"jwt_validation_pubkeys": PEM, "bound_isuer": "https://ci"},
     "bound_isuer", ["bound_isuer: did you mean bound_issuer?"]),
    ("/v1/sys/auth/jwt/tune", {"default_lease_tll": "1h"}, "default_lease_tll",
     ["default_lease_tll: did you mean default_lease_ttl?"]),
    ("/v1/sys/mounts/auth/jwt/tune", {"max_lease_tll": "1h"}, "max_lease_tll",
     ["max_lease_tll: did you mean max_lease_ttl?"]),
    ("/v1/sys/auth/other", {"type": "jwt", "descripton": "x"}, "descripton", ["descripton: did you mean description?"]),
    ("/v1/sys/auth/other", {"type": "jwt", "config": {"default_lease_tll": "1h"}}, "config.default_lease_tll",
     ["config.default_lease_tll: did you mean config.default_lease_ttl?"]),
    ("/v1/sys/policies/acl/dev", {"policy": 'path "x" { capabilities = ["read"] }', "polcy": "x"}, "polcy",
     ["polcy: did you mean policy?"]),
    ("/v1/auth/token/create", {"policy": "default", "tll": "1h"}, "policy tll",
     ["policy: did you mean policies?", "tll: did you mean ttl?"]),
    ("/v1/identity/group/name/dev", {"polices": ["x"]}, "polices", ["polices: did you mean policies?"]),
]
TYPO_IDS = ["role", "config", "tune", "cli-tune", "enable", "enable-config", "policy", "token-create", "group"]


@pytest.mark.parametrize(("path", "body", "keys", "hints"), TYPOS, ids=TYPO_IDS)
async def test_a_write_that_ignored_parameters_says_so(
    aiohttp_client: Any, path: str, body: dict[str, Any], keys: str, hints: list[str]
) -> None:
    """Vault answers these writes 204 and says nothing (its warning needs a response body)."""
    client = await start(aiohttp_client)
    resp = await client.post(path, json=body, headers=H)
    assert resp.status == 200, await resp.text()
    out = await resp.json()
    warnings = out["warnings"]
    if path == "/v1/auth/token/create":  # a token is created, with the warning beside it
        assert out["auth"]["client_token"]
    assert warnings == [IGNORED.format(keys), *hints]


@pytest.mark.parametrize(("path", "body", "keys", "hints"), TYPOS, ids=TYPO_IDS)
async def test_the_setting_refuses_them_and_writes_nothing(
    aiohttp_client: Any, path: str, body: dict[str, Any], keys: str, hints: list[str]
) -> None:
    client = await start(aiohttp_client, refuse_unknown_parameters=True)
    before = await (await client.get("/v1/sys/auth", headers=H)).json()
    resp = await client.post(path, json=body, headers=H)
    assert resp.status == 400
    assert (await resp.json())["errors"] == [f"unrecognized parameters: [{keys}]", *hints]
    after = await (await client.get("/v1/sys/auth", headers=H)).json()
    assert after["data"] == before["data"]  # no mount enabled or tuned
    assert (await client.get("/v1/auth/jwt/role/ci", headers=H)).status == 404
    assert (await client.get("/v1/auth/jwt/config", headers=H)).status in (404, 200)
    assert (await client.get("/v1/sys/policies/acl/dev", headers=H)).status == 404
    assert (await client.get("/v1/identity/group/name/dev", headers=H)).status == 404


async def test_the_setting_never_refuses_logins_or_reads(aiohttp_client: Any) -> None:
    """An IdP may add parameters of its own to a callback (``iss``, ``session_state``); a
    read's extra query parameters change nothing."""
    client = await start(aiohttp_client, refuse_unknown_parameters=True)
    resp = await client.post("/v1/auth/jwt/login", json={"role": "x", "jwt": "a.b.c", "iss": "x"})
    assert resp.status == 400 and "unrecognized" not in await resp.text()  # refused for the JWT
    resp = await client.get("/v1/sys/auth?colour=1", headers=H)
    assert resp.status == 200 and (await resp.json())["warnings"] == [IGNORED.format("colour")]


async def test_a_known_write_still_answers_204(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client)
    resp = await client.post("/v1/auth/jwt/role/ci", json=JWT_ROLE, headers=H)
    assert resp.status == 204


# -- seeded objects ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mount", "policies", "message"),
    [
        ({"roles": {"ci": {**JWT_ROLE, "bound_claim": {"ref": "main"}}}}, {},
         "mounts[0].roles.ci: unrecognized parameters: [bound_claim]; bound_claim: did you mean bound_claims?"),
        ({"config": {"jwt_validation_pubkeys": PEM, "bound_isuer": "https://ci"}}, {},
         "mounts[0].config: unrecognized parameters: [bound_isuer]; bound_isuer: did you mean bound_issuer?"),
        ({"tune": {"default_lease_tll": "1h"}}, {},
         "mounts[0].tune: unrecognized parameters: [default_lease_tll]; default_lease_tll: did you mean "
         "default_lease_ttl?"),
        ({}, {"dev": 'path "x" { capabilites = ["read"] }'},
         'policies.dev: failed to parse policy: path "x": invalid key "capabilites" (did you mean capabilities?)'),
        ({}, {"dev": 'paths "x" { capabilities = ["read"] }'},
         'policies.dev: failed to parse policy: invalid key "paths" (did you mean path?)'),
    ],
    ids=["role", "config", "tune", "policy-block", "policy-top"],
)
async def test_a_seeded_typo_stops_the_start(
    mount: dict[str, Any], policies: dict[str, str], message: str
) -> None:
    seed = MountSeed(path="jwt", type="jwt", **mount)
    settings = dict(mounts=(seed,), policies=policies, source="/etc/authmount/authmount.yaml")
    server = make_test_server(create_app(make_settings(**settings)))
    try:
        with pytest.raises(StartupError) as raised:
            await server.start_server()
    finally:
        await server.close()
    assert str(raised.value) == "/etc/authmount/authmount.yaml: " + message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"storage": {"tpye": "memory"}}, "storage.tpye: unknown setting (did you mean type?)"),
        ({"mounts": [{"path": "j", "type": "jwt", "role": {}}]}, "mounts[0].role: unknown setting (did you mean roles?)"),
        ({"refuse_unknown_parameter": True},
         "refuse_unknown_parameter: unknown setting (did you mean refuse_unknown_parameters?)"),
        ({"flavour": 1}, "flavour: unknown setting"),
    ],
    ids=["storage", "mount", "top", "nothing-alike"],
)
def test_an_unknown_setting_names_the_closest(raw: dict[str, Any], message: str) -> None:
    from server.settings import SettingsError

    with pytest.raises(SettingsError) as raised:
        settings_from_mapping(raw)
    assert str(raised.value) == message


# -- namespaces, help, sys/mounts ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("namespace", "status"),
    [(None, 200), ("", 200), ("root", 200), ("root/", 200), ("/root/", 200),
     ("team", 400), ("team/", 400), ("root/team", 400), ('a"b\t', 400)],
)
@pytest.mark.parametrize(("path", "found"), [("/v1/auth/token/lookup-self", 200), ("/v1/sys/auth", 200),
                                           ("/v1/identity/group/name?list=true", 404)])  # no group: 404, as Vault
async def test_a_namespace_other_than_root_is_refused(
    aiohttp_client: Any, path: str, found: int, namespace: str | None, status: int
) -> None:
    client = await start(aiohttp_client)
    headers = dict(H) if namespace is None else {**H, "X-Vault-Namespace": namespace}
    resp = await client.get(path, headers=headers)
    assert resp.status == (found if status == 200 else status)
    if status == 400:
        (error,) = (await resp.json())["errors"]
        assert error.startswith("namespace ") and "authmount serves only the root namespace" in error
        assert "\n" not in error


async def test_a_namespace_is_refused_before_anything_is_written(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client)
    resp = await client.post("/v1/auth/jwt/role/ci", json=JWT_ROLE, headers={**H, "X-Vault-Namespace": "team-a"})
    assert resp.status == 400
    assert (await resp.json())["errors"] == [
        'namespace "team-a" is not supported: authmount serves only the root namespace (send no '
        'X-Vault-Namespace header, or "root")'
    ]
    assert (await client.get("/v1/auth/jwt/role/ci", headers=H)).status == 404
    # identity/ too: a group meant for a namespace was once created in the root one
    resp = await client.post("/v1/identity/group", json={"name": "ops"}, headers={**H, "X-Vault-Namespace": "team-a"})
    assert resp.status == 400 and (await resp.json())["errors"][0].startswith('namespace "team-a" is not supported')
    assert (await client.get("/v1/identity/group/name/ops", headers=H)).status == 404


async def test_help_is_vaults_document_from_the_schema(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client)
    resp = await client.get("/v1/auth/jwt/role/ci?help=1", headers=H)
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    doc = await resp.json()
    assert set(doc) == {"help", "openapi", "see_also"}
    text = doc["help"]
    assert text.startswith("Request:        role/ci\nMatching Route: ^role/(?P<name>")
    assert "\n## PARAMETERS\n" in text and "\n    bound_claims (map)\n" in text and "\n## DESCRIPTION\n" in text
    assert "\n    bound_claims_type (string)\n\n        How to interpret" in text
    # As Vault's: a whole OpenAPI document of the one path, keyed relative to the mount.
    assert set(doc["openapi"]) == {"openapi", "info", "paths", "components"}
    assert list(doc["openapi"]["paths"]) == ["/role/{name}"]
    assert doc["openapi"]["paths"]["/role/{name}"]["post"]["operationId"] == "write-auth-jwt-role-name"
    # POST ?help=1 too, and nothing is written
    assert (await client.post("/v1/auth/jwt/role/ci?help=1", json=JWT_ROLE, headers=H)).status == 200
    assert (await client.get("/v1/auth/jwt/role/ci", headers=H)).status == 404
    sys_help = await (await client.get("/v1/sys/mounts/auth/jwt/tune?help=1", headers=H)).json()
    assert sys_help["help"].startswith("Request:        mounts/auth/jwt/tune\n")
    assert list(sys_help["openapi"]["paths"]) == ["/mounts/auth/{path}/tune"]


async def test_help_needs_a_valid_token_but_no_capability(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client)
    create = await client.post("/v1/auth/token/create", json={"policies": ["nothing"]}, headers=H)
    weak = (await create.json())["auth"]["client_token"]
    assert (await client.get("/v1/auth/jwt/role/ci", headers={"X-Vault-Token": weak})).status == 403
    assert (await client.get("/v1/auth/jwt/role/ci?help=1", headers={"X-Vault-Token": weak})).status == 200
    assert (await client.get("/v1/auth/jwt/role/ci?help=1")).status == 403
    assert (await client.get("/v1/auth/jwt/role/ci?help=1", headers={"X-Vault-Token": "bogus"})).status == 403
    assert (await client.get("/v1/auth/jwt/login?help=1")).status == 200  # a login path needs none
    missing = await client.get("/v1/auth/jwt/nosuch?help=1", headers=H)
    assert missing.status == 404 and (await missing.json())["errors"] == ["unsupported path"]
    assert (await client.get("/v1/sys/nosuch?help=1", headers=H)).status == 404
    group_help = await client.get("/v1/identity/group/name/ops?help=1", headers=H)  # was the group's read
    assert group_help.status == 200
    assert list((await group_help.json())["openapi"]["paths"]) == ["/group/name/{name}"]
    assert (await client.get("/v1/identity/group/name/ops", headers=H)).status == 404  # help wrote nothing
    assert (await client.get("/v1/identity/group/name/ops?help=1")).status == 403
    assert (await client.get("/v1/identity/nosuch?help=1", headers=H)).status == 404
    assert (await client.get("/v1/auth/jwt/role/ci?help=", headers=H)).status == 404  # empty: a read


async def test_sys_mounts_lists_the_built_in_backends(aiohttp_client: Any) -> None:
    """identity/ and sys/, as Vault lists them (authmount has no secrets engines)."""
    client = await start(aiohttp_client)
    resp = await client.get("/v1/sys/mounts", headers=H)
    body = await resp.json()
    assert resp.status == 200 and list(body["data"]) == ["identity/", "sys/"]
    assert body["sys/"]["type"] == "system" and body["identity/"]["type"] == "identity"
    assert body["identity/"]["description"] == "identity store" and body["identity/"]["accessor"].startswith("identity_")
    again = await (await client.get("/v1/sys/mounts", headers=H)).json()
    assert again["data"] == body["data"]  # accessors and uuids are stable
    assert (await client.post("/v1/sys/mounts", json={}, headers=H)).status == 405


async def test_cli_tune_path_is_the_tune_and_needs_sudo(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client)
    body = {"options": None, "default_lease_ttl": "1h0m0s", "max_lease_ttl": "", "force_no_cache": False}
    resp = await client.post("/v1/sys/mounts/auth/jwt/tune", json=body, headers=H)  # what `bao auth tune` sends
    assert resp.status == 204, await resp.text()
    tuned = await (await client.get("/v1/sys/auth/jwt/tune", headers=H)).json()
    assert tuned["data"]["default_lease_ttl"] == 3600
    policy = 'path "sys/mounts/auth/*" { capabilities = ["read", "update"] }'
    assert (await client.put("/v1/sys/policies/acl/tuner", json={"policy": policy}, headers=H)).status == 204
    create = await client.post("/v1/auth/token/create", json={"policies": ["tuner"]}, headers=H)
    tuner = {"X-Vault-Token": (await create.json())["auth"]["client_token"]}
    assert (await client.post("/v1/sys/mounts/auth/jwt/tune", json=body, headers=tuner)).status == 403
