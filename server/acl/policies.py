"""Vault ACL policies: HCL or JSON text, path globs, capabilities, deny wins."""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from plugin.errors import InvalidRequest
from plugin.pathdoc import closest
from plugin.policyutil import fold_case, sanitize_policies
from plugin.schema import FieldSet
from plugin.storage import Storage
from server.acl.hcl import HCLError, parse
from server.acl.parameters import KEYS as PARAMETER_KEYS
from server.acl.parameters import Params, merge_params, parse_params
from server.acl.templating import IdentityView, TemplateError, blocked_by, has_templates, populate, template_names
from server.tokens.ttl import rfc3339

__all__ = [
    "CAPABILITIES",
    "DEFAULT_POLICY",
    "RESPONSE_WRAPPING",
    "RESPONSE_WRAPPING_POLICY",
    "ACL",
    "PathRule",
    "PolicyError",
    "PolicyStore",
    "StoredPolicy",
    "canonical_policy_name",
    "parse_policy",
    "resultant",
]

log = structlog.get_logger("authmount.policies")

# "patch": the capability of a PATCH (OpenBao's, of sys/policies/acl/<name> and CEL roles).
CAPABILITIES = ("create", "read", "update", "delete", "list", "sudo", "deny", "patch")
POLICY_PREFIX = "sys/policy/"
_LEGACY = {
    "deny": ("deny",),
    "read": ("read", "list"),
    "write": ("create", "read", "update", "delete", "list"),
    "sudo": ("create", "read", "update", "delete", "list", "sudo"),
}
_IGNORED_KEYS = ("comment",)
_UNSUPPORTED_KEYS = (
    "mfa_methods",
    "control_group",
    "subscribe_event_types",
    "pagination_limit",
    "expiration",
    "list_scan_response_keys_filter_path",
)
#: The only policy of a response-wrapping token (``server.tokens.wrapping``): it may unwrap
#: itself, nothing else. Built in and immutable, as in Vault.
RESPONSE_WRAPPING = "response-wrapping"
RESPONSE_WRAPPING_POLICY = """\
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}
"""
_NAME_RE = re.compile(r"[^/\x00-\x1f\x7f]{1,128}")

# Vault's built-in default policy (OpenBao 2.7.2's text, to the byte).
DEFAULT_POLICY = """
# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own entity by id or name
path "identity/entity/id/{{identity.entity.id}}" {
  capabilities = ["read"]
}
path "identity/entity/name/{{identity.entity.name}}" {
  capabilities = ["read"]
}


# Allow a token to look up its resultant ACL from all policies. This is useful
# for UIs. It is an internal path because the format may change at any time
# based on how the internal ACL features and capabilities change.
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}

# Allow a token to renew a lease via lease_id in the request body; old path for
# old clients, new path for newer
path "sys/leases/renew" {
    capabilities = ["update"]
}

# Allow looking up lease properties. This requires knowing the lease ID ahead
# of time and does not divulge any sensitive information.
path "sys/leases/lookup" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow a token to wrap arbitrary values in a response-wrapping token
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}

# Allow a token to look up the creation time and TTL of a given
# response-wrapping token
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}

# Allow a token to unwrap a response-wrapping token. This is a convenience to
# avoid client token swapping since this is also part of the response wrapping
# policy.
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}

# Allow general purpose tools
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}

# Allow a token to make requests to the Authorization Endpoint for OIDC providers.
path "identity/oidc/provider/+/authorize" {
    capabilities = ["read", "update"]
}
"""


def canonical_policy_name(name: str) -> str:
    """The one spelling of a policy name that is stored and that the ACL judges: lower-case
    (as in Vault). Called on the name from the path before the ACL check.

    :raises InvalidRequest: an empty name, leading or trailing whitespace (Vault trims it;
        authmount refuses it, so no second spelling reaches a stored policy), a ``/`` or a
        control character, or more than 128 characters.
    """
    if not isinstance(name, str) or name != name.strip():
        raise InvalidRequest(f'invalid policy name "{name}": leading or trailing whitespace')
    norm = fold_case(name)
    if not _NAME_RE.fullmatch(norm):
        raise InvalidRequest(f'invalid policy name "{name}"')
    return norm


