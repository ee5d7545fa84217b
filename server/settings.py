"""Server settings: YAML → frozen dataclasses, validated once at startup."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plugin.schema import parse_duration

__all__ = [
    "SettingsError",
    "StorageSettings",
    "MountSeed",
    "RateLimitSettings",
    "Settings",
    "load_settings",
    "settings_from_mapping",
    "dev_settings",
]

STORAGE_TYPES = ("memory", "sqlite", "postgres")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
#: ``asyncio``: the standard library's loop, the default: it serves ready connections in
#: turn, so an overloaded server slows everyone a little (docs/performance.md). ``uvloop``:
#: a few percent less CPU per request, but under overload it lets some connections wait
#: seconds while others are served (p99 5.6 s at 512 connections in bench).
EVENT_LOOPS = ("asyncio", "uvloop")
DEFAULT_TTL = 768 * 3600


class SettingsError(ValueError):
    """A bad setting; the message starts with the dotted key (``storage.type: ...``)."""


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Where the server keeps its state."""

    type: str = "sqlite"
    path: str = "data/authmount.db"
    dsn: str = ""
    #: Engine-specific tuning passed through untouched (``sqlite_synchronous``, ``pool_size``).
    options: Mapping[str, Any] = field(default_factory=dict)

    def as_mapping(self) -> dict[str, Any]:
        """The flat mapping ``server.storage.open_storage`` reads."""
        return {**self.options, "type": self.type, "path": self.path, "dsn": self.dsn}


