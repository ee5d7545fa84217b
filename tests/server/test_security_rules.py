"""The security rules that login and the token store share, run against all three places that
apply them: a JWT login (the role's ``token_bound_cidrs``), token creation (``bound_cidrs``)
and every use of a token. One table each, so the places cannot drift apart again (they did:
only the token store unwrapped IPv4-mapped IPv6 addresses)."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest

from plugin.cidrutil import cidr_allows, parse_cidrs
from plugin.errors import InvalidRequest, PermissionDenied
from plugin.framework import Auth, Operation, Request, StaticSystemView
from plugin.policyutil import refuse_root, sanitize_policies
from plugin.storage import InMemoryStorage
from server.acl.policies import PolicyStore
from server.tokens.backend import TokenBackend
from server.tokens.entry import MountInfo
from server.tokens.store import TokenStore
from tests.plugin.fakes import Harness
from tests.plugin.keyfactory import DROP, default_claims, make_token, rsa_key

KEY = rsa_key(kid="k", slot=31)
JWT_MOUNT = MountInfo("auth/jwt/", "auth_jwt_00000001", 3600, 7200)
SYSTEM = StaticSystemView(mount_path="auth/token/", mount_accessor="auth_token_00000001")

#: (bound CIDRs, remote address, allowed)
CIDR_TABLE: list[tuple[list[str], str, bool]] = [
    (["10.0.0.0/8"], "10.0.0.1", True),
    (["10.0.0.0/8"], "11.0.0.1", False),
    (["10.0.0.0/8"], "::ffff:10.0.0.1", True),  # what a dual-stack socket reports
    (["10.0.0.0/8"], "::ffff:11.0.0.1", False),
    (["::ffff:10.0.0.0/104"], "10.1.2.3", True),  # a mapped CIDR is its IPv4 network
    (["::ffff:10.0.0.0/104"], "11.1.2.3", False),
    (["10.0.0.1/8"], "10.200.0.1", True),  # host bits set: the network counts
    (["10.0.0.1/8"], "11.0.0.1", False),
    (["10.0.0.5"], "10.0.0.5", True),  # a bare address is a /32
    (["10.0.0.5"], "10.0.0.6", False),
    (["0.0.0.0/0"], "203.0.113.9", True),
    (["0.0.0.0/0"], "::ffff:203.0.113.9", True),
    (["0.0.0.0/0"], "2001:db8::1", False),
    (["::/0"], "2001:db8::1", True),
    (["::/0"], "10.0.0.1", False),
    (["fe80::/10"], "fe80::1%eth0", True),  # a zone on the peer is ignored
    (["fe80::/10"], "fe81::1", True),
    (["2001:db8::/32"], "fe80::1%eth0", False),
    (["10.0.0.0/8", "192.168.0.0/16"], "192.168.1.1", True),
    (["10.0.0.0/8"], "not-an-ip", False),
    (["10.0.0.0/8"], "10.0.0.1.5", False),
    (["10.0.0.0/8"], "", False),
]
CIDR_IDS = [f"{','.join(c)} from {r or 'nowhere'}" for c, r, _ in CIDR_TABLE]
ROOT_SPELLINGS = ["root", " root", "Root", "ROOT", " Root ", "rOoT\t"]


def test_cidr_rule() -> None:
    for bound, remote, allowed in CIDR_TABLE:
        assert cidr_allows(parse_cidrs(bound), remote) is allowed, (bound, remote)


@pytest.mark.parametrize("bad", ["10.0.0.0/99", "10.0.0", "fe80::1%eth0", "not a cidr", "10.0.0.0/8/8"])
def test_bad_cidrs_refused_with_one_message(bad: str) -> None:
    with pytest.raises(InvalidRequest, match=f'error parsing address "{bad}"'):
        parse_cidrs([bad])


def test_parsed_cidrs_keep_their_spelling() -> None:
    assert parse_cidrs([" 10.0.0.1/8 ", "", "10.0.0.5", "::ffff:10.0.0.0/104", "10.0.0.9/32", "2001:db8::1/128"]) == [
        "10.0.0.1/8", "10.0.0.5", "::ffff:10.0.0.0/104", "10.0.0.9", "2001:db8::1"]  # a single address: bare, as Vault


# -- login --------------------------------------------------------------------------------
async def _jwt_mount(cidrs: list[str], policies: list[str] | None = None) -> Harness:
    h = Harness()
    await h.write("config", {"jwt_validation_pubkeys": [KEY.pem]})
    role = {"role_type": "jwt", "user_claim": "sub", "bound_subject": "alice", "token_bound_cidrs": cidrs}
    if policies is not None:
        role["token_policies"] = policies
    await h.write("role/r", role)
    return h


def _jwt() -> str:
    return make_token(default_claims(aud=DROP), key=KEY)


@pytest.mark.parametrize(("cidrs", "remote", "allowed"), CIDR_TABLE, ids=CIDR_IDS)
async def test_login_applies_the_cidr_rule(cidrs: list[str], remote: str, allowed: bool) -> None:
    h = await _jwt_mount(cidrs)
    req = {"role": "r", "jwt": _jwt()}
    if allowed:
        resp = await h.login(req, remote_addr=remote)
        assert resp.auth is not None and resp.auth.bound_cidrs == cidrs
    else:
        with pytest.raises(PermissionDenied):
            await h.call(Operation.UPDATE, "login", req, remote_addr=remote or None)


@pytest.mark.parametrize("spelling", ROOT_SPELLINGS, ids=repr)
async def test_login_never_yields_root(spelling: str) -> None:
    h = await _jwt_mount([], policies=["dev", spelling])
    with pytest.raises(InvalidRequest, match="auth methods cannot create root tokens"):
        await h.call(Operation.UPDATE, "login", {"role": "r", "jwt": _jwt()}, remote_addr="127.0.0.1")


# -- token creation and use ---------------------------------------------------------------
@pytest.fixture
async def tokens() -> AsyncIterator[tuple[TokenStore, TokenBackend, str]]:
    store = TokenStore(InMemoryStorage())
    await store.start(sweep=False)
    policies = PolicyStore(store.storage)
    await policies.put("dev", 'path "auth/token/create" { capabilities = ["update"] }')
    yield store, TokenBackend(store, policies=policies), await store.create_root()
    await store.close()


async def _create(backend: TokenBackend, store: TokenStore, caller: str, data: dict[str, Any]) -> str:
    entry = await store.authenticate(caller, "127.0.0.1")
    req = Request(operation=Operation.UPDATE, path="create", data=data, system=SYSTEM,
                  token={"entry": entry, "raw": caller})
    resp = await backend.handle_request(req)
    assert resp is not None and resp.auth_block is not None
    return str(resp.auth_block["client_token"])


@pytest.mark.parametrize(("cidrs", "remote", "allowed"), CIDR_TABLE, ids=CIDR_IDS)
async def test_created_token_use_applies_the_cidr_rule(
    tokens: tuple[TokenStore, TokenBackend, str], cidrs: list[str], remote: str, allowed: bool
) -> None:
    store, backend, root = tokens
    raw = await _create(backend, store, root, {"policies": ["dev"], "bound_cidrs": cidrs})
    if allowed:
        assert (await store.authenticate(raw, remote)).bound_cidrs == cidrs
    else:
        with pytest.raises(PermissionDenied):
            await store.authenticate(raw, remote)


@pytest.mark.parametrize(("cidrs", "remote", "allowed"), CIDR_TABLE, ids=CIDR_IDS)
@pytest.mark.parametrize("token_type", ["service", "batch"])
async def test_login_token_use_applies_the_cidr_rule(
    tokens: tuple[TokenStore, TokenBackend, str], cidrs: list[str], remote: str, allowed: bool, token_type: str
) -> None:
    store = tokens[0]
    auth = Auth(display_name="alice", policies=["dev"], bound_cidrs=cidrs, token_type=token_type)
    block, _ = await store.issue(auth, mount=JWT_MOUNT)
    if allowed:
        await store.authenticate(block["client_token"], remote)
    else:
        with pytest.raises(PermissionDenied):
            await store.authenticate(block["client_token"], remote)


#: A login from the first address to a role with token_strictly_bind_ip: its token is then
#: used from each of the others (True: accepted).
STRICT_USES: list[tuple[str, dict[str, bool]]] = [
    ("10.0.0.1", {"10.0.0.1": True, "::ffff:10.0.0.1": True, "10.0.0.2": False, "127.0.0.1": False}),
    ("::ffff:10.0.0.1", {"10.0.0.1": True, "::ffff:10.0.0.1": True, "::ffff:10.0.0.2": False}),
    ("2001:db8::1", {"2001:db8::1": True, "2001:db8:0::1": True, "2001:db8::2": False, "10.0.0.1": False}),
    ("fe80::1%eth0", {"fe80::1%eth0": True, "fe80::1%eth1": True, "fe80::2%eth0": False}),
]


@pytest.mark.parametrize(("login_from", "uses"), STRICT_USES, ids=[s[0] for s in STRICT_USES])
@pytest.mark.parametrize("token_type", ["service", "batch"])
async def test_strictly_bound_login_token_is_used_from_its_address_only(
    tokens: tuple[TokenStore, TokenBackend, str], login_from: str, uses: dict[str, bool], token_type: str
) -> None:
    h = Harness()
    await h.write("config", {"jwt_validation_pubkeys": [KEY.pem]})
    await h.write("role/r", {"role_type": "jwt", "user_claim": "sub", "bound_subject": "alice",
                             "token_strictly_bind_ip": True, "token_type": token_type})
    auth = (await h.login({"role": "r", "jwt": _jwt()}, remote_addr=login_from)).auth
    assert auth is not None
    block, _ = await tokens[0].issue(auth, mount=JWT_MOUNT)
    for remote, allowed in uses.items():
        if allowed:
            await tokens[0].authenticate(block["client_token"], remote)
        else:
            with pytest.raises(PermissionDenied):
                await tokens[0].authenticate(block["client_token"], remote)


@pytest.mark.parametrize("spelling", ROOT_SPELLINGS, ids=repr)
async def test_issue_never_yields_root_from_a_login(tokens: tuple[TokenStore, TokenBackend, str], spelling: str) -> None:
    with pytest.raises(InvalidRequest, match="auth methods cannot create root tokens"):
        await tokens[0].issue(Auth(policies=["dev", spelling]), mount=JWT_MOUNT)


@pytest.mark.parametrize("spelling", ROOT_SPELLINGS, ids=repr)
async def test_token_create_root_needs_a_root_caller(tokens: tuple[TokenStore, TokenBackend, str], spelling: str) -> None:
    store, backend, root = tokens
    dev = await _create(backend, store, root, {"policies": ["dev"]})
    with pytest.raises(InvalidRequest):
        await _create(backend, store, dev, {"policies": [spelling]})
    made = await _create(backend, store, root, {"policies": [spelling]})
    assert (await store.authenticate(made, "127.0.0.1")).policies == ["root"]


@pytest.mark.parametrize("spelling", ROOT_SPELLINGS, ids=repr)
def test_policy_rules(spelling: str) -> None:
    assert sanitize_policies(["dev", spelling, "DEV"]) == ["dev", "root"]
    assert sanitize_policies(["dev", spelling], add_default=True) == ["dev", "root"]
    assert sanitize_policies(["dev"], add_default=True) == ["default", "dev"]
    with pytest.raises(InvalidRequest, match="auth methods cannot create root tokens"):
        refuse_root(["dev", spelling])


# -- children of a CIDR-bound token ---------------------------------------------------------
#: (parent's CIDRs, requested for the child, the child's CIDRs or None when refused)
CHILD_TABLE: list[tuple[list[str], list[str], list[str] | None]] = [
    (["10.0.0.0/8"], [], ["10.0.0.0/8"]),  # inherited
    (["10.0.0.0/8"], ["10.1.0.0/16"], ["10.1.0.0/16"]),  # narrower: kept
    (["10.1.0.0/16"], ["10.0.0.0/8"], ["10.1.0.0/16"]),  # wider: the parent's
    (["10.0.0.0/8", "192.168.0.0/16"], ["192.168.1.0/24", "172.16.0.0/12"], ["192.168.1.0/24"]),
    (["10.0.0.0/8"], ["192.168.0.0/16"], None),  # disjoint: refused
    (["10.0.0.0/8"], ["2001:db8::/32"], None),
    (["::ffff:10.0.0.0/104"], ["10.2.0.0/16"], ["10.2.0.0/16"]),  # a mapped parent CIDR is IPv4
    ([], ["10.0.0.0/8"], ["10.0.0.0/8"]),
]


@pytest.mark.parametrize(("parent", "requested", "child"), CHILD_TABLE)
@pytest.mark.parametrize("orphan", [False, True], ids=["child", "orphan"])
async def test_tokens_made_by_a_bound_token_stay_bound(
    tokens: tuple[TokenStore, TokenBackend, str], parent: list[str], requested: list[str],
    child: list[str] | None, orphan: bool,
) -> None:
    """A CIDR-bound token could mint a child usable from anywhere, defeating "checked on
    every use"; now whatever it makes is bound to (the intersection with) its own CIDRs."""
    store, backend, root = tokens
    maker = await _create(backend, store, root, {"policies": ["dev"], "bound_cidrs": parent, "ttl": "1h"})
    await PolicyStore(store.storage).put("dev", 'path "auth/token/*" { capabilities = ["update", "sudo"] }')
    backend.policies.invalidate()
    inside = str(ipaddress.ip_network(parent[0], strict=False)[1]) if parent else "203.0.113.1"
    entry = await store.authenticate(maker, inside)
    req = Request(operation=Operation.UPDATE, path="create-orphan" if orphan else "create",
                  data={"policies": ["dev"], "bound_cidrs": requested}, system=SYSTEM,
                  token={"entry": entry, "raw": maker})
    if child is None:
        with pytest.raises(InvalidRequest, match="outside the creating token's bound CIDRs"):
            await backend.handle_request(req)
        return
    resp = await backend.handle_request(req)
    assert resp is not None and resp.auth_block is not None
    made = await store.lookup(resp.auth_block["client_token"])
    assert made is not None and made.bound_cidrs == child
    if child:
        with pytest.raises(PermissionDenied):
            await store.authenticate(resp.auth_block["client_token"], "203.0.113.7")


