"""Identity tokens: ``identity/oidc/*``, Vault's identity token paths (``vault read
identity/oidc/token/<role>``; hvac ``secrets.identity.*oidc*``; the Terraform provider's
``vault_identity_oidc_key``, ``_role``). A token holder with an entity (any login's token) gets
a JWT signed by the server, which services verify offline against the public key set at
``identity/oidc/.well-known/keys`` (needs no token), instead of calling back with the token.

- ``oidc/config``: the ``issuer`` (scheme, host and port only), else the server's ``api_addr``;
  either way followed by ``/v1/identity/oidc``.
- ``oidc/key/<name>`` (LIST ``oidc/key``), ``oidc/key/<name>/rotate``: named signing keys
  (``server.identity.oidc_keys``).
- ``oidc/role/<name>`` (LIST ``oidc/role``): ``key``, ``template`` (``server.identity.token_template``),
  ``ttl``, ``client_id`` (the tokens' ``aud``; made up when not given).
- ``oidc/token/<role>``: a token for the calling token's entity.
- ``oidc/.well-known/openid-configuration``, ``oidc/.well-known/keys``: need no token.
- ``oidc/introspect``: is a token ours, in time, for this client, and its entity enabled.

Vault's OIDC *provider* (``identity/oidc/provider``, clients, assignments, scopes, the
authorization code flow) is ``server.identity.provider`` and ``provider_flow``; it signs with
the named keys kept here (``IdentityKeys``).

Stored under ``identity/oidc/``: ``config``, ``key/<name>``, ``role/<name>``. The public key
set is kept in memory until a write here or on another node (``IdentityStore.oidc_generation``)
or the next scheduled change of the keys.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson
import structlog

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Operation, PathSpec, Request, Response
from plugin.jose_verify import keys_from_jwks, parse_token, verify_signature
from plugin.schema import Field, FieldSet, FieldType
from plugin.storage import storable
from server.identity.oidc_keys import ALGORITHMS, KEY_PREFIX, NamedKey, Signers, generate, sign_jwt
from server.identity.store import OIDC_PREFIX
from server.identity.token_template import check_template, fill
from server.settings import is_origin
from server.sys.core import raw_json

if TYPE_CHECKING:
    from server.identity.backend import IdentityBackend

log = structlog.get_logger("authmount.identity")
_T = TypeVar("_T")

__all__ = ["CLIENT_PREFIX", "CONFIG_KEY", "DEFAULT_KEY", "IdentityKeys", "KEY_FIELDS", "KeySet", "Kept", "NAME_RE", "ROLE_FIELDS", "ROLE_PREFIX", "changed_key",
           "changed_role", "issuer_of", "paths", "refuse_if_used", "stored_objects"]

CONFIG_KEY = OIDC_PREFIX + "config"
ROLE_PREFIX = OIDC_PREFIX + "role/"
#: The OIDC provider's clients (``server.identity.provider``): a key they use cannot go.
CLIENT_PREFIX = OIDC_PREFIX + "client/"
DEFAULT_KEY = "default"
#: Vault's ``framework.GenericNameRegex``.
NAME_RE = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_DAY = 86400
#: Vault's go-jose leeway on ``exp``, ``nbf`` and ``iat`` at introspection.
_LEEWAY = 60
_CLIENT_ID_CHARS = string.ascii_letters + string.digits

_S, _D, _CSS = FieldType.STRING, FieldType.DURATION, FieldType.COMMA_STRING_SLICE
_KEY_NAME = {"name": Field(FieldType.NAME, "Name of the key.")}
KEY_FIELDS = FieldSet({
    **_KEY_NAME,
    "rotation_period": Field(_D, "How often to make a new key pair (at least one minute).", default=_DAY),
    "verification_ttl": Field(_D, "How long a rotated key's public half stays in the key set, to verify the "
                                  "tokens it signed (at most 10x rotation_period).", default=_DAY),
    "algorithm": Field(_S, f"Signing algorithm: {', '.join(ALGORITHMS)}.", default="RS256"),
    "allowed_client_ids": Field(_CSS, "Client IDs of the roles that may sign with this key ('*': every role; "
                                      "empty: none).", default=[]),
})
ROTATE_FIELDS = FieldSet({
    **_KEY_NAME,
    "verification_ttl": Field(_D, "How long the rotated key's public half stays in the key set (default: the "
                                  "key's verification_ttl)."),
})
ROLE_FIELDS = FieldSet({
    "name": Field(FieldType.NAME, "Name of the role."),
    "key": Field(_S, "The named key that signs the role's tokens (it must exist; 'default' is made on first use).",
                 default="", required=True),
    "template": Field(_S, "Claims added to the tokens: a JSON object (or its base64) with {{identity.entity...}} "
                          "directives.", default=""),
    "ttl": Field(_D, "Lifetime of the tokens (at most the key's verification_ttl).", default=_DAY),
    "client_id": Field(_S, "The tokens' audience (aud); made up when not given.", default=""),
})
_TOKEN_FIELDS = FieldSet({"name": Field(FieldType.NAME, "Name of the role.")})
_CONFIG_FIELDS = FieldSet({
    "issuer": Field(_S, "Issuer URL of the tokens (scheme, host and optional port only); empty: the server's "
                        "api_addr. /v1/identity/oidc is appended."),
})
_INTROSPECT_FIELDS = FieldSet({
    "token": Field(_S, "The identity token to check."),
    "client_id": Field(_S, "When given, the token's audience must include it."),
})


async def stored_objects(storage: Any, prefix: str) -> dict[str, dict[str, Any]]:
    """Every object stored one level below ``prefix``, by name."""
    out = {}
    for name in await storage.list(prefix):
        raw = await storage.get(prefix + name)
        if isinstance(raw, dict):
            out[name] = raw
    return out


def refuse_if_used(kind: str, name: str, users_kind: str, users: Iterable[str]) -> None:
    """Refuse the delete of ``name`` (a ``kind``) while ``users`` (``users_kind``) name it.

    :raises InvalidRequest: Vault's text, the users sorted.
    """
    named = sorted(users)
    if named:
        raise InvalidRequest(f'unable to delete {kind} "{name}" because it is currently referenced by these '
                             f"{users_kind}: {', '.join(named)}")


def issuer_of(configured: str, api_addr: str) -> str:
    """The tokens' ``iss``: the configured issuer, else ``api_addr``, then ``/v1/identity/oidc``."""
    return (configured or api_addr) + "/v1/identity/oidc"


