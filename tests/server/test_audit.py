"""Audit devices: Vault's entry format and hashing, the sys/audit API, fail closed, sockets.

Entries are checked as Vault writes them (compared with OpenBao 2.7.2 for the same requests,
docs/vault-differences.md row 33): one request and one response line per request, every
string of request and response data hashed with the device's salt, tokens and accessors
hashed wherever they appear, the caller's identity readable.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from plugin.sealing import is_sealed
from plugin.storage import InMemoryStorage
from server.app import create_app
from server.appkeys import AUDIT, STORAGE
from server.audit.broker import AUDIT_KEY
from server.audit.entry import (
    Format,
    Hasher,
    Record,
    hash_data,
    probe_record,
    request_entry,
    request_line,
    response_entry,
    response_line,
    stamp,
)
from server.http.listverb import make_test_server
from server.settings import AuditSeed, Settings, StorageSettings
from server.tokens.entry import TokenEntry
from server.tokens.store import ID_PREFIX
from tests.plugin.keyfactory import make_token, rsa_key
from tests.server.httpkit import Client, app_of

ROOT = "root-token-for-audit-tests"
H = {"X-Vault-Token": ROOT}
KEY = rsa_key(kid="audit")
ISS = "https://ci.example.com"
FAR = 4102444800


def jwt(sub: str = "repo:org/app", aud: str = "authmount", **extra: Any) -> str:
    return make_token({"iss": ISS, "sub": sub, "aud": aud, "iat": int(time.time()), "exp": FAR, **extra}, key=KEY)


# -- hashing (table-driven) ---------------------------------------------------------------------
def _h(value: str) -> str:
    return "H(" + value + ")"


@pytest.mark.parametrize(
    ("data", "keep", "expected"),
    [
        ({"a": "x"}, (), {"a": "H(x)"}),
        ({"n": 3, "f": 1.5, "b": True, "z": None}, (), {"n": 3, "f": 1.5, "b": True, "z": None}),
        ({"l": ["x", 1, ["y"]]}, (), {"l": ["H(x)", 1, ["H(y)"]]}),
        ({"m": {"k": "v", "n": {"d": "e"}}}, (), {"m": {"k": "H(v)", "n": {"d": "H(e)"}}}),
        ({"role": "ci", "jwt": "eyJ"}, ("role",), {"role": "ci", "jwt": "H(eyJ)"}),
        ({"policies": ["a", "b"]}, ("policies",), {"policies": ["a", "b"]}),
        # a kept key at any depth keeps its strings; a map under a kept key is still walked
        ({"meta": {"role": "ci", "x": "y"}}, ("role",), {"meta": {"role": "ci", "x": "H(y)"}}),
        ({"role": {"inner": "v"}}, ("role",), {"role": {"inner": "H(v)"}}),
    ],
)
def test_hash_data(data: dict[str, Any], keep: tuple[str, ...], expected: dict[str, Any]) -> None:
    assert hash_data(data, _h, frozenset(keep)) == expected


def test_hasher_is_vaults_identified_hmac() -> None:
    salt = os.urandom(32)
    want = "hmac-sha256:" + hmac.new(salt, b"hvs.token", hashlib.sha256).hexdigest()
    h = Hasher(salt)
    assert h("hvs.token") == want and h("hvs.token") == want  # the keyed state is copied, not used up


def _record(**fields: Any) -> Record:
    rec = Record()
    rec.operation, rec.path, rec.mount_point, rec.mount_type, rec.mount_class = (
        "list", "auth/jwt/role/", "auth/jwt/", "jwt", "auth",
    )
    for name, value in fields.items():
        setattr(rec, name, value)
    return rec


@pytest.mark.parametrize(
    ("options", "check"),
    [
        ({}, lambda e: e["response"]["data"] == {"keys": ["H(a)", "H(b)"], "accessor": "H(acc)"}),
        ({"elide_list_responses": True}, lambda e: e["response"]["data"]["keys"] == 2),
        ({"hmac_accessor": False}, lambda e: e["response"]["data"]["accessor"] == "H(acc)"),  # data: still hashed
        ({"hmac_accessor": False}, lambda e: e["response"]["auth"]["accessor"] == "issued-acc"),
        ({"hmac_accessor": True}, lambda e: e["response"]["auth"]["accessor"] == "H(issued-acc)"),
        ({"log_raw": True}, lambda e: e["response"]["auth"]["client_token"] == "hvs.issued"
         and e["response"]["data"]["keys"] == ["a", "b"]),
        ({}, lambda e: e["response"]["auth"]["client_token"] == "H(hvs.issued)"
         and e["response"]["auth"]["display_name"] == "jwt-alice"),
    ],
)
def test_device_options(options: dict[str, Any], check: Any) -> None:
    rec = _record(is_list=True, response_data={"keys": ["a", "b"], "accessor": "acc"})
    rec.response_auth = ({"client_token": "hvs.issued", "accessor": "issued-acc", "policies": ["p"],
                          "token_type": "service", "lease_duration": 60}, "jwt-alice")
    entry = response_entry(rec, Format(_h, **options), "now")
    assert check(entry), entry


def _token() -> TokenEntry:
    return TokenEntry(id_hash="h", accessor="acc-1", policies=["default", "dev"], meta={"role": "ci"},
                      display_name="jwt-bot", creation_time=1_700_000_000, ttl=3600, num_uses=3, entity_id="ent-1")


def _full_record() -> Record:
    """An authenticated request with everything a Record can carry."""
    rec = Record()
    rec.request_id, rec.operation, rec.path = "req-1", "update", "auth/jwt/role/r"
    rec.mount_point, rec.mount_type, rec.mount_accessor, rec.mount_class = "auth/jwt/", "jwt", "auth_jwt_1", "auth"
    rec.remote_address, rec.remote_port = "10.0.0.1", 5000
    rec.client_token, rec.token = "hvs.caller", _token()
    rec.data = {"role_type": "jwt", "policies": ["a"], "ttl": 60}
    rec.non_hmac_request = frozenset({"role_type"})
    rec.headers = {"x-team": (["blue"], False), "x-secret": (["s"], True)}
    rec.response_data = {"name": "r", "count": 2}
    rec.non_hmac_response = frozenset({"name"})
    rec.warnings = ["w1"]
    return rec


FULL_AUTH = {
    "client_token": "H(hvs.caller)", "accessor": "H(acc-1)", "display_name": "jwt-bot",
    "policies": ["default", "dev"], "token_policies": ["default", "dev"], "policy_results": {"allowed": True},
    "metadata": {"role": "ci"}, "entity_id": "ent-1", "token_type": "service", "token_ttl": 3600,
    "token_issue_time": "2023-11-14T22:13:20Z", "remaining_uses": 3,
}
FULL_REQUEST = {
    "id": "req-1", "operation": "update", "mount_point": "auth/jwt/", "mount_type": "jwt",
    "mount_accessor": "auth_jwt_1", "mount_class": "auth", "client_token": "H(hvs.caller)",
    "client_token_accessor": "H(acc-1)", "namespace": {"id": "root"}, "path": "auth/jwt/role/r",
    "data": {"role_type": "jwt", "policies": ["H(a)"], "ttl": 60}, "remote_address": "10.0.0.1", "remote_port": 5000,
    "headers": {"x-team": ["blue"], "x-secret": ["H(s)"]},
}
MOUNT = {"mount_point": "auth/jwt/", "mount_type": "jwt", "mount_accessor": "auth_jwt_1", "mount_class": "auth"}


def test_whole_entries_of_an_authenticated_request() -> None:
    """Both entries, every field in Vault's place (key order included: the line is JSON as written)."""
    rec = _full_record()
    fmt = Format(_h)
    assert request_entry(rec, fmt, "T") == {"time": "T", "type": "request", "auth": FULL_AUTH, "request": FULL_REQUEST}
    response = response_entry(rec, fmt, "T")
    assert response == {"time": "T", "type": "response", "auth": FULL_AUTH, "request": FULL_REQUEST, "response": {
        **MOUNT, "data": {"name": "r", "count": 2}, "warnings": ["w1"]}}
    assert list(response) == ["time", "type", "auth", "request", "response"]
    assert list(response["auth"]) == list(FULL_AUTH) and list(response["request"]) == list(FULL_REQUEST)
    line = response_line(rec, fmt, "T")
    assert line.startswith(b'{"time":"T","type":"response","auth":{') and line.endswith(b"}\n")
    assert line.count(b"\n") == 1


