"""The OIDC browser flow end to end: authmount + node-oidc-provider + headless Chromium.

authmount's ``oidc/auth_url`` → the IdP's dev login form (Chromium, or ``requests`` only)
→ a redirect to a loopback listener (like the Vault CLI's ``localhost:8250``) → hvac's
``oidc_callback`` with state + code → a client token whose metadata carries the mapped
claims and the groups from the IdP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hvac
import hvac.exceptions
import pytest

from tests.e2e.browser import CallbackListener, browser_available, browser_login, browser_session, drive_login
from tests.e2e.idp import CLIENT_ID, CLIENT_SECRET, IdP, start_idp
from tests.e2e.serverproc import ServerProc, as_json, start_server

pytestmark = pytest.mark.e2e


def anon(srv: ServerProc) -> hvac.Client:
    """A client without a token (login paths need none)."""
    return srv.client(token="")

MOUNT = "oidc"


@pytest.fixture(autouse=True)
def _no_vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory, idp: IdP, listener: CallbackListener) -> Iterator[ServerProc]:
    with start_server(dev=True, workdir=tmp_path_factory.mktemp("authmount")) as v:
        root = v.client()
        root.sys.enable_auth_method("oidc", path=MOUNT)
        root.auth.oidc.configure(
            oidc_discovery_url=idp.discovery_url,
            oidc_client_id=CLIENT_ID,
            oidc_client_secret=CLIENT_SECRET,
            default_role="web",
            path=MOUNT,
        )
        root.auth.oidc.create_role(
            name="web",
            user_claim="sub",
            allowed_redirect_uris=[listener.url],
            oidc_scopes=["email", "groups"],
            claim_mappings={"email": "email"},
            groups_claim="groups",
            token_policies=["people"],
            path=MOUNT,
        )
        # groups as metadata too (docs/vault-differences.md row 3: list claims joined with commas)
        root.write_data(f"auth/{MOUNT}/role/web", data={"list_claim_mappings": {"groups": "groups"}})
        yield v
    if v.proc.stdout is not None:  # the reader thread is done; avoid a ResourceWarning
        v.proc.stdout.close()


def start_flow(vault: ServerProc, listener: CallbackListener, **extra: Any) -> tuple[str, str]:
    """POST oidc/auth_url through hvac; return (auth_url, state)."""
    client = anon(vault)
    if extra:
        data = {"role": "web", "redirect_uri": listener.url, **extra}
        auth_url = as_json(client.write_data(f"auth/{MOUNT}/oidc/auth_url", data=data))["data"]["auth_url"]
    else:
        auth_url = client.auth.oidc.oidc_authorization_url_request(role="web", redirect_uri=listener.url, path=MOUNT)[
            "data"
        ]["auth_url"]
    assert f"?client_id={CLIENT_ID}&" in auth_url  # hvac's own test checks exactly this
    state = parse_qs(urlsplit(auth_url).query)["state"][0]
    return auth_url, state


def finish(vault: ServerProc, state: str, code: str) -> dict[str, Any]:
    """hvac's oidc_callback (GET with state, nonce, code + a JSON body)."""
    return as_json(anon(vault).auth.oidc.oidc_callback(state=state, nonce="", code=code, path=MOUNT))


def test_browser_login(vault: ServerProc, idp: IdP, listener: CallbackListener) -> None:
    reason = browser_available()
    if reason:
        pytest.skip(reason)
    auth_url, state = start_flow(vault, listener)
    query = browser_login(auth_url, listener, login="alice")
    assert query["state"] == state
    assert query["iss"] == idp.issuer  # RFC 9207 parameter, ignored by the callback
    resp = finish(vault, query["state"], query["code"])
    auth = resp["auth"]
    assert auth["client_token"]
    assert auth["policies"] == ["default", "people"]
    assert auth["metadata"] == {"role": "web", "email": "alice@example.com", "groups": "admins,dev"}

    me = vault.client(token=auth["client_token"]).auth.token.lookup_self()["data"]
    assert me["meta"] == {"role": "web", "email": "alice@example.com", "groups": "admins,dev"}
    assert me["display_name"].endswith("alice")


def test_callback_token_path(vault: ServerProc, listener: CallbackListener) -> None:
    """docs/reference/vault-api.md 7: the token entry's path is the request path, ``auth/<m>/oidc/callback``."""
    auth_url, state = start_flow(vault, listener)
    code = drive_login(auth_url, listener.url)["code"]
    token = finish(vault, state, code)["auth"]["client_token"]
    me = vault.client(token=token).auth.token.lookup_self()["data"]
    assert me["path"] == f"auth/{MOUNT}/oidc/callback"