class PolicyError(ValueError):
    """A policy text that does not parse or validate; the message names the culprit."""


@dataclass(frozen=True, slots=True)
class PathRule:
    """One ``path`` block: its pattern, capabilities and parameter constraints (None: none)."""

    pattern: str
    capabilities: frozenset[str]
    params: Params | None = field(default=None, compare=False)

    @property
    def is_prefix(self) -> bool:
        return self.pattern.endswith("*")

    @property
    def templated(self) -> bool:
        """The path has identity templates (``server.acl.templating``), filled per token."""
        return has_templates(self.pattern)

    @property
    def is_exact(self) -> bool:
        return not self.is_prefix and "+" not in self.pattern.split("/")

    def priority(self) -> tuple[int, bool, int, int, str]:
        """Vault's ordering of matching globs: higher sorts first."""
        positions = [i for i, ch in enumerate(self.pattern) if ch in "*+"]
        first = positions[0] if positions else 1 << 30
        plus = self.pattern.split("/").count("+")
        return (first, not self.is_prefix, -plus, len(self.pattern), self.pattern)

    def matches(self, path: str) -> bool:
        """Does ``path`` fall under this rule (``*`` suffix = prefix, ``+`` = one segment)?"""
        pat = self.pattern[:-1] if self.is_prefix else self.pattern
        if "+" not in pat.split("/"):
            return path.startswith(pat) if self.is_prefix else path == pat
        pat_segs = pat.split("/")
        path_segs = path.split("/")
        if self.is_prefix:
            if len(path_segs) < len(pat_segs):
                return False
        elif len(path_segs) != len(pat_segs):
            return False
        last = len(pat_segs) - 1
        for i, seg in enumerate(pat_segs):
            if seg == "+":
                continue
            if i == last and self.is_prefix:
                if not path_segs[i].startswith(seg):
                    return False
            elif path_segs[i] != seg:
                return False
        return True


#: The keys of a ``path`` block a policy may use (for "did you mean" on an invalid key).
_BLOCK_KEYS = ("capabilities", "policy", *PARAMETER_KEYS, *_IGNORED_KEYS)


def _did_you_mean(key: str, known: tuple[str, ...]) -> str:
    match = closest(key, known)
    return f" (did you mean {match}?)" if match else ""


def _validate_pattern(pattern: str) -> str:
    pattern = pattern.lstrip("/")
    if has_templates(pattern):
        try:
            template_names(pattern)
        except TemplateError as exc:
            raise PolicyError(f'path "{pattern}": failed to validate policy templating: {exc}') from None
        _validate_glob(pattern, "x".join(part.split("}}")[-1] for part in pattern.split("{{")))
        return pattern
    return _validate_glob(pattern, pattern)


def _validate_glob(pattern: str, shape: str) -> str:
    """Check the globs of ``shape``: ``pattern`` with any templates taken out."""
    if "+*" in shape:
        raise PolicyError(f"path \"{pattern}\": invalid use of wildcards ('+*' is forbidden)")
    if "*" in shape[:-1]:
        raise PolicyError(f'path "{pattern}": the "*" glob is only allowed at the end of a path')
    body = shape[:-1] if shape.endswith("*") else shape
    for seg in body.split("/"):
        if "+" in seg and seg != "+":
            raise PolicyError(f'path "{pattern}": the "+" wildcard must be a whole path segment')
    return pattern


