"""``sys/policies/acl[/<name>]`` and the legacy ``sys/policy[/<name>]``: ACL policies in HCL
or JSON. As in Vault, each needs its capability on the path and no ``sudo`` (OpenBao's root
paths do not include them: a Vault policy that manages policies works here unchanged).

The policy name is a path field made canonical (``canonical_policy_name``: lower-case,
surrounding ``/`` dropped) before the ACL check, which judges the name that is stored. The
legacy paths answer ``rules`` instead of ``policy`` and copy ``data`` to the top level.

OpenBao 2.x's additions are served: check-and-set (``cas``, ``cas_required``; a read shows
``version`` and ``modified``), policies that expire (``expiration`` or ``ttl``) and
``LIST sys/policies/detailed/acl`` (every policy with what its read shows).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from plugin.errors import InvalidRequest
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.acl.policies import TEMPLATE_FLAGS, StoredPolicy, canonical_policy_name
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "POLICY_FIELDS", "POLICY_NAME"]

_EMPTY = "'policy' parameter not supplied or empty"


def _canonical_name(raw: str) -> str:
    return canonical_policy_name(raw.strip("/"))


def _policy_text(raw: Any) -> str:
    """HCL or JSON text; a JSON object is taken as the JSON form of the policy."""
    if isinstance(raw, dict):
        return orjson.dumps(raw).decode()
    if not isinstance(raw, str):
        raise InvalidRequest(_EMPTY)
    return raw


def _unbase64(text: str) -> str:
    """Vault: a policy that is valid standard base64 (padded; line breaks ignored, as Go's
    decoder does) is decoded first, so a client can send one without escaping it."""
    try:
        raw = base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return text
    return raw.decode("utf-8", errors="replace")


def _when(raw: Any) -> float:
    """``expiration`` as written (an RFC 3339 time with its zone, or Unix seconds), as Unix
    seconds.

    :raises InvalidRequest: anything else, or a number of seconds no clock reaches.
    """
    text = str(raw) if isinstance(raw, (str, int)) and not isinstance(raw, bool) else ""
    try:
        if text.isascii() and text.isdigit():
            return float(int(text))
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if at.tzinfo is not None:
            return at.timestamp()
    except (ValueError, OverflowError):
        pass
    raise InvalidRequest(f"invalid 'expiration' {str(raw)[:64]!r}: an RFC 3339 time (with its zone) or Unix seconds")


POLICY_NAME = Field(
    FieldType.NAME, "Name of the policy (lower-cased, surrounding slashes dropped, before the ACL check).",
    canonical=_canonical_name,
)
#: ``sys/policies/acl/<name>`` and ``sys/policy/<name>``.
POLICY_FIELDS = FieldSet({
    "name": POLICY_NAME,
    "policy": Field(FieldType.STRING, "The policy document, in HCL or JSON (a JSON object is accepted too), or base64 of it.",
                    default="", parse=_policy_text),
    "rules": Field(FieldType.STRING, "Use 'policy' instead.", default="", alias_of="policy", deprecated=True,
                   parse=_policy_text),
    "allow_slashes_in_identity_templates": Field(
        FieldType.BOOL, "Let a value filled into an identity template of the policy's paths hold '/' (OpenBao's "
        "flag; by default such a path is left out for that token).", default=False),
    "allow_wildcards_in_identity_templates": Field(
        FieldType.BOOL, "Let a value filled into an identity template hold '*' or '+' (OpenBao's flag).",
        default=False),
    "cas": Field(FieldType.INT, "Check-and-set: write only if this is the policy's current version (-1: only if "
                 "there is no such policy). Required when the stored policy or this write sets cas_required.",
                 default=0),
    "cas_required": Field(FieldType.BOOL, "Require 'cas' on this write and on the next one (send it again on each "
                          "write to keep it).", default=False),
    "expiration": Field(FieldType.STRING, "When the policy stops existing: an RFC 3339 time (or Unix seconds) in "
                        "the future. Not with 'ttl'.", default="", parse=_when),
    "ttl": Field(FieldType.DURATION, "How long from now the policy exists. Not with 'expiration'.", default=0),
})


def _expiration(values: dict[str, Any], now: float) -> float | None:
    """The time a written policy expires (``expiration`` or now + ``ttl``), or None.

    :raises InvalidRequest: both given, an unreadable time, or one that has passed (OpenBao's texts).
    """
    if "expiration" in values and "ttl" in values:
        raise InvalidRequest("cannot supply both 'expiration' and 'ttl' for policies")
    if "ttl" in values:
        at = now + float(values["ttl"])
    elif "expiration" in values:
        at = values["expiration"]  # Unix seconds (_when)
    else:
        return None
    if not now < at:
        raise InvalidRequest("refusing to update policy as expiration time has already elapsed")
    return at


def _shown(name: str, found: StoredPolicy, text_key: str = "policy") -> dict[str, Any]:
    """A policy's read: its name, its text under ``text_key``, and the rest OpenBao shows."""
    return {"name": name, text_key: found.text, **found.public()}


def paths(b: SysBackend) -> list[SysPath]:
    """The four policy paths; the list paths come first (``sys/policy/`` is the list)."""
    core = b.core

    async def names(req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"keys": await core.policies.list()})

    async def legacy_names(req: Request, values: dict[str, Any]) -> Response:
        keys = await core.policies.list()
        return Response(data={"keys": keys, "policies": keys})

    async def detailed(req: Request, values: dict[str, Any]) -> Response:
        keys, info = await core.policies.list(), {}
        for name in keys:
            found = await core.policies.entry(name)
            if found is not None:
                info[name] = _shown(name, found)
        return Response(data={"keys": [k for k in keys if k in info], "key_info": info})

    async def read(req: Request, values: dict[str, Any]) -> Response | None:
        found = await core.policies.entry(values["name"])
        return None if found is None else Response(data=_shown(values["name"], found))

    async def legacy_read(req: Request, values: dict[str, Any]) -> Response | None:
        found = await core.policies.entry(values["name"])
        return None if found is None else Response(data=_shown(values["name"], found, "rules"))

    async def write(req: Request, values: dict[str, Any]) -> None:
        text = values.get("policy", values.get("rules"))
        if not text or not text.strip():
            raise InvalidRequest(_EMPTY)
        expiration = _expiration(values, core.policies.clock())
        await core.policies.put(
            values["name"], _unbase64(text), {k: bool(values.get(k)) for k in TEMPLATE_FLAGS},
            cas=values.get("cas"), cas_required=bool(values.get("cas_required")), expiration=expiration,
        )

    async def patch(req: Request, values: dict[str, Any]) -> Response:
        """OpenBao's PATCH: the fields sent change, the others keep their stored values (the
        expiration too); a check-and-set on the version read unless ``cas`` is sent. Answered
        as OpenBao answers it: 200, an envelope without data."""
        found = await core.policies.entry(values["name"])
        if found is None:
            raise InvalidRequest("policy not found")
        text = values.get("policy", found.text)
        if not text or not text.strip():
            raise InvalidRequest(_EMPTY)
        expiration = _expiration(values, core.policies.clock()) if "expiration" in values or "ttl" in values \
            else found.expiration
        flags = {k: bool(values[k]) if k in values else found.flags[k] for k in TEMPLATE_FLAGS}
        await core.policies.put(
            values["name"], _unbase64(text), flags, cas=values.get("cas", found.version),
            cas_required=bool(values.get("cas_required", found.cas_required)), expiration=expiration,
        )
        return Response()

    async def delete(req: Request, values: dict[str, Any]) -> None:
        await core.policies.delete(values["name"])

    one = {Operation.UPDATE: write, Operation.DELETE: delete}
    return [
        SysPath("policies/acl/?", FieldSet({}), {Operation.LIST: names}, "List ACL policies."),
        SysPath("policies/detailed/acl/?", FieldSet({}), {Operation.LIST: detailed},
                "List ACL policies with what each one's read shows (OpenBao's)."),
        SysPath(r"policies/acl/(?P<name>[\s\S]+)", POLICY_FIELDS, {Operation.READ: read, Operation.PATCH: patch, **one},
                "Read, write, patch (OpenBao's: the fields sent) or delete an ACL policy."),
        SysPath("policy/?", FieldSet({}), {Operation.READ: legacy_names, Operation.LIST: legacy_names},
                "List policies (legacy: keys and policies).", copy_top=True),
        SysPath(r"policy/(?P<name>[\s\S]+)", POLICY_FIELDS, {Operation.READ: legacy_read, **one},
                "Read (legacy: rules), write or delete a policy.", copy_top=True),
    ]
