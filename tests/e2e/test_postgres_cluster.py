"""Two real authmount processes on one real PostgreSQL database behave as one server.

Mounts, config and roles written on node A are used by node B; a role changed on A takes
effect on B (cache invalidation by LISTEN/NOTIFY); tokens issued on one node are looked
up, renewed and revoked on the other; a ``num_uses=1`` token raced on both nodes works
exactly once; the OIDC state made by ``oidc/auth_url`` on A is redeemed on B.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.e2e.serverproc import ServerProc, start_server
from tests.pg import PostgresServer
from tests.plugin.keyfactory import default_claims, make_token, rsa_key

pytestmark = pytest.mark.e2e

KEY = rsa_key(kid="pg-1", slot=21)
TIMEOUT = 30
MOUNT = "cluster/jwt"


class Node:
    """One authmount process plus a ``requests`` session with the root token."""

    def __init__(self, name: str, srv: ServerProc, root: str) -> None:
        self.name = name
        self.srv = srv
        self.root = root
        self.http = requests.Session()

    def call(self, method: str, path: str, *, token: str | None = None, json: Any = None,
             params: dict[str, str] | None = None) -> requests.Response:
        """One API call; ``token`` defaults to the root token ("" sends none)."""
        tok = self.root if token is None else token
        headers = {"X-Vault-Token": tok} if tok else {}
        return self.http.request(method, f"{self.srv.url}/v1/{path}", json=json, params=params,
                                 headers=headers, timeout=TIMEOUT)

    def ok(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = self.call(method, path, **kw)
        assert resp.status_code in (200, 204), (self.name, method, path, resp.status_code, resp.text)
        return resp.json() if resp.status_code == 200 else {}

    def login(self, role: str = "svc", **claims: Any) -> requests.Response:
        return self.call("POST", f"auth/{MOUNT}/login", token="",
                         json={"role": role, "jwt": make_token(default_claims(**claims), key=KEY)})


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll until ``check()`` is true: another node learns of a write through NOTIFY."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the other node never saw the change")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> Iterator[tuple[Node, Node]]:
    dsn = postgres_server.create_database()
    config = {"storage": {"type": "postgres", "dsn": dsn}, "log_format": "json"}
    base: Path = tmp_path_factory.mktemp("pg-cluster")
    try:
        with start_server(config=config, workdir=base / "a") as a:
            assert a.root_token
            with start_server(config=config, workdir=base / "b", root_token=a.root_token) as b:
                node_a, node_b = Node("A", a, a.root_token), Node("B", b, a.root_token)
                node_a.ok("POST", f"sys/auth/{MOUNT}", json={"type": "jwt"})
                node_a.ok("POST", f"auth/{MOUNT}/config",
                          json={"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": "https://idp.example.com"})
                node_a.ok("POST", f"auth/{MOUNT}/role/svc",
                          json={"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
                                "token_policies": ["svc"], "token_ttl": "1h", "token_max_ttl": "4h"})
                yield node_a, node_b
            assert b.returncode == 0
        assert a.returncode == 0
    finally:
        postgres_server.drop_database(dsn)


def test_mount_config_role_from_a_work_on_b(cluster: tuple[Node, Node]) -> None:
    a, b = cluster
    eventually(lambda: f"{MOUNT}/" in b.ok("GET", "sys/auth")["data"])
    assert b.ok("GET", f"auth/{MOUNT}/config")["data"]["jwt_validation_pubkeys"] == [KEY.pem.strip()]
    assert b.ok("GET", f"auth/{MOUNT}/role/svc")["data"]["token_policies"] == ["svc"]
    resp = b.login()
    assert resp.status_code == 200, resp.text
    assert resp.json()["auth"]["policies"] == ["default", "svc"]



def test_each_node_lists_both(cluster: tuple[Node, Node]) -> None:
    """``sys/ha-status`` (``vault operator members``) on either node lists both, by the address
    each serves, with the version each runs."""
    for node in cluster:
        nodes = node.ok("GET", "sys/ha-status")["data"]["nodes"]
        assert sorted(n["api_address"] for n in nodes) == sorted(n.srv.url for n in cluster)
        assert all(n["active_node"] and n["version"].startswith("2.7.2+authmount.") for n in nodes)

def test_role_change_on_a_takes_effect_on_b(cluster: tuple[Node, Node]) -> None:
    a, b = cluster
    a.ok("POST", f"auth/{MOUNT}/role/moving",
         json={"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"], "token_policies": ["old"]})
    eventually(lambda: b.login("moving").status_code == 200)
    assert b.login("moving").json()["auth"]["policies"] == ["default", "old"]  # B has the role cached now
    a.ok("POST", f"auth/{MOUNT}/role/moving",
         json={"role_type": "jwt", "token_policies": ["new"], "bound_subject": "bob"})
    eventually(lambda: b.login("moving", sub="alice").status_code == 400)
    refused = b.login("moving", sub="alice")
    assert refused.status_code == 400 and "sub" in refused.json()["errors"][0]
    assert b.login("moving", sub="bob").json()["auth"]["policies"] == ["default", "new"]
    # and the other way round: a delete on B is seen by A
    b.ok("DELETE", f"auth/{MOUNT}/role/moving")
    eventually(lambda: a.login("moving", sub="bob").status_code == 400)
    assert "could not be found" in a.login("moving", sub="bob").json()["errors"][0]


def test_config_change_on_b_takes_effect_on_a(cluster: tuple[Node, Node]) -> None:
    a, b = cluster
    assert a.login().status_code == 200  # A has the config cached
    other = rsa_key(kid="pg-2", slot=22)
    b.ok("POST", f"auth/{MOUNT}/config",
         json={"jwt_validation_pubkeys": [other.pem], "bound_issuer": "https://idp.example.com"})
    try:
        eventually(lambda: a.login().status_code == 400)
        assert "signature" in a.login().json()["errors"][0]
    finally:
        b.ok("POST", f"auth/{MOUNT}/config",
             json={"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": "https://idp.example.com"})
    eventually(lambda: a.login().status_code == 200)


def test_policy_change_on_a_enforced_on_b(cluster: tuple[Node, Node]) -> None:
    """ACL policies are cached per node; a rewrite on A must reach B's cache."""
    a, b = cluster
    a.ok("POST", "sys/policy/svc", json={"policy": f'path "auth/{MOUNT}/role/*" {{ capabilities = ["read"] }}'})
    token = b.login().json()["auth"]["client_token"]
    eventually(lambda: b.call("GET", f"auth/{MOUNT}/role/svc", token=token).status_code == 200)
    a.ok("POST", "sys/policy/svc", json={"policy": 'path "auth/token/lookup-self" { capabilities = ["read"] }'})
    eventually(lambda: b.call("GET", f"auth/{MOUNT}/role/svc", token=token).status_code == 403)
    a.ok("DELETE", "sys/policy/svc")
    assert b.ok("GET", "auth/token/lookup-self", token=token)["data"]["policies"] == ["default", "svc"]


