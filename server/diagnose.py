"""``authmount operator diagnose --config FILE`` (``vault operator diagnose``): every check a
start would make, and the ones a start would only fail on later, without serving, so a
settings change can be checked before a restart (or a failed start explained). It may run
beside the server that uses the settings: it reads the storage, writes nothing to it, and
binds no port it keeps.

Each check is one line: ``ok``, ``warn`` (the server starts, but look) or ``fail`` (it would
not start, or would fail a request), with what it found. The exit code is 1 when any check
failed, else 0.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from cryptography import x509

from plugin.errors import PluginError
from server.audit.devices import build_sink
from server.gitops import GitopsError, from_settings
from server.http.connguard import descriptor_budget, raise_descriptor_limit
from server.http.tls import server_context
from server.identity.backend import settings_api_addr
from server.identity.oidc import issuer_of
from server.keyring import KEYRING_KEY, Keyring, StorageKeyError, key_fingerprint, load_storage_key
from server.settings import Settings, SettingsError, load_settings
from server.storage.postgres import PostgresStorage
from server.storage.sqlite import peek as sqlite_peek
from server.storage.sqlite_shared import owner_lock

__all__ = ["Check", "diagnose", "render", "EXPIRY_WARNING_DAYS"]

#: A listener certificate that expires within this many days is a warning.
EXPIRY_WARNING_DAYS = 30
#: Fewer descriptors than this for client connections is a warning.
FEW_CONNECTIONS = 1024


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # ok, warn, fail
    detail: str


def render(checks: list[Check]) -> str:
    lines = [f"[ {c.status:<4} ] {c.name}: {c.detail}" for c in checks]
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    lines.append(f"{len(checks)} checks: {fails} failed, {warns} warnings")
    return "\n".join(lines)


def diagnose(path: str | Path) -> list[Check]:
    """Run every check against the settings file at ``path``."""
    try:
        settings = load_settings(path)
    except SettingsError as exc:
        return [Check("settings", "fail", str(exc))]
    checks = [Check("settings", "ok", f"read from {path}")]
    for check in (_tls, _listener, _api_addr, _proxies, _connections, _storage, _seeds, _audit):
        checks.extend(check(settings))
    return checks


# -- the listener ------------------------------------------------------------------------------
def _tls(settings: Settings) -> list[Check]:
    host = settings.host_port[0]
    if not settings.tls:
        if _loopback(host):
            return [Check("tls", "ok", f"off, listening on loopback ({host}) only")]
        return [Check("tls", "warn", f"off on {host}: tokens and JWTs cross the network in clear text unless a "
                                     f"proxy in front terminates TLS (tls_cert_file, tls_key_file)")]
    try:
        server_context(settings)
    except SettingsError as exc:
        return [Check("tls", "fail", str(exc))]
    try:
        cert = x509.load_pem_x509_certificate(Path(settings.tls_cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        return [Check("tls", "fail", f"tls_cert_file: {settings.tls_cert_file}: {exc}")]
    left = (cert.not_valid_after_utc.timestamp() - time.time()) / 86400
    subject = cert.subject.rfc4514_string()
    until = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    if left <= 0:
        return [Check("tls", "fail", f"the certificate ({subject}) expired at {until}")]
    if left < EXPIRY_WARNING_DAYS:
        return [Check("tls", "warn", f"the certificate ({subject}) expires in {left:.0f} days ({until}): renew it "
                                     f"(SIGHUP loads the new files)")]
    return [Check("tls", "ok", f"certificate {subject}, valid until {until}, minimum {settings.tls_min_version}")]


def _api_addr(settings: Settings) -> list[Check]:
    """The address clients reach the server at: the issuer of identity tokens."""
    address = settings_api_addr(settings)
    if address:
        source = "api_addr" if settings.api_addr else "listen_address (api_addr not set)"
        return [Check("api address", "ok", f"{address}, from {source}: identity tokens' issuer "
                                           f"{issuer_of('', address)} unless identity/oidc/config sets one")]
    return [Check("api address", "warn", f"api_addr is not set and {settings.listen_address} is every address: "
                                         f"identity tokens' issuer would be {issuer_of('', '')}, which no verifier "
                                         "can fetch, unless identity/oidc/config sets one: set api_addr to the URL "
                                         "clients reach (https://authmount.example.com:8200)")]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listener(settings: Settings) -> list[Check]:
    host, port = settings.host_port
    address = settings.listen_address
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return [Check("listener", "fail", f"{address}: the host does not resolve ({exc.strerror})")]
    family, kind, proto, _, where = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return [Check("listener", "warn", f"{address} is in use (by the running server, or by another program: "
                                              f"then the server will not start)")]
        return [Check("listener", "fail", f"{address}: cannot listen: {exc.strerror or exc}")]
    finally:
        sock.close()
    return [Check("listener", "ok", f"{address} is free")]


#: A trusted proxy network this wide takes in clients, not proxies.
_WIDEST_PROXY_NET = {4: 8, 6: 32}


def _proxies(settings: Settings) -> list[Check]:
    wide = [str(net) for net in settings.trusted_proxies if net.prefixlen < _WIDEST_PROXY_NET[net.version]]
    if wide:
        return [Check("trusted proxies", "warn", f"{', '.join(wide)}: any client there may set X-Forwarded-For, and "
                                                 f"the per-IP limits, bound CIDRs and the audit log then judge the "
                                                 f"address it claims; name the proxies' own addresses")]
    if settings.trusted_proxies:
        return [Check("trusted proxies", "ok", ", ".join(str(net) for net in settings.trusted_proxies))]
    return []


def _connections(settings: Settings) -> list[Check]:
    soft = raise_descriptor_limit()
    budget = descriptor_budget(soft, settings.max_connections)
    detail = f"{budget} client connections per process (descriptor limit {soft})"
    if budget < FEW_CONNECTIONS:
        return [Check("connections", "warn", f"{detail}: raise the limit (ulimit -n, LimitNOFILE=)")]
    return [Check("connections", "ok", detail)]


# -- the storage and its key -----------------------------------------------------------------
def _storage(settings: Settings) -> list[Check]:
    stype = settings.storage.type
    if stype == "memory":
        return [Check("storage", "ok", "memory: nothing outlives the process")]
    try:
        found = _read_sqlite(settings) if stype == "sqlite" else asyncio.run(_read_postgres(settings.storage.dsn))
    except (OSError, sqlite3.Error, psycopg.Error, RuntimeError) as exc:
        return [Check("storage", "fail", f"{stype}: {str(exc).strip()[:300]}")]
    detail, ring = found
    checks = [Check("storage", "ok", detail), _key(settings, ring)]
    token_file = settings.initial_root_token_file
    if ring is None and token_file and Path(token_file).exists() and not settings.dev:
        checks.append(Check("initial root token file", "fail",
                            f"{token_file} exists; the first start writes a new root token there and refuses to "
                            f"overwrite a file: move it away"))
    return checks


def _read_sqlite(settings: Settings) -> tuple[str, Any]:
    path = Path(settings.storage.path)
    if not path.exists():
        parent = path.parent if str(path.parent) else Path(".")
        existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
        if not os.access(existing, os.W_OK):
            raise OSError(f"{path} does not exist and {existing} is not writable: the server cannot create it")
        return f"sqlite: {path} does not exist yet (created at the first start)", None
    try:
        os.close(owner_lock(str(path)))
        user = "no server is using it"
    except RuntimeError:
        user = "a server is using it"
    rows, ring = sqlite_peek(str(path), KEYRING_KEY)
    return f"sqlite: {path}, {rows} rows, {user}", orjson.loads(ring) if ring else None


async def _read_postgres(dsn: str) -> tuple[str, Any]:
    found = await PostgresStorage.peek(dsn, KEYRING_KEY)
    if found is None:
        return "postgres: connected; no table yet (created at the first start)", None
    rows, ring = found
    return f"postgres: connected, {rows} rows", orjson.loads(ring) if ring else None


def _key(settings: Settings, ring: Any) -> Check:
    key_file = settings.storage.key_path or None
    try:
        key, where = load_storage_key(key_file=key_file, create=False)
    except StorageKeyError as exc:
        if ring is None:
            return Check("storage key", "ok", f"none yet: created at the first start ({key_file})")
        return Check("storage key", "fail", str(exc))
    if ring is None:
        return Check("storage key", "ok", f"{where} ({key_fingerprint(key)}); the keyring is made at the first start")
    try:
        Keyring.from_stored(key, ring)
    except StorageKeyError as exc:
        return Check("storage key", "fail", f"{where} ({key_fingerprint(key)}) does not open the keyring: {exc}")
    return Check("storage key", "ok", f"{where} ({key_fingerprint(key)}) opens the keyring")


# -- what the settings declare -------------------------------------------------------------------
def _seeds(settings: Settings) -> list[Check]:
    counts = {"mounts": len(settings.mounts), "policies": len(settings.policies),
              "token roles": len(settings.token_roles), "groups": len(settings.groups),
              "entities": len(settings.entities), "identity token keys": len(settings.identity_token_keys),
              "identity token roles": len(settings.identity_token_roles),
              "rate limit quotas": len(settings.rate_limit_quotas), "cors settings": int(settings.cors is not None)}
    if not any(counts.values()):
        return []
    try:
        from_settings(settings, source=settings.source or "settings")
    except GitopsError as exc:
        return [Check("declared objects", "fail", str(exc))]
    listed = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    return [Check("declared objects", "ok", f"{listed}: valid (applied at each start and SIGHUP)")]


def _audit(settings: Settings) -> list[Check]:
    checks = []
    for i, device in enumerate(settings.audit):
        name = f"audit[{i}] {device.path}"
        try:
            sink = build_sink(device.type, dict(device.options))
        except PluginError as exc:
            checks.append(Check(name, "fail", str(exc)))
            continue
        target = getattr(sink, "path", None)
        if isinstance(target, str):
            checks.append(_writable(name, target))
        else:
            checks.append(_reachable(name, str(device.options.get("address", ""))))
    return checks


def _writable(name: str, target: str) -> Check:
    if target in ("stdout", "discard"):
        return Check(name, "ok", f"file device to {target}")
    path = Path(target)
    probe = path if path.exists() else path.parent
    if not os.access(probe, os.W_OK):
        return Check(name, "fail", f"{probe} is not writable: every audited request would fail")
    return Check(name, "ok", f"file {path} writable")


def _reachable(name: str, address: str) -> Check:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
    except (OSError, ValueError) as exc:
        return Check(name, "warn", f"socket {address} does not answer now ({exc}): audited requests fail until it does")
    return Check(name, "ok", f"socket {address} answers")
