"""JWT login end to end: hvac against a real authmount process and real key sources.

Static PEM keys (RS256, ES256, EdDSA), a JWKS URL served by node-oidc-provider with key
rotation picked up without reconfiguring, a CA-pinned HTTPS discovery document, two mounts
with different keys, a discovery + client secret mount (docs/vault-differences.md row 1), and the token
lifecycle (lookup-self, renew-self, revoke-self).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import hvac
import hvac.exceptions
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.e2e.idp import IdP, idp_available, start_idp
from tests.e2e.serverproc import ServerProc, as_json, start_server
from tests.e2e.tls_idp import TLSDiscoveryServer

pytestmark = pytest.mark.e2e


def anon(srv: ServerProc) -> hvac.Client:
    """A client without a token (login paths need none)."""
    return srv.client(token="")


@pytest.fixture(autouse=True)
def _no_vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with start_server(dev=True, workdir=tmp_path_factory.mktemp("authmount")) as v:
        yield v
    if v.proc.stdout is not None:  # the reader thread is done; avoid a ResourceWarning
        v.proc.stdout.close()


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdP]:
    reason = idp_available()
    if reason:
        pytest.skip(reason)
    server = start_idp(tmp_path_factory.mktemp("idp"))
    yield server
    server.stop()


_counter = iter(range(1, 10_000))


def fresh_mount(vault: ServerProc, prefix: str = "jwt") -> str:
    """Enable a new jwt mount with a unique path and return the path."""
    path = f"{prefix}-{next(_counter)}"
    vault.client().sys.enable_auth_method("jwt", path=path)
    return path


def machine_role(client: hvac.Client, mount: str, name: str = "machine", **extra: Any) -> None:
    args: dict[str, Any] = {
        "user_claim": "sub",
        "role_type": "jwt",
        "bound_audiences": ["vault"],
        "token_policies": ["p1"],
        "allowed_redirect_uris": [],
    }
    args.update(extra)
    client.auth.jwt.create_role(name=name, path=mount, **args)


def now_claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "svc-1", "aud": "vault", "iat": now, "exp": now + 300, **extra}


# ---------------------------------------------------------------------------
# (a) static PEM keys


def _keypair(alg: str) -> tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, str]:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_static_pem_keys(vault: ServerProc, alg: str) -> None:
    root = vault.client()
    mount = fresh_mount(vault)
    key, pem = _keypair(alg)
    assert root.auth.jwt.configure(jwt_validation_pubkeys=[pem], bound_issuer="https://static.test", path=mount).status_code == 204
    machine_role(root, mount)
    token = jwt.encode(now_claims(iss="https://static.test"), key, algorithm=alg)
    client = anon(vault)
    resp = client.auth.jwt.jwt_login(role="machine", jwt=token, path=mount)
    assert resp["auth"]["client_token"]
    assert resp["auth"]["policies"] == ["default", "p1"]
    assert client.auth.token.lookup_self()["data"]["meta"]["role"] == "machine"
    # a token from another key is refused with the check named
    other, _ = _keypair(alg)
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        anon(vault).auth.jwt.jwt_login(role="machine", jwt=jwt.encode(now_claims(iss="https://static.test"), other, algorithm=alg), path=mount)
    assert "signature" in str(exc.value)


# ---------------------------------------------------------------------------
# (b) jwks_url from node-oidc-provider, with key rotation


def test_jwks_url_client_credentials_and_rotation(vault: ServerProc, idp: IdP) -> None:
    root = vault.client()
    mount = fresh_mount(vault)
    root.auth.jwt.configure(jwks_url=idp.jwks_url, bound_issuer=idp.issuer, path=mount)
    machine_role(
        root, mount, bound_audiences=["urn:test:vault"], claim_mappings={"env": "env"}, groups_claim="groups"
    )
    before = idp.client_credentials_token()
    resp = anon(vault).auth.jwt.jwt_login(role="machine", jwt=before, path=mount)
    assert resp["auth"]["metadata"] == {"role": "machine", "env": "test"}

    new_kids = idp.rotate()
    after = idp.client_credentials_token()
    assert jwt.get_unverified_header(after)["kid"] in new_kids
    # An unknown kid triggers a JWKS re-fetch, at most once per cooldown (10 s) so forged
    # kids cannot force fetches: the new key is accepted once the cooldown allows it.
    resp = _login_eventually(vault, mount, after)
    assert resp["auth"]["metadata"]["role"] == "machine"
    # the old key is still published: tokens signed before the rotation keep working
    assert anon(vault).auth.jwt.jwt_login(role="machine", jwt=before, path=mount)["auth"]["client_token"]
    # ES256 tokens from the rotated set verify as well (in-process signature, real JWKS)
    es = idp.sign(idp.claims(aud="urn:test:vault", sub="es-svc", groups=["signed-here"]), alg="ES256")
    assert anon(vault).auth.jwt.jwt_login(role="machine", jwt=es, path=mount)["auth"]["metadata"]["role"] == "machine"


def _login_eventually(vault: ServerProc, mount: str, token: str, deadline: float = 60.0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while True:
        try:
            return as_json(anon(vault).auth.jwt.jwt_login(role="machine", jwt=token, path=mount))
        except hvac.exceptions.InvalidRequest as exc:
            if "signature" not in str(exc) or time.monotonic() > end:
                raise
        time.sleep(0.5)


def test_jwks_url_refuses_wrong_audience_and_expired(vault: ServerProc, idp: IdP) -> None:
    root = vault.client()
    mount = fresh_mount(vault)
    root.auth.jwt.configure(jwks_url=idp.jwks_url, path=mount)
    machine_role(root, mount, bound_audiences=["urn:test:vault"])
    wrong_aud = idp.client_credentials_token(resource="urn:test:other")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="aud"):
        anon(vault).auth.jwt.jwt_login(role="machine", jwt=wrong_aud, path=mount)
    expired = idp.sign(idp.claims(aud="urn:test:vault", iat=int(time.time()) - 900, nbf=int(time.time()) - 900, exp=int(time.time()) - 600))
    with pytest.raises(hvac.exceptions.InvalidRequest, match="expired"):
        anon(vault).auth.jwt.jwt_login(role="machine", jwt=expired, path=mount)


# ---------------------------------------------------------------------------
# (c) discovery over CA-pinned TLS


def test_discovery_with_pinned_ca(vault: ServerProc) -> None:
    ca = trustme.CA()
    with TLSDiscoveryServer(ca) as tls:
        root = vault.client()
        mount = fresh_mount(vault)
        wrong_ca = trustme.CA().cert_pem.bytes().decode()
        with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
            root.auth.jwt.configure(oidc_discovery_url=tls.issuer, oidc_discovery_ca_pem=wrong_ca, path=mount)
        assert "oidc discovery" in str(exc.value).lower()
        with pytest.raises(hvac.exceptions.InvalidPath):
            root.auth.jwt.read_config(path=mount)  # the failed write stored nothing

        resp = root.auth.jwt.configure(
            oidc_discovery_url=tls.issuer, oidc_discovery_ca_pem=ca.cert_pem.bytes().decode(), path=mount
        )
        assert resp.status_code == 204
        assert root.auth.jwt.read_config(path=mount)["data"]["oidc_discovery_url"] == tls.issuer
        machine_role(root, mount)
        login = anon(vault).auth.jwt.jwt_login(role="machine", jwt=tls.sign(), path=mount)
        assert login["auth"]["metadata"] == {"role": "machine"}


def test_an_idp_whose_certificate_names_another_host(vault: ServerProc) -> None:
    """OpenBao's ``override_allowed_server_names``: the IdP is reached at 127.0.0.1, its
    certificate is for idp.internal; discovery, the key set and the login work once the name
    is allowed, and only then."""
    ca = trustme.CA()
    with TLSDiscoveryServer(ca, ("idp.internal",)) as tls:
        root = vault.client()
        mount = fresh_mount(vault)
        config = {"oidc_discovery_url": tls.issuer, "oidc_discovery_ca_pem": ca.cert_pem.bytes().decode()}
        with pytest.raises(hvac.exceptions.InvalidRequest, match="certificate"):
            root.write(f"auth/{mount}/config", **config)
        with pytest.raises(hvac.exceptions.InvalidRequest, match="not for any of override_allowed_server_names"):
            root.write(f"auth/{mount}/config", **config, override_allowed_server_names="other.internal")
        root.write(f"auth/{mount}/config", **config, override_allowed_server_names="other.internal,idp.internal")
        data = root.auth.jwt.read_config(path=mount)["data"]
        assert data["override_allowed_server_names"] == ["other.internal", "idp.internal"]
        assert [s["last_error"] for s in data["key_sources"]] == [None, None]  # discovery, then the key set
        machine_role(root, mount)
        login = anon(vault).auth.jwt.jwt_login(role="machine", jwt=tls.sign(), path=mount)
        assert login["auth"]["metadata"] == {"role": "machine"}


# ---------------------------------------------------------------------------
# (d) two mounts, different keys


def test_two_mounts_accept_only_their_own_tokens(vault: ServerProc) -> None:
    root = vault.client()
    root.sys.enable_auth_method("jwt", path="team-a/jwt")
    plain = fresh_mount(vault, prefix="jwt-plain")
    keys = {}
    for mount in (plain, "team-a/jwt"):
        key, pem = _keypair("ES256")
        keys[mount] = key
        root.auth.jwt.configure(jwt_validation_pubkeys=[pem], path=mount)
        machine_role(root, mount, user_claim="sub")
    for mount, other in ((plain, "team-a/jwt"), ("team-a/jwt", plain)):
        good = jwt.encode(now_claims(sub=f"svc-{mount}"), keys[mount], algorithm="ES256")
        resp = anon(vault).auth.jwt.jwt_login(role="machine", jwt=good, path=mount)
        assert resp["auth"]["client_token"]
        with pytest.raises(hvac.exceptions.InvalidRequest, match="signature"):
            anon(vault).auth.jwt.jwt_login(role="machine", jwt=good, path=other)
    mounts = root.sys.list_auth_methods()
    assert "team-a/jwt/" in mounts and f"{plain}/" in mounts


# ---------------------------------------------------------------------------
# (e) the issued token's lifecycle


def test_token_lookup_renew_revoke(vault: ServerProc) -> None:
    root = vault.client()
    mount = fresh_mount(vault)
    key, pem = _keypair("RS256")
    root.auth.jwt.configure(jwt_validation_pubkeys=[pem], path=mount)
    machine_role(root, mount, token_ttl="10m", token_max_ttl="1h", claim_mappings={"team": "team"})
    client = anon(vault)
    login = client.auth.jwt.jwt_login(role="machine", jwt=jwt.encode(now_claims(team="blue"), key, algorithm="RS256"), path=mount)
    assert login["auth"]["lease_duration"] == 600
    assert login["auth"]["renewable"] is True

    me = client.auth.token.lookup_self()["data"]
    assert me["meta"] == {"role": "machine", "team": "blue"}
    assert me["path"] == f"auth/{mount}/login"
    assert me["display_name"].endswith("svc-1")

    renewed = client.auth.token.renew_self(increment="30m")
    assert renewed["auth"]["client_token"] == login["auth"]["client_token"]
    assert 600 < renewed["auth"]["lease_duration"] <= 1800

    assert client.auth.token.revoke_self().status_code == 204
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.token.lookup_self()


# ---------------------------------------------------------------------------
# docs/vault-differences.md row 1: JWT login on a mount configured for the OIDC browser flow


def test_jwt_login_on_discovery_with_client_secret(vault: ServerProc, idp: IdP) -> None:
    root = vault.client()
    mount = fresh_mount(vault)
    resp = root.auth.jwt.configure(
        oidc_discovery_url=idp.discovery_url,
        oidc_client_id="vault",
        oidc_client_secret="vault-secret",
        jwt_supported_algs=["RS256", "ES256"],
        path=mount,
    )
    assert resp.status_code == 204
    machine_role(root, mount, bound_audiences=["urn:test:vault"], claim_mappings={"client_id": "client"})
    token = idp.client_credentials_token()
    login = anon(vault).auth.jwt.jwt_login(role="machine", jwt=token, path=mount)
    assert login["auth"]["metadata"] == {"role": "machine", "client": "vault"}