def test_identity_groups_across_nodes(cluster: tuple[Node, Node]) -> None:
    """Groups written on A grant on B; a change on A applies to B's live token at its next
    use; a later login on A that drops the group is seen by the token on B."""
    a, b = cluster
    a.ok("POST", "sys/policy/grp-read", json={"policy": f'path "auth/{MOUNT}/role/*" {{ capabilities = ["read"] }}'})
    a.ok("POST", f"auth/{MOUNT}/role/grp", json={"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
                                                 "groups_claim": "groups", "token_policies": ["svc"]})
    accessor = a.ok("GET", "sys/auth")["data"][f"{MOUNT}/"]["accessor"]
    gid = a.ok("POST", "identity/group", json={"name": "readers", "type": "external",
                                              "policies": ["grp-read"]})["data"]["id"]
    a.ok("POST", "identity/group-alias", json={"name": "idp-readers", "mount_accessor": accessor, "canonical_id": gid})
    eventually(lambda: b.login("grp", sub="gina", groups=["idp-readers"]).json().get("auth", {}).get(
        "identity_policies") == ["grp-read"])
    token = b.login("grp", sub="gina", groups=["idp-readers"]).json()["auth"]["client_token"]
    assert b.call("GET", f"auth/{MOUNT}/role/svc", token=token).status_code == 200
    a.ok("POST", f"identity/group/id/{gid}", json={"policies": ["nothing"]})
    eventually(lambda: b.call("GET", f"auth/{MOUNT}/role/svc", token=token).status_code == 403)
    a.ok("POST", f"identity/group/id/{gid}", json={"policies": ["grp-read"]})
    eventually(lambda: b.call("GET", f"auth/{MOUNT}/role/svc", token=token).status_code == 200)
    assert a.login("grp", sub="gina", groups=["other"]).status_code == 200  # the entity leaves the group
    eventually(lambda: b.call("GET", f"auth/{MOUNT}/role/svc", token=token).status_code == 403)
    a.ok("DELETE", f"identity/group/id/{gid}")