def changed_key(old: NamedKey | None, values: dict[str, Any]) -> NamedKey:
    """The key a write of ``values`` makes of ``old`` (None: a new key, the defaults filled
    in), its own checks passed (the roles that use it are the caller's to check).

    :raises InvalidRequest: Vault's texts.
    """
    key = NamedKey.from_storage(old.to_storage()) if old is not None else NamedKey()
    for field_name, default in KEY_FIELDS.public({}).items():
        if field_name in values:
            setattr(key, field_name, values[field_name])
        elif old is None:
            setattr(key, field_name, default)
    if key.rotation_period < 60:
        raise InvalidRequest("rotation_period must be at least one minute")
    if key.verification_ttl > 10 * key.rotation_period:
        raise InvalidRequest("verification_ttl cannot be longer than 10x rotation_period")
    if key.algorithm not in ALGORITHMS:
        raise InvalidRequest(f'unknown signing algorithm "{key.algorithm}"')
    return key


def changed_role(old: dict[str, Any] | None, values: dict[str, Any]) -> dict[str, Any]:
    """The role a write of ``values`` makes of ``old`` (None: a new role): ``key`` required,
    the template checked (its key's existence and TTL are the caller's to check; a
    ``client_id`` not given stays as it was, empty for a new role).

    :raises InvalidRequest: Vault's texts (the template's: ``token_template``).
    """
    role = dict(old) if old is not None else ROLE_FIELDS.public({})
    for name in ("key", "ttl"):
        if name in values:
            role[name] = values[name]
    if not role["key"]:
        raise InvalidRequest("the key parameter is required")
    if "template" in values:
        role["template"] = check_template(values["template"])
    if values.get("client_id"):
        role["client_id"] = values["client_id"]
    return role


@dataclass(slots=True)
class KeySet:
    body: bytes
    generation: int
    valid_until: float

    def serves(self, generation: int, now: float) -> bool:
        """Still the key set: no write since (``generation``) and no scheduled change yet."""
        return self.generation == generation and now < self.valid_until


class Kept(Generic[_T]):
    """A value read from storage under ``identity/oidc/``, kept until the identity store's
    ``oidc_generation`` moves (a write there, here or on another node)."""

    def __init__(self) -> None:
        self._kept: tuple[int, _T] | None = None

    async def get(self, generation: int, load: Callable[[], Awaitable[_T]]) -> _T:
        """The value kept at ``generation`` (read before ``load`` may wait), else ``load()``'s."""
        if self._kept is None or self._kept[0] != generation:
            self._kept = (generation, await load())
        return self._kept[1]