def test_whole_entries_of_a_probe() -> None:
    """What a device writes when it is enabled: the bare Record's defaults."""
    fmt = Format(_h)
    request = {"id": "", "operation": "update", "namespace": {"id": "root"}, "path": "sys/audit/test"}
    assert request_entry(probe_record(), fmt, "T") == {"time": "T", "type": "request", "auth": {"token_type": "default"},
                                                        "request": request}
    assert response_entry(probe_record(), fmt, "T") == {
        "time": "T", "type": "response", "auth": {"token_type": "default"}, "request": request, "response": {}}


def test_whole_entries_of_logins() -> None:
    """A login (no caller token), the token it issued, and a refused one with its failure."""
    fmt = Format(_h)
    rec = _record(operation="update", path="auth/jwt/login", data={"role": "ci", "jwt": "eyJ"})
    rec.response_auth = ({"client_token": "hvs.new", "accessor": "acc-2", "policies": ["default"],
                          "token_policies": ["default", "x"], "metadata": {"role": "ci"}, "entity_id": "ent-2",
                          "token_type": "batch", "lease_duration": 60, "num_uses": 2}, "jwt-bot")
    entry = response_entry(rec, fmt, "T")
    assert entry["auth"] == {"token_type": "default", "policy_results": {"allowed": True}}
    assert entry["request"] == {"id": "", "operation": "update", "mount_point": "auth/jwt/", "mount_type": "jwt",
                                "mount_class": "auth", "namespace": {"id": "root"}, "path": "auth/jwt/login",
                                "data": {"role": "H(ci)", "jwt": "H(eyJ)"}}
    assert entry["response"] == {"mount_point": "auth/jwt/", "mount_type": "jwt", "mount_class": "auth", "auth": {
        "client_token": "H(hvs.new)", "accessor": "H(acc-2)", "display_name": "jwt-bot", "policies": ["default"],
        "token_policies": ["default", "x"], "metadata": {"role": "ci"}, "entity_id": "ent-2", "token_type": "batch",
        "token_ttl": 60, "num_uses": 2}}
    # an issued token with only what every one has
    rec = _record(operation="update", path="auth/jwt/login")
    rec.response_auth = ({"client_token": "hvs.new"}, "")
    assert response_entry(rec, fmt, "T")["response"]["auth"] == {
        "client_token": "H(hvs.new)", "policies": [], "token_policies": [], "token_type": "service"}
    # refused: the error in the response data (hashed, a 400), the failure's claims hashed
    rec = _record(operation="update", path="auth/jwt/login", error="error validating token: expired")
    rec.login_failure = {"reason": "time", "role": "ci", "iss": "https://idp", "sub": "bot"}
    entry = response_entry(rec, fmt, "T")
    assert "error" not in entry
    assert entry["response"]["data"] == {"error": "H(error validating token: expired)"}
    assert entry["response"]["login_failure"] == {"reason": "time", "role": "ci", "iss": "H(https://idp)", "sub": "H(bot)"}
    # a request that is not a login (a caller token was sent but refused) has no policy results
    rec = _record(client_token="hvs.bad", allowed=False, request_error="permission denied",
                  error="permission denied", error_top=True)
    request, response = request_entry(rec, fmt, "T"), response_entry(rec, fmt, "T")
    assert request["auth"] == response["auth"] == {"token_type": "default"}
    assert request["error"] == response["error"] == "permission denied"
    assert request["request"]["client_token"] == "H(hvs.bad)" and "client_token_accessor" not in request["request"]


