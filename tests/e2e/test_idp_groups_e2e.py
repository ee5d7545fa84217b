"""An IdP group grants a policy through an external group: node-oidc-provider's ``groups``
claim (alice is in ``admins``, bob is not), an external group with the ``admins-read``
policy whose alias is ``admins`` on the OIDC mount, a real authmount process. The policy is
judged at each use of the token; a group alias on another mount grants nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hvac
import hvac.exceptions
import jwt
import pytest

from tests.e2e.browser import CallbackListener, drive_login
from tests.e2e.idp import CLIENT_ID, CLIENT_SECRET, IdP
from tests.e2e.serverproc import ServerProc, as_json, start_server

pytestmark = pytest.mark.e2e

MOUNT = "oidc"
POLICY = 'path "auth/oidc/role/*" { capabilities = ["read"] }'


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory, idp: IdP, listener: CallbackListener) -> Iterator[ServerProc]:
    with start_server(dev=True, workdir=tmp_path_factory.mktemp("authmount")) as v:
        root = v.client()
        root.sys.enable_auth_method("oidc", path=MOUNT)
        root.auth.oidc.configure(oidc_discovery_url=idp.discovery_url, oidc_client_id=CLIENT_ID,
                                 oidc_client_secret=CLIENT_SECRET, default_role="web", path=MOUNT)
        root.auth.oidc.create_role(name="web", user_claim="sub", allowed_redirect_uris=[listener.url],
                                   oidc_scopes=["email", "groups"], groups_claim="groups", token_policies=["people"],
                                   path=MOUNT)
        root.sys.enable_auth_method("jwt", path="machines")
        root.auth.jwt.configure(jwks_url=idp.jwks_url, path="machines")
        root.write_data("auth/machines/role/machine", data={
            "role_type": "jwt", "user_claim": "sub", "bound_audiences": "urn:test:vault", "groups_claim": "groups",
        })
        root.sys.create_or_update_acl_policy("admins-read", POLICY)
        yield v
    if v.proc.stdout is not None:
        v.proc.stdout.close()


def _accessor(root: hvac.Client, mount: str) -> str:
    accessor: str = as_json(root.sys.list_auth_methods())["data"][f"{mount}/"]["accessor"]
    return accessor


def _oidc_login(vault: ServerProc, listener: CallbackListener, login: str) -> dict[str, Any]:
    anon = vault.client(token="")
    auth_url = anon.auth.oidc.oidc_authorization_url_request(role="web", redirect_uri=listener.url, path=MOUNT)[
        "data"
    ]["auth_url"]
    state = parse_qs(urlsplit(auth_url).query)["state"][0]
    code = drive_login(auth_url, listener.url, login=login)["code"]
    auth: dict[str, Any] = anon.auth.oidc.oidc_callback(state=state, nonce="", code=code, path=MOUNT)["auth"]
    return auth


def _can_read_role(vault: ServerProc, token: str) -> bool:
    try:
        vault.client(token=token).read(f"auth/{MOUNT}/role/web")
    except hvac.exceptions.Forbidden:
        return False
    return True


def test_idp_group_grants_a_policy_through_an_external_group(vault: ServerProc, listener: CallbackListener) -> None:
    root = vault.client()
    identity = root.secrets.identity
    gid = as_json(identity.create_or_update_group(name="admins", group_type="external",
                                                  policies=["admins-read"]))["data"]["id"]
    identity.create_or_update_group_alias(name="admins", mount_accessor=_accessor(root, MOUNT), canonical_id=gid)

    alice = _oidc_login(vault, listener, "alice")  # the IdP puts alice in admins and dev
    assert alice["identity_policies"] == ["admins-read"]
    assert alice["policies"] == ["admins-read", "default", "people"]
    assert alice["token_policies"] == ["default", "people"]
    assert _can_read_role(vault, alice["client_token"])
    me = as_json(vault.client(token=alice["client_token"]).auth.token.lookup_self())["data"]
    assert me["identity_policies"] == ["admins-read"] and me["policies"] == ["default", "people"]
    assert as_json(identity.read_group(group_id=gid))["data"]["member_entity_ids"] == [alice["entity_id"]]

    bob = _oidc_login(vault, listener, "bob")  # only in dev
    assert "identity_policies" not in bob
    assert not _can_read_role(vault, bob["client_token"])

    # the group's policies change: alice's live token follows at its next use
    identity.create_or_update_group_by_name(name="admins", group_type="external", policies=["nothing"])
    assert not _can_read_role(vault, alice["client_token"])
    identity.create_or_update_group_by_name(name="admins", group_type="external", policies=["admins-read"])
    assert _can_read_role(vault, alice["client_token"])


def test_alias_on_another_mount_grants_nothing(vault: ServerProc, idp: IdP) -> None:
    """The IdP's ``machines`` group (client_credentials tokens) on the jwt mount ``machines``:
    an alias with the same name on the OIDC mount does not match its logins."""
    root = vault.client()
    identity = root.secrets.identity
    gid = as_json(identity.create_or_update_group(name="machines-oidc", group_type="external",
                                                  policies=["admins-read"]))["data"]["id"]
    identity.create_or_update_group_alias(name="machines", mount_accessor=_accessor(root, MOUNT), canonical_id=gid)
    anon = vault.client(token="")
    auth = as_json(anon.auth.jwt.jwt_login(role="machine", jwt=idp.client_credentials_token(), path="machines",
                                           use_token=False))["auth"]
    assert "identity_policies" not in auth
    gid2 = as_json(identity.create_or_update_group(name="machines-jwt", group_type="external",
                                                   policies=["admins-read"]))["data"]["id"]
    identity.create_or_update_group_alias(name="machines", mount_accessor=_accessor(root, "machines"),
                                          canonical_id=gid2)
    auth = as_json(anon.auth.jwt.jwt_login(role="machine", jwt=idp.client_credentials_token(), path="machines",
                                           use_token=False))["auth"]
    assert auth["identity_policies"] == ["admins-read"]


def test_an_oidc_login_gets_an_identity_token_a_service_verifies(vault: ServerProc, listener: CallbackListener) -> None:
    """alice logs in through the browser flow, asks (hvac) for an identity token of the role
    ``svc`` whose template adds her groups and her IdP user name, and a service verifies it
    with PyJWT against the key set it finds through the discovery document, over HTTP."""
    root = vault.client()
    identity = root.secrets.identity
    accessor = _accessor(root, MOUNT)
    gid = as_json(identity.create_or_update_group(name="idp-dev", group_type="external"))["data"]["id"]
    identity.create_or_update_group_alias(name="dev", mount_accessor=accessor, canonical_id=gid)
    identity.create_named_key(name="svc-key", algorithm="ES256", allowed_client_ids=["svc"], verification_ttl="2h")
    template = ('{"groups": {{identity.entity.groups.names}}, '
                f'"login": {{{{identity.entity.aliases.{accessor}.name}}}}}}')
    identity.create_or_update_role(name="svc", key="svc-key", template=template, client_id="svc", ttl="30m")
    root.sys.create_or_update_acl_policy("people", 'path "identity/oidc/token/svc" { capabilities = ["read"] }')
    alice = _oidc_login(vault, listener, "alice")
    signed = as_json(vault.client(token=alice["client_token"]).secrets.identity.generate_signed_id_token(name="svc"))
    token = signed["data"]["token"]
    assert (signed["data"]["client_id"], signed["data"]["ttl"]) == ("svc", 1800)

    discovery = as_json(vault.client(token="").secrets.identity.read_well_known_configurations())
    assert discovery["issuer"] == f"{vault.url}/v1/identity/oidc"
    key = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key, algorithms=["ES256"], audience="svc", issuer=discovery["issuer"])
    assert claims["sub"] == alice["entity_id"] and "idp-dev" in claims["groups"]
    alias = as_json(identity.read_entity(entity_id=alice["entity_id"]))["data"]["aliases"][0]
    assert claims["login"] == alias["name"] and claims["exp"] - claims["iat"] == 1800
    assert as_json(identity.introspect_signed_id_token(token=token, client_id="svc")) == {"active": True}
    # hvac's rotate_named_key writes to the key's own path (an update of its verification_ttl),
    # not to .../rotate, against Vault too
    root.write_data("identity/oidc/key/svc-key/rotate", data={"verification_ttl": "1h"})
    assert as_json(identity.introspect_signed_id_token(token=token)) == {"active": True}  # still verifies
    newer = as_json(vault.client(token=alice["client_token"]).secrets.identity.generate_signed_id_token(name="svc"))
    assert jwt.get_unverified_header(newer["data"]["token"])["kid"] != jwt.get_unverified_header(token)["kid"]