def _kids(node: Node) -> set[str]:
    return {k["kid"] for k in node.ok("GET", "identity/oidc/.well-known/keys", token="")["keys"]}


def test_identity_tokens_across_nodes(cluster: tuple[Node, Node]) -> None:
    """A key and role written on A sign on B; B's key set, read before, learns of A's rotation
    (announced, not waited out); a key set read on either node verifies the other's tokens;
    an issuer set on B is A's tokens' issuer."""
    a, b = cluster
    a.ok("POST", "sys/policy/svc", json={"policy": 'path "identity/oidc/token/*" { capabilities = ["read"] }'})
    a.ok("POST", "identity/oidc/key/cluster", json={"allowed_client_ids": "*", "algorithm": "EdDSA"})
    a.ok("POST", "identity/oidc/role/cluster", json={"key": "cluster", "client_id": "c"})
    token = b.login().json()["auth"]["client_token"]

    def signed_by(node: Node) -> str:
        jwt = node.ok("GET", "identity/oidc/token/cluster", token=token)["data"]["token"]
        header = json.loads(base64.urlsafe_b64decode(jwt.split(".")[0] + "=="))
        return str(header["kid"])

    eventually(lambda: b.call("GET", "identity/oidc/token/cluster", token=token).status_code == 200)
    first = signed_by(b)
    assert first == signed_by(a) and first in _kids(b) and _kids(a) == _kids(b)
    a.ok("POST", "identity/oidc/key/cluster/rotate")
    second = signed_by(a)
    assert second != first
    after = _kids(a)
    assert len(after) == 3 and first in after  # the rotated key still verifies for verification_ttl
    eventually(lambda: _kids(b) == after)  # B's key set, built before, learns of the new next key
    assert signed_by(b) == second
    b.ok("POST", "identity/oidc/config", json={"issuer": "https://id.example.com"})

    def issuer_on_a() -> bool:
        jwt = a.ok("GET", "identity/oidc/token/cluster", token=token)["data"]["token"]
        claims = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
        return bool(claims["iss"] == "https://id.example.com/v1/identity/oidc")

    eventually(issuer_on_a)
    b.ok("POST", "identity/oidc/config", json={"issuer": ""})