@pytest.mark.parametrize(
    ("options", "check"),
    [
        ({"log_raw": True}, lambda q, r: q["auth"]["client_token"] == "hvs.caller" and q["auth"]["accessor"] == "acc-1"
         and q["request"]["data"]["policies"] == ["a"] and q["request"]["headers"]["x-secret"] == ["s"]),
        ({"hmac_accessor": False}, lambda q, r: q["auth"]["accessor"] == "acc-1"
         and q["request"]["client_token_accessor"] == "acc-1" and q["auth"]["client_token"] == "H(hvs.caller)"),
        ({}, lambda q, r: q["auth"]["accessor"] == "H(acc-1)" and r["response"]["data"]["name"] == "r"),
    ],
    ids=["log_raw", "hmac_accessor false", "defaults"],
)
def test_format_options_on_whole_entries(options: dict[str, Any], check: Any) -> None:
    rec = _full_record()
    fmt = Format(_h, **options)
    assert check(request_entry(rec, fmt, "T"), response_entry(rec, fmt, "T"))


def test_prefix_and_one_serialisation_per_format() -> None:
    rec = _full_record()
    plain, prefixed = Format(_h), Format(_h, prefix="AUDIT: ")
    assert request_line(rec, prefixed, "T").startswith(b'AUDIT: {"time":"T","type":"request",')
    assert request_line(rec, plain, "T").startswith(b'{"time":"T","type":"request",')
    raw = Format(_h, log_raw=True)
    assert request_entry(rec, raw, "T")["auth"]["client_token"] == "hvs.caller"  # not the plain format's block
    assert request_entry(rec, plain, "T")["auth"]["client_token"] == "H(hvs.caller)"


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 200])
def test_hasher_is_hmac_sha256_for_every_salt_length(size: int) -> None:
    salt = bytes(range(256))[:size] if size <= 256 else os.urandom(size)
    for value in ("hvs.token", "", "\u00e9", "\ud800 lone surrogate"):
        want = hmac.new(salt, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        assert Hasher(salt)(value) == "hmac-sha256:" + want


def test_stamp_is_rfc3339_with_microseconds() -> None:
    import re
    from datetime import UTC, datetime

    before = datetime.now(UTC).timestamp()
    text = stamp()
    after = datetime.now(UTC).timestamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
    when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert before - 1e-6 <= when <= after + 1e-6


def test_remaining_uses_of_a_token_whose_last_use_this_is() -> None:
    """A token whose last use is this request is stored with -1 (revocation pending): 0 uses remain."""
    rec = _full_record()
    rec.token = _token()
    rec.token.num_uses = -1
    assert request_entry(rec, Format(_h), "T")["auth"]["remaining_uses"] == 0


@pytest.mark.parametrize("is_list", [True, False], ids=["a LIST", "not a LIST"])
def test_elide_list_responses_counts_keys_and_key_info_of_lists_only(is_list: bool) -> None:
    data = {"keys": ["a", "b", "c"], "key_info": {"a": {"x": 1}, "b": {"x": 2}}, "other": ["z"]}
    rec = _record(response_data=data)
    if is_list:
        rec.is_list = True
    got = response_entry(rec, Format(_h, elide_list_responses=True), "T")["response"]["data"]
    if is_list:
        assert got == {"keys": 3, "key_info": 2, "other": ["H(z)"]}
    else:
        assert got == {"keys": ["H(a)", "H(b)", "H(c)"], "key_info": {"a": {"x": 1}, "b": {"x": 2}}, "other": ["H(z)"]}


def test_stamp_never_shows_a_seventh_digit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last microsecond of a second is .999999, not .1000000."""
    import types

    from server.audit import entry

    monkeypatch.setattr(entry, "time", types.SimpleNamespace(time=lambda: 1_700_000_000.9999995))
    monkeypatch.setattr(entry, "_stamp_second", -1)
    assert stamp() == "2023-11-14T22:13:20.999999Z"


@pytest.mark.parametrize("log_raw", [False, True])
def test_idp_tokens_of_a_login_response_are_hashed_in_its_metadata(log_raw: bool) -> None:
    """Issue 12 (``oauth2_metadata``): the IdP tokens a login response adds to
    ``auth.metadata`` are written hashed by every device, ``log_raw`` or not; the rest of
    the metadata stays readable, as in Vault."""
    rec = _record()
    rec.response_auth = ({"client_token": "hvs.issued", "accessor": "acc", "policies": ["p"],
                          "metadata": {"role": "r"}, "token_type": "service", "lease_duration": 60}, "jwt-alice")
    rec.response_secrets = {"oauth2_access_token": "at-raw", "oauth2_id_token": "idt-raw"}
    entry = response_entry(rec, Format(_h, log_raw=log_raw), "now")
    meta = entry["response"]["auth"]["metadata"]
    assert meta == {"role": "r", "oauth2_access_token": "H(at-raw)", "oauth2_id_token": "H(idt-raw)"}


# -- through the server --------------------------------------------------------------------------
def _settings(**extra: Any) -> Settings:
    return Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT, **extra)


async def _client(aiohttp_client: AiohttpClient, settings: Settings | None = None, **kwargs: Any) -> Client:
    client: Client = await aiohttp_client(make_test_server(create_app(settings or _settings(), **kwargs)))
    for path, body in (
        ("sys/auth/jwt", {"type": "jwt"}),
        ("auth/jwt/config", {"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISS}),
        ("auth/jwt/role/ci", {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["authmount"],
                              "token_policies": ["deploy"]}),
    ):
        resp = await client.post("/v1/" + path, json=body, headers=H)
        assert resp.status in (200, 204), await resp.text()
    return client


async def _enable(client: Client, path: str, status: int = 204, **body: Any) -> dict[str, Any]:
    resp = await client.post(f"/v1/sys/audit/{path}", json=body, headers=H)
    assert resp.status == status, await resp.text()
    return await resp.json() if status != 204 else {}


def _entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _login(client: Client, token: str, role: str = "ci") -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/auth/jwt/login", json={"role": role, "jwt": token})
    return resp.status, await resp.json()


async def test_every_request_has_both_entries_and_no_raw_secret(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    log = tmp_path / "audit.log"
    await _enable(client, "file", type="file", options={"file_path": str(log)})
    good = jwt()
    status, body = await _login(client, good)
    assert status == 200
    token, accessor = body["auth"]["client_token"], body["auth"]["accessor"]
    assert (await client.get("/v1/auth/token/lookup-self", headers={"X-Vault-Token": token})).status == 200
    bad = jwt(aud="elsewhere")
    assert (await _login(client, bad))[0] == 400
    assert (await client.post("/v1/auth/token/revoke-self", headers={"X-Vault-Token": token})).status == 204
    text = log.read_text()
    for secret in (good, bad, token, accessor, ROOT, KEY.pem.split("\n")[1]):
        assert secret not in text
    entries = _entries(log)
    assert entries[0]["request"]["path"] == "sys/audit/test"  # written when the device was enabled
    # The enabling request's response entry goes to the new device (as in Vault), its request
    # entry went to the devices of that moment (none).
    assert (entries[1]["type"], entries[1]["request"]["path"]) == ("response", "sys/audit/file")
    by_id: dict[str, list[str]] = {}
    for e in entries[2:]:
        by_id.setdefault(e["request"]["id"], []).append(e["type"])
    assert len(by_id) == 4 and all(kinds == ["request", "response"] for kinds in by_id.values()), by_id
    # sys/audit-hash finds the token's requests: login response, lookup and revoke requests.
    resp = await client.post("/v1/sys/audit-hash/file", json={"input": token}, headers=H)
    hashed = (await resp.json())["data"]["hash"]
    login = next(e for e in entries if e["type"] == "response" and e["request"]["path"] == "auth/jwt/login"
                 and "auth" in e["response"])
    assert login["response"]["auth"]["client_token"] == hashed
    assert login["response"]["auth"]["display_name"] == "jwt-repo:org/app"
    assert login["response"]["auth"]["policies"] == ["default", "deploy"]
    assert login["auth"] == {"token_type": "default", "policy_results": {"allowed": True}}
    assert login["request"]["data"]["jwt"].startswith("hmac-sha256:")
    used = [e for e in entries if e["request"].get("client_token") == hashed]
    assert {e["request"]["path"] for e in used} == {"auth/token/lookup-self", "auth/token/revoke-self"}
    assert all(e["auth"]["display_name"] == "jwt-repo:org/app" and e["auth"]["metadata"] == {"role": "ci"}
               for e in used)


async def test_refused_login_carries_reason_role_and_hashed_claims(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    log = tmp_path / "audit.log"
    await _enable(client, "file", type="file", options={"file_path": str(log)})
    cases = [
        (jwt(aud="elsewhere"), "ci", {"reason": "audience", "role": "ci"}),
        (jwt(iss="https://evil.example.com"), "ci", {"reason": "issuer", "role": "ci"}),
        (make_token({"iss": ISS, "sub": "repo:org/app", "aud": "authmount", "iat": int(time.time()), "exp": FAR},
                    key=rsa_key(kid="audit", slot=1)), "ci", {"reason": "signature", "role": "ci"}),
        (jwt(), "nope", {"reason": "invalid_request"}),  # an unknown role is not named
        ("not-a-jwt", "ci", {"reason": "parse", "role": "ci"}),
    ]
    for token, role, _ in cases:
        assert (await _login(client, token, role))[0] == 400
    failures = [e["response"]["login_failure"] for e in _entries(log)
                if e["type"] == "response" and "login_failure" in e.get("response", {})]
    assert len(failures) == len(cases)
    hash_of = {}
    for value in (ISS, "https://evil.example.com", "repo:org/app"):
        resp = await client.post("/v1/sys/audit-hash/file", json={"input": value}, headers=H)
        hash_of[value] = (await resp.json())["data"]["hash"]
    for failure, (_token, _role, want) in zip(failures, cases, strict=True):
        assert {k: v for k, v in failure.items() if k not in ("iss", "sub")} == want
        if want["reason"] not in ("parse", "invalid_request"):  # the token's claims, hashed
            assert failure["sub"] == hash_of["repo:org/app"]
            assert failure["iss"] in (hash_of[ISS], hash_of["https://evil.example.com"])
        else:
            assert "sub" not in failure


async def test_non_hmac_keys_of_the_mount(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    log = tmp_path / "audit.log"
    resp = await client.post("/v1/sys/auth/jwt/tune", json={"audit_non_hmac_request_keys": ["role"],
                                                             "audit_non_hmac_response_keys": ["keys"]}, headers=H)
    assert resp.status == 204
    await _enable(client, "file", type="file", options={"file_path": str(log)})
    await _login(client, jwt())
    assert (await client.get("/v1/auth/jwt/role?list=true", headers=H)).status == 200
    entries = _entries(log)
    login = next(e for e in entries if e["request"]["path"] == "auth/jwt/login")
    assert login["request"]["data"]["role"] == "ci" and login["request"]["data"]["jwt"].startswith("hmac-sha256:")
    listed = next(e for e in entries if e["type"] == "response" and e["request"]["operation"] == "list")
    assert listed["response"]["data"]["keys"] == ["ci"]


async def test_non_hmac_keys_of_the_built_in_backends(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    """``sys/mounts/sys/tune`` and ``sys/mounts/identity/tune`` (OpenBao's: only these two keys
    may change there): the audit log writes those keys of sys/ and identity/ requests in clear."""
    client = await _client(aiohttp_client)
    log = tmp_path / "audit.log"
    for point, body in (("sys", {"audit_non_hmac_request_keys": ["policy"]}),
                        ("identity", {"audit_non_hmac_response_keys": "name"})):
        assert (await client.post(f"/v1/sys/mounts/{point}/tune", json=body, headers=H)).status == 204
    refused = await client.post("/v1/sys/mounts/sys/tune", json={"max_lease_ttl": "1h"}, headers=H)
    assert (refused.status, (await refused.json())["errors"]) == (400, ["cannot tune parameter max_lease_ttl of sys/"])
    tune = await (await client.get("/v1/sys/mounts/sys/tune", headers=H)).json()
    assert tune["data"]["audit_non_hmac_request_keys"] == ["policy"]
    listed = (await (await client.get("/v1/sys/mounts", headers=H)).json())["data"]
    assert listed["sys/"]["config"]["audit_non_hmac_request_keys"] == ["policy"]  # as OpenBao lists it
    await _enable(client, "file", type="file", options={"file_path": str(log)})
    rule = 'path "a" { capabilities = ["read"] }'
    assert (await client.put("/v1/sys/policies/acl/p", json={"policy": rule}, headers=H)).status == 204
    assert (await client.post("/v1/identity/group", json={"name": "ops"}, headers=H)).status == 200
    assert (await client.post("/v1/sys/mounts/sys/tune", json={"audit_non_hmac_request_keys": []}, headers=H)).status == 204
    assert (await client.put("/v1/sys/policies/acl/q", json={"policy": rule}, headers=H)).status == 204
    entries = _entries(log)
    written = {e["request"]["path"]: e["request"]["data"]["policy"] for e in entries
               if e["type"] == "request" and e["request"]["path"].startswith("sys/policies/acl/")}
    assert written["sys/policies/acl/p"] == rule and written["sys/policies/acl/q"].startswith("hmac-sha256:")
    group = next(e for e in entries if e["type"] == "response" and e["request"]["path"] == "identity/group")
    assert group["response"]["data"]["name"] == "ops" and group["response"]["data"]["id"].startswith("hmac-sha256:")


async def test_error_entries_follow_vault(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    log = tmp_path / "audit.log"
    await _enable(client, "file", type="file", options={"file_path": str(log)})
    assert (await client.get("/v1/auth/token/lookup-self", headers={"X-Vault-Token": "bogus"})).status == 403
    denied = [e for e in _entries(log) if e["request"]["path"] == "auth/token/lookup-self"]
    assert [e["type"] for e in denied] == ["request", "response"]
    assert all(e["error"] == "permission denied" for e in denied)  # 403: top-level error in both
    assert denied[0]["request"]["client_token"].startswith("hmac-sha256:")
    assert denied[1]["response"]["data"]["error"].startswith("hmac-sha256:")
    await _login(client, jwt(aud="x"))
    refused = [e for e in _entries(log) if e["request"]["path"] == "auth/jwt/login"][-1]
    assert "error" not in refused  # a 400: the message only in response.data.error, hashed (Vault)
    assert refused["response"]["data"]["error"].startswith("hmac-sha256:")


async def test_status_paths_are_not_audited(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    log = tmp_path / "audit.log"
    await _enable(client, "file", type="file", options={"file_path": str(log)})
    assert (await client.get("/v1/sys/health")).status == 200
    assert not any(e["request"]["path"] == "sys/health" for e in _entries(log))


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("x", {"type": "syslog"}, "unknown audit device type 'syslog' (file or socket)"),
        ("x", {"type": "file"}, "file_path is required"),
        ("x", {"type": "file", "options": {"file_path": "/tmp/x", "colour": "red"}},
         "unknown options for a file audit device: colour"),
        ("x", {"type": "file", "options": {"file_path": "/tmp/x", "mode": "rwx"}},
         "invalid value for option 'mode': 'rwx' is not an octal file mode"),
        ("x", {"type": "file", "options": {"file_path": "/tmp/x", "format": "jsonx"}},
         "invalid value for option 'format': only json is supported"),
        ("x", {"type": "file", "options": {"file_path": "/tmp/x", "log_raw": "maybe"}},
         "invalid value for option 'log_raw': 'maybe' is not a boolean"),
        ("x", {"type": "socket"}, "address is required"),
        ("x", {"type": "socket", "options": {"address": "nowhere"}}, "invalid value for option 'address': must be "
         "host:port"),
        ("x", {"type": "socket", "options": {"address": "127.0.0.1:1", "socket_type": "sctp"}},
         "invalid value for option 'socket_type': 'sctp' (tcp, udp or unix)"),
        ("x", {"type": "file", "options": {"file_path": "/"}}, 'audit device "x/" cannot write: Is a directory'),
        ("x", {"type": "socket", "options": {"address": "127.0.0.1:1"}}, 'audit device "x/" cannot write: '),
        ("%20x", {"type": "file", "options": {"file_path": "/tmp/x"}}, "invalid mount path ' x'"),
    ],
)
async def test_enable_refusals(aiohttp_client: AiohttpClient, path: str, body: dict[str, Any], message: str) -> None:
    client = await _client(aiohttp_client)
    errors = (await _enable(client, path, status=400, **body))["errors"]
    assert errors[0].startswith(message), errors
    assert (await (await client.get("/v1/sys/audit", headers=H)).json())["data"] == {}


async def test_devices_are_listed_disabled_and_need_sudo(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    await _enable(client, "one", type="file", description="d", options={"file_path": str(tmp_path / "1")})
    assert (await _enable(client, "one", status=400, type="file", options={"file_path": str(tmp_path / "2")}))[
        "errors"] == ["path already in use"]
    # a write to a path ending in "/" is refused before it is read (OpenBao 2.7.2 measured the same)
    assert (await _enable(client, "one/", status=400, type="file", options={"file_path": str(tmp_path / "2")}))[
        "errors"] == ["cannot write to a path ending in '/'"]
    listed = (await (await client.get("/v1/sys/audit", headers=H)).json())["data"]
    assert listed == {"one/": {"type": "file", "description": "d", "options": {"file_path": str(tmp_path / "1")},
                               "path": "one/", "local": False}}
    # a token whose policy grants update but not sudo is refused
    await client.put("/v1/sys/policies/acl/audit-no-sudo", headers=H, json={
        "policy": 'path "sys/audit*" { capabilities = ["create", "read", "update", "delete", "list"] }'})
    resp = await client.post("/v1/auth/token/create", headers=H, json={"policies": ["audit-no-sudo"]})
    weak = {"X-Vault-Token": (await resp.json())["auth"]["client_token"]}
    assert (await client.get("/v1/sys/audit", headers=weak)).status == 403
    assert (await client.delete("/v1/sys/audit/one", headers=weak)).status == 403
    assert (await client.post("/v1/sys/audit-hash/one", headers=weak, json={"input": "x"})).status == 200
    assert (await client.delete("/v1/sys/audit/one", headers=H)).status == 204
    assert (await (await client.get("/v1/sys/audit", headers=H)).json())["data"] == {}
    assert (await client.post("/v1/sys/audit-hash/one", headers=H, json={"input": "x"})).status == 400


async def test_salts_are_sealed_and_per_device(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    for name in ("a", "b"):
        await _enable(client, name, type="file", options={"file_path": str(tmp_path / name)})
    stored = await app_of(client)[STORAGE].get(AUDIT_KEY)
    assert stored is not None
    salts = [e["salt"] for e in stored["entries"]]
    assert len(set(salts)) == 2 and all(is_sealed(s) for s in salts)
    hashes = set()
    for name in ("a", "b"):
        resp = await client.post(f"/v1/sys/audit-hash/{name}", json={"input": "same"}, headers=H)
        hashes.add((await resp.json())["data"]["hash"])
    assert len(hashes) == 2
    # A log_raw device still answers sys/audit-hash with its HMAC (Vault's GetHash ignores
    # log_raw), so the IdP tokens its entries hash can be found.
    await _enable(client, "raw", type="file", options={"file_path": str(tmp_path / "raw"), "log_raw": True})
    resp = await client.post("/v1/sys/audit-hash/raw", json={"input": "same"}, headers=H)
    raw_hash = (await resp.json())["data"]["hash"]
    assert raw_hash.startswith("hmac-sha256:") and raw_hash not in hashes
    for name, device in app_of(client)[AUDIT].devices.items():
        assert device.salt.hex() not in json.dumps(stored), name


async def test_fail_closed_no_token_is_issued(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    storage = InMemoryStorage()
    client = await _client(aiohttp_client, storage=storage)
    log = tmp_path / "audit.log"
    await _enable(client, "file", type="file", options={"file_path": str(log)})
    before = await storage.list(ID_PREFIX)
    log.unlink()
    log.symlink_to("/dev/full")  # every write fails with ENOSPC
    app_of(client)[AUDIT].reopen()  # what SIGHUP does
    status, body = await _login(client, jwt())
    assert status == 503 and body["errors"] == ["audit unavailable: no audit device could record the request"]
    assert await storage.list(ID_PREFIX) == before  # nothing was issued
    health = await client.get("/v1/sys/health")
    assert health.status == 503 and (await health.json())["ready"] is False
    assert (await client.get("/v1/sys/health?unreadycode=200")).status == 200
    log.unlink()  # repaired: the next request (or readiness probe) reopens the file
    app_of(client)[AUDIT].reopen()
    status, _ = await _login(client, jwt())
    assert status == 200
    assert (await client.get("/v1/sys/health")).status == 200


async def test_one_working_device_is_enough(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    broken, good = tmp_path / "broken.log", tmp_path / "good.log"
    await _enable(client, "broken", type="file", options={"file_path": str(broken)})
    await _enable(client, "good", type="file", options={"file_path": str(good)})
    broken.unlink()
    broken.symlink_to("/dev/full")
    app_of(client)[AUDIT].reopen()
    assert (await _login(client, jwt()))[0] == 200
    assert any(e["request"]["path"] == "auth/jwt/login" for e in _entries(good))


async def test_a_login_whose_response_entry_fails_is_revoked(
    aiohttp_client: AiohttpClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = InMemoryStorage()
    client = await _client(aiohttp_client, storage=storage)
    await _enable(client, "file", type="file", options={"file_path": str(tmp_path / "audit.log")})
    before = await storage.list(ID_PREFIX)
    device = app_of(client)[AUDIT].devices["file/"]
    real = device.sink.write_now

    def fail_responses(data: bytes) -> None:
        if b'"type":"response"' in data:
            raise OSError(28, "No space left on device")
        real(data)

    monkeypatch.setattr(device.sink, "write_now", fail_responses)
    status, body = await _login(client, jwt())
    assert status == 503 and "auth" not in body
    assert await storage.list(ID_PREFIX) == before  # minted, then revoked before the answer


async def test_socket_device(aiohttp_client: AiohttpClient) -> None:
    lines: asyncio.Queue[bytes] = asyncio.Queue()
    accepted: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while line := await reader.readline():
            await lines.put(line)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await _client(aiohttp_client)
        await _enable(client, "sock", type="socket", options={"address": f"127.0.0.1:{port}"})
        assert (await _login(client, jwt()))[0] == 200
        got = [json.loads(await asyncio.wait_for(lines.get(), 5)) for _ in range(4)]
        # the test entry, the enabling request's response, the login's request and response
        assert [(e["type"], e["request"]["path"]) for e in got] == [
            ("request", "sys/audit/test"), ("response", "sys/audit/sock"), ("request", "auth/jwt/login"),
            ("response", "auth/jwt/login")]
        assert got[3]["response"]["auth"]["client_token"].startswith("hmac-sha256:")
    finally:
        server.close()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()


async def draining_listener(accepted: list[asyncio.StreamWriter], port: int = 0) -> asyncio.Server:
    """A TCP listener on loopback that reads and drops lines, keeping each connection in
    ``accepted``."""

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.readline():
            pass

    return await asyncio.start_server(sink, "127.0.0.1", port)


async def test_socket_device_reconnects_and_fails_closed(aiohttp_client: AiohttpClient) -> None:
    accepted: list[asyncio.StreamWriter] = []
    server = await draining_listener(accepted)
    port = server.sockets[0].getsockname()[1]
    client = await _client(aiohttp_client)
    await _enable(client, "sock", type="socket", options={"address": f"127.0.0.1:{port}", "write_timeout": "1s"})
    server.close()
    for writer in accepted:  # the listener goes away with its connection
        writer.close()
        await writer.wait_closed()
    await server.wait_closed()
    await asyncio.sleep(0.05)
    status = 200
    for _ in range(3):  # the listener is gone: once the peer's close is seen, logins fail closed
        status = (await _login(client, jwt()))[0]
        await asyncio.sleep(0.05)
    assert status == 503
    accepted.clear()
    again = await draining_listener(accepted, port)
    try:
        await asyncio.sleep(0.6)  # past the reconnect back-off
        assert (await _login(client, jwt()))[0] == 200
    finally:
        again.close()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        await again.wait_closed()


async def test_sighup_reopens_a_rotated_file(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    log = tmp_path / "audit.log"
    await _enable(client, "file", type="file", options={"file_path": str(log)})
    rotated = tmp_path / "audit.log.1"
    log.rename(rotated)  # logrotate
    await _login(client, jwt())
    app_of(client)[AUDIT].reopen()
    await _login(client, jwt())
    assert sum(e["request"]["path"] == "auth/jwt/login" for e in _entries(rotated)) == 2  # before SIGHUP
    assert sum(e["request"]["path"] == "auth/jwt/login" for e in _entries(log)) == 2  # after
    assert oct(log.stat().st_mode & 0o777) == "0o600"


async def test_settings_declared_device_keeps_its_salt(
    aiohttp_client: AiohttpClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHMOUNT_STORAGE_KEY", base64.b64encode(bytes(32)).decode())  # one key for both starts
    storage = InMemoryStorage()
    seed = AuditSeed(path="declared", type="file", options={"file_path": str(tmp_path / "a.log")})
    client = await _client(aiohttp_client, _settings(audit=(seed,)), storage=storage)
    first = app_of(client)[AUDIT].devices["declared/"].salt
    await client.close()
    moved = AuditSeed(path="declared", type="file", options={"file_path": str(tmp_path / "b.log"), "log_raw": True})
    client = await aiohttp_client(make_test_server(create_app(_settings(audit=(moved,)), storage=storage)))
    device = app_of(client)[AUDIT].devices["declared/"]
    assert device.salt == first and device.options == {"file_path": str(tmp_path / "b.log"), "log_raw": "true"}
    assert (tmp_path / "b.log").exists()


async def test_audited_request_headers(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    log = tmp_path / "audit.log"
    await _enable(client, "file", type="file", options={"file_path": str(log)})
    for name, body in (("X-Team", {"hmac": False}), ("authorization", {"hmac": False})):
        assert (await client.post(f"/v1/sys/config/auditing/request-headers/{name}", json=body,
                                  headers=H)).status == 204
    listed = await (await client.get("/v1/sys/config/auditing/request-headers", headers=H)).json()
    # credentials are always hashed, whatever was asked
    assert listed["data"]["headers"] == {"x-team": {"hmac": False}, "authorization": {"hmac": True}}
    resp = await client.get("/v1/auth/token/lookup-self", headers={"Authorization": f"Bearer {ROOT}",
                                                                  "X-Team": "ops"})
    assert resp.status == 200
    entry = [e for e in _entries(log) if e["request"]["path"] == "auth/token/lookup-self"][-1]
    assert entry["request"]["headers"]["x-team"] == ["ops"]
    assert entry["request"]["headers"]["authorization"][0].startswith("hmac-sha256:")
    assert ROOT not in log.read_text()


async def test_identity_requests_are_audited(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await _client(aiohttp_client)
    log = tmp_path / "audit.log"
    await _enable(client, "file", type="file", options={"file_path": str(log)})
    resp = await client.post("/v1/identity/group", json={"name": "ops", "type": "external", "policies": ["deploy"]},
                             headers=H)
    assert resp.status in (200, 204), await resp.text()
    entries = [e for e in _entries(log) if e["request"]["path"] == "identity/group"]
    assert [e["type"] for e in entries] == ["request", "response"]
    assert entries[0]["request"]["mount_point"] == "identity/" and entries[0]["request"]["mount_type"] == "identity"
    assert entries[0]["request"]["data"]["name"].startswith("hmac-sha256:")


async def test_entries_of_a_turn_land_before_another_node_disables_their_device(tmp_path: Path) -> None:
    """Another node (or ``--workers`` process) disables a device while this one has entries
    of the current event-loop turn for it: the reload writes them before closing the file,
    so those requests are audited and not refused (they were refused with 503 before)."""
    from server.audit.broker import AuditBroker
    from server.audit.entry import probe_record
    from server.keyring import PROCESS_SEALER

    storage = InMemoryStorage()
    here, there = AuditBroker(storage, PROCESS_SEALER), AuditBroker(storage, PROCESS_SEALER)
    log_path = tmp_path / "audit.log"
    await here.enable("file", "file", options={"file_path": str(log_path)})
    await there.load()
    await there.disable("file")  # this node is not told yet
    rec = probe_record()
    rec.path = "sys/auth"
    pending = here.log_request(rec)
    assert pending is not None
    await here.reload()  # the change log or a notification arrives within the same turn
    await pending  # recorded: no AuditUnavailable
    assert here.active == ()
    assert log_path.read_text().count('"path":"sys/auth"') == 1
    assert here.log_request(rec) is None  # and nothing is written there any more


async def test_entries_of_a_turn_land_before_this_node_disables_their_device(tmp_path: Path) -> None:
    """The same on the node that disables the device (``DELETE sys/audit/<path>`` while other
    requests of the turn wait for their entries): found by a concurrent campaign, where a
    login was refused with 503 and its token revoked because its device was disabled."""
    from server.audit.broker import AuditBroker
    from server.audit.entry import probe_record
    from server.keyring import PROCESS_SEALER

    broker = AuditBroker(InMemoryStorage(), PROCESS_SEALER)
    log_path = tmp_path / "audit.log"
    await broker.enable("file", "file", options={"file_path": str(log_path)})
    rec = probe_record()
    rec.path = "auth/jwt/login"
    pending = broker.log_request(rec)
    assert pending is not None
    assert await broker.disable("file")  # in the same turn, before the group write
    await pending  # recorded: no AuditUnavailable
    assert log_path.read_text().count('"path":"auth/jwt/login"') == 1
    assert broker.log_request(rec) is None


async def test_entries_of_one_turn_go_out_in_one_write_and_a_cancelled_request_fails_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entries logged in one turn of the event loop reach a file device in one write(2);
    each request waits for that write on a future of its own, so one cancelled while it
    waits (its client went away) neither cancels the write nor fails the others."""
    from server.audit.broker import AuditBroker
    from server.audit.entry import probe_record
    from server.keyring import PROCESS_SEALER

    broker = AuditBroker(InMemoryStorage(), PROCESS_SEALER)
    log_path = tmp_path / "audit.log"
    await broker.enable("file", "file", options={"file_path": str(log_path)})
    writes: list[bytes] = []
    real_write = os.write

    def counted(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counted)
    async def request(path: str) -> None:
        rec = probe_record()
        rec.path = path
        pending = broker.log_request(rec)
        assert pending is not None
        await pending

    paths = [f"sys/n{i}" for i in range(5)]
    waits = [asyncio.ensure_future(request(path)) for path in paths]
    await asyncio.sleep(0)  # each logs its entry and waits; the turn's write comes after this
    waits[2].cancel()
    done = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 5)  # none left waiting
    assert [type(d).__name__ for d in done] == ["NoneType", "NoneType", "CancelledError", "NoneType", "NoneType"]
    assert len(writes) == 1  # one write for the turn, the cancelled request's line in it
    assert [orjson.loads(line)["request"]["path"] for line in writes[0].splitlines()] == paths
    assert log_path.read_bytes().endswith(writes[0])
    rec = probe_record()
    pending = broker.log_request(rec)  # a later turn: a write of its own
    assert pending is not None
    await pending
    assert len(writes) == 2


