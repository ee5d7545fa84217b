"""The OIDC provider's objects: ``identity/oidc/scope``, ``assignment``, ``client`` and
``provider`` (Vault's OIDC provider, `vault write identity/oidc/client/...`; the Terraform
provider's ``vault_identity_oidc_scope``, ``_assignment``, ``_client``, ``_provider``). The
authorization code flow over them is ``server.identity.provider_flow``.

- a **scope** is a claims template (the identity token template language,
  ``server.identity.token_template``) that an ID token and the userinfo answer get when a
  client asks for the scope; ``openid`` is implied and reserved;
- an **assignment** names entities and groups; ``allow_all`` (built in, unchangeable) is
  every enabled entity;
- a **client** is a relying party: its ``redirect_uris``, its ``assignments`` (who may sign
  in to it), the named ``key`` that signs its ID tokens, the two token TTLs, and its
  ``client_type`` (``confidential``: it has a ``client_secret``; ``public``: PKCE instead). Its
  ``client_id`` and secret are made here, never chosen; the secret is sealed at rest;
- a **provider** has an ``issuer``, the ``allowed_client_ids`` it serves and the
  ``scopes_supported``; ``default`` (built in, every client) can be changed, not deleted.

The built-in ``default`` provider and ``allow_all`` assignment exist without being stored
until an operator changes ``default``; Vault writes them when its identity store starts.

Stored under ``identity/oidc/``: ``scope/<name>``, ``assignment/<name>``, ``client/<name>``,
``provider/<name>``. What the flow reads per request (clients by ``client_id``) is kept in
memory until a write here or on another node (``IdentityStore.oidc_generation``).
"""

from __future__ import annotations

import hmac
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Operation, PathSpec, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from plugin.storage import storable
from server.acl.templating import IdentityView, TemplateError
from server.acl.templating import pieces as split_templates
from server.identity.oidc import CLIENT_PREFIX, DEFAULT_KEY, NAME_RE, Kept, refuse_if_used, stored_objects
from server.identity.oidc_keys import allows_client
from server.identity.store import OIDC_PREFIX
from server.identity.token_template import check_template, fill
from server.settings import is_origin

if TYPE_CHECKING:
    from server.identity.backend import IdentityBackend

log = structlog.get_logger("authmount.identity")

__all__ = ["ALLOW_ALL", "ASSIGNMENT_PREFIX", "CLIENT_FIELDS", "DEFAULT_PROVIDER", "PROVIDER_PREFIX", "SCOPE_PREFIX",
           "Client", "ProviderObjects", "check_grants", "normalised", "paths", "stored_id"]

SCOPE_PREFIX = OIDC_PREFIX + "scope/"
ASSIGNMENT_PREFIX = OIDC_PREFIX + "assignment/"
PROVIDER_PREFIX = OIDC_PREFIX + "provider/"
ALLOW_ALL = "allow_all"
DEFAULT_PROVIDER = "default"
_DEFAULT_PROVIDER_VALUE: dict[str, Any] = {"issuer": "", "allowed_client_ids": ["*"], "scopes_supported": []}
_ALLOW_ALL_VALUE: dict[str, Any] = {"entity_ids": ["*"], "group_ids": ["*"]}
_DAY = 86400
_B62 = string.digits + string.ascii_letters
#: Vault's lengths: a client ID of 32 base62 characters, a secret of ``hvo_secret_`` + 64.
_CLIENT_ID_LEN, _SECRET_LEN, SECRET_PREFIX = 32, 64, "hvo_secret_"
_NOBODY = IdentityView("", "")