@pytest.mark.parametrize("round_", range(3))
def test_an_oidc_provider_code_from_a_is_redeemed_exactly_once_across_nodes(cluster: tuple[Node, Node],
                                                                           round_: int) -> None:
    """Vault keeps a code in the memory of the node that made it; here a code made on A is
    redeemed on whichever node asks first, exactly once, when eight exchanges of it race on
    both nodes (docs/vault-differences.md, row 70)."""
    a, b = cluster
    app = "https://app.example.com/cb"
    a.ok("POST", "identity/oidc/client/cluster", json={"redirect_uris": app, "assignments": "allow_all"})
    client = a.ok("GET", "identity/oidc/client/cluster")["data"]
    token = a.login().json()["auth"]["client_token"]
    params = {"client_id": client["client_id"], "scope": "openid", "redirect_uri": app, "response_type": "code"}
    eventually(lambda: b.call("GET", "identity/oidc/provider/default/authorize", token=token,
                              params=params).status_code == 200)
    code = a.ok("GET", "identity/oidc/provider/default/authorize", token=token, params=params)["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": app, "client_id": client["client_id"],
            "client_secret": client["client_secret"]}
    workers = 8
    barrier = threading.Barrier(workers)

    def exchange(i: int) -> int:
        node = (a, b)[i % 2]
        barrier.wait(10)
        return requests.post(f"{node.srv.url}/v1/identity/oidc/provider/default/token", data=form,
                             timeout=TIMEOUT).status_code

    with ThreadPoolExecutor(workers) as pool:
        codes = list(pool.map(exchange, range(workers)))
    assert sorted(codes) == [200] + [400] * (workers - 1), codes


def test_cors_and_quotas_written_on_one_node_apply_on_the_other(cluster: tuple[Node, Node]) -> None:
    """CORS settings and a rate limit quota written on A are applied by B (announced)."""
    a, b = cluster
    a.ok("POST", "sys/config/cors", json={"allowed_origins": ["https://app.example.com"]})

    def refused_on_b() -> bool:
        resp = b.http.get(f"{b.srv.url}/v1/sys/health", headers={"Origin": "https://evil.example.com"}, timeout=TIMEOUT)
        return resp.status_code == 403

    eventually(refused_on_b)
    a.ok("DELETE", "sys/config/cors")
    eventually(lambda: not refused_on_b())
    a.ok("POST", "sys/quotas/rate-limit/cluster", json={"path": "sys/policy", "rate": 1, "interval": "1h"})
    eventually(lambda: b.call("GET", "sys/policy").status_code == 429)
    b.ok("DELETE", "sys/quotas/rate-limit/cluster")
    eventually(lambda: a.call("GET", "sys/policy").status_code == 200)


def test_one_group_name_registered_on_both_nodes_at_once_is_one_group(cluster: tuple[Node, Node]) -> None:
    """Registers of one new name sent to both nodes at the same moment (neither has heard of
    the other's group): one group per name, each register answered 200 (the first) or 204
    (the later ones update it); the name's claim is a PostgreSQL row update."""
    a, b = cluster
    rounds, per_node = 8, 3
    barrier = threading.Barrier(2 * per_node)

    def client(i: int) -> list[int]:
        node = (a, b)[i % 2]
        session = requests.Session()  # a connection of its own
        statuses = []
        for n in range(rounds):
            barrier.wait()
            resp = session.post(f"{node.srv.url}/v1/identity/group", json={"name": f"pg-race-{n}"},
                                headers={"X-Vault-Token": node.root}, timeout=TIMEOUT)
            statuses.append(resp.status_code)
        return statuses

    with ThreadPoolExecutor(2 * per_node) as pool:
        statuses = [s for result in pool.map(client, range(2 * per_node)) for s in result]
    assert statuses.count(200) == rounds and statuses.count(204) == rounds * (2 * per_node - 1), statuses
    want = sorted(f"pg-race-{n}" for n in range(rounds))
    for node in (a, b):

        def listed(node: Node = node) -> bool:
            return sorted(k for k in node.ok("LIST", "identity/group/name")["data"]["keys"] if k.startswith("pg-race-")) == want

        eventually(listed)
    for n in range(rounds):
        a.ok("DELETE", f"identity/group/name/pg-race-{n}")


