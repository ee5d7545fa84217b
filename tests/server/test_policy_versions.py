"""``sys/policies/acl`` with OpenBao 2.x's additions over HTTP: check-and-set (``cas``,
``cas_required``, ``version``, ``modified``), expiring policies (``expiration``, ``ttl``) and
``LIST sys/policies/detailed/acl``. The store's rules are in test_policies.py; the answers
are compared with OpenBao's in tests/e2e/test_openbao_differential.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from tests.server.httpkit import answer, dev_client

ROOT = "policy-versions-root"
RULE = 'path "a" { capabilities = ["read"] }'


def _future(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat().replace("+00:00", "Z")


#: A write's body beside the policy, and its refusal.
REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("both times", {"expiration": _future(3600), "ttl": "1h"}, "cannot supply both 'expiration' and 'ttl' for policies"),
    ("a past time", {"expiration": "2020-01-01T00:00:00Z"},
     "refusing to update policy as expiration time has already elapsed"),
    ("a zero ttl", {"ttl": 0}, "refusing to update policy as expiration time has already elapsed"),
    ("not a time", {"expiration": "tomorrow"},
     "invalid 'expiration' 'tomorrow': an RFC 3339 time (with its zone) or Unix seconds"),
    ("a time without its zone", {"expiration": "2099-01-01T00:00:00"}, "an RFC 3339 time (with its zone)"),
    ("a list", {"expiration": ["2099-01-01T00:00:00Z"]}, "an RFC 3339 time (with its zone)"),
    ("a zone other than UTC", {"expiration": "2000-01-01T05:00:00+05:00"},
     "refusing to update policy as expiration time has already elapsed"),
    ("past Unix seconds", {"expiration": "1000"}, "refusing to update policy as expiration time has already elapsed"),
    ("seconds past any clock", {"expiration": "9" * 400}, "an RFC 3339 time (with its zone) or Unix seconds"),
    ("cas not a number", {"cas": "x"}, 'error converting input x for field "cas"'),
]


@pytest.mark.parametrize(("body", "error"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
async def test_refused_writes(aiohttp_client: AiohttpClient, body: dict[str, Any], error: str) -> None:
    client = await dev_client(aiohttp_client, ROOT)
    status, got = await answer(client, "PUT", "sys/policies/acl/p", {"policy": RULE, **body}, token=ROOT)
    assert status == 400 and error in got["errors"][0], got
    assert (await answer(client, "GET", "sys/policies/acl/p", token=ROOT))[0] == 404


async def test_reads_and_the_detailed_list(aiohttp_client: AiohttpClient) -> None:
    client = await dev_client(aiohttp_client, ROOT)
    expires = _future(3600)
    status, got = await answer(client, "PUT", "sys/policies/acl/p", {"policy": RULE, "cas": -1, "cas_required": True,
                                                                      "expiration": expires}, token=ROOT)
    assert (status, got) == (204, None)  # every field known: no "ignored parameters" warning
    status, got = await answer(client, "GET", "sys/policies/acl/p", token=ROOT)
    data = got["data"]
    assert data.pop("modified").endswith("Z")
    assert datetime.fromisoformat(data.pop("expiration")) == datetime.fromisoformat(expires)
    assert data == {"name": "p", "policy": RULE, "version": 1, "cas_required": True,
                    "allow_slashes_in_identity_templates": False, "allow_wildcards_in_identity_templates": False}
    legacy = (await answer(client, "GET", "sys/policy/p", token=ROOT))[1]
    assert legacy["rules"] == RULE and legacy["version"] == 1 and "policy" not in legacy["data"]
    status, got = await answer(client, "LIST", "sys/policies/detailed/acl", token=ROOT)
    assert status == 200 and got["data"]["keys"] == ["default", "p", "root"]
    info = got["data"]["key_info"]
    assert (info["p"]["version"], info["p"]["policy"], info["default"]["version"], info["root"]["version"]) == (
        1, RULE, 1, 0)
    assert info["root"]["policy"] == "" and "modified" not in info["root"]
    status, got = await answer(client, "PUT", "sys/policies/acl/p", {"policy": RULE}, token=ROOT)
    assert (status, got["errors"]) == (400, ["check-and-set parameter required for this call"])


async def test_a_ttl_sets_the_expiration(aiohttp_client: AiohttpClient) -> None:
    client = await dev_client(aiohttp_client, ROOT)
    before = time.time()
    assert (await answer(client, "PUT", "sys/policies/acl/p", {"policy": RULE, "ttl": "1h"}, token=ROOT))[0] == 204
    data = (await answer(client, "GET", "sys/policies/acl/p", token=ROOT))[1]["data"]
    at = datetime.fromisoformat(data["expiration"]).timestamp()
    assert before + 3600 <= at <= time.time() + 3600