_S, _D, _CSS = FieldType.STRING, FieldType.DURATION, FieldType.COMMA_STRING_SLICE
SCOPE_FIELDS = FieldSet({
    "name": Field(FieldType.NAME, "Name of the scope."),
    "template": Field(_S, "Claims the scope adds: a JSON object (or its base64) with {{identity.entity...}} "
                          "directives, as an identity token role's template.", default=""),
    "description": Field(_S, "What the scope is for.", default=""),
})
ASSIGNMENT_FIELDS = FieldSet({
    "name": Field(FieldType.NAME, "Name of the assignment."),
    "entity_ids": Field(_CSS, "Entities the assignment admits.", default=[]),
    "group_ids": Field(_CSS, "Groups whose members (through nested groups too) the assignment admits.", default=[]),
})
CLIENT_FIELDS = FieldSet({
    "name": Field(FieldType.NAME, "Name of the client."),
    "redirect_uris": Field(_CSS, "Where the client may have codes sent (exact match; a loopback address matches "
                                 "any port).", default=[]),
    "assignments": Field(_CSS, f"Assignments of who may sign in to the client ('{ALLOW_ALL}': everyone).",
                         default=[]),
    "key": Field(_S, "The named key that signs the client's ID tokens (it cannot change).", default=DEFAULT_KEY),
    "id_token_ttl": Field(_D, "Lifetime of ID tokens (at most the key's verification_ttl).", default=_DAY),
    "access_token_ttl": Field(_D, "Lifetime of access tokens.", default=_DAY),
    "client_type": Field(_S, "confidential (with a client_secret) or public (PKCE, no secret); it cannot change.",
                         default="confidential"),
    "authorization_code": Field(FieldType.BOOL, "Whether the client may use the authorization code grant (users "
                                "sign in).", default=True),
    "client_credentials": Field(FieldType.BOOL, "Whether the client may use OpenBao's client credentials grant (the "
                                "client itself gets a signed access token); confidential clients only.", default=False),
})
PROVIDER_FIELDS = FieldSet({
    "name": Field(FieldType.NAME, "Name of the provider."),
    "issuer": Field(_S, "Issuer URL (scheme, host and optional port only); empty: the server's api_addr. "
                        "/v1/identity/oidc/provider/<name> is appended.", default=""),
    "allowed_client_ids": Field(_CSS, "Client IDs the provider serves ('*': every client; empty: none).",
                                default=[]),
    "scopes_supported": Field(_CSS, "Scopes clients may ask for, besides openid.", default=[]),
})
_LIST_PROVIDER_FIELDS = FieldSet({
    "allowed_client_id": Field(_S, "Only the providers that serve this client ID.", default=""),
})


def normalised(values: list[str]) -> list[str]:
    """A list as Vault keeps it: items trimmed, empty ones dropped, no duplicates, sorted."""
    return sorted({v.strip() for v in values if v.strip()})


#: What a template without identity directives is filled for when there is no entity.
_NO_ENTITY = IdentityView(id="", name="")


def check_grants(client: Mapping[str, Any]) -> None:
    """A public client may not use the client credentials grant (OpenBao allows it).

    :raises InvalidRequest: it asks to.
    """
    if client.get("client_credentials") and client.get("client_type") == "public":
        raise InvalidRequest("the client credentials grant needs a confidential client: a public client has no "
                             "secret, so anyone who knows its client_id could get its tokens")


def _random(n: int) -> str:
    return "".join(secrets.choice(_B62) for _ in range(n))


@dataclass(slots=True)
class Client:
    """A client as the flow reads it (its secret opened)."""

    name: str
    client_id: str
    client_type: str
    secret: str
    redirect_uris: list[str]
    assignments: list[str]
    key: str
    id_token_ttl: int
    access_token_ttl: int
    #: The grants the client may use (OpenBao's ``authorization_code``, ``client_credentials``).
    grants: frozenset[str] = frozenset({"authorization_code"})

    def authenticates(self, secret: str) -> bool:
        """A public client needs no secret; a confidential one its own, compared in constant time."""
        if self.client_type == "public":
            return True
        return hmac.compare_digest(self.secret.encode(), secret.encode())


def _secret_context(name: str) -> str:
    return f"{CLIENT_PREFIX}{name}#client_secret"


