"""``sys/leases/*`` over the only leases authmount has, tokens' own: revoke every token
issued under a path, the way Vault operators do after an incident (``vault lease revoke
-prefix auth/gitlab/login``, ``vault token revoke -mode=path auth/gitlab``), and list, look up
and revoke single token leases (``vault list sys/leases/lookup/auth/jwt/login``,
``vault lease lookup``, ``vault lease revoke <lease id>``). ``sys/leases/renew`` refuses a
token's lease as Vault does (tokens are renewed through ``auth/token/renew*``).

A token's lease id is its creation path and its row id (``TokenStore.lease_ids``), as Vault
names it by path and a hash of the token; the token itself is never in it.

The only leases authmount has are tokens' own, so a prefix names token creation paths
(``auth/jwt/login``, ``auth/token/create``, ``auth/token/create/<role>``) and is matched by
whole segments, as Vault matches lease ids: ``auth/jwt`` covers ``auth/jwt/login``, never
``auth/jwt2/login``. Each token revoked takes its children with it (whatever path made them);
batch tokens have no lease and are left, as in Vault (disable the mount to kill them). The
prefix paths and the listing need ``sudo``, as in Vault. ``sync: false`` answers ``202`` at
once and revokes in the background.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType, parse_duration
from server.sys.core import SysPath
from server.tokens.backend import start_tidy
from server.tokens.ttl import remaining_ttl, rfc3339

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths"]

log = structlog.get_logger("authmount.leases")

_PREFIX = Field(FieldType.NAME, "The creation path whose tokens are revoked (whole segments: "
                "auth/jwt covers auth/jwt/login).", required=True)


def _accepted() -> Response:
    """Vault's 202 of a revocation left to the background: no body."""
    return Response(status=202, raw_body=b"", content_type="application/json")


def _increment(raw: Any) -> int:
    """``increment`` as hvac's ``sys.renew_lease`` sends it: ``null`` when the caller gave none
    (a JSON null is refused elsewhere: vault-differences row 46; here it is only "not given")."""
    return 0 if raw is None else parse_duration(raw)


def _lease_id(values: dict[str, Any]) -> str:
    """The lease id of a request, in its body or its path.

    :raises InvalidRequest: ``lease_id must be specified`` (Vault's text).
    """
    lease_id = values.get("lease_id") or values.get("url_lease_id") or ""
    if not lease_id:
        raise InvalidRequest("lease_id must be specified")
    return str(lease_id)