class IdentityKeys:
    """Per server: the named keys as identity tokens and the OIDC provider use them, the private
    keys opened so far, the public key set last built, and the issuer last read."""

    def __init__(self, b: IdentityBackend) -> None:
        self.b = b
        self.signers = Signers()
        #: The public key sets last built, by slot (``key_set``).
        self.key_sets: dict[str, KeySet] = {}
        #: The stored issuer: the discovery document needs no token, so what it reads is kept,
        #: not read from storage per request.
        self.issuer: Kept[str] = Kept()
        self.lock = asyncio.Lock()

    def changed(self) -> None:
        """A write under ``identity/oidc/``: what is kept from there is read again."""
        self.b.store.oidc_generation += 1

    async def configured_issuer(self) -> str:
        """The stored ``issuer``, read again after a write here or on another node."""

        async def load() -> str:
            raw = await self.b.store.storage.get(CONFIG_KEY)
            return str(raw.get("issuer", "")) if isinstance(raw, dict) else ""

        return await self.issuer.get(self.b.store.oidc_generation, load)

    async def load(self, name: str) -> NamedKey | None:
        if not storable(name):  # a name no key can have (a NUL) names none
            return None
        raw = await self.b.store.storage.get(KEY_PREFIX + name)
        return NamedKey.from_storage(raw) if isinstance(raw, dict) else None

    async def fresh(self, name: str, now: float) -> NamedKey | None:
        """The key ``name``, rotated first when it is due (one node rotates; see oidc_keys)."""
        key = await self.load(name)
        if key is None or not key.due(now):
            return key
        upcoming = await asyncio.to_thread(generate, key.algorithm)
        sealer = self.b.sealer()

        def rotate(old: Any) -> Any:
            if not isinstance(old, dict):
                return old
            current = NamedKey.from_storage(old)
            if not current.due(now) or current.algorithm != key.algorithm:  # changed meanwhile
                return old
            current.rotate(upcoming, sealer, name, now, None)
            return current.to_storage()

        raw = await self.b.store.storage.update(KEY_PREFIX + name, rotate)
        self.changed()
        if not isinstance(raw, dict):
            return None
        rotated = NamedKey.from_storage(raw)
        if rotated.next.get("kid") == upcoming.kid:  # this node's rotation, not another's
            log.info("identity_key_rotated", key=name, signing_kid=rotated.signing["kid"], reason="due")
        return rotated

    async def ensure_default(self) -> None:
        """Make the ``default`` key (RS256, every client ID allowed) unless it exists."""
        if await self.load(DEFAULT_KEY) is not None:
            return
        now = time.time()
        current, upcoming = await asyncio.to_thread(lambda: (generate("RS256"), generate("RS256")))
        sealer = self.b.sealer()

        def create(old: Any) -> Any:
            if old is not None:
                return old
            key = NamedKey(allowed_client_ids=["*"], next_rotation=now + _DAY)
            key.install(current, upcoming, sealer, DEFAULT_KEY, now)
            return key.to_storage()

        await self.b.store.storage.update(KEY_PREFIX + DEFAULT_KEY, create)
        self.changed()

    async def key_set(self, slot: str, names: Callable[[], Awaitable[list[str]]], now: float) -> KeySet:
        """The public key set of the keys ``names()`` gives, as JSON, kept in ``slot`` (``""``:
        the identity tokens' roles; a provider's name: its clients) until a write under
        ``identity/oidc/`` or the keys' next scheduled change."""
        cached = self.key_sets.get(slot)
        if cached is not None and cached.serves(self.b.store.oidc_generation, now):
            return cached
        async with self.lock:  # one rebuild at a time, whoever asks
            cached = self.key_sets.get(slot)
            if cached is not None and cached.serves(self.b.store.oidc_generation, now):
                return cached
            generation = self.b.store.oidc_generation
            published: list[dict[str, Any]] = []
            valid_until = now + 3600
            for name in dict.fromkeys(await names()):
                key = await self.fresh(name, now)
                if key is None:
                    continue
                published += key.public_keys(now)
                times = [key.next_rotation] + [k["expire_at"] for k in key.ring if k["expire_at"]]
                valid_until = min(valid_until, *times)
            # A rotation made by this build moved the generation on: the next request builds once more.
            built = self.key_sets[slot] = KeySet(orjson.dumps({"keys": published}), generation,
                                                  max(valid_until, now + 1))
            return built

    def sign(self, name: str, key: NamedKey, claims: dict[str, Any]) -> str:
        """``claims`` signed with the current signing key of ``key`` (stored as ``name``)."""
        kid, private = self.signers.open(name, key.signing, self.b.sealer())
        return sign_jwt(private, key.algorithm, kid, claims)


