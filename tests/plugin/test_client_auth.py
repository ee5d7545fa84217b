"""How authmount authenticates to the IdP (plugin/client_auth.py): private_key_jwt client
assertions (RFC 7523), the config fields that hold the key and a TLS client certificate, and
the code flow against a fake IdP that accepts only signed assertions (issue 12)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from plugin.client_auth import ASSERTION_TYPE, authenticate, check_client_tls, load_private_key, sign_assertion
from plugin.errors import InvalidRequest
from plugin.framework import Operation
from plugin.path_config import JWTConfig
from tests.plugin.keyfactory import FakeFetcher
from tests.plugin.oidc_fakes import BOB, CLIENT_ID, Harness

TOKEN_URL = "https://idp.test/token"
DOC = {"issuer": "https://idp.test", "token_endpoint": TOKEN_URL}


def pem(key: Any, *, password: bytes | None = None) -> str:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    data: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    return data.decode()


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
P521 = ec.generate_private_key(ec.SECP521R1())
ED = ed25519.Ed25519PrivateKey.generate()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not a key", "not a PEM private key"),
        (pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
         "the RSA key is 1024 bits, at least 2048 are required"),
        (pem(RSA, password=b"pw"), "the private key is encrypted: give it without a passphrase"),
        (pem(ec.generate_private_key(ec.SECP256K1())), "EC curve secp256k1 is not supported (P-256, P-384, P-521)"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "not a PEM private key"),
        ("\ud800", "not a PEM private key"),
    ],
    ids=["garbage", "small RSA", "encrypted", "secp256k1", "broken PEM", "lone surrogate"],
)
def test_load_private_key_refusals(text: str, error: str) -> None:
    with pytest.raises(ValueError) as exc:
        load_private_key(text)
    assert str(exc.value) == error


@pytest.mark.parametrize(
    ("key", "alg", "used"),
    [(RSA, "", "RS256"), (RSA, "RS384", "RS384"), (RSA, "RS512", "RS512"), (RSA, "PS256", "PS256"),
     (RSA, "PS512", "PS512"), (P256, "", "ES256"), (P384, "", "ES384"), (P521, "ES512", "ES512"), (ED, "", "EdDSA")],
)
def test_assertions_verify_with_an_independent_library(key: Any, alg: str, used: str) -> None:
    config = JWTConfig(oidc_client_id=CLIENT_ID, oidc_client_private_key=pem(key), oidc_client_assertion_alg=alg,
                       oidc_client_assertion_kid="k-1")
    form: dict[str, str] = {}
    headers: dict[str, str] = {}
    authenticate(config, DOC, form, headers, now=1_700_000_000)
    assert headers == {} and form["client_id"] == CLIENT_ID and form["client_assertion_type"] == ASSERTION_TYPE
    header = pyjwt.get_unverified_header(form["client_assertion"])
    assert header == {"alg": used, "typ": "JWT", "kid": "k-1"}
    claims = pyjwt.decode(form["client_assertion"], key.public_key(), algorithms=[used], audience=TOKEN_URL,
                          options={"verify_exp": False})
    assert (claims["iss"], claims["sub"], claims["iat"], claims["exp"]) == (CLIENT_ID, CLIENT_ID, 1_700_000_000, 1_700_000_060)
    form2: dict[str, str] = {}
    authenticate(config, DOC, form2, {}, now=1_700_000_000)
    assert pyjwt.decode(form2["client_assertion"], options={"verify_signature": False})["jti"] != claims["jti"]


def test_secret_auth_unchanged() -> None:
    config = JWTConfig(oidc_client_id="a b", oidc_client_secret="p:w")
    form: dict[str, str] = {}
    headers: dict[str, str] = {}
    authenticate(config, DOC, form, headers, now=0)
    assert form == {} and headers["Authorization"] == "Basic YSUyMGI6cCUzQXc="  # RFC 6749 2.3.1
    post: dict[str, str] = {}
    authenticate(config, {**DOC, "token_endpoint_auth_methods_supported": ["client_secret_post"]}, post, {}, now=0)
    assert post == {"client_id": "a b", "client_secret": "p:w"}


def test_sign_assertion_es_signature_is_raw_r_s() -> None:
    token = sign_assertion(P521, "ES512", {"a": 1})
    import base64

    sig = token.split(".")[2]
    assert len(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))) == 132  # 2 x 66 bytes (RFC 7518 3.4)


# ---------------------------------------------------------------------------
# Config fields


def self_signed(key: Any, name: str = "authmount-client") -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CERT = self_signed(P256)


@pytest.mark.parametrize(
    ("cert", "key", "error"),
    [
        (CERT, "", "'client_tls_cert' and 'client_tls_key' must be set together"),
        ("", pem(P256), "'client_tls_cert' and 'client_tls_key' must be set together"),
        ("garbage", pem(P256), "invalid client_tls_cert: not a PEM certificate"),
        (CERT, "garbage", "invalid client_tls_key: not a PEM private key"),
        (CERT, pem(P384), "invalid client_tls_key: it is not the key of the first certificate in 'client_tls_cert'"),
    ],
    ids=["no key", "no cert", "bad cert", "bad key", "other key"],
)
def test_client_tls_refusals(cert: str, key: str, error: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_client_tls(cert, key)
    assert exc.value.messages == [error]


OIDC = {"oidc_discovery_url": "https://idp.test", "oidc_client_id": CLIENT_ID}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({**OIDC, "oidc_client_secret": "s", "oidc_client_private_key": pem(RSA)},
         "only one of 'oidc_client_secret' and 'oidc_client_private_key' may be set"),
        ({"oidc_discovery_url": "https://idp.test", "oidc_client_private_key": pem(RSA)},
         "'oidc_client_id' must be set with 'oidc_client_private_key'"),
        ({**OIDC, "oidc_client_private_key": "nope"}, "invalid oidc_client_private_key: not a PEM private key"),
        ({**OIDC, "oidc_client_private_key": pem(P256), "oidc_client_assertion_alg": "RS256"},
         "invalid oidc_client_private_key: RS256 cannot be used with this EC key (ES256)"),
        ({**OIDC, "oidc_client_private_key": pem(RSA), "oidc_client_assertion_alg": "HS256"},
         "invalid oidc_client_private_key: HS256 cannot be used with an RSA key (RS256, RS384, RS512, PS256, PS384, PS512)"),
        ({**OIDC, "oidc_client_secret": "s", "oidc_client_assertion_alg": "RS256"},
         "'oidc_client_assertion_alg' and 'oidc_client_assertion_kid' need 'oidc_client_private_key'"),
        ({**OIDC}, "both 'oidc_client_id' and 'oidc_client_secret' must be set for OIDC"),
        ({**OIDC, "oidc_client_secret": "s", "client_tls_cert": CERT},
         "'client_tls_cert' and 'client_tls_key' must be set together"),
    ],
    ids=["secret and key", "key without id", "bad key", "alg for another key", "hmac alg", "alg without key",
         "id without credential", "half a client certificate"],
)
async def test_config_refusals_before_any_fetch(data: dict[str, Any], error: str) -> None:
    h = Harness()
    with pytest.raises(InvalidRequest) as exc:
        await h.call(Operation.UPDATE, "config", data)
    assert exc.value.messages == [error] and h.idp.calls == []


async def test_private_key_jwt_code_flow_and_the_key_is_write_only() -> None:
    h = Harness()
    h.idp.client_key = RSA.public_key()
    await h.configure(oidc_client_secret="", oidc_client_private_key=pem(RSA), client_tls_cert=CERT,
                      client_tls_key=pem(P256))
    await h.role()
    resp = await h.login(**BOB)
    assert resp.auth.alias.name == "bob@example.com"
    [(_, _, sent)] = [c for c in h.idp.calls if c[1].endswith("/token")]
    assert "client_secret" not in sent["form"] and "Authorization" not in sent["headers"]
    assert sent["client_cert"] == (CERT, pem(P256))  # mTLS on the IdP's endpoints
    assert all(c[2]["client_cert"] == (CERT, pem(P256)) for c in h.idp.calls)
    data = (await h.call(Operation.READ, "config")).data
    assert "oidc_client_private_key" not in data and "client_tls_key" not in data and data["client_tls_cert"] == CERT
    assert set(data["sensitive_fingerprints"]) == {"oidc_client_private_key", "client_tls_key"}
    stored = json.dumps(h.storage.dump()["config"])
    assert "PRIVATE KEY" not in stored  # sealed at rest
    # A wrong key is refused by the IdP, never retried with a secret.
    h.idp.client_key = P256.public_key()
    with pytest.raises(InvalidRequest, match=r"cannot fetch token: HTTP 401 \(invalid_client\)"):
        await h.login(**BOB)


async def test_jwks_fetches_present_the_client_certificate() -> None:
    from tests.plugin.fakes import Harness as JwtHarness
    from tests.plugin.keyfactory import ec_key, jwks

    key = ec_key(kid="k")
    fetcher = FakeFetcher({"https://idp.test/certs": jwks(key)})
    h = JwtHarness(fetcher=fetcher)
    await h.write("config", {"jwks_url": "https://idp.test/certs", "client_tls_cert": CERT,
                             "client_tls_key": pem(P256)})
    assert fetcher.calls[0][2]["client_cert"] == (CERT, pem(P256))


# -- override_allowed_server_names: the hosts the IdP's certificate may name --------------------
NAMES = ("idp.internal", "10.1.2.3")


async def test_allowed_server_names_go_with_every_call_to_the_idp() -> None:
    h = Harness()
    await h.configure(override_allowed_server_names=list(NAMES))
    await h.role()
    await h.login(**BOB)
    paths = {url.removeprefix(h.idp.issuer) for _, url, _ in h.idp.calls}
    assert {"/.well-known/openid-configuration", "/jwks", "/token", "/userinfo"} <= paths
    assert {sent["server_names"] for _, _, sent in h.idp.calls} == {NAMES}


@pytest.mark.parametrize("source", ["jwks_url", "jwks_pairs"])
async def test_key_set_fetches_carry_the_allowed_server_names(source: str) -> None:
    from tests.plugin.fakes import Harness as JwtHarness
    from tests.plugin.keyfactory import ec_key, jwks

    key = ec_key(kid="k")
    urls = ["https://idp.test/certs", "https://idp.test/more"]
    fetcher = FakeFetcher({url: jwks(key) for url in urls})
    h = JwtHarness(fetcher=fetcher)
    config: dict[str, Any] = {"jwks_url": urls[0]} if source == "jwks_url" else {
        "jwks_pairs": [{"jwks_url": url} for url in urls]}
    await h.write("config", {**config, "override_allowed_server_names": list(NAMES)})
    assert fetcher.calls and {sent["server_names"] for _, _, sent in fetcher.calls} == {NAMES}