async def test_an_entry_that_cannot_be_built_leaves_the_turn_writing_the_others(tmp_path: Path) -> None:
    """A request whose entry could not be built (a value orjson refuses: a 500 for that
    request) opened the turn's batch first; its flush then met an empty batch (IndexError in
    the loop's callback). The next request's entry still goes out."""
    from server.audit.broker import AuditBroker
    from server.audit.entry import probe_record
    from server.keyring import PROCESS_SEALER

    broker = AuditBroker(InMemoryStorage(), PROCESS_SEALER)
    log_path = tmp_path / "audit.log"
    await broker.enable("file", "file", options={"file_path": str(log_path)})
    before = log_path.read_text().count("\n")  # enabling writes a test entry
    bad = probe_record()
    bad.data = {"x": {"a": 2**70}}  # no JSON integer orjson writes
    with pytest.raises(TypeError):
        broker.log_request(bad)
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    await asyncio.sleep(0)  # the empty batch's flush runs
    pending = broker.log_request(probe_record())
    assert pending is not None
    await pending
    assert loop_errors == [] and log_path.read_text().count("\n") == before + 1


async def test_a_sink_that_raises_something_unexpected_fails_its_requests_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink raising something other than an OSError (a bug) neither leaves the requests of
    its turn waiting for ever nor lets them through: they are refused (503), fail closed."""
    from server.audit import devices
    from server.audit.broker import AuditBroker, AuditUnavailable
    from server.audit.entry import probe_record
    from server.keyring import PROCESS_SEALER

    broker = AuditBroker(InMemoryStorage(), PROCESS_SEALER)
    await broker.enable("file", "file", options={"file_path": str(tmp_path / "audit.log")})

    def broken(self: Any, data: bytes) -> None:
        raise ValueError("a bug in the sink")

    monkeypatch.setattr(devices.FileSink, "write_now", broken)
    loop = asyncio.get_running_loop()
    unexpected: list[BaseException | None] = []
    loop.set_exception_handler(lambda _loop, context: unexpected.append(context.get("exception")))
    try:
        pending = broker.log_request(probe_record())
        assert pending is not None
        with pytest.raises(AuditUnavailable):
            await asyncio.wait_for(pending, 5)
    finally:
        loop.set_exception_handler(None)
    assert [type(e).__name__ for e in unexpected] == ["ValueError"]  # reported, as any callback's error


def test_a_line_cut_by_a_full_file_is_ended_and_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A regular file that takes only part of a line (a full disk) never gets the rest later,
    where another worker's line may have landed: the cut line is ended, the write fails (the
    request is refused, fail closed), and the next line starts on its own."""
    from server.audit import devices

    sink = devices.FileSink({"file_path": str(tmp_path / "audit.log")})
    sink.open()
    real_write = os.write
    line = b'{"type":"request","n":1}\n'
    cut = {"once": True}

    def short_write(fd: int, data: Any) -> int:
        if cut["once"] and bytes(data) == line:  # only the sink's first line
            cut["once"] = False
            return real_write(fd, bytes(data[:10]))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(OSError, match=r"audit line cut at 10 of 25 bytes"):
        sink.write_now(line)
    with pytest.raises(OSError, match="retrying shortly"):  # the file is closed for the retry pause
        sink.write_now(b"x\n")
    sink.reopen()  # as SIGHUP (or the pause's end) does
    sink.write_now(b'{"type":"request","n":2}\n')
    assert (tmp_path / "audit.log").read_bytes() == line[:10] + b"\n" + b'{"type":"request","n":2}\n'