def _rule(pattern: Any, body: Any) -> PathRule:
    if not isinstance(pattern, str):
        raise PolicyError("path names must be strings")
    pattern = _validate_pattern(pattern)
    if not isinstance(body, dict):
        raise PolicyError(f'path "{pattern}": expected a block')
    caps: set[str] = set()
    for key, value in body.items():
        if key in _IGNORED_KEYS or key in PARAMETER_KEYS:
            continue
        if key in _UNSUPPORTED_KEYS:
            raise PolicyError(f'path "{pattern}": "{key}" is not supported')
        if key == "policy":
            if not isinstance(value, str) or value.lower() not in _LEGACY:
                raise PolicyError(f'path "{pattern}": invalid policy "{value}"')
            caps.update(_LEGACY[value.lower()])
        elif key == "capabilities":
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise PolicyError(f'path "{pattern}": capabilities must be a list of strings')
            for c in value:
                cap = c.strip().lower()
                if cap not in CAPABILITIES:
                    raise PolicyError(f'path "{pattern}": invalid capability "{c}"')
                caps.add(cap)
        else:
            raise PolicyError(f'path "{pattern}": invalid key "{key}"' + _did_you_mean(key, _BLOCK_KEYS))
    try:
        params = parse_params(body, pattern)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    # A denial has no parameters to judge (Vault skips them too).
    return PathRule(pattern, frozenset(caps), None if "deny" in caps else params)


def parse_policy(text: str) -> list[PathRule]:
    """Parse a policy in Vault HCL or JSON into rules (duplicates of a path kept apart).

    :raises PolicyError: bad syntax, unknown key, unknown capability or bad glob.
    """
    if not isinstance(text, str):
        raise PolicyError("policy must be a string")
    try:
        doc = parse(text)
    except HCLError as exc:
        raise PolicyError(str(exc)) from None
    rules: list[PathRule] = []
    for key, value in doc.items():
        if key == "name":
            continue
        if key != "path":
            raise PolicyError(f'invalid key "{key}"' + _did_you_mean(key, ("path",)))
        blocks = value if isinstance(value, list) else [value]
        for block in blocks:
            if not isinstance(block, dict):
                raise PolicyError('"path" must be a block')
            for pattern, body in block.items():
                bodies = body if isinstance(body, list) else [body]
                rules.extend(_rule(pattern, b) for b in bodies)
    return rules