def paths(b: IdentityBackend) -> list[PathSpec]:
    """The identity token paths."""
    keys = b.oidc_keys
    load_key, fresh_key, changed = keys.load, keys.fresh, keys.changed
    configured_issuer, ensure_default_key = keys.configured_issuer, keys.ensure_default

    def storage() -> Any:
        return b.store.storage

    async def issuer() -> str:
        return issuer_of(await configured_issuer(), b.api_addr())

    async def load_role(name: str) -> dict[str, Any] | None:
        raw = await storage().get(ROLE_PREFIX + name)
        return raw if isinstance(raw, dict) else None

    async def roles() -> dict[str, dict[str, Any]]:
        return await stored_objects(storage(), ROLE_PREFIX)

    # -- config ----------------------------------------------------------------------------
    async def read_config(req: Request, values: dict[str, Any]) -> Response:
        configured = await configured_issuer()
        resp = Response(data={"issuer": configured})
        if not configured and not b.api_addr():
            resp.add_warning('Both "issuer" and the server\'s "api_addr" are empty. The issuer claim in generated '
                             "tokens will not be network reachable.")
        return resp

    async def write_config(req: Request, values: dict[str, Any]) -> Response | None:
        if "issuer" not in values:
            return None
        configured = values["issuer"]
        resp = None
        if configured:
            if not is_origin(configured):  # Vault's rule: http or https, a host, an optional port
                raise InvalidRequest("invalid issuer, which must include only a scheme, host, and optional port "
                                     "(e.g. https://example.com:8200)")
            resp = Response(warnings=['If "issuer" is set explicitly, all tokens must be validated against that '
                                      'address. Setting issuer to "" will restore the default behavior of using '
                                      "the server's api_addr as the issuer."])
        await storage().put(CONFIG_KEY, {"issuer": configured})
        changed()
        return resp

    # -- keys ------------------------------------------------------------------------------
    async def key_exists(req: Request, values: dict[str, Any]) -> bool:
        return await load_key(values["name"]) is not None

    async def write_key(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        old = await load_key(name)
        key = changed_key(old, values)
        if old is not None:
            for role in (await roles()).values():
                if role.get("key") == name and int(role.get("ttl", 0)) > key.verification_ttl:
                    raise InvalidRequest(f'unable to update key "{name}" because it is currently referenced by one '
                                         f"or more roles with a token ttl greater than {key.verification_ttl} seconds")
            for client in (await stored_objects(storage(), CLIENT_PREFIX)).values():
                if client.get("key") == name and int(client.get("id_token_ttl", 0)) > key.verification_ttl:
                    raise InvalidRequest(f'unable to update key "{name}" because it is currently referenced by one '
                                         f"or more clients with an id_token_ttl greater than {key.verification_ttl} "
                                         "seconds")
        now = time.time()
        if not key.next_rotation or now + key.rotation_period < key.next_rotation:
            key.next_rotation = now + key.rotation_period
        fresh = None
        if old is None or old.algorithm != key.algorithm:
            fresh = await asyncio.to_thread(lambda: (generate(key.algorithm), generate(key.algorithm)))
        sealer = b.sealer()

        def store(stored: Any) -> Any:
            if isinstance(stored, dict) and (old is None or stored.get("signing") != old.signing):
                raise InvalidRequest(f'key "{name}" was changed by another request meanwhile; try again')
            if stored is None and old is not None:
                raise InvalidRequest(f'key "{name}" was deleted by another request meanwhile')
            if fresh is not None:
                key.install(fresh[0], fresh[1], sealer, name, now)
            return key.to_storage()

        await storage().update(KEY_PREFIX + name, store)
        changed()

    async def read_key(req: Request, values: dict[str, Any]) -> Response | None:
        key = await load_key(values["name"])
        if key is None:
            return None
        return Response(data=KEY_FIELDS.public(key.to_storage()))

    async def delete_key(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        if name == DEFAULT_KEY:
            raise InvalidRequest(f'deletion of key "{DEFAULT_KEY}" not allowed')
        refuse_if_used("key", name, "roles", (n for n, role in (await roles()).items() if role.get("key") == name))
        refuse_if_used("key", name, "clients", (n for n, c in (await stored_objects(storage(), CLIENT_PREFIX)).items()
                                                if c.get("key") == name))
        await storage().delete(KEY_PREFIX + name)
        changed()

    async def list_keys(req: Request, values: dict[str, Any]) -> Response:
        names = await storage().list(KEY_PREFIX)
        if not names:
            raise NotFound()
        return Response(data={"keys": names})

    async def rotate_key(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        key = await load_key(name)
        if key is None:
            raise InvalidRequest(f'no named key found at "{name}"')
        upcoming = await asyncio.to_thread(generate, key.algorithm)
        sealer = b.sealer()
        now = time.time()

        def rotate(old: Any) -> Any:
            if not isinstance(old, dict):
                raise InvalidRequest(f'no named key found at "{name}"')
            current = NamedKey.from_storage(old)
            if current.algorithm != key.algorithm:
                raise InvalidRequest(f'key "{name}" was changed by another request meanwhile; try again')
            current.rotate(upcoming, sealer, name, now, values.get("verification_ttl"))
            return current.to_storage()

        raw = await storage().update(KEY_PREFIX + name, rotate)
        changed()
        log.info("identity_key_rotated", key=name, signing_kid=raw["signing"]["kid"], reason="requested")

    # -- roles -----------------------------------------------------------------------------
    async def role_exists(req: Request, values: dict[str, Any]) -> bool:
        return await load_role(values["name"]) is not None

    async def write_role(req: Request, values: dict[str, Any]) -> None:
        name = values["name"]
        role = changed_role(await load_role(name), values)
        if role["key"] == DEFAULT_KEY:
            await ensure_default_key()
        key = await load_key(role["key"])
        if key is None:
            raise InvalidRequest(f'cannot find key "{role["key"]}"')
        if role["ttl"] > key.verification_ttl:
            raise InvalidRequest("a role's token ttl cannot be longer than the verification_ttl of the key it "
                                 "references")
        if not role["client_id"]:
            role["client_id"] = "".join(secrets.choice(_CLIENT_ID_CHARS) for _ in range(26))
        await storage().put(ROLE_PREFIX + name, role)
        changed()

    async def read_role(req: Request, values: dict[str, Any]) -> Response | None:
        role = await load_role(values["name"])
        if role is None:
            return None
        return Response(data=ROLE_FIELDS.public(role))

    async def delete_role(req: Request, values: dict[str, Any]) -> None:
        await storage().delete(ROLE_PREFIX + values["name"])
        changed()

    async def list_roles(req: Request, values: dict[str, Any]) -> Response:
        names = await storage().list(ROLE_PREFIX)
        if not names:
            raise NotFound()
        return Response(data={"keys": names})

    # -- tokens ----------------------------------------------------------------------------
    async def token(req: Request, values: dict[str, Any]) -> Response:
        name = values["name"]
        role = await load_role(name)
        if role is None:
            raise InvalidRequest(f'role "{name}" not found')
        now = time.time()
        key = await fresh_key(role["key"], now)
        if key is None:
            raise InvalidRequest(f'key "{role["key"]}" not found')
        if not key.allows(role["client_id"]):
            raise InvalidRequest(f'the key "{role["key"]}" does not list the client ID of the role "{name}" as an '
                                 "allowed client ID")
        entry = (req.token or {}).get("entry")
        entity_id = getattr(entry, "entity_id", "") or ""
        view = await b.store.template_view(entity_id) if entity_id else None
        if view is None:
            raise InvalidRequest("no entity associated with the request's token")
        resp = Response()
        ttl = int(role["ttl"])
        if ttl > key.verification_ttl:
            ttl = key.verification_ttl
            resp.add_warning("a role's token ttl cannot be longer than the verification_ttl of the key it "
                             f"references, setting token ttl to {ttl}")
        issued = int(now)
        claims: dict[str, Any] = {"iss": await issuer(), "namespace": "root", "sub": view.id,
                                  "aud": role["client_id"], "exp": issued + ttl, "iat": issued}
        claims.update(fill(role["template"], view, issued))
        resp.data = {"token": keys.sign(role["key"], key, claims), "client_id": role["client_id"],
                     "ttl": int(role["ttl"])}
        return resp

    async def role_key_names() -> list[str]:
        return [str(role.get("key", "")) for role in (await roles()).values()]

    async def key_set(now: float) -> KeySet:
        return await keys.key_set("", role_key_names, now)

    async def well_known_keys(req: Request, values: dict[str, Any]) -> Response:
        now = time.time()
        built = await key_set(now)
        resp = Response(raw_body=built.body, content_type="application/json")
        if built.body != b'{"keys":[]}':
            resp.headers["Cache-Control"] = f"max-age={max(0, int(built.valid_until - now))}"
        return resp

    async def discovery(req: Request, values: dict[str, Any]) -> Response:
        base = await issuer()
        resp = raw_json({"issuer": base, "jwks_uri": base + "/.well-known/keys",
                         "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                         "id_token_signing_alg_values_supported": list(ALGORITHMS)})
        resp.headers["Cache-Control"] = "max-age=3600"
        return resp

    async def introspect(req: Request, values: dict[str, Any]) -> Response:
        def answer(error: str = "") -> Response:
            return raw_json({"active": False, "error": error} if error else {"active": True})

        try:
            parsed = parse_token(values.get("token", ""))
        except InvalidRequest as exc:
            return answer("error parsing token: " + str(exc).removeprefix("error validating token: "))
        now = time.time()
        verifying = keys_from_jwks(orjson.loads((await key_set(now)).body))
        if not verify_signature(parsed, [k for k in verifying if k.kid == parsed.kid] or verifying):
            return answer("unable to validate the token signature")
        claims = parsed.claims
        problem = _claims_problem(claims, await issuer(), values.get("client_id", ""), now)
        if problem:
            return answer("error validating claims: " + problem)
        sub = claims.get("sub")
        view = await b.store.template_view(sub) if isinstance(sub, str) and sub else None
        if view is None:
            return answer("entity was not found")
        if b.store.disabled(view.id):
            return answer("entity is disabled")
        return answer()

    return [
        PathSpec("oidc/config/?", _CONFIG_FIELDS, {Operation.READ: read_config, Operation.UPDATE: write_config},
                 "Read or set the issuer of identity tokens."),
        PathSpec("oidc/key/?", FieldSet({}), {Operation.LIST: list_keys}, "List the named keys."),
        PathSpec(f"oidc/key/(?P<name>{NAME_RE})/rotate/?", ROTATE_FIELDS, {Operation.UPDATE: rotate_key},
                 "Rotate a named key now."),
        PathSpec(f"oidc/key/(?P<name>{NAME_RE})", KEY_FIELDS,
                 {Operation.READ: read_key, Operation.CREATE: write_key, Operation.UPDATE: write_key,
                  Operation.DELETE: delete_key}, "Create, read, update or delete a named signing key.",
                 existence_check=key_exists),
        PathSpec("oidc/role/?", FieldSet({}), {Operation.LIST: list_roles}, "List the identity token roles."),
        PathSpec(f"oidc/role/(?P<name>{NAME_RE})", ROLE_FIELDS,
                 {Operation.READ: read_role, Operation.CREATE: write_role, Operation.UPDATE: write_role,
                  Operation.DELETE: delete_role}, "Create, read, update or delete an identity token role.",
                 existence_check=role_exists),
        PathSpec(f"oidc/token/(?P<name>{NAME_RE})", _TOKEN_FIELDS, {Operation.READ: token},
                 "An identity token for the calling token's entity, signed with the role's key."),
        PathSpec(r"oidc/\.well-known/openid-configuration/?", FieldSet({}), {Operation.READ: discovery},
                 "The discovery document of identity tokens (needs no token).", unauthenticated=True),
        PathSpec(r"oidc/\.well-known/keys/?", FieldSet({}), {Operation.READ: well_known_keys},
                 "The public keys that verify identity tokens (needs no token).", unauthenticated=True),
        PathSpec("oidc/introspect/?", _INTROSPECT_FIELDS, {Operation.UPDATE: introspect},
                 "Check an identity token: signature, issuer, time, audience, entity."),
    ]


def _claims_problem(claims: dict[str, Any], issuer: str, client_id: str, now: float) -> str:
    """What is wrong with an identity token's claims (``""``: nothing), checked as Vault's
    go-jose does: issuer, audience when asked for, then times with a minute of leeway."""
    if claims.get("iss") != issuer:
        return "invalid issuer claim (iss)"
    if client_id:
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if client_id not in audiences:
            return "invalid audience claim (aud)"
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"invalid {name} claim: not a number"
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if nbf is not None and now + _LEEWAY < nbf:
        return "token not valid yet (nbf)"
    if exp is not None and now - _LEEWAY > exp:
        return "token is expired (exp)"
    if iat is not None and now + _LEEWAY < iat:
        return "token issued in the future (iat)"
    return ""
