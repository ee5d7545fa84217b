"""The auth mount table: enable/disable/tune, longest-prefix lookup, persisted at ``core/mounts``."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from plugin import registry
from plugin.errors import InvalidRequest
from plugin.framework import Backend, Operation, Request
from plugin.pathdoc import VERSION
from plugin.schema import Field, FieldSet, FieldType, coerce, parse_duration
from plugin.sealing import Sealer
from plugin.storage import PrefixedStorage, Storage
from server.keyring import PROCESS_SEALER, PrefixSealer
from server.storage import Engine
from server.storage.refresh import Refresh
from server.telemetry import MountEvents
from server.tokens.entry import MountInfo

__all__ = [
    "BUILTIN_TUNABLE", "MOUNTS_KEY", "MountEntry", "Mount", "MountSystemView", "MountTable", "normalize_path", "MOUNT_CONFIG_FIELDS",
    "TUNE_FIELDS",
]

MOUNTS_KEY = "core/mounts"
TOKEN_TYPES = ("default-service", "default-batch", "service", "batch")
_TOKEN_TYPE_ALIASES = {"default": "default-service", "": "default-service"}
LISTING_VISIBILITY = ("", "unauth", "hidden")
_TTL_FIELDS = ("default_lease_ttl", "max_lease_ttl")

log = structlog.get_logger("authmount.mounts")


# -- the tune fields: one declaration for validation, sys/auth, OpenAPI and the docs ------------
def _lease_ttl(name: str) -> Callable[[Any], int | None]:
    def parse(raw: Any) -> int | None:
        if raw == "":
            return None  # Vault: on a tune, left as it is; on an enable, the server's value
        if raw in ("system", None):
            return 0
        try:
            return parse_duration(raw)
        except ValueError as exc:
            raise InvalidRequest(f"invalid {name}: {exc}") from exc

    return parse


def _token_type(raw: Any) -> str:
    value = _TOKEN_TYPE_ALIASES.get(raw, raw) if isinstance(raw, str) else raw
    if value not in TOKEN_TYPES:
        raise InvalidRequest("invalid value for 'token_type'")
    return str(value)


def _listing_visibility(raw: Any) -> str:
    if raw not in LISTING_VISIBILITY:
        raise InvalidRequest(f"invalid listing_visibility {raw}")
    return str(raw)


def _string_list(name: str) -> Callable[[Any], list[str]]:
    def parse(raw: Any) -> list[str]:
        if isinstance(raw, str):
            raw = [s.strip() for s in raw.split(",") if s.strip()]
        if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            raise InvalidRequest(f"{name} must be a list of strings")
        return raw

    return parse


def _list_field(name: str, description: str) -> Field:
    return Field(FieldType.COMMA_STRING_SLICE, description, default=[], parse=_string_list(name))


#: A mount's ``config``: what ``sys/auth/<path>`` takes as ``config`` and ``sys/auth/<path>/tune``
#: changes. TTLs are stored in seconds, 0 meaning the server's value.
MOUNT_CONFIG_FIELDS = FieldSet({
    "default_lease_ttl": Field(
        FieldType.DURATION,
        "Default TTL of the tokens issued by this mount; 0 or 'system' means the server's default_lease_ttl; "
        "'' leaves it as it is on a tune (the Vault CLI sends it so).",
        default=0, parse=_lease_ttl("default_lease_ttl"),
    ),
    "max_lease_ttl": Field(
        FieldType.DURATION,
        "Maximum TTL of the tokens issued by this mount; it overrides the server's max_lease_ttl (it may be longer, as "
        "in Vault); 0 or 'system' means "
        "the server's value; '' leaves it as it is on a tune. Must not be below the default.",
        default=0, parse=_lease_ttl("max_lease_ttl"),
    ),
    "force_no_cache": Field(FieldType.BOOL, "Stored and reported; authmount has no response cache.", default=False),
    "token_type": Field(
        FieldType.STRING,
        "Type of the tokens logins issue: 'default-service' (a role's token_type decides, service when it says "
        "'default'), 'default-batch' (the same, batch by default), 'service' or 'batch' (forced whatever the role "
        "says). 'default' and '' are 'default-service'.",
        default="default-service", parse=_token_type,
    ),
    "listing_visibility": Field(
        FieldType.STRING, "'', 'unauth' or 'hidden': 'unauth' lists the mount in sys/internal/ui/mounts to callers "
        "without a token, and the sign-in page (setting ui) offers its OIDC role.", default="",
        parse=_listing_visibility,
    ),
    "audit_non_hmac_request_keys": _list_field(
        "audit_non_hmac_request_keys",
        "Keys of the request data whose values the audit log writes in clear (e.g. 'role'); every other "
        "string is hashed.",
    ),
    "audit_non_hmac_response_keys": _list_field(
        "audit_non_hmac_response_keys",
        "Keys of the response data whose values the audit log writes in clear; every other string is hashed.",
    ),
    "passthrough_request_headers": _list_field(
        "passthrough_request_headers",
        "Stored and reported, not enforced: the auth method sees the request's headers (never its credentials).",
    ),
    "allowed_response_headers": _list_field(
        "allowed_response_headers", "Stored and reported, not enforced."
    ),
})
_LIST_KEYS = tuple(n for n, f in MOUNT_CONFIG_FIELDS.items() if f.type is FieldType.COMMA_STRING_SLICE)


def _tune_description(raw: Any) -> str:
    if not isinstance(raw, str):
        raise InvalidRequest("description must be a string")
    return raw


def _tune_options(raw: Any) -> dict[str, Any]:
    value = raw or {}
    if not isinstance(value, dict):
        raise InvalidRequest("options must be an object")
    return value


#: ``sys/auth/<path>/tune``: the mount config plus its description and options.
TUNE_FIELDS = FieldSet({
    **MOUNT_CONFIG_FIELDS.fields,
    "description": Field(FieldType.STRING, "Human-friendly description of the mount.", default="",
                         parse=_tune_description),
    "options": Field(FieldType.MAP, "Added to the mount's options (stored and reported; no auth method reads "
                     "them). The Vault CLI sends null.", default={}, parse=_tune_options),
})


#: ``running_plugin_version`` of every mount: authmount's own version, built in (OpenBao shows
#: ``v2.7.2+builtin.bao``, Vault ``v1.x.y+builtin.vault``).
RUNNING_VERSION = f"v{VERSION}+builtin.authmount"


#: What OpenBao lets a tune of a built-in backend (``sys/``, ``identity/``) change.
BUILTIN_TUNABLE = ("audit_non_hmac_request_keys", "audit_non_hmac_response_keys")


def _table(old: Any, entries: list[Any]) -> dict[str, Any]:
    """The stored table with these ``entries`` (and the rest of it, the built-in backends'
    tuning, as it was)."""
    return {**(old or {}), "entries": entries}


def normalize_path(path: str) -> str:
    """The one spelling of a mount path that is stored and that the ACL judges: no leading
    ``/``, one trailing ``/`` (Vault's mount path rule). Callers on the HTTP edge apply it
    before the ACL check (``sys/auth//jwt/`` is ``jwt/``).

    :raises InvalidRequest: empty paths, empty segments, ``.``/``..`` segments, and any
        whitespace or control character (Vault trims surrounding whitespace; authmount
        refuses it, so ``sys/auth/%20jwt`` is no second name of ``jwt``).
    """
    p = path.strip("/")
    if not p:
        raise InvalidRequest("mount path cannot be empty")
    for seg in p.split("/"):
        if seg in ("", ".", "..") or any(c.isspace() or not c.isprintable() or c in "*+?#%\\" for c in seg):
            raise InvalidRequest(f"invalid mount path {path!r}")
    return p + "/"


@dataclass(slots=True)
class MountEntry:
    """One persisted mount. ``config`` TTLs are seconds; 0 means the system value."""

    path: str
    type: str
    accessor: str
    uuid: str
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    local: bool = False
    seal_wrap: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    #: Moves of this mount whose tokens are still being revoked: ``{"id": <migration id>,
    #: "from": <old path>}`` each, stored with the move itself so that a restart finishes them.
    moves: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        out = {
            "path": self.path, "type": self.type, "accessor": self.accessor, "uuid": self.uuid,
            "description": self.description, "config": dict(self.config), "local": self.local,
            "seal_wrap": self.seal_wrap, "options": dict(self.options),
        }
        if self.moves:
            out["moves"] = [dict(m) for m in self.moves]
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> MountEntry:
        """Load a stored entry (missing fields take defaults)."""
        return cls(
            path=raw["path"], type=raw["type"], accessor=raw["accessor"], uuid=raw["uuid"],
            description=raw.get("description", ""), config=_default_config() | dict(raw.get("config") or {}),
            local=bool(raw.get("local", False)), seal_wrap=bool(raw.get("seal_wrap", False)),
            options=dict(raw.get("options") or {}), moves=[dict(m) for m in raw.get("moves") or ()],
        )

    def public(self) -> dict[str, Any]:
        """The ``sys/auth`` shape of this mount (docs/reference/vault-api.md 10.4)."""
        cfg = self.config
        out_cfg: dict[str, Any] = {
            "default_lease_ttl": cfg.get("default_lease_ttl", 0),
            "max_lease_ttl": cfg.get("max_lease_ttl", 0),
            "force_no_cache": bool(cfg.get("force_no_cache", False)),
            "token_type": cfg.get("token_type", "default-service"),
        }
        for key in ("listing_visibility", *_LIST_KEYS):
            if cfg.get(key):
                out_cfg[key] = cfg[key]
        builtin = self.type == "token"  # Vault's own token store, not a plugin of its catalogue
        out: dict[str, Any] = {
            "accessor": self.accessor, "config": out_cfg, "description": self.description,
            # An enabled auth method's options are an object even when empty; the token store has none.
            "local": self.local, "options": None if builtin else dict(self.options), "plugin_version": "",
            "running_plugin_version": RUNNING_VERSION, "running_sha256": "", "seal_wrap": self.seal_wrap,
            "external_entropy_access": False, "type": self.type, "uuid": self.uuid,
        }
        if not builtin:  # only a catalogued plugin has a deprecation status (OpenBao 2.7.2)
            out["deprecation_status"] = "supported"
        return out


def _default_config() -> dict[str, Any]:
    """What every mount's stored config holds, whatever was given (defaults of the fields)."""
    return {k: MOUNT_CONFIG_FIELDS[k].default_value() for k in _STORED}


_STORED = ("default_lease_ttl", "max_lease_ttl", "force_no_cache", "token_type")


class Mount:
    """A live mount: its entry, backend, storage view and SystemView."""

    __slots__ = ("entry", "backend", "storage", "system", "_token_info")

    def __init__(self, entry: MountEntry, backend: Backend, storage: Storage, system: MountSystemView) -> None:
        self.entry = entry
        self.backend = backend
        self.storage = storage
        self.system = system
        self._token_info: tuple[MountEntry, MountInfo] | None = None

    def token_info(self) -> MountInfo:
        """What the token store needs to issue a token here, built once per mount entry
        (``_apply`` installs a new entry object on every change, so a tune is seen)."""
        cached = self._token_info
        entry = self.entry
        if cached is not None and cached[0] is entry:
            return cached[1]
        dflt, mx = self.system._table.effective_ttls(entry)
        info = MountInfo(
            path="auth/" + entry.path,
            accessor=entry.accessor,
            default_lease_ttl=dflt,
            max_lease_ttl=mx,
            token_type=entry.config.get("token_type", "default-service"),
        )
        self._token_info = (entry, info)
        return info


class MountSystemView:
    """The SystemView of one mount: live tuned TTLs, the shared fetcher, the clock."""

    __slots__ = ("_table", "_path", "_mount", "fetcher", "sealer", "events")

    def __init__(self, table: MountTable, path: str, fetcher: Any, sealer: Sealer) -> None:
        self._table = table
        self._path = path
        #: The mount this view belongs to (set once it is built): its entry, not the table's
        #: entry at ``path``, which a request in flight no longer finds once the mount is
        #: disabled (a ``KeyError``, a 500) or finds for another mount enabled there since.
        self._mount: Mount | None = None
        self.fetcher = fetcher
        #: Seals under the mount's storage prefix, ``auth/<uuid>/<context>``.
        self.sealer = sealer
        #: Key fetches, cache hits and OIDC flows of this mount, for the metrics.
        self.events = MountEvents("auth/" + path)

    def _entry(self) -> MountEntry:
        mount = self._mount
        return mount.entry if mount is not None else self._table.mounts[self._path].entry

    @property
    def default_lease_ttl(self) -> int:
        return self._table.effective_ttls(self._entry())[0]

    @property
    def max_lease_ttl(self) -> int:
        return self._table.effective_ttls(self._entry())[1]

    @property
    def mount_path(self) -> str:
        return "auth/" + self._path

    @property
    def mount_accessor(self) -> str:
        return self._entry().accessor

    @property
    def verbose_login_errors(self) -> bool:
        return self._table.verbose_login_errors

    def now(self) -> float:
        return time.time()


def _new_accessor(type_name: str) -> str:
    """A mount accessor as Vault makes them: ``auth_<type>_`` and 8 random hex digits."""
    return f"auth_{type_name}_{secrets.token_hex(4)}"


def _is_token_path(norm: str) -> bool:
    """Whether a normalised path is the token store's or below it (whole segments: Vault's
    string prefix ``auth/token`` also holds ``auth/tokens-ci`` fast)."""
    return norm.split("/", 1)[0] == "token"


class _NotMounted(Exception):
    """``disable``'s storage update found no mount at the path: nothing is written."""


class _AccessorTaken(Exception):
    """A new mount drew the accessor of a mount in the table (``MountTable.enable``)."""


class MountTable:
    """All auth mounts. ``token/`` always exists. Changes are persisted before they apply.

    ``token_factory`` builds the backend of the built-in ``token/`` mount; ``on_disable``
    is awaited with the entry of a disabled mount (to revoke its tokens); ``retired``, awaited
    with an accessor, says whether a disabled mount had it (its tokens are dead for good, so a
    new mount must not take it).
    """

    def __init__(
        self,
        storage: Engine,
        *,
        default_lease_ttl: int,
        max_lease_ttl: int,
        fetcher: Any = None,
        token_factory: Callable[[], Backend] | None = None,
        on_disable: Callable[[MountEntry], Any] | None = None,
        retired: Callable[[str], Awaitable[bool]] | None = None,
        verbose_login_errors: bool = False,
        sealer: Sealer | None = None,
    ) -> None:
        self.storage = storage
        #: The server's keyring; each mount seals under its own storage prefix.
        self.sealer: Sealer = sealer or PROCESS_SEALER
        self.default_lease_ttl = default_lease_ttl
        self.max_lease_ttl = max_lease_ttl
        self.fetcher = fetcher
        self.token_factory = token_factory or Backend
        self.on_disable = on_disable
        self.retired = retired
        #: Settings ``login_errors_show_expected``, handed to every mount's SystemView.
        self.verbose_login_errors = verbose_login_errors
        self.mounts: dict[str, Mount] = {}
        self._by_uuid: dict[str, Mount] = {}
        #: The built-in backends' tuning (``tune_builtin``), by point: ``{"sys/": {...}}``.
        self.builtin: dict[str, dict[str, list[str]]] = {}
        self._accessors: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        self._refresh = Refresh(self.reload, "mounts_reload_failed")

    # -- lookup ------------------------------------------------------------------------
    def match(self, path: str) -> tuple[Mount, str] | None:
        """Longest-prefix match of a path below ``auth/``: (mount, path relative to it)."""
        mounts = self.mounts
        probe = path if path.endswith("/") else path + "/"
        end = len(probe)
        while end > 0:
            m = mounts.get(probe[:end])
            if m is not None:
                return m, path[end:] if end <= len(path) else ""
            end = probe.rfind("/", 0, end - 1) + 1
        return None

    def effective_ttls(self, entry: MountEntry) -> tuple[int, int]:
        """(default, max) lease TTL of a mount, falling back to the system values."""
        return (
            entry.config.get("default_lease_ttl") or self.default_lease_ttl,
            entry.config.get("max_lease_ttl") or self.max_lease_ttl,
        )

    def get(self, path: str) -> Mount | None:
        """The mount at exactly ``path`` (normalised), or None."""
        return self.mounts.get(normalize_path(path))

    # -- lifecycle ---------------------------------------------------------------------
    async def load(self) -> None:
        """Load the table from storage, creating it (with ``token/``) on first start."""
        def ensure_token(old: Any) -> Any:
            entries = list((old or {}).get("entries", []))
            if not any(e.get("path") == "token/" for e in entries):
                entries.insert(0, self._new_entry("token/", "token", "token based credentials", {}).to_json())
                return _table(old, entries)
            return old

        stored = await self.storage.update(MOUNTS_KEY, ensure_token)
        self._apply(stored)
        for mount in list(self.mounts.values()):
            await mount.backend.initialize(
                Request(operation=Operation.READ, path="", storage=mount.storage, system=mount.system)
            )

    def _apply(self, stored: Any) -> list[Mount]:
        """Make the in-memory table match ``stored``; return mounts that went away."""
        entries = [MountEntry.from_json(e) for e in (stored or {}).get("entries", [])]
        new: dict[str, Mount] = {}
        for entry in entries:
            current = self.mounts.get(entry.path)
            if current is not None and current.entry.uuid == entry.uuid:
                current.entry = entry
                new[entry.path] = current
                continue
            backend = self._build_backend(entry.type)
            if backend is None:
                log.error("mount_type_unavailable", mount=entry.path, type=entry.type)
                continue
            prefix = f"auth/{entry.uuid}/"
            system = MountSystemView(self, entry.path, self.fetcher, PrefixSealer(self.sealer, prefix))
            new[entry.path] = system._mount = Mount(entry, backend, PrefixedStorage(self.storage, prefix), system)
        gone = [m for p, m in self.mounts.items() if p not in new or new[p] is not m]
        builtin = (stored or {}).get("builtin")
        self.builtin = {k: dict(v) for k, v in builtin.items()} if isinstance(builtin, dict) else {}
        self.mounts = new
        self._by_uuid = {m.entry.uuid: m for m in new.values()}
        self._accessors = frozenset(m.entry.accessor for m in new.values())
        return gone

    def has_accessor(self, accessor: str) -> bool:
        """Whether a mount with this accessor exists (tokens of a removed mount are dead)."""
        return accessor in self._accessors

    def _build_backend(self, type_name: str) -> Backend | None:
        if type_name == "token":
            return self.token_factory()
        factory = registry.factory_for(type_name)
        return factory() if factory is not None else None

    def _new_entry(self, path: str, type_name: str, description: str, config: dict[str, Any]) -> MountEntry:
        return MountEntry(
            path=path, type=type_name, description=description,
            accessor=_new_accessor(type_name), uuid=str(uuid.uuid4()),
            config=_default_config() | config,
        )

    async def close(self) -> None:
        """Release every backend."""
        self._refresh.cancel()
        for mount in self.mounts.values():
            await _cleanup(mount)

    # -- changes -----------------------------------------------------------------------
    async def enable(
        self,
        path: str,
        type_name: str,
        *,
        description: str = "",
        config: Mapping[str, Any] | None = None,
        local: bool = False,
        seal_wrap: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> MountEntry:
        """Mount a new auth method.

        :raises InvalidRequest: bad path, nested/duplicate path, unknown type, bad config.
        """
        norm = normalize_path(path)
        if not isinstance(type_name, str) or not type_name:
            raise InvalidRequest("backend type must be specified as a string")
        if type_name == "token" or registry.factory_for(type_name) is None:
            raise InvalidRequest(
                f"plugin not found in the catalog: {type_name} (available: {', '.join(registry.registered_types())})"
            )
        cfg = self._validate_config(config or {}, _default_config())
        entry = self._new_entry(norm, type_name, description, cfg)
        entry.local, entry.seal_wrap, entry.options = bool(local), bool(seal_wrap), dict(options or {})

        def add(old: Any) -> Any:
            entries = list((old or {}).get("entries", []))
            for e in entries:
                existing = e["path"]
                if existing.startswith(norm) or norm.startswith(existing):
                    raise InvalidRequest(f"path is already in use at {existing}")
            if any(e.get("accessor") == entry.accessor for e in entries):  # a live mount's: draw again
                raise _AccessorTaken()
            entries.append(entry.to_json())
            return _table(old, entries)

        async with self._lock:
            while True:
                # An accessor names one mount for good: a disabled mount's revocation epoch
                # would kill the tokens of a new mount that drew the same 32 random bits.
                while self.retired is not None and await self.retired(entry.accessor):
                    entry.accessor = _new_accessor(type_name)
                try:
                    stored = await self.storage.update(MOUNTS_KEY, add)
                    break
                except _AccessorTaken:
                    entry.accessor = _new_accessor(type_name)
            self._apply(stored)
        log.info("mount_enabled", mount=norm, type=type_name, accessor=entry.accessor)
        return entry

    async def disable(self, path: str) -> bool:
        """Unmount: persist, revoke the mount's tokens, delete its storage, clean up.

        Returns False when nothing was mounted there (not an error, like Vault). The stored
        table decides, not this node's copy: a mount another node made a moment ago (its
        announcement still on the way) is disabled, and of two nodes disabling one mount
        at once only one revokes its tokens.

        :raises InvalidRequest: for ``token/``.
        """
        norm = normalize_path(path)
        if norm == "token/":
            raise InvalidRequest("token credential backend cannot be disabled")
        removed: list[MountEntry] = []

        def remove(old: Any) -> Any:
            entries = list((old or {}).get("entries", []))
            kept = [e for e in entries if e["path"] != norm]
            if len(kept) == len(entries):
                raise _NotMounted()  # nothing to write
            removed[:] = [MountEntry.from_json(e) for e in entries if e["path"] == norm]
            return _table(old, kept)

        async with self._lock:
            try:
                gone = self._apply(await self.storage.update(MOUNTS_KEY, remove))
            except _NotMounted:  # this node's copy may still show it (disabled elsewhere)
                gone = self._apply(await self.storage.get(MOUNTS_KEY)) if norm in self.mounts else []
        if removed:
            entry = removed[0]
            if self.on_disable is not None:
                await self.on_disable(entry)
            await self.storage.delete_prefix(f"auth/{entry.uuid}/")
            log.info("mount_disabled", mount=norm, accessor=entry.accessor)
        for mount in gone:
            await _cleanup(mount)
        return bool(removed)

    def tune_info(self, mount: Mount) -> dict[str, Any]:
        """The flat ``sys/auth/<path>/tune`` read body (effective TTLs)."""
        dflt, mx = self.effective_ttls(mount.entry)
        cfg = mount.entry.config
        out: dict[str, Any] = {
            "default_lease_ttl": dflt, "max_lease_ttl": mx,
            "force_no_cache": bool(cfg.get("force_no_cache", False)),
            "token_type": cfg.get("token_type", "default-service"),
            "description": mount.entry.description,
        }
        for key in ("listing_visibility", *_LIST_KEYS):
            if cfg.get(key):
                out[key] = cfg[key]
        if mount.entry.options:  # as Vault: only a mount that has options shows them
            out["options"] = dict(mount.entry.options)
        return out

    async def tune(self, path: str, values: Mapping[str, Any]) -> MountEntry:
        """Change a mount's TTLs, token type, description, ... (``options`` add to its options)

        :raises InvalidRequest: unknown mount or a bad value (nothing is changed then).
        """
        norm = normalize_path(path)
        async with self._lock:  # the stored table decides whether the mount exists (as disable)
            description = None
            if "description" in values:
                description = coerce("description", TUNE_FIELDS["description"], values["description"])
            added = coerce("options", TUNE_FIELDS["options"], values["options"]) if "options" in values else {}

            def change(old: Any) -> Any:
                # On the stored entry, not this node's copy: another node's tune a moment ago
                # (its announcement still on the way) is kept, not written over.
                entries = list((old or {}).get("entries", []))
                for e in entries:
                    if e["path"] == norm:
                        stored = MountEntry.from_json(e)
                        e["config"] = self._validate_config(values, stored.config, tune=True)
                        e["description"] = stored.description if description is None else description
                        e["options"] = stored.options | added
                        return _table(old, entries)
                raise InvalidRequest(f'tune of path "auth/{norm}" failed: no mount entry found')

            stored = await self.storage.update(MOUNTS_KEY, change)
            self._apply(stored)
            return self.mounts[norm].entry

    async def tune_builtin(self, point: str, values: Mapping[str, Any]) -> None:
        """Tune the built-in backend at ``point`` (``sys/``, ``identity/``): only
        ``BUILTIN_TUNABLE``, as OpenBao; each list replaces the stored one. ``values``: the
        tune fields the request sent (the path's own field left out).

        :raises InvalidRequest: ``cannot tune parameter <field> of <point>`` (OpenBao's text)
            for any other tune field, or a value that is not a list of strings.
        """
        refused = sorted(k for k in values if k not in BUILTIN_TUNABLE)
        if refused:
            raise InvalidRequest(f"cannot tune parameter {refused[0]} of {point}")
        parsed, _ = MOUNT_CONFIG_FIELDS.parse(dict(values))  # only BUILTIN_TUNABLE is left
        if not parsed:
            return

        def change(old: Any) -> Any:
            table = dict(old or {})
            builtin = dict(table.get("builtin") or {})
            builtin[point] = {k: v for k, v in {**builtin.get(point, {}), **parsed}.items() if v}
            table["builtin"] = builtin
            return table

        async with self._lock:
            self._apply(await self.storage.update(MOUNTS_KEY, change))

    async def move(self, src: str, dst: str, migration_id: str) -> MountEntry:
        """Move the mount at ``src`` to ``dst`` (``sys/remount``): its accessor, uuid, storage,
        config and roles go with it; the move is stored with ``migration_id`` in the entry's
        ``moves`` until ``moved`` says its old tokens are revoked.

        :raises InvalidRequest: Vault's texts: no mount at exactly ``src``, ``token/`` on either
            side, or ``dst`` overlapping a mount (``src`` itself included, as in Vault).
        """
        src, dst = normalize_path(src), normalize_path(dst)
        if _is_token_path(src):
            raise InvalidRequest(f'cannot remount "auth/{src}"')
        if _is_token_path(dst):
            raise InvalidRequest(f'cannot remount to destination "auth/{dst}"')
        moved: list[MountEntry] = []

        def change(old: Any) -> Any:
            entries = list((old or {}).get("entries", []))
            index = next((i for i, e in enumerate(entries) if e["path"] == src), None)
            if index is None:  # the stored table decides (a mount made elsewhere a moment ago counts)
                raise InvalidRequest(f'no matching mount at "auth/{src}"')
            for e in entries:
                if e["path"].startswith(dst) or dst.startswith(e["path"]):
                    raise InvalidRequest(f'path already in use at "auth/{e["path"]}"')
            entry = MountEntry.from_json(entries[index])
            entry.path = dst
            entry.moves.append({"id": migration_id, "from": src})
            entries[index] = entry.to_json()
            moved[:] = [entry]
            return _table(old, entries)

        async with self._lock:
            gone = self._apply(await self.storage.update(MOUNTS_KEY, change))
        for mount in gone:
            await _cleanup(mount)
        log.info("mount_moved", mount=dst, moved_from=src, accessor=moved[0].accessor, migration_id=migration_id)
        return moved[0]

    async def moved(self, accessor: str, migration_id: str) -> None:
        """The tokens of move ``migration_id`` are revoked: drop it from its mount's ``moves``
        (nothing, when the mount has been disabled since)."""
        def change(old: Any) -> Any:
            entries = list((old or {}).get("entries", []))
            for i, e in enumerate(entries):
                if e.get("accessor") == accessor and any(m.get("id") == migration_id for m in e.get("moves") or ()):
                    entry = MountEntry.from_json(e)
                    entry.moves = [m for m in entry.moves if m.get("id") != migration_id]
                    entries[i] = entry.to_json()
                    return _table(old, entries)
            raise _NotMounted()

        async with self._lock:
            try:
                self._apply(await self.storage.update(MOUNTS_KEY, change))
            except _NotMounted:
                pass

    def _validate_config(self, values: Mapping[str, Any], base: dict[str, Any], *, tune: bool = False) -> dict[str, Any]:
        """``base`` changed by the ``MOUNT_CONFIG_FIELDS`` present in ``values`` (others are
        ignored), with OpenBao's TTL checks: on enable, a default above the given max, or
        above the server's max when no max is given; on tune, a max below the default when
        both are set. A mount's max may exceed the server's, as in Vault (it overrides it).

        :raises InvalidRequest: a bad value, or TTLs out of order.
        """
        given = {k: v for k, v in values.items() if k in MOUNT_CONFIG_FIELDS}
        if tune:  # Vault: an empty TTL is left as it is (the CLI sends both TTLs on every tune)
            given = {k: v for k, v in given.items() if not (k in _TTL_FIELDS and v in ("", None))}
        parsed, _ = MOUNT_CONFIG_FIELDS.parse(given)
        parsed = {k: 0 if k in _TTL_FIELDS and v is None else v for k, v in parsed.items()}
        cfg = dict(base) | parsed
        dflt, mx = cfg["default_lease_ttl"], cfg["max_lease_ttl"]
        if tune:
            if dflt and mx and mx < dflt:
                raise InvalidRequest(f"backend max lease TTL of {mx} would be less than backend default lease TTL of {dflt}")
        elif mx and dflt > mx:
            raise InvalidRequest("given default lease TTL greater than given max lease TTL")
        elif not mx and dflt > self.max_lease_ttl:
            raise InvalidRequest(f"given default lease TTL greater than system max lease TTL of {self.max_lease_ttl}")
        return cfg

    # -- other nodes -------------------------------------------------------------------
    def invalidate(self, key: str) -> None:
        """Storage says another node changed ``key``: reload the table or tell the backend."""
        if key == MOUNTS_KEY or key == "":
            self._refresh.request()  # a re-read running now may have read before this change
            if key == MOUNTS_KEY:
                return
        if key.startswith("auth/"):
            uid, _, rest = key[5:].partition("/")
            mount = self._by_uuid.get(uid)
            if mount is not None:
                mount.backend.invalidate(rest)
        elif key == "":
            for mount in self.mounts.values():
                mount.backend.invalidate("")

    async def match_fresh(self, path: str) -> tuple[Mount, str] | None:
        """``match``; on a miss with storage shared by several nodes, re-read the table and
        try again, so a mount made on another node a moment ago is found at once (its
        notification may still be on the way). Concurrent misses share one read."""
        found = self.match(path)  # every request through a mount: a hit creates no coroutine
        return found if found is not None else await self._refresh.unless(lambda: self.match(path), shared=self.storage.shared)

    async def get_fresh(self, key: str) -> Mount | None:
        """The mount at the normalised path ``key`` (``"jwt/"``), with the same re-read on
        a miss as ``match_fresh``."""
        return await self._refresh.unless(lambda: self.mounts.get(key), shared=self.storage.shared)

    async def reload(self) -> None:
        """Re-read ``core/mounts`` and apply it (mounts removed elsewhere are cleaned up)."""
        async with self._lock:
            gone = self._apply(await self.storage.get(MOUNTS_KEY))
        for mount in gone:
            await _cleanup(mount)


async def _cleanup(mount: Mount) -> None:
    try:
        await mount.backend.cleanup()
    except Exception:  # a broken backend must not stop unmounting or shutdown
        log.exception("mount_cleanup_failed", mount=mount.entry.path)