class ProviderObjects:
    """The stored scopes, assignments, clients and providers, as the paths and the flow read them."""

    def __init__(self, b: IdentityBackend) -> None:
        self.b = b
        #: client_id -> client: the flow finds clients by ID.
        self._by_id: Kept[dict[str, Client]] = Kept()
        #: Every provider by name.
        self._providers: Kept[dict[str, dict[str, Any]]] = Kept()

    def _storage(self) -> Any:
        return self.b.store.storage

    async def _get(self, key: str) -> dict[str, Any] | None:
        if not storable(key):  # a name no scope or assignment can have (a NUL) names none
            return None
        raw = await self._storage().get(key)
        return raw if isinstance(raw, dict) else None

    async def scope(self, name: str) -> dict[str, Any] | None:
        return await self._get(SCOPE_PREFIX + name)

    async def assignment(self, name: str) -> dict[str, Any] | None:
        if name == ALLOW_ALL:
            return dict(_ALLOW_ALL_VALUE)
        return await self._get(ASSIGNMENT_PREFIX + name)

    async def provider(self, name: str) -> dict[str, Any] | None:
        """The provider ``name`` (a copy), or None. The providers are kept in memory until a
        write under ``identity/oidc/`` here or on another node: the discovery document, the
        keys and the token endpoint need no token, so they read no storage to find one."""
        found = (await self._all_providers()).get(name)
        return None if found is None else {k: list(v) if isinstance(v, list) else v for k, v in found.items()}

    async def _all_providers(self) -> dict[str, dict[str, Any]]:
        async def load() -> dict[str, dict[str, Any]]:
            stored = await stored_objects(self._storage(), PROVIDER_PREFIX)
            stored.setdefault(DEFAULT_PROVIDER, _DEFAULT_PROVIDER_VALUE)
            return stored

        return await self._providers.get(self.b.store.oidc_generation, load)

    async def client_raw(self, name: str) -> dict[str, Any] | None:
        return await self._get(CLIENT_PREFIX + name)

    def _opened(self, name: str, raw: dict[str, Any]) -> Client:
        secret = raw.get("client_secret", "")
        if secret:
            secret = self.b.sealer().unseal(secret, _secret_context(name)).decode("utf-8")
        grants = frozenset(g for g in ("authorization_code", "client_credentials")
                           if raw.get(g, g == "authorization_code"))  # a client stored before either field
        return Client(name, raw["client_id"], raw["client_type"], secret, list(raw["redirect_uris"]),
                      list(raw["assignments"]), raw["key"], int(raw["id_token_ttl"]), int(raw["access_token_ttl"]),
                      grants)

    async def clients(self) -> dict[str, dict[str, Any]]:
        """Every stored client by name, as stored (the secret sealed)."""
        return await stored_objects(self._storage(), CLIENT_PREFIX)

    async def client_by_id(self, client_id: str) -> Client | None:
        """The client with ``client_id`` (its secret opened), or None. Every client is kept in
        memory, opened, until a write under ``identity/oidc/`` here or on another node: the
        token endpoint, which needs no token, reads no storage to find one."""

        async def load() -> dict[str, Client]:
            return {raw["client_id"]: self._opened(name, raw) for name, raw in (await self.clients()).items()
                    if "client_id" in raw}

        return (await self._by_id.get(self.b.store.oidc_generation, load)).get(client_id)

    async def provider_names(self) -> list[str]:
        return sorted(await self._all_providers())

    def issuer_of(self, provider: dict[str, Any], name: str) -> str:
        """A provider's effective issuer: its ``issuer`` or the server's ``api_addr``, then
        ``/v1/identity/oidc/provider/<name>``."""
        return (provider.get("issuer") or self.b.api_addr()) + "/v1/identity/oidc/provider/" + name

    async def admits(self, client: Client, entity: IdentityView) -> bool:
        """Whether the client's assignments admit ``entity`` (its groups through nesting).

        :raises InvalidRequest: an assignment the client names no longer exists.
        """
        if self.b.store.disabled(entity.id):
            return False
        if ALLOW_ALL in client.assignments:
            return True
        groups = {g.id for g in entity.groups}
        for name in client.assignments:
            assignment = await self.assignment(name)
            if assignment is None:
                raise InvalidRequest(f'client assignment "{name}" not found')
            if entity.id in assignment["entity_ids"] or groups & set(assignment["group_ids"]):
                return True
        return False

    async def claims(self, scopes: list[str], entity: IdentityView | None, now: int) -> dict[str, Any]:
        """The claims ``scopes`` give ``entity``: each scope's template filled, merged; a scope
        deleted since is skipped, and so is one that names the entity when there is none (the
        client credentials grant: OpenBao leaves such a scope out too).

        :raises InvalidRequest: two scopes set one claim (Vault's text).
        """
        out: dict[str, Any] = {}
        source: dict[str, str] = {}
        for name in scopes:
            scope = await self.scope(name)
            if scope is None:
                continue
            template = scope.get("template", "")
            try:
                if entity is None and any(d.startswith("identity.") for d, _ in split_templates(template)):
                    continue
                filled = fill(template, entity if entity is not None else _NO_ENTITY, now)
            except (InvalidRequest, TemplateError) as exc:  # checked when written: only a bug gets here
                log.error("oidc_scope_template_failed", scope=name, error=str(exc))
                continue
            for claim, value in filled.items():
                if claim in source:
                    raise InvalidRequest(f'found scopes with conflicting top-level claim: claim "{claim}" in '
                                         f'scopes "{source[claim]}", "{name}"')
                source[claim] = name
                out[claim] = value
        return out