class ACL:
    """The merged rules of a token's policies."""

    def __init__(self, rules: Iterable[PathRule] = (), *, root: bool = False) -> None:
        self.root = root
        merged: dict[str, tuple[set[str], list[Params]]] = {}
        for r in rules:
            caps, params = merged.setdefault(r.pattern, (set(), []))
            caps.update(r.capabilities)
            if r.params is not None:
                params.append(r.params)
        self._exact: dict[str, PathRule] = {}
        globs: list[PathRule] = []
        for pattern, (caps, params) in merged.items():
            # Vault's merge: a deny anywhere is the rule's only capability; the parameter
            # constraints of every policy that grants the path add up (``merge_params``).
            rule = (PathRule(pattern, frozenset({"deny"})) if "deny" in caps
                    else PathRule(pattern, frozenset(caps), merge_params(params)))
            if rule.is_exact:
                self._exact[pattern] = rule
            else:
                globs.append(rule)
        self._globs = sorted(globs, key=PathRule.priority, reverse=True)
        #: Whether any rule constrains parameters (else ``permits`` has nothing to look up).
        self.constrained = any(r.params is not None for r in (*self._exact.values(), *globs))

    def _match(self, path: str, list_op: bool) -> PathRule | None:
        """The rule that governs ``path``, in Vault's order (``AllowOperation``): the exact
        rule; for a LIST, the exact rule of the path without its trailing ``/``; the most
        specific glob; for a LIST, the most specific glob of the path without its trailing
        ``/``. Only one ``/`` is taken off, as Vault's ``TrimSuffix``: ``a/b//`` is
        ``a/b/`` then, never ``a/b``."""
        rule = self._exact.get(path)
        if rule is None and list_op:
            rule = self._exact.get(path.removesuffix("/"))
        if rule is not None:
            return rule
        for rule in self._globs:
            if rule.matches(path):
                return rule
        if list_op and path.endswith("/"):
            trimmed = path[:-1]
            for rule in self._globs:
                if rule.matches(trimmed):
                    return rule
        return None

    def allows(self, path: str, capability: str, *, listing: bool | None = None) -> bool:
        """``path`` is the request path without ``/v1/`` (e.g. ``auth/jwt/role/x``).
        ``capability`` is one of create/read/update/delete/list/sudo. ``listing``: the request
        is a LIST (the rule is found as Vault finds a LIST's, also for its ``sudo``); by
        default, whether ``capability`` is ``list``."""
        if self.root:
            return True
        rule = self._match(path.lstrip("/"), capability == "list" if listing is None else listing)
        return rule is not None and "deny" not in rule.capabilities and capability in rule.capabilities

    def permits(self, path: str, data: Mapping[str, Any] | None, fields: FieldSet | None, *,
                wrap_ttl: int | None = None, listing: bool = False) -> bool:
        """Whether a request to ``path`` passes what the rule that governs it asks beyond
        capabilities (``server.acl.parameters``): its response wrapped for ``wrap_ttl``
        seconds (None: not wrapped) within the rule's bounds, and, for a read or write, its
        parameters ``data`` within the rule's constraints (None: a LIST or DELETE, whose
        parameters are not judged); ``fields``: the path's fields, which say how the backend
        takes each value; ``listing``: the request is a LIST (its rule is found as a LIST's)."""
        if self.root or not self.constrained:
            return True
        rule = self._match(path.lstrip("/"), listing)
        if rule is None or rule.params is None:
            return True
        return rule.params.wraps(wrap_ttl) and (data is None or rule.params.admit(data, fields))

    def capabilities(self, path: str) -> list[str]:
        """What ``sys/capabilities-self`` reports: sorted names, ``["root"]`` or ``["deny"]``."""
        if self.root:
            return ["root"]
        # OpenBao's Capabilities: the rule a LIST of the path finds (an exact rule on the path
        # without its trailing slash comes before the globs).
        rule = self._match(path.lstrip("/"), True)
        if rule is None or not rule.capabilities or "deny" in rule.capabilities:
            return ["deny"]
        return sorted(rule.capabilities)


    def has_mount_access(self, mount: str) -> bool:
        """Whether the token may do anything at or below the mount at ``mount`` (``auth/jwt/``,
        ``identity/``): Vault's ``hasMountAccess``, what ``sys/internal/ui/mounts`` lists a
        mount for. A rule that grants anything counts (a deny below the mount hides nothing
        else); a ``+`` rule counts when its first segments name the mount's."""
        if self.capabilities(mount) != ["deny"]:
            return True  # root, or a rule that governs the mount's own path

        def grants(rule: PathRule) -> bool:
            return bool(rule.capabilities) and "deny" not in rule.capabilities

        if any(pattern.startswith(mount) and grants(rule) for pattern, rule in self._exact.items()):
            return True
        segments = mount.rstrip("/").split("/")
        for rule in self._globs:
            literal = rule.pattern.removesuffix("*")
            parts = literal.split("/")
            if not grants(rule):
                continue
            if "+" not in parts:
                if literal.startswith(mount):
                    return True
                continue
            last = len(parts) - 1
            if len(parts) >= len(segments) and all(
                    part in ("+", seg) or (rule.is_prefix and i == last and seg.startswith(part))
                    for i, (part, seg) in enumerate(zip(parts, segments, strict=False))):
                return True
        return False


#: Vault's order of capabilities in ``sys/internal/ui/resultant-acl`` (its bitmap's).
_BITMAP_ORDER = ("create", "delete", "list", "read", "sudo", "update", "patch")


