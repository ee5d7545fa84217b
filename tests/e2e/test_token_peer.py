"""Use-limited tokens against OpenBao: the same calls, by a token with one use left (the call
is its last use) or two, on an authmount dev server and an OpenBao dev server (the peer,
tests/e2e/baoproc.py). The status and the error texts must agree; where the two servers
serve different paths (``sys/mounts`` lists OpenBao's secrets engines), only the status."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.baoproc import BaoProc, start_bao
from tests.e2e.serverproc import ServerProc, start_server

pytestmark = pytest.mark.e2e

#: (method, path, body); ``SELF`` in a body is the calling token.
CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "auth/token/renew-self", {}),
    ("POST", "auth/token/renew", {"token": "SELF"}),
    ("GET", "auth/token/lookup-self", None),
    ("POST", "auth/token/lookup", {"token": "SELF"}),
    ("POST", "auth/token/create", {}),
    ("POST", "auth/token/create-orphan", {}),
    ("POST", "sys/capabilities-self", {"paths": ["sys/mounts"]}),
    ("POST", "sys/capabilities", {"token": "SELF", "paths": ["sys/mounts"]}),
    ("GET", "sys/auth", None),
    ("POST", "sys/policies/acl/peer", {"policy": 'path "a" { capabilities = ["read"] }'}),
    ("POST", "auth/token/revoke-self", {}),
    ("POST", "auth/token/revoke", {"token": "SELF"}),
]
#: Go's multierror wrapping of one error ("1 error occurred:\n\t* permission denied\n\n").
_MULTI = re.compile(r"^1 error occurred:\n\t\* (.*)\n\n$", re.S)


def _answer(url: str, token: str, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, list[str]]:
    if body is not None:
        body = json.loads(json.dumps(body).replace("SELF", token))
    resp = requests.request(method, f"{url}/v1/{path}", json=body, headers={"X-Vault-Token": token}, timeout=10)
    errors = resp.json().get("errors", []) if resp.content else []
    return resp.status_code, [_MULTI.sub(r"\1", e) for e in errors]


def _token(url: str, root: str, uses: int, policies: list[str]) -> str:
    resp = requests.post(f"{url}/v1/auth/token/create", json={"num_uses": uses, "policies": policies},
                         headers={"X-Vault-Token": root}, timeout=10)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["auth"]["client_token"])


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerProc, BaoProc]]:
    with tempfile.TemporaryDirectory() as home, start_bao() as bao, start_server(dev=True, workdir=Path(home)) as ours:
        yield ours, bao


@pytest.mark.parametrize("policies", [["root"], ["default"]])
@pytest.mark.parametrize("uses", [1, 2], ids=["last use", "uses left"])
@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[f"{m} {p}" for m, p, _ in CALLS])
def test_a_use_limited_token_as_openbao(
    servers: tuple[ServerProc, BaoProc], policies: list[str], uses: int, method: str, path: str,
    body: dict[str, Any] | None,
) -> None:
    ours, bao = servers
    assert ours.root_token is not None
    got = _answer(ours.url, _token(ours.url, ours.root_token, uses, policies), method, path, body)
    peer = _answer(bao.url, _token(bao.url, bao.root_token, uses, policies), method, path, body)
    assert got == peer