def paths(b: IdentityBackend) -> list[PathSpec]:
    """The OIDC provider's object paths."""
    objects = b.provider_objects

    def storage() -> Any:
        return b.store.storage

    changed = b.oidc_keys.changed

    async def listed(prefix: str) -> Response:
        names = await storage().list(prefix)
        if not names:
            raise NotFound()
        return Response(data={"keys": names})

    # -- scopes ----------------------------------------------------------------------------
    async def scope_exists(req: Request, values: dict[str, Any]) -> bool:
        return await objects.scope(values["name"]) is not None

    async def write_scope(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        if name == "openid":
            raise InvalidRequest('the "openid" scope name is reserved')
        scope = await objects.scope(name) or SCOPE_FIELDS.public({})
        if "description" in values:
            scope["description"] = values["description"]
        if "template" in values:
            scope["template"] = check_template(values["template"])
        await storage().put(SCOPE_PREFIX + name, scope)
        changed()

    async def read_scope(req: Request, values: dict[str, Any]) -> Response | None:
        scope = await objects.scope(values["name"])
        return Response(data=SCOPE_FIELDS.public(scope)) if scope is not None else None

    async def delete_scope(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        refuse_if_used("scope", name, "providers", [p for p in await objects.provider_names() if name in (
            (await objects.provider(p)) or {}).get("scopes_supported", [])])
        await storage().delete(SCOPE_PREFIX + name)
        changed()

    # -- assignments -----------------------------------------------------------------------
    async def assignment_exists(req: Request, values: dict[str, Any]) -> bool:
        return await objects.assignment(values["name"]) is not None

    async def write_assignment(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        if name == ALLOW_ALL:
            raise InvalidRequest(f'modification of assignment "{ALLOW_ALL}" not allowed')
        assignment = await objects.assignment(name) or ASSIGNMENT_FIELDS.public({})
        for field_name in ("entity_ids", "group_ids"):
            if field_name in values:
                assignment[field_name] = values[field_name]
            assignment[field_name] = normalised([stored_id(i) for i in assignment[field_name]])
        await storage().put(ASSIGNMENT_PREFIX + name, assignment)
        changed()

    async def read_assignment(req: Request, values: dict[str, Any]) -> Response | None:
        assignment = await objects.assignment(values["name"])
        return Response(data=ASSIGNMENT_FIELDS.public(assignment)) if assignment is not None else None

    async def delete_assignment(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        if name == ALLOW_ALL:
            raise InvalidRequest(f'deletion of assignment "{ALLOW_ALL}" not allowed')
        refuse_if_used("assignment", name, "clients",
                       (n for n, c in (await objects.clients()).items() if name in c.get("assignments", [])))
        await storage().delete(ASSIGNMENT_PREFIX + name)
        changed()

    async def list_assignments(req: Request, values: dict[str, Any]) -> Response:
        names = await storage().list(ASSIGNMENT_PREFIX)
        return Response(data={"keys": sorted({*names, ALLOW_ALL})})

    # -- clients ---------------------------------------------------------------------------
    async def client_exists(req: Request, values: dict[str, Any]) -> bool:
        return await objects.client_raw(values["name"]) is not None

    async def write_client(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        old = await objects.client_raw(name)
        client = dict(old) if old is not None else CLIENT_FIELDS.public({})
        for field_name in ("redirect_uris", "assignments"):
            if field_name in values:
                client[field_name] = values[field_name]
            client[field_name] = normalised(client[field_name])
        for assignment in client["assignments"]:
            if await objects.assignment(assignment) is None:
                raise InvalidRequest(f'assignment "{assignment}" does not exist')
        if old is not None and "key" in values and values["key"] != old["key"]:
            raise InvalidRequest("key modification is not allowed")
        if old is None and "key" in values:
            client["key"] = values["key"]
        if client["key"] == DEFAULT_KEY:
            await b.oidc_keys.ensure_default()
        key = await b.oidc_keys.load(client["key"])
        if key is None:
            raise InvalidRequest(f'key "{client["key"]}" does not exist')
        for field_name in ("id_token_ttl", "access_token_ttl"):
            if field_name in values:
                client[field_name] = values[field_name]
        if client["id_token_ttl"] > key.verification_ttl:
            raise InvalidRequest("a client's id_token_ttl cannot be greater than the verification_ttl of the key it "
                                 "references")
        for grant in ("authorization_code", "client_credentials"):
            if grant in values:
                client[grant] = values[grant]
        if "client_type" in values:
            if old is not None and values["client_type"] != old["client_type"]:
                raise InvalidRequest("client_type modification is not allowed")
            if values["client_type"] not in ("confidential", "public"):
                raise InvalidRequest(f'invalid client_type "{values["client_type"]}"')
            client["client_type"] = values["client_type"]
        check_grants(client)
        if old is None:
            client["client_id"] = _random(_CLIENT_ID_LEN)
            if client["client_type"] == "confidential":
                secret = SECRET_PREFIX + _random(_SECRET_LEN)
                client["client_secret"] = b.sealer().seal(secret.encode("utf-8"), _secret_context(name))
        await storage().put(CLIENT_PREFIX + name, client)
        changed()

    def client_data(name: str, raw: dict[str, Any], *, secret: bool) -> dict[str, Any]:
        data = CLIENT_FIELDS.public(raw)
        data["client_id"] = raw["client_id"]
        if secret and raw.get("client_secret"):
            data["client_secret"] = b.sealer().unseal(raw["client_secret"], _secret_context(name)).decode("utf-8")
        return data

    async def read_client(req: Request, values: dict[str, Any]) -> Response | None:
        raw = await objects.client_raw(values["name"])
        return Response(data=client_data(values["name"], raw, secret=True)) if raw is not None else None

    async def delete_client(req: Request, values: dict[str, Any]) -> None:
        await storage().delete(CLIENT_PREFIX + values["name"])
        changed()

    async def list_clients(req: Request, values: dict[str, Any]) -> Response:
        clients = await stored_objects(storage(), CLIENT_PREFIX)
        if not clients:
            raise NotFound()
        return Response(data={"keys": list(clients),
                              "key_info": {n: client_data(n, c, secret=False) for n, c in clients.items()}})

    # -- providers -------------------------------------------------------------------------
    async def provider_exists(req: Request, values: dict[str, Any]) -> bool:
        return await objects.provider(values["name"]) is not None

    async def write_provider(req: Request, values: dict[str, Any]) -> Response | None:
        name = values["name"]
        provider = await objects.provider(name) or PROVIDER_FIELDS.public({})
        for field_name in ("issuer", "allowed_client_ids", "scopes_supported"):
            if field_name in values:
                provider[field_name] = values[field_name]
        for field_name in ("allowed_client_ids", "scopes_supported"):
            provider[field_name] = normalised(provider[field_name])
        resp = Response()
        if provider["issuer"]:
            if not is_origin(provider["issuer"]):
                raise InvalidRequest("invalid issuer, which must include only a scheme, host, and optional port "
                                     "(e.g. https://example.com:8200)")
            resp.add_warning('If "issuer" is set explicitly, all tokens must be validated against that address. '
                             'Setting issuer to "" will restore the default behavior of using the server\'s '
                             "api_addr as the issuer.")
        seen: dict[str, str] = {}
        for scope_name in provider["scopes_supported"]:
            scope = await objects.scope(scope_name)
            if scope is None:
                raise InvalidRequest(f'scope "{scope_name}" does not exist')
            for claim in fill(scope.get("template", ""), _NOBODY, 0):
                if claim in seen:
                    resp.add_warning(f'Found scope templates with conflicting top-level keys: conflict "{claim}" in '
                                     f'scopes "{scope_name}", "{seen[claim]}". This may result in an error if the '
                                     "scopes are requested in an OIDC Authentication Request.")
                else:
                    seen[claim] = scope_name
        await storage().put(PROVIDER_PREFIX + name, provider)
        changed()
        return resp if resp.warnings else None

    def provider_data(name: str, provider: dict[str, Any]) -> dict[str, Any]:
        return {"issuer": objects.issuer_of(provider, name), "allowed_client_ids": provider["allowed_client_ids"],
                "scopes_supported": provider["scopes_supported"]}

    async def read_provider(req: Request, values: dict[str, Any]) -> Response | None:
        provider = await objects.provider(values["name"])
        return Response(data=provider_data(values["name"], provider)) if provider is not None else None

    async def delete_provider(req: Request, values: dict[str, Any]) -> None:
        if values["name"] == DEFAULT_PROVIDER:
            raise InvalidRequest(f'deletion of OIDC provider "{DEFAULT_PROVIDER}" not allowed')
        await storage().delete(PROVIDER_PREFIX + values["name"])
        changed()

    async def list_providers(req: Request, values: dict[str, Any]) -> Response:
        wanted = values.get("allowed_client_id", "")
        info = {}
        for name in await objects.provider_names():
            provider = await objects.provider(name)
            if provider is None:
                continue
            if wanted and not allows_client(provider["allowed_client_ids"], wanted):
                continue
            info[name] = provider_data(name, provider)
        if not info:
            raise NotFound()
        return Response(data={"keys": list(info), "key_info": info})

    def crud(kind: str, fields: FieldSet, summary: str, exists: Any, write: Any, read: Any, delete: Any,
             listing: Any, list_fields: FieldSet | None = None) -> list[PathSpec]:
        return [
            PathSpec(f"oidc/{kind}/?", list_fields or FieldSet({}), {Operation.LIST: listing}, f"List the {kind}s."),
            PathSpec(f"oidc/{kind}/(?P<name>{NAME_RE})", fields,
                     {Operation.READ: read, Operation.CREATE: write, Operation.UPDATE: write, Operation.DELETE: delete},
                     summary, existence_check=exists),
        ]

    async def list_scopes(req: Request, values: dict[str, Any]) -> Response:
        return await listed(SCOPE_PREFIX)

    return [
        *crud("scope", SCOPE_FIELDS, "Create, read, update or delete an OIDC provider scope.", scope_exists,
              write_scope, read_scope, delete_scope, list_scopes),
        *crud("assignment", ASSIGNMENT_FIELDS, "Create, read, update or delete an OIDC provider assignment.",
              assignment_exists, write_assignment, read_assignment, delete_assignment, list_assignments),
        *crud("client", CLIENT_FIELDS, "Create, read, update or delete an OIDC provider client.", client_exists,
              write_client, read_client, delete_client, list_clients),
        *crud("provider", PROVIDER_FIELDS, "Create, read, update or delete an OIDC provider.", provider_exists,
              write_provider, read_provider, delete_provider, list_providers, _LIST_PROVIDER_FIELDS),
    ]


def stored_id(value: str) -> str:
    """An entity or group ID as Vault keeps it in an assignment: lower case before the first
    ``.`` (a namespace suffix after it is kept as written)."""
    head, dot, tail = value.partition(".")
    return head.lower() + dot + tail