def paths(b: SysBackend) -> list[SysPath]:
    core = b.core

    async def revoke_prefix(req: Request, values: dict[str, Any]) -> Response | None:
        prefix = values["prefix"]
        if not values.get("sync", True):
            core.tokens.revoke_prefix_later(prefix)
            return _accepted()
        count = await core.tokens.revoke_prefix(prefix)
        log.info("tokens_revoked_by_prefix", prefix=prefix, revoked=count)
        return None

    async def revoke_force(req: Request, values: dict[str, Any]) -> None:
        # Vault's force skips a secrets engine's failing revocation; a token's has none to skip.
        count = await core.tokens.revoke_prefix(values["prefix"])
        log.info("tokens_revoked_by_prefix", prefix=values["prefix"], revoked=count, force=True)

    async def list_leases(req: Request, values: dict[str, Any]) -> Response:
        keys = await core.tokens.lease_ids(values.get("prefix", ""))
        if not keys:
            raise NotFound()  # an empty listing is a 404, as every LIST
        return Response(data={"keys": keys})

    async def lookup(req: Request, values: dict[str, Any]) -> Response:
        lease_id = _lease_id(values)
        entry = await core.tokens.lease_entry(lease_id)
        if entry is None:
            raise InvalidRequest("invalid lease")
        expires = entry.expire_time
        return Response(data={
            "id": lease_id,
            "issue_time": rfc3339(entry.creation_time),
            "expire_time": rfc3339(expires) if expires else None,
            "last_renewal": rfc3339(entry.last_renewal_time) if entry.last_renewal_time else None,
            "ttl": remaining_ttl(expires, core.tokens.clock()),
            "renewable": bool(entry.renewable and expires and entry.type == "service"),
            "path": entry.path,
        })

    async def renew(req: Request, values: dict[str, Any]) -> None:
        """Vault renews no token here (``auth/token/renew*`` does): its refusals, in its order."""
        entry = await core.tokens.lease_entry(_lease_id(values))
        if entry is None:
            raise InvalidRequest("lease not found")
        if not entry.expire_time or not entry.renewable:
            raise InvalidRequest("lease is not renewable")
        raise InvalidRequest("tokens cannot be renewed through this endpoint")

    async def tidy(req: Request, values: dict[str, Any]) -> Response:
        return start_tidy(core.tokens)

    async def revoke(req: Request, values: dict[str, Any]) -> Response | None:
        entry = await core.tokens.lease_entry(_lease_id(values))
        if entry is not None:  # an unknown or dead lease is revoked already, as Vault answers it
            await core.tokens.revoke(entry)
        return None if values.get("sync", True) else _accepted()

    sync = Field(FieldType.BOOL, "Revoke before answering (204); false: answer 202 (revoked all the same).",
                 default=True)
    increment = Field(FieldType.DURATION, "Ignored: tokens are renewed through auth/token/renew.", default=0,
                      parse=_increment)
    lease_id = Field(FieldType.STRING, "The lease id: a token's creation path and row id "
                     "(from LIST sys/leases/lookup/<prefix>).", default="")
    return [
        SysPath("leases/lookup/(?P<prefix>.*)", FieldSet({
            "prefix": Field(FieldType.NAME, "The path whose lease ids are listed, one level down.", default=""),
        }), {Operation.LIST: list_leases}, "List token lease ids under a creation path.", sudo=True),
        SysPath("leases/lookup", FieldSet({"lease_id": lease_id}), {Operation.UPDATE: lookup},
                "A token lease's issue and expiry times and TTL."),
        SysPath("leases/renew", FieldSet({"lease_id": lease_id, "increment": increment}), {Operation.UPDATE: renew},
                "Refused for tokens, as in Vault: renew a token with auth/token/renew or renew-accessor."),
        SysPath("leases/renew/(?P<url_lease_id>.+)", FieldSet({
            "url_lease_id": Field(FieldType.NAME, "The lease id, in the path.", default=""),
            "lease_id": lease_id,
            "increment": increment,
        }), {Operation.UPDATE: renew}, "Refused for tokens, as in Vault: renew a token with auth/token/renew."),
        SysPath("leases/revoke", FieldSet({"lease_id": lease_id, "sync": sync}), {Operation.UPDATE: revoke},
                "Revoke the token a lease id names, and its children.", statuses=(202,)),
        SysPath("leases/revoke/(?P<url_lease_id>.+)", FieldSet({
            "url_lease_id": Field(FieldType.NAME, "The lease id, in the path.", default=""),
            "lease_id": lease_id,
            "sync": sync,
        }), {Operation.UPDATE: revoke}, "Revoke the token a lease id names, and its children.", statuses=(202,)),
        SysPath("leases/revoke-prefix/(?P<prefix>.+)", FieldSet({
            "prefix": _PREFIX,
            "sync": Field(FieldType.BOOL, "Revoke before answering (204); false: answer 202 and revoke in "
                          "the background.", default=True),
        }), {Operation.UPDATE: revoke_prefix},
            "Revoke every token created under a path, and its children.", sudo=True, statuses=(202,)),
        SysPath("leases/tidy", FieldSet({}), {Operation.UPDATE: tidy},
                "Remove expired token entries now (as auth/token/tidy: the only leases are tokens').", statuses=(202,)),
        SysPath("leases/revoke-force/(?P<prefix>.+)", FieldSet({"prefix": _PREFIX}), {Operation.UPDATE: revoke_force},
                "Revoke every token created under a path, and its children (as revoke-prefix: a token's "
                "revocation has no backend step to skip).", sudo=True),
    ]