def test_requests_only_login(vault: ServerProc, listener: CallbackListener) -> None:
    auth_url, state = start_flow(vault, listener)
    query = drive_login(auth_url, listener.url, login="bob")
    assert query["state"] == state
    resp = finish(vault, state, query["code"])
    assert resp["auth"]["metadata"] == {"role": "web", "email": "bob@example.com", "groups": "dev"}


def test_state_is_single_use(vault: ServerProc, listener: CallbackListener) -> None:
    auth_url, state = start_flow(vault, listener)
    query = drive_login(auth_url, listener.url, login="alice")
    assert finish(vault, state, query["code"])["auth"]["client_token"]
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        finish(vault, state, query["code"])
    assert "Expired or missing OAuth state" in str(exc.value)


def test_client_nonce_must_match(vault: ServerProc, listener: CallbackListener) -> None:
    auth_url, state = start_flow(vault, listener, client_nonce="cn-123")
    query = drive_login(auth_url, listener.url)
    client = anon(vault)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid client_nonce"):
        client.adapter.get(
            f"/v1/auth/{MOUNT}/oidc/callback",
            params={"state": state, "code": query["code"], "client_nonce": "cn-999"},
        )


def test_user_without_groups_is_refused_by_bound_claims(vault: ServerProc, listener: CallbackListener) -> None:
    root = vault.client()
    root.write_data(
        f"auth/{MOUNT}/role/admins",
        data={
            "role_type": "oidc",
            "user_claim": "sub",
            "allowed_redirect_uris": [listener.url],
            "oidc_scopes": ["groups"],
            "bound_claims": {"groups": ["admins"]},
        },
    )
    for login, ok in (("bob", False), ("alice", True)):
        auth_url = as_json(anon(vault).write_data(
            f"auth/{MOUNT}/oidc/auth_url", data={"role": "admins", "redirect_uri": listener.url}
        ))["data"]["auth_url"]
        state = parse_qs(urlsplit(auth_url).query)["state"][0]
        code = drive_login(auth_url, listener.url, login=login)["code"]
        if ok:
            assert finish(vault, state, code)["auth"]["metadata"]["role"] == "admins"
        else:
            with pytest.raises(hvac.exceptions.InvalidRequest, match='error validating claims: claim "groups"'):
                finish(vault, state, code)


def test_redirect_uri_not_allowed_is_400_naming_it(vault: ServerProc) -> None:
    bad = "http://evil.example/oidc/callback"
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        anon(vault).auth.oidc.oidc_authorization_url_request(role="web", redirect_uri=bad, path=MOUNT)
    assert bad in str(exc.value)