def test_token_from_a_lookup_renew_revoke_on_b(cluster: tuple[Node, Node]) -> None:
    a, b = cluster
    auth = a.login().json()["auth"]
    token, accessor = auth["client_token"], auth["accessor"]
    me = b.ok("GET", "auth/token/lookup-self", token=token)["data"]
    assert me["accessor"] == accessor and me["meta"] == {"role": "svc"}
    assert me["path"] == f"auth/{MOUNT}/login"
    renewed = b.ok("POST", "auth/token/renew-self", token=token, json={"increment": "2h"})["auth"]
    assert renewed["lease_duration"] == 7200
    assert a.ok("POST", "auth/token/lookup-accessor", json={"accessor": accessor})["data"]["ttl"] > 3600
    b.ok("POST", "auth/token/revoke-self", token=token)
    refused = a.call("GET", "auth/token/lookup-self", token=token)
    assert refused.status_code == 403 and refused.json()["errors"] == ["permission denied"]


def test_revoke_on_b_kills_token_cached_on_a(cluster: tuple[Node, Node]) -> None:
    a, b = cluster
    token = a.login().json()["auth"]["client_token"]
    for _ in range(3):  # used (and possibly cached) on A
        a.ok("GET", "auth/token/lookup-self", token=token)
    accessor = a.ok("GET", "auth/token/lookup-self", token=token)["data"]["accessor"]
    b.ok("POST", "auth/token/revoke-accessor", json={"accessor": accessor})
    assert a.call("GET", "auth/token/lookup-self", token=token).status_code == 403
    assert b.call("GET", "auth/token/lookup-self", token=token).status_code == 403


@pytest.mark.parametrize("round_", range(4))
def test_num_uses_one_succeeds_exactly_once_across_nodes(cluster: tuple[Node, Node], round_: int) -> None:
    a, b = cluster
    token = a.ok("POST", "auth/token/create", json={"num_uses": 1, "ttl": "10m"})["auth"]["client_token"]
    workers = 8
    barrier = threading.Barrier(workers)
    sessions = [requests.Session() for _ in range(workers)]

    def use(i: int) -> int:
        node = (a, b)[i % 2]
        barrier.wait(10)
        return sessions[i].get(f"{node.srv.url}/v1/auth/token/lookup-self",
                               headers={"X-Vault-Token": token}, timeout=TIMEOUT).status_code

    with ThreadPoolExecutor(workers) as pool:
        codes = list(pool.map(use, range(workers)))
    for s in sessions:
        s.close()
    assert sorted(codes) == [200] + [403] * (workers - 1), codes
    assert a.call("GET", "auth/token/lookup-self", token=token).status_code == 403


def test_tokens_issued_concurrently_on_both_nodes_are_all_valid(cluster: tuple[Node, Node]) -> None:
    a, b = cluster
    with ThreadPoolExecutor(8) as pool:
        resps = list(pool.map(lambda i: (a, b)[i % 2].login(sub=f"user-{i}"), range(16)))
    tokens = [r.json()["auth"]["client_token"] for r in resps if r.status_code == 200]
    assert len(tokens) == 16
    for i, tok in enumerate(tokens):
        other = (b, a)[i % 2]
        assert other.ok("GET", "auth/token/lookup-self", token=tok)["data"]["display_name"].endswith(f"user-{i}")


