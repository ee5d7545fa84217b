"""plugin.framework: the path table (literal paths resolved once), sudo/unauthenticated in OpenAPI."""

from __future__ import annotations

from typing import Any

from plugin.framework import Backend, Operation, PathSpec, Request
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