def resultant(acl: ACL) -> dict[str, Any]:
    """``sys/internal/ui/resultant-acl``'s ``data`` (OpenBao's shape): the exact paths and the
    globs ending in ``*`` (without it) with their capabilities in Vault's order, ``["deny"]``
    for a denial; paths with a ``+`` segment are not listed (Vault's tree holds them apart)."""
    if acl.root:
        return {"root": True}

    def shown(rule: PathRule) -> dict[str, Any]:
        ordered = [c for c in _BITMAP_ORDER if c in rule.capabilities]
        out: dict[str, Any] = {"capabilities": ["deny"] if "deny" in rule.capabilities or not ordered else ordered}
        return out | rule.params.shown() if rule.params is not None else out

    exact = {path: shown(rule) for path, rule in sorted(acl._exact.items())}
    globs = {rule.pattern[:-1]: shown(rule) for rule in sorted(acl._globs, key=lambda r: r.pattern)
             if rule.is_prefix and "+" not in rule.pattern[:-1].split("/")}
    return {"exact_paths": exact, "glob_paths": globs, "root": False}


ROOT_ACL = ACL(root=True)


#: A policy's flags of OpenBao (``sys/policies/acl`` fields): what a value filled into an
#: identity template may hold.
TEMPLATE_FLAGS = ("allow_slashes_in_identity_templates", "allow_wildcards_in_identity_templates")
#: Filled ACLs kept (policy names, identity): beyond it the cache starts again.
_FILLED_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """A policy as ``sys/policies/acl/<name>`` shows it: its text, its identity-template
    flags, and OpenBao's check-and-set version (0 for a policy an older version wrote, 1
    for the built-in ``default`` until it is written), ``cas_required``, the time of the last
    write (``modified``, Unix seconds) and the time it stops existing (``expiration``)."""

    text: str
    flags: dict[str, bool]
    version: int = 0
    cas_required: bool = False
    modified: float | None = None
    expiration: float | None = None

    def public(self) -> dict[str, Any]:
        """The read's fields but ``name`` and the text (OpenBao's ``readPolicyResponse``)."""
        out: dict[str, Any] = {**self.flags, "version": self.version, "cas_required": self.cas_required}
        if self.modified is not None:
            out["modified"] = rfc3339(self.modified)
        if self.expiration is not None:
            out["expiration"] = rfc3339(self.expiration)
        return out

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredPolicy:
        return cls(
            str(row.get("policy", "")), {k: bool(row.get(k, False)) for k in TEMPLATE_FLAGS},
            version=int(row.get("version", 0)), cas_required=bool(row.get("cas_required", False)),
            modified=row.get("modified"), expiration=row.get("expiration"),
        )