# -- OIDC state across nodes --------------------------------------------------------------
def test_oidc_state_from_a_redeemed_on_b(cluster: tuple[Node, Node], tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.e2e.browser import CallbackListener, drive_login
    from tests.e2e.idp import CLIENT_ID, CLIENT_SECRET, idp_available, start_idp

    reason = idp_available()
    if reason:
        pytest.skip(reason)
    a, b = cluster
    mount = "cluster/oidc"
    with CallbackListener() as listener:
        idp = start_idp(tmp_path_factory.mktemp("pg-idp"), redirect_uris=[listener.url])
        try:
            a.ok("POST", f"sys/auth/{mount}", json={"type": "oidc"})
            a.ok("POST", f"auth/{mount}/config", json={"oidc_discovery_url": idp.discovery_url,
                                                        "oidc_client_id": CLIENT_ID,
                                                        "oidc_client_secret": CLIENT_SECRET})
            a.ok("POST", f"auth/{mount}/role/web", json={"user_claim": "sub", "allowed_redirect_uris": [listener.url],
                                                          "token_policies": ["web"]})
            eventually(lambda: b.call("GET", f"auth/{mount}/role/web").status_code == 200)
            auth_url = a.ok("POST", f"auth/{mount}/oidc/auth_url", token="",
                            json={"role": "web", "redirect_uri": listener.url})["data"]["auth_url"]
            state = parse_qs(urlsplit(auth_url).query)["state"][0]
            code = drive_login(auth_url, listener.url, login="dave")["code"]
            done = b.call("GET", f"auth/{mount}/oidc/callback", token="", params={"state": state, "code": code})
            assert done.status_code == 200, done.text
            token = done.json()["auth"]["client_token"]
            assert done.json()["auth"]["policies"] == ["default", "web"]
            # the state is single-use on every node; the token works on A
            again = a.call("GET", f"auth/{mount}/oidc/callback", token="", params={"state": state, "code": code})
            assert again.status_code == 400 and "Expired or missing OAuth state" in again.json()["errors"][0]
            assert a.ok("GET", "auth/token/lookup-self", token=token)["data"]["meta"] == {"role": "web"}
        finally:
            idp.stop()


def test_node_killed_mid_burst_other_node_honours_its_tokens(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> None:
    """kill -9 node A during a login burst: node B (running all along) knows every token A answered."""
    import signal

    from tests.e2e.serverproc import launch

    dsn = postgres_server.create_database()
    config = {"storage": {"type": "postgres", "dsn": dsn}, "log_format": "json"}
    base: Path = tmp_path_factory.mktemp("pg-kill")
    a_proc = launch(config=config, workdir=base / "a")
    try:
        a_proc.wait_ready(30)
        assert a_proc.root_token
        a = Node("A", a_proc, a_proc.root_token)
        a.ok("POST", f"sys/auth/{MOUNT}", json={"type": "jwt"})
        a.ok("POST", f"auth/{MOUNT}/config", json={"jwt_validation_pubkeys": [KEY.pem]})
        a.ok("POST", f"auth/{MOUNT}/role/svc",
             json={"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"]})
        acknowledged: list[str] = []
        lock = threading.Lock()
        enough = threading.Event()

        def burst(worker: int) -> None:
            with requests.Session() as http:
                for i in range(10_000):
                    body = {"role": "svc", "jwt": make_token(default_claims(sub=f"k{worker}-{i}"), key=KEY)}
                    try:
                        resp = http.post(f"{a_proc.url}/v1/auth/{MOUNT}/login", json=body, timeout=TIMEOUT)
                    except requests.RequestException:
                        return
                    if resp.status_code != 200:
                        return
                    with lock:
                        acknowledged.append(resp.json()["auth"]["client_token"])
                        if len(acknowledged) >= 40:
                            enough.set()

        with start_server(config=config, workdir=base / "b", root_token=a_proc.root_token) as b_proc:
            b = Node("B", b_proc, a_proc.root_token)
            with ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(burst, w) for w in range(6)]
                assert enough.wait(120), "the burst never got going"
                a_proc.proc.send_signal(signal.SIGKILL)
                for f in futures:
                    f.result(TIMEOUT)
            assert a_proc.proc.wait(10) == -signal.SIGKILL
            lost = [t for t in acknowledged if b.call("GET", "auth/token/lookup-self", token=t).status_code != 200]
            assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged tokens unknown to node B"
        assert b_proc.returncode == 0
    finally:
        a_proc.kill()
        postgres_server.drop_database(dsn)