def test_form_post_browser_flow(vault: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> None:
    """response_mode=form_post: the IdP's page POSTs code+state to authmount's callback, whose
    page hands ``code=no_code`` to the UI; the GET callback then finishes the login."""
    reason = browser_available()
    if reason:
        pytest.skip(reason)
    mount = "oidc-fp"
    ui_redirect = f"{vault.url}/ui/vault/auth/{mount}/oidc/callback"
    api_redirect = f"{vault.url}/v1/auth/{mount}/oidc/callback"
    fp_idp = start_idp(tmp_path_factory.mktemp("idp-fp"), redirect_uris=[api_redirect])
    try:
        root = vault.client()
        root.sys.enable_auth_method("oidc", path=mount)
        root.auth.oidc.configure(
            oidc_discovery_url=fp_idp.discovery_url,
            oidc_client_id=CLIENT_ID,
            oidc_client_secret=CLIENT_SECRET,
            oidc_response_mode="form_post",
            path=mount,
        )
        root.auth.oidc.create_role(
            name="ui", user_claim="email", allowed_redirect_uris=[ui_redirect], oidc_scopes=["email"], path=mount
        )
        auth_url = anon(vault).auth.oidc.oidc_authorization_url_request(role="ui", redirect_uri=ui_redirect, path=mount)[
            "data"
        ]["auth_url"]
        query = parse_qs(urlsplit(auth_url).query)
        assert query["response_mode"] == ["form_post"]
        assert query["redirect_uri"] == [api_redirect]  # ui/vault -> v1
        state = query["state"][0]

        page = browser_session(auth_url, lambda d: "oidc-callback" in d.page_source, login="alice")
        assert f'"path": "{mount}"' in page and '"code": "no_code"' in page

        resp = anon(vault).auth.oidc.oidc_callback(state=state, nonce="", code="no_code", path=mount)
        assert resp["auth"]["metadata"] == {"role": "ui"}
        me = vault.client(token=resp["auth"]["client_token"]).auth.token.lookup_self()["data"]
        assert me["display_name"].endswith("alice@example.com")
    finally:
        fp_idp.stop()


def _eventually(check: Callable[[], Any], deadline: float = 30.0) -> Any:
    """Retry ``check`` until it stops raising (another node sees a write via NOTIFY)."""
    end = time.monotonic() + deadline
    while True:
        try:
            return check()
        except hvac.exceptions.VaultError:
            if time.monotonic() > end:
                raise
        time.sleep(0.2)


def test_flow_crosses_nodes(
    idp: IdP, listener: CallbackListener, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> None:
    """docs/vault-differences.md row 7: auth_url on node A, callback on node B (shared PostgreSQL storage)."""
    config = {"storage": {"type": "postgres", "dsn": postgres_dsn}}
    with start_server(config=config, workdir=tmp_path_factory.mktemp("node-a")) as a:
        assert a.root_token
        with start_server(config=config, root_token=a.root_token, workdir=tmp_path_factory.mktemp("node-b")) as b:
            mount = "oidc-ha"
            root = a.client()
            root.sys.enable_auth_method("oidc", path=mount)
            root.auth.oidc.configure(
                oidc_discovery_url=idp.discovery_url,
                oidc_client_id=CLIENT_ID,
                oidc_client_secret=CLIENT_SECRET,
                path=mount,
            )
            root.auth.oidc.create_role(
                name="web", user_claim="sub", allowed_redirect_uris=[listener.url], path=mount
            )
            _eventually(lambda: b.client().auth.oidc.read_role("web", path=mount))

            auth_url = anon(a).auth.oidc.oidc_authorization_url_request(
                role="web", redirect_uri=listener.url, path=mount
            )["data"]["auth_url"]
            state = parse_qs(urlsplit(auth_url).query)["state"][0]
            code = drive_login(auth_url, listener.url, login="carol")["code"]
            resp = anon(b).auth.oidc.oidc_callback(state=state, nonce="", code=code, path=mount)
            token = resp["auth"]["client_token"]
            assert resp["auth"]["metadata"] == {"role": "web"}
            # the state is gone on every node, and the token works on node A
            with pytest.raises(hvac.exceptions.InvalidRequest, match="Expired or missing OAuth state"):
                anon(a).auth.oidc.oidc_callback(state=state, nonce="", code=code, path=mount)
            assert a.client(token=token).auth.token.lookup_self()["data"]["meta"] == {"role": "web"}
    for srv in (a, b):  # both stopped: their stdout readers hit EOF
        if srv.proc.stdout is not None:
            srv.proc.stdout.close()


@pytest.mark.parametrize(
    ("algs", "ok"),
    [(["ES256"], True), (None, False)],
    ids=["es256-allowed", "default-rs256-only"],
)
def test_es256_id_tokens(vault: ServerProc, listener: CallbackListener, algs: list[str] | None, ok: bool) -> None:
    """The ``vault-es`` client gets ES256 ID tokens: accepted only when jwt_supported_algs allows it."""
    mount = f"oidc-es-{'on' if ok else 'off'}"
    root = vault.client()
    root.sys.enable_auth_method("oidc", path=mount)
    idp_url = root.auth.oidc.read_config(path=MOUNT)["data"]["oidc_discovery_url"]
    root.auth.oidc.configure(
        oidc_discovery_url=idp_url,
        oidc_client_id="vault-es",
        oidc_client_secret=CLIENT_SECRET,
        jwt_supported_algs=algs,
        path=mount,
    )
    root.auth.oidc.create_role(name="web", user_claim="sub", allowed_redirect_uris=[listener.url], path=mount)
    auth_url = anon(vault).auth.oidc.oidc_authorization_url_request(role="web", redirect_uri=listener.url, path=mount)[
        "data"
    ]["auth_url"]
    state = parse_qs(urlsplit(auth_url).query)["state"][0]
    code = drive_login(auth_url, listener.url, login="dave")["code"]
    if ok:
        resp = anon(vault).auth.oidc.oidc_callback(state=state, nonce="", code=code, path=mount)
        assert resp["auth"]["metadata"] == {"role": "web"}
    else:
        with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
            anon(vault).auth.oidc.oidc_callback(state=state, nonce="", code=code, path=mount)
        assert "Error exchanging oidc code" in str(exc.value) and "ES256" in str(exc.value)


def test_max_age_requires_recent_authentication(vault: ServerProc, listener: CallbackListener) -> None:
    """A role with max_age sends it to the IdP, whose ID token then carries auth_time."""
    root = vault.client()
    root.write_data(
        f"auth/{MOUNT}/role/recent",
        data={"role_type": "oidc", "user_claim": "sub", "allowed_redirect_uris": [listener.url], "max_age": "5m"},
    )
    auth_url = as_json(anon(vault).write_data(
        f"auth/{MOUNT}/oidc/auth_url", data={"role": "recent", "redirect_uri": listener.url}
    ))["data"]["auth_url"]
    query = parse_qs(urlsplit(auth_url).query)
    assert query["max_age"] == ["300"]
    code = drive_login(auth_url, listener.url, login="erin")["code"]
    resp = finish(vault, query["state"][0], code)
    assert resp["auth"]["metadata"] == {"role": "recent"}
