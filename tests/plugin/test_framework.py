"""plugin.framework: the path table (literal paths resolved once), sudo/unauthenticated in OpenAPI,
unrecognized parameters (warned with the closest field, or refused) and the help document."""

from __future__ import annotations

from typing import Any

import pytest

from plugin import pathdoc
from plugin.errors import InvalidRequest
from plugin.framework import Backend, Operation, PathSpec, Request, Response
from plugin.schema import Field, FieldSet, FieldType


async def _handler(req: Request, values: dict[str, Any]) -> None:
    return None


def _spec(pattern: str, **kw: Any) -> PathSpec:
    fields = FieldSet({"name": Field(FieldType.NAME, "A name.")} if "(?P<name>" in pattern else {})
    return PathSpec(pattern, fields, {Operation.READ: _handler}, **kw)


def test_literal_paths_resolve_from_the_table_built_once() -> None:
    backend = Backend()
    backend.paths = [_spec(r"role/(?P<name>\w+)"), _spec("login", unauthenticated=True), _spec("role/?"),
                     _spec(r"(?P<name>x\w*)"), _spec("xyz")]
    login = backend.resolve("login")
    assert login.spec.unauthenticated and login is backend.resolve("login")
    # A literal path an earlier pattern matches resolves to that pattern, as any path does.
    assert backend.resolve("xyz").spec.pattern == r"(?P<name>x\w*)"
    for i in range(3000):  # caller-chosen names fill and clear the bounded cache ...
        backend.resolve(f"role/n{i}")
    assert backend.resolve("login") is login  # ... the literal paths' Routes stay
    backend.paths = [_spec("login")]  # a new table is built for a new paths list
    assert backend.resolve("login") is not login and not backend.resolve("login").spec.unauthenticated


def test_openapi_marks_sudo_and_unauthenticated_paths() -> None:
    backend = Backend()
    backend.paths = [_spec("login", unauthenticated=True), _spec(r"admin/(?P<name>\w+)/*", sudo=True), _spec("plain")]
    doc = backend.openapi_paths("auth/x/")
    assert doc["/auth/x/login"]["x-vault-unauthenticated"] is True and "x-vault-sudo" not in doc["/auth/x/login"]
    assert doc["/auth/x/admin/{name}"]["x-vault-sudo"] is True  # a trailing "/*" is no part of the route
    assert not any(k.startswith("x-") for k in doc["/auth/x/plain"])


# -- unrecognized parameters: warned with the closest field, or refused ------------------------
_TYPO_FIELDS = FieldSet({
    "name": Field(FieldType.NAME, "A name."),
    "bound_claims": Field(FieldType.MAP, "Claims."),
    "bound_issuer": Field(FieldType.STRING, "Issuer."),
    "token_policies": Field(FieldType.COMMA_STRING_SLICE, "Policies."),
    "policies": Field(FieldType.COMMA_STRING_SLICE, "Old name.", alias_of="token_policies", deprecated=True),
    "default_lease_ttl": Field(FieldType.DURATION, "TTL."),
})
_IGNORED = "Endpoint ignored these unrecognized parameters: [{}]"


def _typo_backend() -> Backend:
    async def write(req: Request, values: dict[str, Any]) -> None:
        return None

    async def read(req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"ok": True})

    backend = Backend()
    ops = {Operation.UPDATE: write, Operation.READ: read}
    backend.paths = [PathSpec("login", _TYPO_FIELDS, dict(ops), unauthenticated=True),
                     PathSpec(r"role/(?P<name>\w+)", _TYPO_FIELDS, {**ops, Operation.DELETE: write}),
                     PathSpec("roles/", FieldSet({}), {Operation.LIST: read})]
    return backend


@pytest.mark.parametrize(
    ("typo", "field"),
    [("bound_claim", "bound_claims"), ("token_policy", "token_policies"), ("bound_isuer", "bound_issuer"),
     ("default_lease_tll", "default_lease_ttl"), ("Bound_Claims", "bound_claims"), ("BOUND_ISSUER", "bound_issuer"),
     ("polices", "token_policies"), ("colour", None), ("x", None), ("nam", None)],
    ids=["missing-s", "singular", "missing-letter", "swapped-letters", "case", "upper-case", "alias-not-offered",
         "nothing-alike", "too-short", "path-capture-not-offered"],
)
def test_closest_field(typo: str, field: str | None) -> None:
    """A current body field, never a path capture (``name``) or a deprecated alias (``policies``)."""
    expected = [f"{typo}: did you mean {field}?"] if field else []
    assert pathdoc.suggestions([typo], _TYPO_FIELDS) == expected


