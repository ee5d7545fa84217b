"""config write/read/validation (docs/reference/test-scenarios.md section 2) plus the HMAC key source."""

from __future__ import annotations

import json
from typing import Any

import pytest

from plugin.errors import InvalidRequest, NotFound, PluginError, UnsupportedOperation
from plugin.framework import Operation, Request
from plugin.path_config import CONFIG_FIELDS
from plugin.sealing import SealError, is_sealed
from tests.plugin.fakes import Harness
from tests.plugin.keyfactory import FakeFetcher, ec_key, jwks, make_token, self_signed_cert_pem

CONFIG_FIELDS_NAMES = list(CONFIG_FIELDS)

ISSUER = "https://idp.example.com/"
DISCOVERY_DOC_URL = "https://idp.example.com/.well-known/openid-configuration"
CERTS = "https://idp.example.com/certs"
CERTS_B = "https://other.example.com/certs"
SECRET = "s" * 32

KEY = ec_key()
PEM = KEY.pem.strip()  # comma string slices trim each element, as Vault does
CA = self_signed_cert_pem(KEY, "ca")

EMPTY = {
    "oidc_discovery_url": "", "oidc_discovery_ca_pem": "", "oidc_client_id": "", "oidc_response_mode": "",
    "oidc_response_types": [], "default_role": "", "jwt_validation_pubkeys": [], "jwt_supported_algs": [],
    "jwks_url": "", "jwks_pairs": [], "jwks_ca_pem": "", "bound_issuer": "", "provider_config": {},
    "namespace_in_state": True, "unsupported_critical_cert_extensions": [], "oidc_client_assertion_alg": "",
    "oidc_client_assertion_kid": "", "client_tls_cert": "", "skip_jwks_validation": False,
    "override_allowed_server_names": [],
}


def idp_fetcher() -> FakeFetcher:
    return FakeFetcher(
        {
            DISCOVERY_DOC_URL: {"issuer": ISSUER, "jwks_uri": CERTS, "authorization_endpoint": ISSUER + "auth"},
            CERTS: jwks(KEY),
            CERTS_B: jwks(KEY),
            "https://idp.example.com/certs_invalid": "It's not a keyset!",
        }
    )


@pytest.fixture
def h() -> Harness:
    return Harness(fetcher=idp_fetcher())


async def read_config(h: Harness) -> dict[str, Any]:
    resp = await h.read("config")
    assert resp is not None and resp.data is not None
    return resp.data


async def test_read_unset_is_404(h: Harness) -> None:
    with pytest.raises(NotFound) as info:
        await h.read("config")
    assert info.value.messages == []


async def test_jwt_read_exact(h: Harness) -> None:
    """TestConfig_JWT_Read: GET returns exactly the 15 readable keys."""
    data = {**EMPTY, "jwt_validation_pubkeys": [PEM], "bound_issuer": "http://vault.example.com/", "namespace_in_state": False}
    assert await h.write("config", data) is None
    assert await read_config(h) == data


