"""Server settings: YAML → frozen dataclasses, validated once at startup.

Every setting is declared once, as a dataclass field made with ``setting(...)``: its default,
its type and meaning for the docs, and the parser that checks a YAML value. The loader
(``settings_from_mapping``), the settings table of docs/configuration.md
(``scripts/gen_docs.py``, from ``documented_settings``) and the tests all read these
declarations; a key without one is refused (``<key>: unknown setting``). To add a setting,
add one field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from plugin.pathdoc import closest
from plugin.schema import parse_duration
from server.acl.policies import TEMPLATE_FLAGS

__all__ = [
    "SettingsError",
    "Setting",
    "StorageSettings",
    "MountSeed",
    "RateLimitSettings",
    "AuditSeed",
    "TelemetrySettings",
    "Settings",
    "load_settings",
    "settings_from_mapping",
    "dev_settings",
    "documented_settings",
    "split_host_port",
    "is_origin",
]

STORAGE_TYPES = ("memory", "sqlite", "postgres")
SQLITE_SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
TLS_VERSIONS = ("tls12", "tls13")
#: ``asyncio``: the standard library's loop, the default: it serves ready connections in
#: turn, so an overloaded server slows everyone a little (docs/performance.md). ``uvloop``:
#: a few percent less CPU per request, but under overload it lets some connections wait
#: seconds while others are served (p99 5.6 s at 512 connections in bench).
EVENT_LOOPS = ("asyncio", "uvloop")
DEFAULT_TTL = 768 * 3600
DEFAULT_SQLITE_PATH = "data/authmount.db"

_T = TypeVar("_T")
#: Checks one YAML value: (value, dotted key) -> the setting's value.
Parser = Callable[[Any, str], Any]


class SettingsError(ValueError):
    """A bad setting; the message starts with the dotted key (``storage.type: ...``)."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of the settings table: how a YAML value is checked and how it is documented.

    ``parse`` raises ``SettingsError`` naming the key. ``shown`` is the docs' default when
    the value does not say it well. ``section`` is the dataclass of a nested mapping (a
    list of them with ``many``). ``engine``: a storage option only that engine reads.
    """

    kind: str
    doc: str
    parse: Parser
    shown: str | None = None
    section: type | None = None
    many: bool = False
    engine: str = ""


def setting(
    default: Any = MISSING,
    *,
    kind: str,
    doc: str,
    parse: Parser,
    factory: Callable[[], Any] | None = None,
    shown: str | None = None,
    section: type | None = None,
    many: bool = False,
    engine: str = "",
) -> Any:
    """A dataclass field declaring one setting (no default and no factory: required)."""
    meta = {"setting": Setting(kind, doc, parse, shown, section, many, engine)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# -- parsers: (YAML value, dotted key) -> value --------------------------------------------
def _string(raw: Any, key: str) -> str:
    if not isinstance(raw, str):
        raise SettingsError(f"{key}: must be a string")
    return raw


def is_origin(text: str) -> bool:
    """Whether ``text`` is an origin: ``http`` or ``https``, a host and an optional port,
    nothing more (``https://authmount.example.com:8200``). The form of a browser's ``Origin``
    (CORS), of ``api_addr`` and of an identity token issuer (Vault's rule for both)."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc
            and text == f"{parts.scheme}://{parts.netloc}")


def _api_addr(raw: Any, key: str) -> str:
    """An origin (a trailing ``/`` dropped), or ``""``."""
    text = _string(raw, key).rstrip("/")
    if text and not is_origin(text):
        raise SettingsError(f"{key}: must be a URL of scheme, host and optional port (https://authmount.example.com:8200)")
    return text


def _bool(raw: Any, key: str) -> bool:
    if not isinstance(raw, bool):
        raise SettingsError(f"{key}: must be true or false")
    return raw


def _required_string(raw: Any, key: str) -> str:
    if not isinstance(raw, str) or not raw.strip("/"):
        raise SettingsError(f"{key}: required string")
    return raw


def _one_of(options: tuple[str, ...]) -> str:
    return " | ".join(f"`{o}`" for o in options)


def _choice(options: tuple[str, ...], *, lower: bool = False) -> Parser:
    def parse(raw: Any, key: str) -> str:
        value = raw.lower() if lower and isinstance(raw, str) else raw
        if value not in options:
            raise SettingsError(f"{key}: must be one of {', '.join(options)}")
        return str(value)

    return parse


def _int(minimum: int, note: str = "") -> Parser:
    def parse(raw: Any, key: str) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
            raise SettingsError(f"{key}: must be an integer >= {minimum}{note}")
        return raw

    return parse


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a
    container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - no affinity call on this OS
        return max(1, os.cpu_count() or 1)


def parse_workers(raw: Any, key: str = "workers") -> int:
    """An integer >= 1, or ``auto``: the number of usable cores (``usable_cores``)."""
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return usable_cores()
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise SettingsError(f"{key}: must be an integer >= 1 or auto")
    return raw


def _rate(raw: Any, key: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw < math.inf:
        raise SettingsError(f"{key}: must be a number >= 0 (0 disables the limit)")
    return float(raw)


def _duration(raw: Any, key: str) -> int:
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise SettingsError(f"{key}: invalid duration: {exc}") from exc


def _seconds(raw: Any, key: str) -> float:
    return float(_duration(raw, key))


def _address(raw: Any, key: str) -> str:
    value = _string(raw, key)
    try:
        split_host_port(value)
    except ValueError as exc:
        raise SettingsError(f"{key}: {exc}") from exc
    return value


def _cidrs(raw: Any, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if isinstance(raw, str):
        raw = [p for p in (s.strip() for s in raw.split(",")) if p]
    if not isinstance(raw, list):
        raise SettingsError(f"{key}: must be a list of CIDRs")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError as exc:
            raise SettingsError(f"{key}[{i}]: invalid CIDR {item!r}") from exc
    return tuple(out)




def _policies(raw: Any, key: str) -> dict[str, Any]:
    """``{name: text}``; a mapping value is the policy as JSON, unless it has a ``policy`` key:
    then it is ``{policy: text, allow_slashes_in_identity_templates: bool, ...}``."""
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{key}: must map policy names to HCL or JSON text")
    out: dict[str, Any] = {}
    for name, text in raw.items():
        if isinstance(text, Mapping) and "policy" in text:
            unknown = sorted(set(map(str, text)) - {"policy", *TEMPLATE_FLAGS})
            if unknown:
                raise SettingsError(f"{key}.{name}: unknown key {unknown[0]!r} (a policy with its flags takes "
                                    f"policy, {', '.join(TEMPLATE_FLAGS)})")
            flags = {}
            for flag in TEMPLATE_FLAGS:
                if not isinstance(text.get(flag, False), bool):
                    raise SettingsError(f"{key}.{name}.{flag}: must be true or false")
                flags[flag] = bool(text.get(flag, False))
            out[str(name)] = {"policy": _policy_text(text["policy"], f"{key}.{name}.policy"), **flags}
        else:
            out[str(name)] = _policy_text(text, f"{key}.{name}")
    return out


def _policy_text(text: Any, key: str) -> str:
    if isinstance(text, Mapping):
        return json.dumps(text)
    if not isinstance(text, str):
        raise SettingsError(f"{key}: must be HCL or JSON text")
    return text


def _mapping_or_empty(raw: Any, key: str) -> dict[str, Any]:
    value = raw or {}
    if not isinstance(value, Mapping):
        raise SettingsError(f"{key}: must be a mapping")
    return dict(value)


def _optional_mapping(raw: Any, key: str) -> dict[str, Any] | None:
    return None if raw is None else _mapping_or_empty(raw, key)


def _roles(raw: Any, key: str) -> dict[str, dict[str, Any]]:
    return _named_mappings(raw, key, "role names")


def _groups(raw: Any, key: str) -> dict[str, dict[str, Any]]:
    return _named_mappings(raw, key, "group names")


def _entities(raw: Any, key: str) -> dict[str, dict[str, Any]]:
    return _named_mappings(raw, key, "entity names")


def _rate_limit_quotas(raw: Any, key: str) -> dict[str, dict[str, Any]]:
    return _named_mappings(raw, key, "quota names")


def _identity_token_keys(raw: Any, key: str) -> dict[str, dict[str, Any]]:
    return _named_mappings(raw, key, "key names")


def _identity_token_roles(raw: Any, key: str) -> dict[str, dict[str, Any]]:
    return _named_mappings(raw, key, "role names")


def _oidc_objects(raw: Any, key: str) -> dict[str, dict[str, Any]]:
    return _named_mappings(raw, key, "names")


def _named_mappings(raw: Any, key: str, what: str) -> dict[str, dict[str, Any]]:
    value = raw or {}
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise SettingsError(f"{key}: must map {what} to mappings")
    return {str(k): dict(v) for k, v in value.items()}


# -- the declarations ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Where the server keeps its state (``open_storage`` reads ``as_mapping()``)."""

    type: str = setting(
        "sqlite", kind=_one_of(("sqlite", "postgres", "memory")), parse=_choice(STORAGE_TYPES),
        doc="`memory` loses everything at exit. See [operations](operations.md).",
    )
    path: str = setting(
        DEFAULT_SQLITE_PATH, kind="path", parse=_string,
        doc="SQLite file (relative to the working directory); required for `sqlite`.",
    )
    dsn: str = setting("", kind="string", parse=_string, doc="PostgreSQL connection string; required for `postgres`.")
    sqlite_synchronous: str = setting(
        "FULL", kind=_one_of(SQLITE_SYNCHRONOUS), parse=_choice(SQLITE_SYNCHRONOUS), engine="sqlite",
        doc="SQLite `synchronous` pragma. Below `FULL`, acknowledged writes may be lost on power failure.",
    )
    sqlite_cache_entries: int = setting(
        32768, kind="int ≥ 0", parse=_int(0), engine="sqlite",
        doc="SQLite: how many recently written values are kept in memory for reads (kept exact by the writer "
            "after each commit); `0` disables the cache.",
    )
    pool_size: int = setting(10, kind="int ≥ 1", parse=_int(1), engine="postgres",
                             doc="PostgreSQL connection pool size per node (plus one connection for LISTEN).")
    key_file: str = setting(
        "", kind="path", parse=_string, shown="next to `path` (suffix `.key`) for `sqlite`",
        doc="The storage key that seals every secret the server keeps (token salt, batch signing keys, client "
            "secrets, HMAC keys): created 0600 at first start, never stored in the database. Required for "
            "`postgres` (every node needs a copy of the same file) unless `AUTHMOUNT_STORAGE_KEY` is set, which "
            "wins. `memory` uses a key that lives as long as the process. See "
            "[operations](operations.md#the-storage-key).",
    )

    @property
    def key_path(self) -> str:
        """The key file in effect (``key_file``, else next to the SQLite file)."""
        if self.key_file:
            return self.key_file
        if self.type == "sqlite":
            return str(Path(self.path).with_suffix(".key"))
        return ""

    @staticmethod
    def _finish(values: dict[str, Any], prefix: str) -> dict[str, Any]:
        stype = values.get("type", "sqlite")
        if "path" not in values and stype != "sqlite":
            values["path"] = ""
        if stype == "sqlite" and not values.get("path", DEFAULT_SQLITE_PATH):
            raise SettingsError(f"{prefix}path: required for sqlite storage")
        if stype == "postgres" and not values.get("dsn"):
            raise SettingsError(f"{prefix}dsn: required for postgres storage")
        return values

    def as_mapping(self) -> dict[str, Any]:
        """The flat mapping ``server.storage.open_storage`` reads: type, path, dsn and the
        options of this engine."""
        out: dict[str, Any] = {"type": self.type, "path": self.path, "dsn": self.dsn}
        for f in dataclasses.fields(self):
            meta = f.metadata.get("setting")
            if meta is not None and meta.engine == self.type:
                out[f.name] = getattr(self, f.name)
        return out


@dataclass(frozen=True, slots=True)
class MountSeed:
    """A mount applied at every start (``server.gitops``), with its config and roles."""

    path: str = setting(kind="string", parse=_required_string,
                        doc="Mount path, e.g. `jwt` or `ci/jwt` (served at `/v1/auth/<path>/`).")
    type: str = setting(kind="`jwt` | `oidc`", parse=_required_string,
                        doc="Auth method type. A start fails if the path is already mounted with another type.")
    description: str = setting("", kind="string", parse=_string, doc="Shown by `sys/auth`.")
    tune: Mapping[str, Any] = setting(
        kind="mapping", factory=dict, parse=_mapping_or_empty,
        doc="Mount tune values, as `sys/auth/<path>/tune` (fields in the table below).",
    )
    config: Mapping[str, Any] | None = setting(
        None, kind="mapping", parse=_optional_mapping,
        doc="The whole `auth/<path>/config` (section 2); absent: the config is not managed. A remote key source "
            "is fetched and checked when the config is written.",
    )
    roles: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_roles,
        doc="`{role name: role fields}`, each the whole `auth/<path>/role/<name>` (section 3; a field left out "
            "is its default).",
    )


_DISABLES = " (0 disables the limit)"


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Abuse limits on the unauthenticated paths (``login``, ``oidc/*``, the OIDC provider's
    ``token`` and ``userinfo``); 0 disables a limit."""

    login_per_ip_per_second: float = setting(
        50.0, kind="number ≥ 0", parse=_rate,
        doc="Refill rate of each client IP's token bucket (one bucket per IP for all mounts; the IP after "
            "`trusted_proxies` handling; IPv6 clients grouped by /64). `0` disables the per-IP limit (e.g. for a "
            "load test from one host). At most 100,000 IPs are tracked; idle ones are forgotten. With `--workers` the "
            "workers share the buckets ([operations](operations.md#workers)).",
    )
    login_burst: int = setting(
        100, kind="int ≥ 0", parse=_int(0, _DISABLES),
        doc="Bucket size: how many requests one IP may send at once before the refill rate applies. `0` disables "
            "the per-IP limit.",
    )
    max_concurrent_logins: int = setting(
        256, kind="int ≥ 0", parse=_int(0, _DISABLES),
        doc="Unauthenticated requests running at once, all clients together (caps concurrent JWT verifications "
            "and OIDC exchanges). A request over the cap waits up to 1 s for a slot, then gets the 429. `0` "
            "disables the cap. Per process: with `--workers N` each worker has this many.",
    )


@dataclass(frozen=True, slots=True)
class AuditSeed:
    """An audit device enabled at every start (as ``sys/audit/<path>``)."""

    path: str = setting(kind="string", parse=_required_string,
                        doc="Device path, e.g. `file` (listed by `sys/audit` as `file/`).")
    type: str = setting(kind="`file` | `socket`", parse=_required_string,
                        doc="Device type. A start whose device cannot write stops with the reason.")
    description: str = setting("", kind="string", parse=_string, doc="Shown by `sys/audit`.")
    options: Mapping[str, Any] = setting(
        kind="mapping", factory=dict, parse=_mapping_or_empty,
        doc="Device options, as `sys/audit/<path>` takes them: `file_path`, `mode` (file); `address`, "
            "`socket_type`, `write_timeout` (socket); `hmac_accessor`, `log_raw`, `elide_list_responses`, `prefix`. "
            "A device already enabled at `path` takes these options and keeps its salt. See "
            "[operations](operations.md#audit-devices).",
    )


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Metrics (``sys/metrics``), Vault's ``telemetry`` options."""

    unauthenticated_metrics_access: bool = setting(
        False, kind="bool", parse=_bool,
        doc="`sys/metrics` answers without a token (Vault's listener option of the same name); otherwise it needs "
            "a token with `read` on `sys/metrics`.",
    )
    usage_gauge_period: float = setting(
        600.0, kind="duration", parse=_seconds,
        doc="How often the token gauges (`vault_token_count*`, `vault_expire_num_leases`) are computed, by a scan of "
            "every token (Vault's option of the same name); `0` disables them.",
    )


def _section(cls: type[_T], *, none_ok: bool = False) -> Parser:
    def parse(raw: Any, key: str) -> _T:
        return cls(**_values(cls, {} if raw is None and none_ok else raw, key, key + "."))

    return parse


def _sections(cls: type[_T]) -> Parser:
    def parse(raw: Any, key: str) -> tuple[_T, ...]:
        if not isinstance(raw, list):
            raise SettingsError(f"{key}: must be a list")
        return tuple(cls(**_values(cls, item, f"{key}[{i}]", f"{key}[{i}].")) for i, item in enumerate(raw))

    return parse


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server needs to start. Build with ``load_settings``."""

    listen_address: str = setting(
        "127.0.0.1:8200", kind="`host:port`", parse=_address,
        doc="Where the HTTP API listens (`[v6]:port` for IPv6; port 0 picks a free port, printed in the banner). "
            "`--listen-address` or `AUTHMOUNT_LISTEN_ADDRESS` override it. Plain HTTP unless `tls_cert_file` is set.",
    )
    api_addr: str = setting(
        "", kind="URL", parse=_api_addr,
        doc="The address clients reach this server at, as a URL of scheme, host and optional port (Vault's setting "
            "of that name; `https://authmount.example.com:8200` behind a load balancer). The default issuer of "
            "identity tokens (`identity/oidc/config`). Empty: `http(s)://` + `listen_address`, or none when that "
            "is every address (`0.0.0.0`).",
    )
    ui: bool = setting(
        False, kind="bool", parse=_bool,
        doc="Serve the sign-in page of the OIDC provider (Vault's `ui` setting; on with `--dev`): "
            "`/ui/vault/identity/oidc/provider/<name>/authorize`, where an application sends its users, signs them "
            "in through an auth mount's OIDC role (the jwt/oidc mounts tuned `listing_visibility: unauth`) and "
            "returns them with a code. authmount has no other UI.",
    )
    tls_cert_file: str = setting(
        "", kind="path", parse=_string,
        doc="PEM certificate (chain) of the listener: with `tls_key_file`, the API is served over TLS (Vault's "
            "`listener \"tcp\"` option of the same name). SIGHUP reloads both files.",
    )
    tls_key_file: str = setting("", kind="path", parse=_string,
                                doc="PEM private key of `tls_cert_file` (keep it mode 0600).")
    tls_min_version: str = setting(
        "tls12", kind=_one_of(TLS_VERSIONS), parse=_choice(TLS_VERSIONS, lower=True),
        doc="Oldest TLS version the listener accepts.",
    )
    tls_client_ca_file: str = setting(
        "", kind="path", parse=_string,
        doc="PEM CA bundle that client certificates are verified against (a client without one is still served "
            "unless `tls_require_and_verify_client_cert`).",
    )
    tls_require_and_verify_client_cert: bool = setting(
        False, kind="bool", parse=_bool,
        doc="Refuse TLS connections without a client certificate signed by `tls_client_ca_file` (mutual TLS).",
    )
    storage: StorageSettings = setting(
        kind="mapping", factory=StorageSettings, parse=_section(StorageSettings), section=StorageSettings,
        shown=f"`{{type: sqlite, path: {DEFAULT_SQLITE_PATH}}}`", doc="Where state lives; keys below.",
    )
    default_lease_ttl: int = setting(DEFAULT_TTL, kind="duration", parse=_duration,
                                     doc="Token TTL when neither the role nor the mount sets one.")
    max_lease_ttl: int = setting(DEFAULT_TTL, kind="duration", parse=_duration,
                                 doc="Upper bound of every token TTL, unless a mount's own `max_lease_ttl` (tune) overrides it; must be ≥ `default_lease_ttl`.")
    log_level: str = setting("info", kind=_one_of(LOG_LEVELS), parse=_choice(LOG_LEVELS, lower=True),
                             doc="Log verbosity (case-insensitive).")
    log_format: str = setting("json", kind=_one_of(LOG_FORMATS), parse=_choice(LOG_FORMATS, lower=True),
                              doc="One JSON object per line, or human-readable lines.")
    event_loop: str = setting(
        "asyncio", kind=_one_of(EVENT_LOOPS), parse=_choice(EVENT_LOOPS, lower=True),
        doc="The event loop. `uvloop` costs a few percent less CPU per request but, once the server is overloaded, "
            "lets some connections wait seconds while others are served (p99 5.6 s against 0.34 s at 512 "
            "connections, see [performance](performance.md)).",
    )
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(
        (), kind="list of CIDRs (or a comma string)", parse=_cidrs,
        doc="Peers allowed to set `X-Forwarded-For`. From any other peer the header is ignored.",
    )
    x_forwarded_for_hop_skips: int = setting(
        0, kind="int ≥ 0", parse=_int(0),
        doc="From a trusted proxy, the client IP is the XFF entry at `len - 1 - hop_skips` (Vault's rule; never "
            "the client-controlled leftmost one).",
    )
    max_request_size: int = setting(1 << 20, kind="int ≥ 1024 (bytes)", parse=_int(1024),
                                    doc="Larger request bodies are answered `413 http: request body too large`.")
    http_read_header_timeout: float = setting(
        10.0, kind="duration", parse=_seconds,
        doc="A connection must send a complete request header this long after it was accepted (and after the "
            "first byte of each later request), else it is closed (Vault's listener option of the same name).",
    )
    http_idle_timeout: float = setting(
        300.0, kind="duration", parse=_seconds,
        doc="An idle keep-alive connection is closed after this long (Vault's listener option of the same name).",
    )
    max_connections_per_ip: int = setting(
        256, kind="int ≥ 0", parse=_int(0),
        doc="Connections one client IP may hold open per process; more are closed at once. Peers in "
            "`trusted_proxies` are exempt (limit clients on the load balancer). `0` disables the limit.",
    )
    max_connections: int = setting(
        0, kind="int ≥ 0", parse=_int(0),
        doc="Connections one process holds at most; `0`: the file-descriptor limit (raised to the hard limit at "
            "start) minus a reserve of an eighth, at least 64. At the bound the oldest idle connection is closed "
            "to admit a new one. See [operations](operations.md#connection-limits).",
    )
    workers: int = setting(
        1, kind="int ≥ 1 or `auto`", parse=parse_workers,
        doc="Worker processes sharing the listen port (`SO_REUSEPORT`) and the storage (`sqlite`: one file in WAL "
            "mode, `postgres`; `memory`: one database in shared memory, `/dev/shm`, deleted at stop; not with "
            "`--dev`); `auto`: the usable cores. A supervisor restarts a worker that dies. Same as "
            "`--workers N|auto`. See [operations](operations.md#workers).",
    )
    cluster_name: str = setting("authmount", kind="string", parse=_string, doc="Reported by `sys/health`.")
    shutdown_timeout: float = setting(30.0, kind="duration", parse=_seconds,
                                      doc="On SIGTERM/SIGINT, how long in-flight requests get to finish.")
    mounts: tuple[MountSeed, ...] = setting(
        (), kind="list", parse=_sections(MountSeed), section=MountSeed, many=True,
        doc="Auth mounts applied at every start and on SIGHUP, as `authmount apply` without prune (only what "
            "differs is written, through the same write paths as the API; see section 5). Keys below.",
    )
    #: ``{policy name: HCL or JSON text}`` (or ``{policy, allow_...}``) written at every start.
    policies: Mapping[str, Any] = setting(
        kind="mapping", factory=dict, parse=_policies,
        doc="`{policy name: HCL or JSON text}` (a YAML mapping is taken as JSON), applied with `mounts`; with "
            "OpenBao's template flags, `{policy name: {policy: text, allow_slashes_in_identity_templates: bool, "
            "allow_wildcards_in_identity_templates: bool}}`.",
    )
    #: ``{token role name: fields}`` written at every start.
    token_roles: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_roles,
        doc="Token roles (`auth/token/roles/<name>`: `{role name: fields}`, the fields of the API write), "
            "applied with `mounts`.",
    )
    #: ``{group name: fields}`` written at every start.
    groups: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_groups,
        doc="Identity groups (`identity/group`: `{group name: type, policies, metadata, member_entity_ids, "
            "member_groups, alias}`; `member_groups` names the groups nested in an internal one; `alias` is "
            "`{mount: <mount path>, name: <the IdP's group name>}` for an external group), "
            "applied with `mounts` (see section 5).",
    )
    #: ``{entity name: fields}`` written at every start.
    entities: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_entities,
        doc="Identity entities made by name (`identity/entity`: `{entity name: policies, metadata, disabled, "
            "aliases}`; `aliases` is a list of `{mount: <mount path>, name: <the login's alias name>}`: the "
            "logins through that mount with that name get the entity), applied with `mounts` (see section 5).",
    )
    #: ``{key name: fields}`` written at every start.
    identity_token_keys: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_identity_token_keys,
        doc="Named keys of identity tokens (`identity/oidc/key/<name>`: `{key name: algorithm, rotation_period, "
            "verification_ttl, allowed_client_ids}`), applied with `mounts` (see section 5).",
    )
    #: ``{role name: fields}`` written at every start.
    identity_token_roles: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_identity_token_roles,
        doc="Identity token roles (`identity/oidc/role/<name>`: `{role name: key, template, ttl, client_id}`; "
            "without `client_id` the server makes one up and keeps it), applied with `mounts` (see section 5).",
    )
    #: The OIDC provider's objects, ``{name: fields}`` each, written at every start.
    oidc_scopes: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_oidc_objects,
        doc="Scopes of the OIDC provider (`identity/oidc/scope/<name>`: `{scope name: template, description}`), "
            "applied with `mounts` (see section 5).",
    )
    oidc_assignments: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_oidc_objects,
        doc="Assignments of the OIDC provider (`identity/oidc/assignment/<name>`: `{name: entity_ids, group_ids, "
            "groups, entities}`; `groups` and `entities` name them, as `groups` and `entities` here do, and are "
            "written as their ids), applied with `mounts` (see section 5).",
    )
    oidc_clients: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_oidc_objects,
        doc="Clients of the OIDC provider (`identity/oidc/client/<name>`: `{client name: redirect_uris, "
            "assignments, key, id_token_ttl, access_token_ttl, client_type}`; the server makes the `client_id` and "
            "secret, which a read of the client shows), applied with `mounts` (see section 5).",
    )
    oidc_providers: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_oidc_objects,
        doc="The OIDC providers (`identity/oidc/provider/<name>`: `{provider name: issuer, allowed_client_ids, "
            "allowed_clients, scopes_supported}`; `allowed_clients` names clients, written as their client IDs), "
            "applied with `mounts` (see section 5).",
    )
    #: ``{quota name: fields}`` written at every start.
    rate_limit_quotas: Mapping[str, Mapping[str, Any]] = setting(
        kind="mapping", factory=dict, parse=_rate_limit_quotas,
        doc="Vault's rate limit quotas (`sys/quotas/rate-limit/<name>`: `{quota name: path, rate, interval, "
            "block_interval, role, inheritable}`), applied with `mounts` (see section 5); beside `rate_limit`, the "
            "server's own limits.",
    )
    #: ``{allowed_origins, allowed_headers, allow_credentials}`` written at every start, or None.
    cors: Mapping[str, Any] | None = setting(
        None, kind="mapping", parse=_optional_mapping,
        doc="Vault's CORS settings (`sys/config/cors`: `{allowed_origins, allowed_headers, allow_credentials}`), "
            "applied with `mounts` (see section 5); absent: not managed (an `authmount apply --prune` turns "
            "CORS off).",
    )
    #: ``{rate_limit_exempt_paths}`` written at every start, or None.
    quota_config: Mapping[str, Any] | None = setting(
        None, kind="mapping", parse=_optional_mapping,
        doc="Vault's rate limit quota settings (`sys/quotas/config`: `{rate_limit_exempt_paths}`), applied with "
            "`mounts` (see section 5); absent: not managed.",
    )
    #: ``{enabled, interval, max_operations}`` written at every start, or None.
    rotate_config: Mapping[str, Any] | None = setting(
        None, kind="mapping", parse=_optional_mapping,
        doc="Vault's automatic rotation of the data key (`sys/rotate/config`: `{enabled, interval, "
            "max_operations}`; an `interval` of 24h at least), applied with `mounts` (see section 5); absent: not "
            "managed.",
    )
    rate_limit: RateLimitSettings = setting(
        kind="mapping", factory=RateLimitSettings, parse=_section(RateLimitSettings, none_ok=True),
        section=RateLimitSettings, shown="on, values below",
        doc="Abuse limits on the paths that need no token (`login`, `oidc/auth_url`, `oidc/callback` of every "
            "mount); over a limit the answer is `429 request path \"auth/<mount>/<path>\": rate limit quota "
            "exceeded` with `Retry-After`. Authenticated requests are never limited. Keys below; `0` disables a "
            "limit.",
    )
    audit: tuple[AuditSeed, ...] = setting(
        (), kind="list", parse=_sections(AuditSeed), section=AuditSeed, many=True,
        doc="Audit devices enabled at every start (idempotent, like `sys/audit/<path>`); more can be enabled over "
            "the API. Keys below; see [operations](operations.md#audit-devices).",
    )
    telemetry: TelemetrySettings = setting(
        kind="mapping", factory=TelemetrySettings, parse=_section(TelemetrySettings, none_ok=True),
        section=TelemetrySettings, shown="values below",
        doc="Metrics at `sys/metrics` ([operations](operations.md#metrics)). Keys below.",
    )
    initial_root_token_file: str = setting(
        "", kind="path", parse=_string,
        doc="Write the root token of the first start to this file (created mode 0600; it must not exist) "
            "instead of printing it: under systemd or Kubernetes stdout is a shared log. A lost root token is "
            "replaced with `authmount operator generate-root` (see [operations](operations.md#the-root-token)).",
    )
    login_errors_show_expected: bool = setting(
        False, kind="bool", parse=_bool,
        doc="Refused logins tell anonymous callers what the role expects (bound issuer, subject, audiences, claim "
            "values, CIDRs). For development only: those values tell an attacker which repository or branch to "
            "aim for. Explain and the server log always show them.",
    )
    refuse_unknown_parameters: bool = setting(
        False, kind="bool", parse=_bool,
        doc="A write to a path that needs a token (a role, a config, a tune, a policy) with a parameter the path "
            "does not declare is refused with `400 unrecognized parameters: [...]`, naming the field each one "
            "resembles, instead of being applied without it. Off, the write answers 200 with Vault's warning "
            "`Endpoint ignored these unrecognized parameters: [...]` and the same suggestions (the Vault CLI prints "
            "them). Logins are never refused for extra parameters. Seeded objects (`mounts`, `policies`) are always "
            "checked: an unknown key stops the start.",
    )
    # Not YAML settings: set by `authmount server --dev`.
    dev: bool = False
    #: Root token id to create at start (dev mode); random when empty.
    dev_root_token_id: str = ""
    #: The settings file these came from ("" when built in code): named by seeding errors,
    #: re-read on SIGHUP.
    source: str = ""

    @staticmethod
    def _finish(values: dict[str, Any], prefix: str) -> dict[str, Any]:
        if values.get("default_lease_ttl", DEFAULT_TTL) > values.get("max_lease_ttl", DEFAULT_TTL):
            raise SettingsError(f"{prefix}default_lease_ttl: must not be greater than max_lease_ttl")
        cert, key = values.get("tls_cert_file", ""), values.get("tls_key_file", "")
        if bool(cert) != bool(key):
            raise SettingsError(f"{prefix}{'tls_key_file' if cert else 'tls_cert_file'}: "
                                "tls_cert_file and tls_key_file go together")
        if values.get("tls_client_ca_file") and not cert:
            raise SettingsError(f"{prefix}tls_client_ca_file: needs tls_cert_file and tls_key_file")
        if values.get("tls_require_and_verify_client_cert") and not values.get("tls_client_ca_file"):
            raise SettingsError(f"{prefix}tls_require_and_verify_client_cert: needs tls_client_ca_file")
        return values

    @property
    def tls(self) -> bool:
        """Whether the listener serves TLS."""
        return bool(self.tls_cert_file)

    @property
    def host_port(self) -> tuple[str, int]:
        """``listen_address`` split into host and port."""
        return split_host_port(self.listen_address)


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too).

    :raises ValueError: when the port is missing or not a number in 0..65535.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("must be host:port")
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("port must be a number between 0 and 65535")
    return host, int(port)


# -- loading ----------------------------------------------------------------------------------
def _declared(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting")
        if meta is not None:
            yield f, meta


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _values(cls: type, raw: Any, where: str, prefix: str) -> dict[str, Any]:
    """The values of the settings of ``cls`` given in ``raw`` (a required one that is absent
    is parsed as null, so its parser names it), after the class's cross-field checks.

    :raises SettingsError: ``<where>: must be a mapping``, ``<prefix><key>: unknown setting``
        or a parser's message.
    """
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{where}: must be a mapping")
    declared = {f.name: (f, meta) for f, meta in _declared(cls)}
    for key in raw:
        if key not in declared:
            match = closest(str(key), declared)
            raise SettingsError(f"{prefix}{key}: unknown setting" + (f" (did you mean {match}?)" if match else ""))
    values: dict[str, Any] = {}
    for name, (f, meta) in declared.items():
        if name in raw or _required(f):
            values[name] = meta.parse(raw.get(name), prefix + name)
    finish = getattr(cls, "_finish", None)
    return finish(values, prefix) if finish is not None else values


def load_settings(path: str | Path) -> Settings:
    """Read and validate a YAML settings file.

    :raises SettingsError: naming the first bad key; also for unreadable or invalid YAML.
    """
    return settings_from_mapping(_read_yaml(path), source=str(path))


def _read_yaml(path: str | Path) -> Any:
    """The YAML document of a settings file (``{}`` when empty).

    :raises SettingsError: unreadable or invalid YAML.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: invalid YAML: {exc}") from exc
    return {} if raw is None else raw


def settings_from_mapping(raw: Any, **overrides: Any) -> Settings:
    """Validate an already-parsed mapping (the YAML document) into ``Settings``.

    :raises SettingsError: naming the first bad key.
    """
    return Settings(**(_values(Settings, raw, "settings", "") | overrides))


DEV_LISTEN_ADDRESS = "127.0.0.1:8200"


def dev_settings(
    root_token_id: str = "", listen_address: str | None = None, *, config: str | Path | None = None
) -> Settings:
    """Settings of ``authmount server --dev``: in-memory storage, console logs, on
    ``127.0.0.1:8200``. With ``config``, that file's settings apply on top of these
    defaults (as ``vault server -dev -config``), and ``listen_address`` (the
    ``--dev-listen-address`` flag) on top of the file.

    :raises SettingsError: a bad address or a bad key of the file.
    """
    if listen_address is not None:
        try:
            split_host_port(listen_address)
        except ValueError as exc:
            raise SettingsError(f"dev-listen-address: {exc}") from exc
    raw: dict[str, Any] = {}
    if config is not None:
        raw = _read_yaml(config)
        if not isinstance(raw, Mapping):
            raise SettingsError("settings: must be a mapping")
    base: dict[str, Any] = {"listen_address": DEV_LISTEN_ADDRESS, "storage": {"type": "memory"}, "log_format": "console",
                            "ui": True}
    merged = {**base, **raw}
    if listen_address is not None:
        merged["listen_address"] = listen_address
    return settings_from_mapping(merged, dev=True, dev_root_token_id=root_token_id,
                                 source=str(config) if config is not None else "")


# -- documentation ------------------------------------------------------------------------------
def documented_settings() -> Iterator[tuple[str, Setting, str]]:
    """Every YAML setting in declaration order: (dotted key, its Setting, the default as the
    docs show it); a section's keys follow the section (``storage.type``, ``mounts[].path``)."""
    yield from _rows(Settings, "")


def _rows(cls: type, prefix: str) -> Iterator[tuple[str, Setting, str]]:
    for f, meta in _declared(cls):
        key = prefix + f.name
        yield key, meta, _shown(f, meta)
        if meta.section is not None:
            yield from _rows(meta.section, key + ("[]." if meta.many else "."))


def _shown(f: dataclasses.Field[Any], meta: Setting) -> str:
    if meta.shown is not None:
        return meta.shown
    if _required(f):
        return "required"
    factory = f.default_factory
    value: Any = factory() if callable(factory) else f.default
    if value is None:
        return "none"
    if meta.kind == "duration":
        return f"`{_short_duration(int(value))}`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (tuple, list, Mapping)) and not value:
        return "`{}`" if isinstance(value, Mapping) else "`[]`"
    return f"`{json.dumps(value) if value == '' else value}`"


def _short_duration(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