@pytest.mark.parametrize(
    ("operation", "path", "data", "refuse", "outcome"),
    [
        (Operation.UPDATE, "role/r", {"bound_claims": {}}, False, None),
        (Operation.UPDATE, "role/r", {"bound_claim": {}}, False,
         [_IGNORED.format("bound_claim"), "bound_claim: did you mean bound_claims?"]),
        (Operation.UPDATE, "role/r", {"token_policy": "a", "colour": 1, "bound_isuer": "x"}, False,
         [_IGNORED.format("bound_isuer colour token_policy"), "bound_isuer: did you mean bound_issuer?",
          "token_policy: did you mean token_policies?"]),
        (Operation.UPDATE, "role/r", {"bound_claim": {}}, True,
         InvalidRequest("unrecognized parameters: [bound_claim]; bound_claim: did you mean bound_claims?")),
        (Operation.DELETE, "role/r", {"colour": 1}, True, InvalidRequest("unrecognized parameters: [colour]")),
        (Operation.UPDATE, "role/r", {"bound_claims": {}}, True, None),
        (Operation.UPDATE, "login", {"iss": "x", "session_state": "y"}, True, [_IGNORED.format("iss session_state")]),
        (Operation.READ, "role/r", {"colour": 1}, True, [_IGNORED.format("colour")]),
        (Operation.LIST, "roles/", {"colour": 1}, True, [_IGNORED.format("colour")]),
    ],
    ids=["known-only-204", "typo-200-with-suggestion", "several-sorted", "refused-400", "refused-delete",
         "refuse-known-only-204", "login-never-refused", "read-never-refused", "list-never-refused"],
)
async def test_unrecognized_parameters(
    operation: Operation, path: str, data: dict[str, Any], refuse: bool, outcome: Any
) -> None:
    """Vault warns only when a response has a body (a role write answers 204 and says nothing);
    here every request that ignored parameters says so, with the field each one resembles,
    and ``refuse_unknown`` refuses the writes of paths that need a token instead."""
    req = Request(operation=operation, path=path, data=data, refuse_unknown=refuse)
    if isinstance(outcome, InvalidRequest):
        with pytest.raises(InvalidRequest) as raised:
            await _typo_backend().handle_request(req)
        assert str(raised.value) == str(outcome)
        return
    resp = await _typo_backend().handle_request(req)
    if outcome is None:
        assert resp is None  # 204
    else:
        assert resp is not None and resp.warnings == outcome


_REPLACED = "Endpoint replaced the value of these parameters with the values captured from the endpoint's path: [{}]"


@pytest.mark.parametrize(
    ("operation", "data", "warnings"),
    [
        (Operation.READ, {"name": "other"}, [_REPLACED.format("name")]),
        (Operation.READ, {"name": "r"}, [_REPLACED.format("name")]),  # the same value: Vault warns too
        (Operation.READ, {"name": None}, []),  # JSON null is no value (Go's raw[k] != nil)
        (Operation.READ, {"colour": 1, "name": "x"}, [_IGNORED.format("colour"), _REPLACED.format("name")]),
        (Operation.UPDATE, {"name": "other"}, None),  # a 204 says nothing, as in Vault
    ],
    ids=["other-value", "same-value", "null", "after-ignored", "no-body-no-warning"],
)
async def test_a_body_value_the_path_replaces_is_warned_of(
    operation: Operation, data: dict[str, Any], warnings: list[str] | None
) -> None:
    """Vault's framework warning, word for word: the path's capture wins over the body's
    value (``auth/token/create/<role_name>`` with ``role_name`` in the body), and says so."""
    resp = await _typo_backend().handle_request(Request(operation=operation, path="role/r", data=data))
    if warnings is None:
        assert resp is None
    else:
        assert resp is not None and resp.warnings == warnings and resp.data == {"ok": True}


async def _noop(req: Request, values: dict[str, Any]) -> None:
    return None


@pytest.mark.parametrize("kind", list(FieldType))
def test_help_names_every_field_type(kind: FieldType) -> None:
    """``?help=1`` of a path with a field of each type (a float's was a 500: sys/quotas)."""
    spec = PathSpec("p", FieldSet({"f": Field(kind, "A field.")}), {Operation.READ: _noop}, "A path.")
    assert "    f (" in pathdoc.help_text(spec, "p")


def test_help_text_is_vaults_document_from_the_schema() -> None:
    spec = PathSpec(r"role/(?P<name>\w+)", _TYPO_FIELDS, {Operation.READ: _handler}, "Manage a role.",
                    "Roles bind tokens to policies.")
    assert pathdoc.help_text(spec, "role/r") == "\n".join([
        "Request:        role/r",
        r"Matching Route: ^role/(?P<name>\w+)$",
        "",
        "Manage a role.",
        "",
        "## PARAMETERS",
        "",
        "    bound_claims (map)",
        "",
        "        Claims.",
        "",
        "    bound_issuer (string)",
        "",
        "        Issuer.",
        "",
        "    default_lease_ttl (duration (sec))",
        "",
        "        TTL.",
        "",
        "    name (string)",
        "",
        "        A name.",
        "",
        "    policies (slice)",
        "",
        "        (DEPRECATED) Old name.",
        "",
        "    token_policies (slice)",
        "",
        "        Policies.",
        "",
        "## DESCRIPTION",
        "",
        "Roles bind tokens to policies.",
    ])
    backend = Backend()
    backend.paths = [spec]
    doc = backend.help(backend.resolve("role/r"), "role/r", "auth/x/")
    assert set(doc) == {"help", "openapi", "see_also"} and list(doc["openapi"]["paths"]) == ["/role/{name}"]


def test_suggestions_are_bounded() -> None:
    """Thousands of junk keys (a login needs no token) cost a bounded amount of matching."""
    import time

    junk = [f"bound_claim{i}" for i in range(20_000)] + ["x" * 100_000]
    started = time.perf_counter()
    hints = pathdoc.suggestions(sorted(junk), _TYPO_FIELDS)
    assert len(hints) == pathdoc.MAX_SUGGESTIONS and time.perf_counter() - started < 1.0
    assert pathdoc.suggestions(["bound_claims" + "s" * 60], _TYPO_FIELDS) == []  # longer than any field name