# -- where plain http is allowed: this machine only (plugin/cidrutil.is_loopback_host) -------------
LOOPBACK_TABLE = [
    ("localhost", True), ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
    ("localhost.evil.example", False), ("127.0.0.1.nip.io", False), ("10.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("0.0.0.0", False), ("", False), ("LOCALHOST", False),  # urlsplit lower-cases
]


@pytest.mark.parametrize(("host", "loopback"), LOOPBACK_TABLE)
def test_loopback_rule_is_the_same_for_redirects_and_claim_sources(host: str, loopback: bool) -> None:
    from plugin.cidrutil import is_loopback_host
    from plugin.claim_sources import _endpoint_ok
    from plugin.oidc_redirect import valid_redirect

    assert is_loopback_host(host) is loopback
    netloc = f"[{host}]" if ":" in host else host
    if not netloc:
        return
    in_url = is_loopback_host(host.lower())  # a URL's host is lower-cased before the rule
    # A claims source may be plain http only on this machine ...
    assert _endpoint_ok(f"http://{netloc}:8080/claims") is in_url
    assert _endpoint_ok(f"https://{netloc}/claims") is True
    # ... and a loopback redirect URI matches an allowed one on another port only there.
    assert valid_redirect(f"http://{netloc}:5555/cb", [f"http://{netloc}:8250/cb"]) is in_url