async def test_a_socket_device_disabled_while_a_request_writes_to_it() -> None:
    """A request that started with a socket device logs after the device was disabled: its
    closed socket was opened again (a connection for a device nobody reads, open until
    garbage collection). Now the entry is not owed to a disabled device; the request is
    neither refused nor reconnects. While the server stops, it fails closed."""
    from server.audit.broker import AuditBroker, AuditUnavailable
    from server.audit.entry import probe_record
    from server.keyring import PROCESS_SEALER

    connections: list[asyncio.StreamWriter] = []
    server = await draining_listener(connections)
    port = server.sockets[0].getsockname()[1]
    try:
        broker = AuditBroker(InMemoryStorage(), PROCESS_SEALER)
        await broker.enable("sock", "socket", options={"address": f"127.0.0.1:{port}"})
        await asyncio.sleep(0.05)
        opened = len(connections)
        rec = probe_record()
        pending = broker.log_request(rec)  # the request's write, not run yet
        assert pending is not None
        assert await broker.disable("sock")
        await pending  # not refused
        await asyncio.sleep(0.05)
        assert len(connections) == opened  # and not reconnected
        await broker.enable("sock2", "socket", options={"address": f"127.0.0.1:{port}"})
        pending = broker.log_request(rec)
        assert pending is not None
        await broker.close()
        with pytest.raises(AuditUnavailable):
            await pending
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()