@pytest.mark.parametrize(
    "data",
    [
        {"oidc_discovery_url": ISSUER, "jwt_validation_pubkeys": [PEM], "jwks_url": CERTS, "bound_issuer": "x"},
        {"jwt_validation_pubkeys": [PEM], "jwks_url": CERTS},
        {"jwt_validation_pubkeys": [PEM], "jwt_validation_hmac_secrets": [SECRET]},
        {"jwks_url": CERTS, "jwks_pairs": [{"jwks_url": CERTS}]},
        # OpenBao 2.7.2 stores this one (its check leaves jwks_pairs out): docs/vault-differences.md row 51
        {"jwt_validation_pubkeys": [PEM], "jwks_pairs": [{"jwks_url": CERTS}]},
        {},
        {"bound_issuer": "x"},
    ],
    ids=["three", "pubkeys+jwks", "pubkeys+hmac", "jwks+pairs", "pubkeys+pairs", "none", "only-issuer"],
)
async def test_exactly_one_key_source(h: Harness, data: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        await h.write("config", data)
    assert info.value.messages == [
        "exactly one of 'jwt_validation_pubkeys', 'jwt_validation_hmac_secrets', 'jwks_url', 'jwks_pairs' "
        "or 'oidc_discovery_url' must be set"
    ]


async def test_jwt_write_defaults(h: Harness) -> None:
    """TestConfig_JWT_Write: pubkeys + bound_issuer, every other list [] and namespace_in_state true."""
    assert await h.write("config", {"jwt_validation_pubkeys": PEM, "bound_issuer": "http://vault.example.com/"}) is None
    got = await read_config(h)
    assert got == {**EMPTY, "jwt_validation_pubkeys": [PEM], "bound_issuer": "http://vault.example.com/"}


CONFIG_ERRORS = [
    ("pairs-not-objects", {"jwks_pairs": ["foo", "bar"]}, "invalid jwks_pairs: jwks_pairs must be provided as a list of json objects"),
    ("pairs-bound-issuer", {"jwks_pairs": [{"jwks_url": CERTS, "jwks_ca_pem": "bad"}, {"jwks_url": CERTS_B, "jwks_ca_pem": "bad"}],
                            "bound_issuer": "foobar"}, "Bound issuer is not supported for use with 'jwks_pairs'"),
    ("pairs-with-jwks-ca", {"jwks_pairs": [{"jwks_url": CERTS}], "jwks_ca_pem": CA},
     "CA PEMs must be provided as part of the 'jwks_pairs' when using multiple JWKS URLs"),
    ("jwks-missing", {"jwks_url": "https://idp.example.com/certs_missing", "jwks_ca_pem": CA, "jwks_pairs": {}}, "error checking jwks URL"),
    ("jwks-invalid", {"jwks_url": "https://idp.example.com/certs_invalid", "jwks_ca_pem": CA}, "error checking jwks URL"),
    ("jwks-bad-ca", {"jwks_url": CERTS, "jwks_ca_pem": "not a pem"}, "error checking jwks_ca_pem"),
    ("pairs-missing", {"jwks_pairs": [{"jwks_url": "https://idp.example.com/certs_missing"}, {"jwks_url": CERTS_B}]},
     "error checking jwks URL"),
    ("pairs-invalid", {"jwks_pairs": [{"jwks_url": "https://idp.example.com/certs_invalid"}, {"jwks_url": CERTS_B}]},
     "error checking jwks URL"),
    ("bad-pubkey", {"jwt_validation_pubkeys": ["nope"]}, "error parsing public key"),
    ("discovery-bad-ca", {"oidc_discovery_url": ISSUER, "oidc_discovery_ca_pem": "junk", "oidc_client_id": "abc",
                          "oidc_client_secret": "def"}, "error checking oidc discovery URL"),
    ("discovery-issuer-mismatch", {"oidc_discovery_url": "https://idp.example.com"}, "error checking oidc discovery URL"),
    ("discovery-unreachable", {"oidc_discovery_url": "https://nowhere.example.com/"}, "error checking oidc discovery URL"),
    ("missing-discovery-url", {"jwt_validation_pubkeys": ["a"], "oidc_client_id": "abc", "oidc_client_secret": "def"},
     "'oidc_discovery_url' must be set for OIDC"),
    ("missing-secret", {"oidc_discovery_url": ISSUER, "oidc_client_id": "abc"},
     "both 'oidc_client_id' and 'oidc_client_secret' must be set for OIDC"),
    ("missing-id", {"oidc_discovery_url": ISSUER, "oidc_client_secret": "def"},
     "both 'oidc_client_id' and 'oidc_client_secret' must be set for OIDC"),
    ("unsupported-alg", {"jwt_validation_pubkeys": [PEM], "jwt_supported_algs": ["ES256", "XX999"]},
     'invalid jwt_supported_algs: unsupported signing algorithm "XX999"'),
    ("none-alg", {"jwt_validation_pubkeys": [PEM], "jwt_supported_algs": ["none"]},
     'invalid jwt_supported_algs: unsupported signing algorithm "none"'),
    ("hs-without-hmac", {"jwt_validation_pubkeys": [PEM], "jwt_supported_algs": "HS256"},
     "invalid jwt_supported_algs: signing algorithm \"HS256\" may only be used with 'jwt_validation_hmac_secrets'"),
    ("asymmetric-with-hmac", {"jwt_validation_hmac_secrets": [SECRET], "jwt_supported_algs": ["HS256", "RS256"]},
     "invalid jwt_supported_algs: only HS256, HS384, HS512 may be used with 'jwt_validation_hmac_secrets'"),
    ("short-hmac-secret", {"jwt_validation_hmac_secrets": ["x" * 31]}, "error parsing HMAC secret: entry 0 is 31 bytes"),
    ("bad-response-type", {"jwt_validation_pubkeys": [PEM], "oidc_response_types": "code,token"},
     "invalid response_types [code token]. 'code' and 'id_token' are allowed"),
    ("query-id-token", {"jwt_validation_pubkeys": [PEM], "oidc_response_types": "id_token"},
     "query response_mode may not be used with an id_token response_type"),
    ("mode-upper", {"jwt_validation_pubkeys": [PEM], "oidc_response_mode": "QUERY"}, 'invalid response_mode: "QUERY"'),
    ("mode-abc", {"jwt_validation_pubkeys": [PEM], "oidc_response_mode": "abc"}, 'invalid response_mode: "abc"'),
    ("provider-unknown", {"oidc_discovery_url": ISSUER, "provider_config": {"provider": "unknown"}},
     'invalid provider_config: provider "unknown" not found in custom providers'),
    ("provider-list", {"oidc_discovery_url": ISSUER, "provider_config": {"provider": ["okta"]}},
     'invalid provider_config: provider "["okta"]" not found in custom providers'),
    ("provider-missing", {"oidc_discovery_url": ISSUER, "provider_config": {"not-provider": "oops"}},
     "invalid provider_config: 'provider' field not found in provider_config"),
    ("bad-type", {"jwt_validation_pubkeys": [PEM], "namespace_in_state": "maybe"}, "Field validation failed"),
    # OpenBao stores any text here; one that no certificate can name is refused instead
    # (docs/vault-differences.md), before anything is fetched.
    *[(f"server name {name!r}", {"jwks_url": CERTS, "override_allowed_server_names": ["idp.internal", name]},
       f"invalid override_allowed_server_names: {json.dumps(name)} is not a host name or an IP address")
      for name in ("*.example.com", "https://idp.example.com", "idp.example.com:443", "idp example", "", ".", "a..b",
                   "-idp.example.com", "idp-.example.com", "10.0.0.0/8", "x" * 64 + ".com", "idp\x00.com")],
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
async def test_config_errors(h: Harness, data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        await h.write("config", data)
    assert info.value.messages[0].startswith(message), info.value.messages
    assert await h.storage.get("config") is None


@pytest.mark.parametrize("names", [["idp.internal"], ["IDP.Example.COM.", "10.0.0.1", "::1"], ["under_score.corp"], []])
async def test_allowed_server_names_stored_as_written(h: Harness, names: list[str]) -> None:
    assert await h.write("config", {"jwks_url": CERTS, "override_allowed_server_names": names}) is None
    assert (await read_config(h))["override_allowed_server_names"] == names
    assert h.fetcher.calls[-1][2]["server_names"] == tuple(names)  # the check's fetch used them


async def test_pairs_bound_issuer_checked_before_fetch(h: Harness) -> None:
    with pytest.raises(InvalidRequest, match="Bound issuer is not supported"):
        await h.write("config", {"jwks_pairs": [{"jwks_url": CERTS}], "bound_issuer": "foobar"})
    assert h.fetcher.count() == 0


async def test_jwks_update_roundtrip(h: Harness) -> None:
    """TestConfig_JWKS_Update: form_post accepted without OIDC; GET returns the input."""
    data = {**EMPTY, "jwks_url": CERTS, "jwks_ca_pem": CA, "oidc_response_mode": "form_post", "namespace_in_state": False}
    assert await h.write("config", data) is None
    got = await read_config(h)
    status = got.pop("key_sources")  # the JWKS's fetch state (test_key_sources_status)
    assert got == data
    assert [s["source"] for s in status] == ["jwks_url"] and status[0]["key_count"] == 1
    assert h.fetcher.count(CERTS) == 1


async def test_jwks_pairs_roundtrip(h: Harness) -> None:
    pairs = [{"jwks_url": CERTS, "jwks_ca_pem": CA}, {"jwks_url": CERTS_B, "jwks_ca_pem": CA}]
    data = {**EMPTY, "jwks_pairs": pairs, "oidc_response_mode": "form_post", "namespace_in_state": False}
    assert await h.write("config", data) is None
    assert (await read_config(h))["jwks_pairs"] == pairs


@pytest.mark.parametrize("mode", ["", "form_post", "query"])
async def test_response_mode_ok(h: Harness, mode: str) -> None:
    assert await h.write("config", {"jwt_validation_pubkeys": [PEM], "oidc_response_mode": mode}) is None


async def test_oidc_write_and_secret_never_returned(h: Harness) -> None:
    assert await h.write("config", {"oidc_discovery_url": ISSUER, "oidc_client_id": "abc", "oidc_client_secret": "def"}) is None
    got = await read_config(h)
    assert "oidc_client_secret" not in got and got["oidc_client_id"] == "abc" and got["namespace_in_state"] is True
    raw = await h.storage.get("config")
    assert raw is not None and is_sealed(raw["oidc_client_secret"]) and "def" not in raw["oidc_client_secret"]
    assert h.system.sealer.unseal(raw["oidc_client_secret"], "config#oidc_client_secret") == b'"def"'


async def test_secrets_are_sealed_at_rest_and_open_for_use(h: Harness) -> None:
    """A copy of the storage is not a credential: client secrets, HMAC keys and provider
    credentials are stored sealed (their context is where they live), and used unsealed."""
    secret = "s" * 40
    assert await h.write("config", {"jwt_validation_hmac_secrets": [secret]}) is None
    raw = await h.storage.get("config")
    assert raw is not None and secret not in str(raw) and is_sealed(raw["jwt_validation_hmac_secrets"])
    with pytest.raises(SealError):  # moved to another field, it does not open
        h.system.sealer.unseal(raw["jwt_validation_hmac_secrets"], "config#oidc_client_secret")
    h.backend.invalidate("config")
    config = await h.backend.config(Request(Operation.READ, "config", storage=h.storage, system=h.system))
    assert config is not None and config.jwt_validation_hmac_secrets == [secret]


async def test_initialize_seals_clear_secrets_of_an_older_version(h: Harness) -> None:
    """At start, a config an older version stored with its secrets in the clear is sealed."""
    await h.storage.put("config", {"jwt_validation_hmac_secrets": ["h" * 40], "oidc_client_id": "abc",
                                   "provider_config": {"provider": "okta", "api_token": "okta-clear"}})
    req = Request(Operation.READ, "", storage=h.storage, system=h.system)
    await h.backend.initialize(req)
    raw = await h.storage.get("config")
    assert raw is not None and "h" * 40 not in str(raw) and "okta-clear" not in str(raw)
    assert raw["oidc_client_id"] == "abc"
    config = await h.backend.config(req)
    assert config is not None and config.jwt_validation_hmac_secrets == ["h" * 40]
    assert config.provider_config["api_token"] == "okta-clear"
    before = await h.storage.get("config")
    await h.backend.initialize(req)  # nothing left to seal: nothing written
    assert await h.storage.get("config") == before


async def test_clear_secrets_of_an_older_version_still_load(h: Harness) -> None:
    await h.storage.put("config", {"oidc_discovery_url": ISSUER, "oidc_client_id": "abc",
                                   "oidc_client_secret": "old-clear"})
    config = await h.backend.config(Request(Operation.READ, "config", storage=h.storage, system=h.system))
    assert config is not None and config.oidc_client_secret == "old-clear"


async def test_provider_config_stored_and_cleared(h: Harness) -> None:
    data = {"oidc_discovery_url": ISSUER, "provider_config": {"provider": "azure", "extraOptions": "abound"},
            "unsupported_critical_cert_extensions": ["2.5.29.54", "2.5.29.36"]}
    assert await h.write("config", data) is None
    got = await read_config(h)
    assert got["provider_config"] == {"provider": "azure", "extraOptions": "abound"}
    assert got["unsupported_critical_cert_extensions"] == ["2.5.29.54", "2.5.29.36"]
    assert await h.write("config", {"oidc_discovery_url": ISSUER}) is None
    assert (await read_config(h))["provider_config"] == {}


async def test_provider_sensitive_keys_hidden(h: Harness) -> None:
    await h.write("config", {"oidc_discovery_url": ISSUER, "provider_config": {"provider": "okta", "api_token": "t", "org_url": "https://o"}})
    assert (await read_config(h))["provider_config"] == {"provider": "okta", "org_url": "https://o"}


@pytest.mark.parametrize(("given", "want"), [(None, True), (True, True), (False, False)], ids=["unset", "true", "false"])
async def test_namespace_in_state_create(h: Harness, given: bool | None, want: bool) -> None:
    data: dict[str, Any] = {"oidc_discovery_url": ISSUER}
    if given is not None:
        data["namespace_in_state"] = given
    await h.write("config", data)
    assert (await read_config(h))["namespace_in_state"] is want


@pytest.mark.parametrize(
    ("existing", "update", "want"),
    [(False, True, True), (False, None, False), (True, False, False), (True, None, True)],
    ids=["false-to-true", "false-kept", "true-to-false", "true-kept"],
)
async def test_namespace_in_state_update(h: Harness, existing: bool, update: bool | None, want: bool) -> None:
    await h.write("config", {"oidc_discovery_url": ISSUER, "namespace_in_state": existing})
    data: dict[str, Any] = {"oidc_discovery_url": ISSUER, "default_role": "UI"}
    if update is not None:
        data["namespace_in_state"] = update
    await h.write("config", data)
    got = await read_config(h)
    assert got["namespace_in_state"] is want and got["default_role"] == "ui"


async def test_write_replaces_whole_config(h: Harness) -> None:
    await h.write("config", {"jwt_validation_pubkeys": [PEM], "bound_issuer": "x", "default_role": "r"})
    await h.write("config", {"jwt_validation_pubkeys": [PEM]})
    got = await read_config(h)
    assert got["bound_issuer"] == "" and got["default_role"] == ""


async def test_failed_write_keeps_previous_config(h: Harness) -> None:
    await h.write("config", {"jwt_validation_pubkeys": [PEM], "bound_issuer": "keep"})
    before = await h.storage.get("config")
    for bad in ({"jwks_url": "https://idp.example.com/certs_missing"}, {"jwt_validation_pubkeys": [PEM], "jwt_supported_algs": "XX"}):
        with pytest.raises(InvalidRequest):
            await h.write("config", bad)
    assert await h.storage.get("config") == before
    assert (await read_config(h))["bound_issuer"] == "keep"


async def test_hmac_source(h: Harness) -> None:
    data = {"jwt_validation_hmac_secrets": [SECRET, "t" * 40], "jwt_supported_algs": ["HS256", "HS512"]}
    assert await h.write("config", data) is None
    got = await read_config(h)
    assert "jwt_validation_hmac_secrets" not in got and got["jwt_supported_algs"] == ["HS256", "HS512"]
    assert SECRET not in repr(got)
    cfg = await h.backend.config(Request(Operation.READ, "config", storage=h.storage, system=h.system))
    assert cfg is not None and cfg.jwt_validation_hmac_secrets == [SECRET, "t" * 40]


async def test_delete_config_unsupported(h: Harness) -> None:
    with pytest.raises(UnsupportedOperation):
        await h.call(Operation.DELETE, "config")


async def test_invalidate_rereads_storage(h: Harness) -> None:
    await h.write("config", {"jwt_validation_pubkeys": [PEM], "bound_issuer": "one"})
    raw = await h.storage.get("config")
    assert raw is not None
    raw["bound_issuer"] = "two"
    await h.storage.put("config", raw)
    assert (await read_config(h))["bound_issuer"] == "one"  # cached
    h.backend.invalidate("config")
    assert (await read_config(h))["bound_issuer"] == "two"


HOSTILE: list[Any] = [None, {}, [], [[]], {"a": {"b": []}}, [None], [{"jwks_url": 5}], [{"jwks_url": CERTS, "jwks_ca_pem": []}],
                      1e308, True, "x" * 5000, {"provider": {}}]


@pytest.mark.parametrize("field", list(CONFIG_FIELDS_NAMES))
async def test_hostile_values_never_crash(h: Harness, field: str) -> None:
    """Any value in any config field gives success or a PluginError (a 4xx), never another exception."""
    for value in HOSTILE:
        try:
            await h.write("config", {"jwt_validation_pubkeys": [PEM], field: value})
        except PluginError:
            pass


# -- config writes while the IdP is down (issue 12) -----------------------------------------

@pytest.mark.parametrize(
    ("data", "warning"),
    [
        ({"jwks_url": "https://down.example/certs"},
         "error checking jwks URL https://down.example/certs: connection refused"),
        ({"oidc_discovery_url": "https://down.example"},
         "error checking oidc discovery URL: connection refused"),
        ({"jwks_pairs": [{"jwks_url": CERTS}, {"jwks_url": "https://down.example/certs"}]},
         "error checking jwks URL https://down.example/certs: connection refused"),
    ],
    ids=["jwks_url", "discovery", "jwks_pairs"],
)
async def test_skip_jwks_validation_stores_the_config_with_a_warning(data: dict[str, Any], warning: str) -> None:
    from plugin.errors import UpstreamError

    fetcher = idp_fetcher()
    fetcher.routes["https://down.example/certs"] = UpstreamError("connection refused")
    fetcher.routes["https://down.example/.well-known/openid-configuration"] = UpstreamError("connection refused")
    h = Harness(fetcher=fetcher)
    with pytest.raises(InvalidRequest, match="connection refused"):
        await h.write("config", data)  # without the flag: refused, nothing stored
    assert "config" not in h.storage.dump()
    resp = await h.write("config", {**data, "skip_jwks_validation": True})
    assert resp is not None and resp.warnings == [
        f"{warning}; the config is stored anyway (skip_jwks_validation): the keys are fetched at the first login, "
        "and GET config shows their status in key_sources"
    ]
    got = await read_config(h)
    assert got["skip_jwks_validation"] is True
    failing = [s for s in got["key_sources"] if s["last_error"]]
    assert failing and all("connection refused" in s["last_error"] for s in failing)


async def test_skip_jwks_validation_fetches_at_the_first_login() -> None:
    from plugin.errors import UpstreamError

    served: dict[str, Any] = {"doc": UpstreamError("connection refused")}
    fetcher = FakeFetcher({CERTS: lambda: served["doc"]})
    h = Harness(fetcher=fetcher)
    await h.write("config", {"jwks_url": CERTS, "skip_jwks_validation": True})
    await h.write("role/r", {"role_type": "jwt", "user_claim": "sub", "bound_subject": "s"})
    served["doc"] = jwks(KEY)
    h.clock.now += 11  # past the cooldown of the write's failed fetch
    now = int(h.clock.now)
    token = make_token({"sub": "s", "iat": now, "exp": now + 60}, key=KEY)
    assert (await h.login({"role": "r", "jwt": token})).auth is not None
    [status] = (await read_config(h))["key_sources"]
    assert status["key_count"] == 1 and status["last_error"] is None and status["failures"] == 1


@pytest.mark.parametrize(
    "data",
    [
        {"jwks_url": CERTS, "jwks_ca_pem": "not a pem"},
        {"oidc_discovery_url": ISSUER, "oidc_discovery_ca_pem": "not a pem"},
        {"jwt_validation_pubkeys": ["not a key"]},
    ],
    ids=["jwks CA", "discovery CA", "bad pubkey"],
)
async def test_skip_jwks_validation_still_refuses_local_problems(h: Harness, data: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        await h.write("config", {**data, "skip_jwks_validation": True})
    assert h.fetcher.count() == 0 and "config" not in h.storage.dump()
