"""``token_policies_template_claims`` (OpenBao's role flag): policies rendered from claims at
login; hostile values refused with a 400 naming the claim or the template
(docs/vault-differences.md row 31)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest

from plugin.errors import InvalidRequest
from plugin.framework import Auth, Operation, Request
from plugin.policy_templates import compile_templates, render_policies
from tests.plugin.fakes import Harness
from tests.plugin.keyfactory import ec_key, make_token

KEY = ec_key()
CLAIMS: dict[str, Any] = {
    "project": "billing", "ns": {"group": {"name": "payments"}}, "n": 42, "flag": True, "empty": "",
    "list": ["a", "b"], "obj": {"a": 1}, "float": 1.5, "null": None,
}


def raises(match: str) -> AbstractContextManager[Any]:
    return pytest.raises(InvalidRequest, match=match)


@pytest.mark.parametrize(
    ("templates", "claims", "expected"),
    [
        (["project-{{ .project }}"], {}, nullcontext(["project-billing"])),
        (["{{.project}}-{{ .ns.group.name }}"], {}, nullcontext(["billing-payments"])),
        (["p-{{- .project -}}"], {}, nullcontext(["p-billing"])),
        (["n-{{ .n }}", "f-{{ .flag }}"], {}, nullcontext(["f-true", "n-42"])),
        (["{{ .empty }}", "static"], {}, nullcontext(["static"])),
        (["Project-{{ .project }}"], {"project": "BILLING"}, nullcontext(["project-billing"])),
        (["p-{{ .missing }}"], {}, raises('claim "missing" not found in token')),
        (["p-{{ .ns.group.nope }}"], {}, raises('claim "ns.group.nope" not found in token')),
        (["p-{{ .project.deeper }}"], {}, raises('claim "project.deeper" not found in token')),
        (["p-{{ .list }}"], {}, raises('claim "list" must be a string, an integer or a boolean')),
        (["p-{{ .obj }}"], {}, raises('claim "obj" must be a string')),
        (["p-{{ .float }}"], {}, raises('claim "float" must be a string')),
        (["p-{{ .null }}"], {}, raises('claim "null" must be a string')),
        (["{{ .project }}"], {"project": "*"}, raises("not a policy name")),
        (["p-{{ .project }}"], {"project": "a*"}, raises("not a policy name")),
        (["p-{{ .project }}"], {"project": "../admin"}, raises("not a policy name")),
        (["p-{{ .project }}"], {"project": "a/b"}, raises("not a policy name")),
        (["p-{{ .project }}"], {"project": "a b"}, raises("not a policy name")),
        (["p-{{ .project }}"], {"project": "a,b"}, raises("not a policy name")),
        (["p-{{ .project }}"], {"project": "a\nb"}, raises("not a policy name")),
        (["p-{{ .project }}"], {"project": "ä"}, raises("not a policy name")),
        (["p-{{ .project }}"], {"project": "{{ .x }}"}, raises("not a policy name")),
        (["p-{{ .project }}"], {"project": "x" * 200}, raises("not a policy name")),
        (["{{ .project }}"], {"project": "root"}, raises("auth methods cannot create root tokens")),
        (["{{ .project }}"], {"project": "ROOT"}, raises("auth methods cannot create root tokens")),
        (["{{ .a }}{{ .b }}"], {"a": "ro", "b": "ot"}, raises("auth methods cannot create root tokens")),
    ],
    ids=[
        "simple", "nested", "trim-markers", "scalars", "empty-dropped", "lower-cased", "missing", "nested-missing",
        "into-string", "list", "object", "float", "null", "star", "glob", "dotdot-slash", "slash", "space", "comma",
        "newline", "non-ascii", "template-in-value", "too-long", "root", "root-upper", "root-spliced",
    ],
)
def test_render(templates: list[str], claims: dict[str, Any], expected: AbstractContextManager[Any]) -> None:
    with expected as e:
        assert render_policies(templates, {**CLAIMS, **claims}) == e


@pytest.mark.parametrize(
    "template",
    [
        "{{ .a | upper }}", "{{ index . \"a\" }}", "{{ printf \"%s\" .a }}", "{{ if .a }}x{{ end }}", "{{ .a",
        "a }}", "{{ }}", "{{ . }}", "{{ .a-b }}", "{{ .1a }}", "{{ $x := .a }}", "p/{{ .a }}", "p*{{ .a }}",
        "p {{ .a }}", "{{ .a.b.c.d.e.f.g.h.i }}", "{{.a}}" * 9,
    ],
    ids=[
        "pipeline", "index", "function", "conditional", "unclosed", "unopened", "empty", "dot", "dash", "digit",
        "variable", "slash-literal", "star-literal", "space-literal", "too-deep", "too-many",
    ],
)
def test_only_claim_references_compile(template: str) -> None:
    with raises(r"failed to parse template policy \[0\]"):
        compile_templates([template])


def test_compiled_references() -> None:
    [t] = compile_templates(["p-{{ .a.b }}-{{.c}}"])
    assert t.claims == ["a.b", "c"]


def token(h: Harness, **claims: Any) -> str:
    now = int(h.clock.now)
    return make_token({"sub": "ci", "aud": "vault", "iat": now, "exp": now + 300, **claims}, key=KEY)


@pytest.fixture
async def h() -> Harness:
    h = Harness()
    await h.write("config", {"jwt_validation_pubkeys": [KEY.pem]})
    await h.write("role/ci", {
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": "vault",
        "token_policies": ["base", "project-{{ .project_path }}"], "token_policies_template_claims": True,
    })
    return h


async def test_login_renders_policies(h: Harness) -> None:
    resp = await h.login({"role": "ci", "jwt": token(h, project_path="billing")})
    assert resp.auth is not None
    assert resp.auth.policies == ["base", "project-billing"]
    assert resp.auth.internal_data["policy_templates"] == ["base", "project-{{ .project_path }}"]
    role = await h.read("role/ci")
    assert role is not None and role.data is not None and role.data["token_policies_template_claims"] is True


async def test_hostile_claim_refuses_the_login(h: Harness) -> None:
    with raises("not a policy name") as exc:
        await h.write("login", {"role": "ci", "jwt": token(h, project_path="*")})
    assert exc.value.check == "token_policies"


async def test_without_the_flag_templates_are_literal_names(h: Harness) -> None:
    await h.write("role/ci", {"role_type": "jwt", "token_policies_template_claims": False})
    resp = await h.login({"role": "ci", "jwt": token(h, project_path="billing")})
    assert resp.auth is not None and resp.auth.policies == ["base", "project-{{ .project_path }}"]


async def test_role_write_refuses_what_is_no_claim_reference(h: Harness) -> None:
    with raises(r"failed to parse template policy \[1\]"):
        await h.write("role/ci", {"role_type": "jwt", "token_policies": ["a", "{{ .x | lower }}"]})
    with raises(r"failed to parse template policy \[0\]"):
        await h.write("role/new", {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "vault",
                                   "token_policies": ["p/{{ .x }}"], "token_policies_template_claims": True})


async def test_explain_shows_the_rendered_policies(h: Harness) -> None:
    resp = await h.write("role/ci/explain", {"jwt": token(h, project_path="billing")})
    assert resp is not None and resp.data is not None
    assert resp.data["policies"] == ["base", "project-billing"]
    [outcome] = [c for c in resp.data["checks"] if c["check"] == "token_policies"]
    assert outcome["ok"] and "project-billing" in outcome["detail"]
    bad = await h.write("role/ci/explain", {"jwt": token(h)})
    assert bad is not None and bad.data is not None and bad.data["would_succeed"] is False


async def _renew(h: Harness, auth: Auth) -> Auth:
    req = Request(operation=Operation.RENEW, path="login", storage=h.storage, system=h.system, auth=auth)
    resp = await h.backend.handle_request(req)
    assert resp is not None and resp.auth is not None
    return resp.auth


async def test_renewal_keeps_the_rendered_policies_while_the_templates_stay(h: Harness) -> None:
    auth = (await h.login({"role": "ci", "jwt": token(h, project_path="billing")})).auth
    assert auth is not None
    assert (await _renew(h, auth)).policies == ["base", "project-billing"]
    await h.write("role/ci", {"role_type": "jwt", "token_policies": ["base", "other-{{ .project_path }}"]})
    # the role's templates changed: renewal answers the role's policies, which the token
    # store refuses as "policies have changed"
    assert (await _renew(h, auth)).policies == ["base", "other-{{ .project_path }}"]