def _expired(row: Mapping[str, Any] | None, now: float) -> bool:
    return row is not None and row.get("expiration") is not None and now >= float(row["expiration"])


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A policy's rules as parsed: those without templates, and those with them (each with
    the characters its values may not hold, and its literal start: ``_literal_start``)."""

    plain: tuple[PathRule, ...]
    templated: tuple[tuple[PathRule, str, str], ...]


def _literal_start(pattern: str) -> str:
    """What every path a filled-in ``pattern`` matches starts with: the pattern up to its
    first template or ``+`` segment."""
    start = pattern.split("{{", 1)[0]
    segments = start.split("/")
    return "/".join(segments[:segments.index("+")]) if "+" in segments else start


class PolicyStore:
    """Policies stored at ``sys/policy/<name>``; ``root``, ``default`` and
    ``response-wrapping`` (the policy of wrapping tokens, never assignable) are built in.

    Parsed policies and ACLs are cached; local writes clear the caches at once, and
    entries expire after ``cache_ttl`` seconds so writes on other nodes are seen. A set of
    policies with identity templates has its ACL filled per identity (``identity``, set by
    the app: an entity id to what templates read of it), cached by what was read.
    """

    def __init__(self, storage: Storage, *, cache_ttl: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.cache_ttl = cache_ttl
        #: Wall-clock time, for ``modified`` and ``expiration``.
        self.clock = clock
        self._rules: dict[str, tuple[_Loaded | None, float]] = {}
        self._acls: dict[tuple[str, ...], tuple[ACL, _Loaded, tuple[str, ...], float]] = {}
        self._filled: dict[tuple[tuple[str, ...], IdentityView], tuple[ACL, float]] = {}
        self.identity: Callable[[str], Awaitable[IdentityView | None]] | None = None

    normalize = staticmethod(canonical_policy_name)

    def invalidate(self, key: str | None = None) -> None:
        """Drop cached policies/ACLs (all of them, or after a write of storage ``key``)."""
        if key is None or key.startswith(POLICY_PREFIX):
            self._rules.clear()
            self._acls.clear()
            self._filled.clear()

    async def get(self, name: str) -> str | None:
        """The policy text, or None. ``root`` has empty rules; ``default`` is built in."""
        found = await self.entry(name)
        return None if found is None else found.text

    async def entry(self, name: str) -> StoredPolicy | None:
        """The policy, or None. One whose ``expiration`` has passed is gone: it is deleted
        here (OpenBao removes it when it is next loaded)."""
        name = self.normalize(name)
        flags = dict.fromkeys(TEMPLATE_FLAGS, False)
        if name == "root":
            return StoredPolicy("", flags)
        if name == RESPONSE_WRAPPING:
            return StoredPolicy(RESPONSE_WRAPPING_POLICY, flags)
        key = POLICY_PREFIX + name
        stored = await self.storage.get(key)
        if stored is not None and _expired(stored, self.clock()):
            # Removed only if it is still the expired row: a write since the read is kept, and read.
            stored = await self.storage.update(key, lambda old: None if old is None or _expired(old, self.clock()) else old)
            self.invalidate()
        if stored is not None:
            return StoredPolicy.from_row(stored)
        return StoredPolicy(DEFAULT_POLICY, flags, version=1) if name == "default" else None

    async def put(
        self, name: str, text: str, flags: dict[str, bool] | None = None, *, cas: int | None = None,
        cas_required: bool = False, expiration: float | None = None,
    ) -> None:
        """Validate and store a policy (with its template ``flags``, all false by default,
        ``cas_required`` and ``expiration``); on any error the previous version stays.

        OpenBao's check-and-set: with ``cas`` (or when the stored policy or this write sets
        ``cas_required``) the write happens only if ``cas`` is the stored version, or -1 and
        there is no policy of that name. The check and the write are one storage update.

        :raises InvalidRequest: ``cannot update "root" policy``,
            ``failed to parse policy: <reason>``, or a check-and-set refusal (OpenBao's texts).
        """
        name = self.normalize(name)
        if name in ("root", RESPONSE_WRAPPING):
            raise InvalidRequest(f'cannot update "{name}" policy')
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest("'policy' parameter not supplied or empty")
        try:
            parse_policy(text)
        except PolicyError as exc:
            raise InvalidRequest(f"failed to parse policy: {exc}") from None
        now = self.clock()
        row: dict[str, Any] = {"name": name, "policy": text}
        row.update({k: True for k, v in (flags or {}).items() if k in TEMPLATE_FLAGS and v})

        def checked(old: dict[str, Any] | None) -> dict[str, Any]:
            if _expired(old, now):
                old = None
            exists = old is not None or name == "default"  # the built-in default is version 1
            version = int(old.get("version", 0)) if old is not None else int(exists)
            if cas is None and (cas_required or (old is not None and old.get("cas_required"))):
                raise InvalidRequest("check-and-set parameter required for this call")
            if cas is not None:
                if cas == -1 and exists:
                    raise InvalidRequest("check-and-set parameter set to -1 on existing entry")
                if cas != -1 and cas != version:
                    raise InvalidRequest(f"check-and-set parameter {cas} did not match the current version {version}")
            return {**row, "version": version + 1, "modified": now, **({"cas_required": True} if cas_required else {}),
                    **({"expiration": expiration} if expiration is not None else {})}

        await self.storage.update(POLICY_PREFIX + name, checked)
        self.invalidate()

    async def delete(self, name: str) -> None:
        """Delete a policy (a missing one is fine).

        :raises InvalidRequest: ``cannot delete "root" policy`` (and ``"response-wrapping"``) /
            ``cannot delete default policy`` (Vault's texts).
        """
        name = self.normalize(name)
        if name in ("root", "default", RESPONSE_WRAPPING):
            raise InvalidRequest("cannot delete default policy" if name == "default" else f'cannot delete "{name}" policy')
        await self.storage.delete(POLICY_PREFIX + name)
        self.invalidate()

    async def list(self) -> list[str]:
        """Every policy name, including ``default``, sorted, and then ``root`` (Vault's order:
        root is not a stored policy, its list appends it)."""
        names = {k for k in await self.storage.list(POLICY_PREFIX) if not k.endswith("/")}
        return [*sorted((names | {"default"}) - {"root"}), "root"]

    async def _load(self, name: str, now: float) -> _Loaded | None:
        cached = self._rules.get(name)
        if cached is not None and now - cached[1] <= self.cache_ttl:
            return cached[0]
        found = await self.entry(name)
        loaded: _Loaded | None = None
        if found is not None:
            text, flags = found.text, found.flags
            try:
                rules = parse_policy(text)
            except PolicyError:
                log.error("stored_policy_invalid", policy=name)
            else:
                blocked = blocked_by(*(flags[k] for k in TEMPLATE_FLAGS))
                loaded = _Loaded(tuple(r for r in rules if not r.templated),
                                 tuple((r, blocked, _literal_start(r.pattern)) for r in rules if r.templated))
        self._rules[name] = (loaded, now)
        return loaded

    async def acl_for(self, policies: builtins.list[str], entity_id: str = "", path: str | None = None) -> ACL:
        """Build (and cache until a policy write) the ACL for these policy names, for a token
        of the entity ``entity_id`` (fills the policies' identity templates; none: their
        paths are left out). ``path``: the ACL judges only that path, so templates whose
        filled-in paths cannot match it are not filled (the default policy's two paths
        with templates cost a request elsewhere nothing).

        Unknown policy names contribute nothing, as in Vault.
        """
        names = tuple(sanitize_policies(policies))
        if "root" in names:
            return ROOT_ACL
        now = time.monotonic()
        cached = self._acls.get(names)
        if cached is None or now - cached[3] > self.cache_ttl:
            plain: list[PathRule] = []
            templated: list[tuple[PathRule, str, str]] = []
            for name in names:
                if not _NAME_RE.fullmatch(name):
                    continue
                loaded = await self._load(name, now)
                if loaded is not None:
                    plain.extend(loaded.plain)
                    templated.extend(loaded.templated)
            starts = tuple({start for _, _, start in templated})
            cached = (ACL(plain), _Loaded(tuple(plain), tuple(templated)), starts, now)
            self._acls[names] = cached
        acl, loaded, starts, _ = cached
        # Without templates, or for a path no filled-in template could match: the plain ACL.
        if not starts or not entity_id or (path is not None and not path.lstrip("/").startswith(starts)):
            return acl
        return await self._filled_acl(names, acl, loaded, entity_id, now)

    async def _filled_acl(self, names: tuple[str, ...], plain: ACL, loaded: _Loaded, entity_id: str,
                          now: float) -> ACL:
        """The ACL of ``names`` with the templates filled for the entity (cached by what was
        read of it, so a change of its aliases, metadata or groups is seen at once); ``plain``
        for no entity."""
        who = await self.identity(entity_id) if self.identity is not None else None
        if who is None:
            return plain
        key = (names, who)
        hit = self._filled.get(key)
        if hit is not None and now - hit[1] <= self.cache_ttl:
            return hit[0]
        rules = list(loaded.plain)
        for rule, blocked, _ in loaded.templated:
            path = populate(rule.pattern, who, blocked)
            if path is None:
                continue
            try:
                rules.append(PathRule(_validate_pattern(path), rule.capabilities, rule.params))
            except PolicyError:  # a value with wildcards the policy allows made a glob Vault refuses
                continue
        acl = ACL(rules)
        if len(self._filled) >= _FILLED_CACHE_SIZE:
            self._filled.clear()
        self._filled[key] = (acl, now)
        return acl
