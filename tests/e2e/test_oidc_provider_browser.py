"""The OIDC provider's sign-in page in a real browser: an application (a loopback listener)
sends headless Chromium to ``/ui/vault/identity/oidc/provider/default/authorize``; the page
signs the user in at node-oidc-provider through the auth mount tuned visible, and the browser
arrives back at the application with a code and its state. The application exchanges the code
(client_secret_post), verifies the ID token with PyJWT against the provider's keys, and reads
userinfo. The token the page used is revoked: only the root token is left."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt as pyjwt
import pytest
import requests

from tests.e2e.browser import CallbackListener, browser_available, browser_session
from tests.e2e.idp import CLIENT_ID, CLIENT_SECRET, idp_available, start_idp
from tests.e2e.serverproc import ServerProc, start_server

pytestmark = pytest.mark.e2e

MOUNT = "sso"


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[ServerProc]:
    with start_server(dev=True, workdir=tmp_path) as v:
        yield v


def test_an_application_signs_a_user_in_through_the_page(vault: ServerProc, tmp_path: Path) -> None:
    for reason in (browser_available(), idp_available()):
        if reason:
            pytest.skip(reason)
    head = {"X-Vault-Token": str(vault.root_token)}
    ui_callback = f"{vault.url}/ui/vault/auth/{MOUNT}/oidc/callback"
    idp = start_idp(tmp_path / "idp", redirect_uris=[ui_callback])

    def post(path: str, body: dict[str, Any]) -> None:
        resp = requests.post(f"{vault.url}/v1/{path}", json=body, headers=head, timeout=10)
        assert resp.status_code in (200, 204), (path, resp.text)

    try:
        with CallbackListener("/app/callback") as app:
            post(f"sys/auth/{MOUNT}", {"type": "oidc", "description": "Example IdP"})
            post(f"sys/auth/{MOUNT}/tune", {"listing_visibility": "unauth"})
            post(f"auth/{MOUNT}/config", {"oidc_discovery_url": idp.discovery_url, "oidc_client_id": CLIENT_ID,
                                          "oidc_client_secret": CLIENT_SECRET, "default_role": "web"})
            post(f"auth/{MOUNT}/role/web", {"role_type": "oidc", "user_claim": "sub", "oidc_scopes": ["email"],
                                            "allowed_redirect_uris": [ui_callback]})
            post("identity/oidc/scope/email", {"template": '{"signed_in": true}'})
            post("identity/oidc/provider/default", {"scopes_supported": ["email"]})
            post("identity/oidc/client/app", {"redirect_uris": [app.url], "assignments": ["allow_all"]})
            client = requests.get(f"{vault.url}/v1/identity/oidc/client/app", headers=head,
                                  timeout=10).json()["data"]
            visible = requests.get(f"{vault.url}/v1/sys/internal/ui/mounts", timeout=10).json()["data"]
            assert visible == {"auth": {f"{MOUNT}/": {"type": "oidc", "description": "Example IdP", "options": {}}},
                               "secret": {}}
            page = f"{vault.url}/ui/vault/identity/oidc/provider/default/authorize?" + urlencode({
                "client_id": client["client_id"], "scope": "openid email", "redirect_uri": app.url,
                "response_type": "code", "state": "xyz-1", "nonce": "n-1", "prompt": "login"})
            browser_session(page, lambda d: app.received.is_set(), login="alice")
            query = app.wait(0)
        assert query["state"] == "xyz-1" and query["code"], query
        resp = requests.post(f"{vault.url}/v1/identity/oidc/provider/default/token", timeout=10, data={
            "grant_type": "authorization_code", "code": query["code"], "redirect_uri": app.url,
            "client_id": client["client_id"], "client_secret": client["client_secret"]})
        assert resp.status_code == 200, resp.text
        tokens = resp.json()
        keys = requests.get(f"{vault.url}/v1/identity/oidc/provider/default/.well-known/keys", timeout=10).json()
        kid = pyjwt.get_unverified_header(tokens["id_token"])["kid"]
        [jwk] = [k for k in keys["keys"] if k["kid"] == kid]
        claims = pyjwt.decode(tokens["id_token"], pyjwt.PyJWK(jwk), algorithms=[jwk["alg"]],
                              audience=client["client_id"],
                              issuer=f"{vault.url}/v1/identity/oidc/provider/default")
        assert claims["nonce"] == "n-1" and claims["signed_in"] is True
        entity = requests.post(f"{vault.url}/v1/identity/lookup/entity", headers=head, timeout=10, json={
            "alias_name": "alice", "alias_mount_accessor": requests.get(
                f"{vault.url}/v1/sys/auth", headers=head, timeout=10).json()["data"][f"{MOUNT}/"]["accessor"]})
        assert claims["sub"] == entity.json()["data"]["id"]
        info = requests.get(f"{vault.url}/v1/identity/oidc/provider/default/userinfo", timeout=10,
                            headers={"Authorization": "Bearer " + tokens["access_token"]})
        assert info.json() == {"sub": claims["sub"], "signed_in": True}
        accessors = requests.request("LIST", f"{vault.url}/v1/auth/token/accessors", headers=head, timeout=10)
        assert len(accessors.json()["data"]["keys"]) == 1  # the root token: the page's token was revoked
        # a registered redirect URI that would run in the page is not opened
        scripted = "javascript:document.title='opened'"
        post("identity/oidc/client/scripted", {"redirect_uris": [scripted], "assignments": ["allow_all"]})
        scripted_id = requests.get(f"{vault.url}/v1/identity/oidc/client/scripted", headers=head,
                                   timeout=10).json()["data"]["client_id"]
        page = f"{vault.url}/ui/vault/identity/oidc/provider/default/authorize?" + urlencode({
            "client_id": scripted_id, "scope": "openid", "redirect_uri": scripted, "response_type": "code"})
        shown = browser_session(page, lambda d: "cannot be opened" in d.page_source, login="alice")
        assert "opened</title>" not in shown
    finally:
        idp.stop()
