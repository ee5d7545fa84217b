"""``sys/policies/acl[/<name>]`` and the legacy ``sys/policy[/<name>]``: ACL policies in HCL
or JSON. As in Vault, each needs its capability on the path and no ``sudo`` (OpenBao's root
paths do not include them: a Vault policy that manages policies works here unchanged).

The policy name is a path field made canonical (``canonical_policy_name``: lower-case,
surrounding ``/`` dropped) before the ACL check, which judges the name that is stored. The
legacy paths answer ``rules`` instead of ``policy`` and copy ``data`` to the top level.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import orjson

from plugin.errors import InvalidRequest
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.acl.policies import TEMPLATE_FLAGS, canonical_policy_name
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
})


def paths(b: SysBackend) -> list[SysPath]:
    """The four policy paths; the list paths come first (``sys/policy/`` is the list)."""
    core = b.core

    async def names(req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"keys": await core.policies.list()})

    async def legacy_names(req: Request, values: dict[str, Any]) -> Response:
        keys = await core.policies.list()
        return Response(data={"keys": keys, "policies": keys})

    async def read(req: Request, values: dict[str, Any]) -> Response | None:
        found = await core.policies.entry(values["name"])
        if found is None:
            return None
        text, flags = found
        return Response(data={"name": values["name"], "policy": text, **flags})

    async def legacy_read(req: Request, values: dict[str, Any]) -> Response | None:
        found = await core.policies.entry(values["name"])
        if found is None:
            return None
        text, flags = found
        return Response(data={"name": values["name"], "rules": text, **flags})

    async def write(req: Request, values: dict[str, Any]) -> None:
        text = values.get("policy", values.get("rules"))
        if not text or not text.strip():
            raise InvalidRequest(_EMPTY)
        await core.policies.put(values["name"], _unbase64(text), {k: bool(values.get(k)) for k in TEMPLATE_FLAGS})

    async def delete(req: Request, values: dict[str, Any]) -> None:
        await core.policies.delete(values["name"])

    one = {Operation.UPDATE: write, Operation.DELETE: delete}
    return [
        SysPath("policies/acl/?", FieldSet({}), {Operation.LIST: names}, "List ACL policies."),
        SysPath(r"policies/acl/(?P<name>[\s\S]+)", POLICY_FIELDS, {Operation.READ: read, **one},
                "Read, write or delete an ACL policy."),
        SysPath("policy/?", FieldSet({}), {Operation.READ: legacy_names, Operation.LIST: legacy_names},
                "List policies (legacy: keys and policies).", copy_top=True),
        SysPath(r"policy/(?P<name>[\s\S]+)", POLICY_FIELDS, {Operation.READ: legacy_read, **one},
                "Read (legacy: rules), write or delete a policy.", copy_top=True),
    ]