@dataclass(frozen=True, slots=True)
class MountSeed:
    """A mount created (idempotently) at every start, with its config and roles."""

    path: str
    type: str
    description: str = ""
    #: Mount-level tune values (default_lease_ttl, max_lease_ttl, token_type, ...).
    tune: Mapping[str, Any] = field(default_factory=dict)
    #: Written to ``auth/<path>/config`` through the backend.
    config: Mapping[str, Any] | None = None
    #: ``{role name: role fields}`` written to ``auth/<path>/role/<name>``.
    roles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Abuse limits on the unauthenticated paths (``login``, ``oidc/*``); 0 disables a limit."""

    #: Token bucket refill rate per client IP (IPv6: per /64).
    login_per_ip_per_second: float = 50.0
    #: Token bucket size: how many requests one IP may send at once.
    login_burst: int = 100
    #: Unauthenticated requests running at once, all clients together; excess waits briefly, then 429.
    max_concurrent_logins: int = 256


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server needs to start. Build with ``load_settings``."""

    listen_address: str = "127.0.0.1:8200"
    storage: StorageSettings = field(default_factory=StorageSettings)
    default_lease_ttl: int = DEFAULT_TTL
    max_lease_ttl: int = DEFAULT_TTL
    log_level: str = "info"
    log_format: str = "json"
    event_loop: str = "asyncio"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    x_forwarded_for_hop_skips: int = 0
    max_request_size: int = 1 << 20
    workers: int = 1
    cluster_name: str = "authmount"
    mounts: tuple[MountSeed, ...] = ()
    #: ``{policy name: HCL or JSON text}`` written at every start.
    policies: Mapping[str, str] = field(default_factory=dict)
    dev: bool = False
    #: Root token id to create at start (dev mode); random when empty.
    dev_root_token_id: str = ""
    #: Seconds in-flight requests get to finish on shutdown.
    shutdown_timeout: float = 30.0
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    #: Refused logins tell anonymous callers what the role expects (bound subject, audiences,
    #: claim values). For development only: those values tell an attacker what to aim for.
    login_errors_show_expected: bool = False

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


_TOP_KEYS = {
    "listen_address", "storage", "default_lease_ttl", "max_lease_ttl", "log_level",
    "log_format", "trusted_proxies", "x_forwarded_for_hop_skips", "max_request_size",
    "workers", "cluster_name", "mounts", "policies", "shutdown_timeout", "rate_limit",
    "event_loop", "login_errors_show_expected",
}
_STORAGE_KEYS = {"type", "path", "dsn", "sqlite_synchronous", "pool_size"}
_MOUNT_KEYS = {"path", "type", "description", "tune", "config", "roles"}
_RATE_LIMIT_KEYS = {"login_per_ip_per_second", "login_burst", "max_concurrent_logins"}


def load_settings(path: str | Path) -> Settings:
    """Read and validate a YAML settings file.

    :raises SettingsError: naming the first bad key; also for unreadable or invalid YAML.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: invalid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    return settings_from_mapping(raw)


def settings_from_mapping(raw: Any, **overrides: Any) -> Settings:
    """Validate an already-parsed mapping (the YAML document) into ``Settings``.

    :raises SettingsError: naming the first bad key.
    """
    if not isinstance(raw, Mapping):
        raise SettingsError("settings: must be a mapping")
    for key in raw:
        if key not in _TOP_KEYS:
            raise SettingsError(f"{key}: unknown setting")
    values: dict[str, Any] = {}
    if "listen_address" in raw:
        addr = _string(raw, "listen_address")
        try:
            split_host_port(addr)
        except ValueError as exc:
            raise SettingsError(f"listen_address: {exc}") from exc
        values["listen_address"] = addr
    values["storage"] = _storage(raw.get("storage", {}))
    for key in ("default_lease_ttl", "max_lease_ttl"):
        if key in raw:
            values[key] = _duration(raw[key], key)
    dflt = values.get("default_lease_ttl", DEFAULT_TTL)
    mx = values.get("max_lease_ttl", DEFAULT_TTL)
    if dflt > mx:
        raise SettingsError("default_lease_ttl: must not be greater than max_lease_ttl")
    if "log_level" in raw:
        values["log_level"] = _choice(raw, "log_level", LOG_LEVELS, lower=True)
    if "log_format" in raw:
        values["log_format"] = _choice(raw, "log_format", LOG_FORMATS, lower=True)
    if "event_loop" in raw:
        values["event_loop"] = _choice(raw, "event_loop", EVENT_LOOPS, lower=True)
    if "trusted_proxies" in raw:
        values["trusted_proxies"] = _cidrs(raw["trusted_proxies"])
    if "x_forwarded_for_hop_skips" in raw:
        values["x_forwarded_for_hop_skips"] = _int(raw, "x_forwarded_for_hop_skips", 0)
    if "max_request_size" in raw:
        values["max_request_size"] = _int(raw, "max_request_size", 1024)
    if "workers" in raw:
        values["workers"] = _int(raw, "workers", 1)
    if "cluster_name" in raw:
        values["cluster_name"] = _string(raw, "cluster_name")
    if "shutdown_timeout" in raw:
        values["shutdown_timeout"] = float(_duration(raw["shutdown_timeout"], "shutdown_timeout"))
    if "mounts" in raw:
        values["mounts"] = _mounts(raw["mounts"])
    if "policies" in raw:
        values["policies"] = _policies(raw["policies"])
    if "rate_limit" in raw:
        values["rate_limit"] = _rate_limit(raw["rate_limit"])
    if "login_errors_show_expected" in raw:
        if not isinstance(raw["login_errors_show_expected"], bool):
            raise SettingsError("login_errors_show_expected: must be true or false")
        values["login_errors_show_expected"] = raw["login_errors_show_expected"]
    values.update(overrides)
    return Settings(**values)


def dev_settings(root_token_id: str = "", listen_address: str = "127.0.0.1:8200") -> Settings:
    """Settings of ``authmount server --dev``: in-memory storage, console logs."""
    try:
        split_host_port(listen_address)
    except ValueError as exc:
        raise SettingsError(f"dev-listen-address: {exc}") from exc
    return Settings(
        listen_address=listen_address,
        storage=StorageSettings(type="memory", path=""),
        log_format="console",
        dev=True,
        dev_root_token_id=root_token_id,
    )


# -- helpers ---------------------------------------------------------------------------
def _string(raw: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise SettingsError(f"{prefix}{key}: must be a string")
    return value


def _choice(raw: Mapping[str, Any], key: str, options: tuple[str, ...], *, prefix: str = "", lower: bool = False) -> str:
    value = raw[key]
    if isinstance(value, str) and lower:
        value = value.lower()
    if value not in options:
        raise SettingsError(f"{prefix}{key}: must be one of {', '.join(options)}")
    return str(value)


def _int(raw: Mapping[str, Any], key: str, minimum: int) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingsError(f"{key}: must be an integer >= {minimum}")
    return value


def _duration(value: Any, key: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise SettingsError(f"{key}: invalid duration: {exc}") from exc


def _storage(raw: Any) -> StorageSettings:
    if not isinstance(raw, Mapping):
        raise SettingsError("storage: must be a mapping")
    for key in raw:
        if key not in _STORAGE_KEYS:
            raise SettingsError(f"storage.{key}: unknown setting")
    stype = _choice(raw, "type", STORAGE_TYPES, prefix="storage.") if "type" in raw else "sqlite"
    path = _string(raw, "path", "storage.") if "path" in raw else ("data/authmount.db" if stype == "sqlite" else "")
    dsn = _string(raw, "dsn", "storage.") if "dsn" in raw else ""
    if stype == "sqlite" and not path:
        raise SettingsError("storage.path: required for sqlite storage")
    if stype == "postgres" and not dsn:
        raise SettingsError("storage.dsn: required for postgres storage")
    options: dict[str, Any] = {}
    if "sqlite_synchronous" in raw:
        options["sqlite_synchronous"] = _choice(raw, "sqlite_synchronous", ("NORMAL", "FULL", "EXTRA"), prefix="storage.")
    if "pool_size" in raw:
        value = raw["pool_size"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingsError("storage.pool_size: must be an integer >= 1")
        options["pool_size"] = value
    return StorageSettings(type=stype, path=path, dsn=dsn, options=options)


def _rate_limit(raw: Any) -> RateLimitSettings:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SettingsError("rate_limit: must be a mapping")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _RATE_LIMIT_KEYS:
            raise SettingsError(f"rate_limit.{key}: unknown setting")
        if key == "login_per_ip_per_second":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise SettingsError(f"rate_limit.{key}: must be a number >= 0 (0 disables the limit)")
            values[key] = float(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SettingsError(f"rate_limit.{key}: must be an integer >= 0 (0 disables the limit)")
            values[key] = value
    return RateLimitSettings(**values)


def _cidrs(raw: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if isinstance(raw, str):
        raw = [p for p in (s.strip() for s in raw.split(",")) if p]
    if not isinstance(raw, list):
        raise SettingsError("trusted_proxies: must be a list of CIDRs")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError as exc:
            raise SettingsError(f"trusted_proxies[{i}]: invalid CIDR {item!r}") from exc
    return tuple(out)


def _mounts(raw: Any) -> tuple[MountSeed, ...]:
    if not isinstance(raw, list):
        raise SettingsError("mounts: must be a list")
    seeds = []
    for i, item in enumerate(raw):
        where = f"mounts[{i}]."
        if not isinstance(item, Mapping):
            raise SettingsError(f"mounts[{i}]: must be a mapping")
        for key in item:
            if key not in _MOUNT_KEYS:
                raise SettingsError(f"{where}{key}: unknown setting")
        for key in ("path", "type"):
            if key not in item or not isinstance(item[key], str) or not item[key].strip("/"):
                raise SettingsError(f"{where}{key}: required string")
        desc = _string(item, "description", where) if "description" in item else ""
        tune = item.get("tune") or {}
        if not isinstance(tune, Mapping):
            raise SettingsError(f"{where}tune: must be a mapping")
        config = item.get("config")
        if config is not None and not isinstance(config, Mapping):
            raise SettingsError(f"{where}config: must be a mapping")
        roles = item.get("roles") or {}
        if not isinstance(roles, Mapping) or not all(isinstance(v, Mapping) for v in roles.values()):
            raise SettingsError(f"{where}roles: must map role names to mappings")
        seeds.append(
            MountSeed(
                path=item["path"], type=item["type"], description=desc, tune=dict(tune),
                config=dict(config) if config is not None else None,
                roles={str(k): dict(v) for k, v in roles.items()},
            )
        )
    return tuple(seeds)


def _policies(raw: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise SettingsError("policies: must map policy names to HCL or JSON text")
    out = {}
    for name, text in raw.items():
        if isinstance(text, Mapping):
            text = json.dumps(text)
        if not isinstance(text, str):
            raise SettingsError(f"policies.{name}: must be HCL or JSON text")
        out[str(name)] = text
    return out
