"""The live side of ``authmount apply`` and ``authmount export``: a server read and written
through Vault's HTTP API (``HttpServer``: authmount, Vault or OpenBao), or the running
application itself (``AppServer``: seeding at start and on SIGHUP, through the same write
paths as the API).
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from aiohttp import web

from plugin.errors import NotFound, PluginError
from plugin.framework import Backend, Connection, Operation, Request
from server.acl.policies import TEMPLATE_FLAGS
from server.appkeys import MOUNTS, POLICIES
from server.http.handlers import AppCore
from server.identity.backend import app_identity_backend
from server.mounts import Mount
from server.sys.backend import SysBackend

__all__ = ["ServerError", "LiveMount", "LivePolicy", "Server", "HttpServer", "AppServer"]


def _kept(live: dict[str, Any]) -> dict[str, Any]:
    """What a policy write keeps of the live policy (its read): the write is a check-and-set
    on the version read (a policy changed since then refuses it), and the policy's
    ``cas_required`` and ``expiration`` stay as they are (a policy meant to expire does not
    become permanent by an apply)."""
    kept: dict[str, Any] = {}
    if isinstance(live.get("version"), int) and not isinstance(live.get("version"), bool):
        kept["cas"] = live["version"]
    if live.get("cas_required") is True:
        kept["cas_required"] = True
    if isinstance(live.get("expiration"), str):
        kept["expiration"] = live["expiration"]
    return kept


@dataclass(frozen=True, slots=True)
class LivePolicy:
    """A policy as the server holds it: its text and template flags, and what a rewrite of it
    sends beside them (``kept``, in the server's own terms: the version read, for a
    check-and-set, and the ``cas_required`` and ``expiration`` it keeps). The plan reads it
    once; the apply writes with it, so the check spans from what the plan showed to the write."""

    text: str
    flags: dict[str, bool]
    kept: dict[str, Any]


#: What the write of a policy that did not exist sends: a create only (OpenBao's ``cas`` -1).
CREATE_ONLY: dict[str, Any] = {"cas": -1}


class ServerError(RuntimeError):
    """The server refused a request or could not be reached; the message is its own."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class LiveMount:
    """An auth mount as ``sys/auth`` lists it: ``config`` holds its tune values."""

    path: str
    type: str
    description: str
    config: dict[str, Any]
    accessor: str = ""


class Server(Protocol):
    """What apply and export need of a server. Paths are API paths (``auth/jwt/config``)."""

    @property
    def name(self) -> str:
        """The server as messages name it (its address)."""
        ...

    async def mounts(self) -> dict[str, LiveMount]: ...

    async def read(self, path: str) -> dict[str, Any] | None: ...

    async def keys(self, path: str) -> list[str]: ...

    async def write(self, path: str, data: dict[str, Any]) -> list[str]: ...

    async def lookup(self, path: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """A write that answers data (``identity/lookup/group``); None when it answers none."""
        ...

    async def document(self, path: str) -> dict[str, Any] | None:
        """A bare JSON answer (a discovery document); None when there is none."""
        ...

    async def delete(self, path: str) -> None: ...

    async def enable(self, path: str, type_name: str, description: str, tune: dict[str, Any]) -> None: ...

    async def tune(self, path: str, values: dict[str, Any]) -> None: ...

    async def disable(self, path: str) -> None: ...

    async def policies(self) -> list[str]: ...

    async def read_policy(self, name: str) -> LivePolicy | None:
        """The policy's text, its template flags (false where the server has none: Vault)
        and what a rewrite keeps."""

    async def write_policy(self, name: str, text: str, flags: dict[str, bool] | None = None,
                           live: LivePolicy | None = None) -> None:
        """Write a policy (with its template flags when given) over ``live``, the policy as it
        was read (None: there was none; the write then only creates)."""

    async def delete_policy(self, name: str) -> None: ...

    async def fingerprints(self, path: str, values: dict[str, Any]) -> dict[str, str]:
        """The server's fingerprints of ``values`` written to ``path`` (``sys/fingerprint``).

        :raises ServerError: the server has no fingerprints (Vault, OpenBao) or refused.
        """
        ...


def _mount_path(path: str) -> str:
    return quote(path.strip("/"), safe="/")


class HttpServer:
    """A server behind Vault's HTTP API, addressed and authenticated as the Vault CLI is
    (``VAULT_ADDR``, ``VAULT_TOKEN``, ``VAULT_CACERT``, ``VAULT_CLIENT_CERT``/``_KEY``,
    ``VAULT_SKIP_VERIFY``; the CLI's flags win). Use as an async context manager."""

    def __init__(
        self,
        address: str,
        token: str,
        *,
        ca_cert: str = "",
        client_cert: str = "",
        client_key: str = "",
        skip_verify: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.address = address.rstrip("/")
        self._token = token
        self._ssl: ssl.SSLContext | bool = True
        if self.address.startswith("https://"):
            context = ssl.create_default_context(cafile=ca_cert or None)
            if skip_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if client_cert:
                context.load_cert_chain(client_cert, client_key or None)
            self._ssl = context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return self.address

    async def __aenter__(self) -> HttpServer:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The JSON answer (None for 204 and 404).

        :raises ServerError: any other error status (with the server's messages), or no answer.
        """
        if self._session is None:
            raise RuntimeError("HttpServer used outside 'async with'")
        url = f"{self.address}/v1/{path}"
        headers = {"X-Vault-Token": self._token, "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body)
        try:
            async with self._session.request(method, url, data=data, headers=headers, ssl=self._ssl) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServerError(f"{self.address}: {exc or type(exc).__name__}") from exc
        if status == 204 or (status == 404 and method in ("GET", "DELETE")):
            return None  # nothing there (Vault's 404 of a missing object, an empty list)
        try:
            answer = json.loads(text) if text.strip() else {}
        except ValueError:
            answer = {}
        if status >= 400:
            errors = answer.get("errors") if isinstance(answer, dict) else None
            message = "; ".join(str(e) for e in errors) if errors else f"HTTP {status}"
            raise ServerError(f"{method} {path}: {status} {message}", status)
        return answer if isinstance(answer, dict) else {}

    async def _data(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        answer = await self._call(method, path, body)
        if answer is None:
            return None
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    async def mounts(self) -> dict[str, LiveMount]:
        data = await self._data("GET", "sys/auth") or {}
        out = {}
        for path, info in data.items():
            if isinstance(info, dict) and path.endswith("/"):
                out[path] = LiveMount(path, str(info.get("type", "")), str(info.get("description") or ""),
                                      dict(info.get("config") or {}), str(info.get("accessor") or ""))
        return out

    async def read(self, path: str) -> dict[str, Any] | None:
        return await self._data("GET", path)

    async def keys(self, path: str) -> list[str]:
        data = await self._data("GET", path.rstrip("/") + "?list=true")
        keys = (data or {}).get("keys") or []
        return [str(k) for k in keys]

    async def write(self, path: str, data: dict[str, Any]) -> list[str]:
        answer = await self._call("POST", path, data)
        warnings = (answer or {}).get("warnings") or []
        return [str(w) for w in warnings]

    async def lookup(self, path: str, data: dict[str, Any]) -> dict[str, Any] | None:
        return await self._data("POST", path, data)

    async def document(self, path: str) -> dict[str, Any] | None:
        return await self._call("GET", path)

    async def delete(self, path: str) -> None:
        await self._call("DELETE", path)

    async def enable(self, path: str, type_name: str, description: str, tune: dict[str, Any]) -> None:
        await self._call("POST", f"sys/auth/{_mount_path(path)}",
                         {"type": type_name, "description": description, "config": tune})

    async def tune(self, path: str, values: dict[str, Any]) -> None:
        await self._call("POST", f"sys/auth/{_mount_path(path)}/tune", values)

    async def disable(self, path: str) -> None:
        await self._call("DELETE", f"sys/auth/{_mount_path(path)}")

    async def policies(self) -> list[str]:
        return await self.keys("sys/policies/acl")

    async def read_policy(self, name: str) -> LivePolicy | None:
        data = await self._data("GET", f"sys/policies/acl/{quote(name, safe='')}")
        if data is None:
            return None
        return LivePolicy(str(data.get("policy", "")), {k: data.get(k) is True for k in TEMPLATE_FLAGS}, _kept(data))

    async def write_policy(self, name: str, text: str, flags: dict[str, bool] | None = None,
                           live: LivePolicy | None = None) -> None:
        kept = live.kept if live is not None else CREATE_ONLY
        await self._call("PUT", f"sys/policies/acl/{quote(name, safe='')}", {"policy": text, **(flags or {}), **kept})

    async def delete_policy(self, name: str) -> None:
        await self._call("DELETE", f"sys/policies/acl/{quote(name, safe='')}")

    async def fingerprints(self, path: str, values: dict[str, Any]) -> dict[str, str]:
        try:
            data = await self._data("POST", "sys/fingerprint", {"path": path, "values": values}) or {}
        except ServerError as exc:
            if exc.status == 404:
                raise ServerError(f"{self.address} has no sys/fingerprint (not an authmount server?)", 404) from None
            raise
        found = data.get("fingerprints")
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


class AppServer:
    """The running application, written through the same paths as the API (the mount
    table, the policy store, each backend's ``handle_request``): seeding uses it."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._identity = app_identity_backend(app)
        self._sys = SysBackend(AppCore(app))

    @property
    def name(self) -> str:
        return "this server"

    def _mount(self, path: str) -> tuple[Mount, str]:
        found = self._app[MOUNTS].match(path.removeprefix("auth/"))
        if found is None:
            raise ServerError(f'no handler for route "{path}". route entry not found.', 404)
        return found

    async def _call(self, op: Operation, path: str, data: dict[str, Any] | None = None) -> Any:
        if path.startswith(("identity/", "sys/quotas/", "sys/config/cors", "sys/rotate/config")):  # the built-in backends
            backend: Backend = self._identity if path.startswith("identity/") else self._sys
            req = Request(operation=op, path=path.split("/", 1)[1], data=dict(data or {}),
                          connection=Connection("127.0.0.1"))
        else:
            mount, rel = self._mount(path)
            backend = mount.backend
            req = Request(operation=op, path=rel, data=dict(data or {}), storage=mount.storage, system=mount.system,
                          connection=Connection("127.0.0.1"))
        try:
            return await backend.handle_request(req)
        except NotFound:
            return None
        except PluginError as exc:
            raise ServerError(str(exc), exc.status) from None

    async def mounts(self) -> dict[str, LiveMount]:
        out = {}
        for path, mount in self._app[MOUNTS].mounts.items():
            info = mount.entry.public()
            out[path] = LiveMount(path, mount.entry.type, mount.entry.description, dict(info["config"]),
                                  mount.entry.accessor)
        return out

    async def read(self, path: str) -> dict[str, Any] | None:
        resp = await self._call(Operation.READ, path)
        return None if resp is None else dict(resp.data or {})

    async def keys(self, path: str) -> list[str]:
        resp = await self._call(Operation.LIST, path.rstrip("/") + "/")
        return [] if resp is None else [str(k) for k in (resp.data or {}).get("keys") or []]

    async def write(self, path: str, data: dict[str, Any]) -> list[str]:
        resp = await self._call(Operation.UPDATE, path, data)
        return [] if resp is None else list(resp.warnings)

    async def lookup(self, path: str, data: dict[str, Any]) -> dict[str, Any] | None:
        resp = await self._call(Operation.UPDATE, path, data)
        return None if resp is None or resp.data is None else dict(resp.data)

    async def document(self, path: str) -> dict[str, Any] | None:
        resp = await self._call(Operation.READ, path)
        raw = None if resp is None else resp.raw_body
        answer = json.loads(raw) if raw else None
        return answer if isinstance(answer, dict) else None

    async def delete(self, path: str) -> None:
        await self._call(Operation.DELETE, path)

    async def enable(self, path: str, type_name: str, description: str, tune: dict[str, Any]) -> None:
        table = self._app[MOUNTS]
        try:
            await table.enable(path, type_name, description=description, config=tune)
        except PluginError as exc:
            # Nodes sharing a database seed together: one of them mounts it first.
            await table.reload()
            mount = table.mounts.get(path)
            if mount is not None and mount.entry.type == type_name:
                return
            raise ServerError(str(exc), exc.status) from None

    async def tune(self, path: str, values: dict[str, Any]) -> None:
        try:
            await self._app[MOUNTS].tune(path, values)
        except PluginError as exc:
            raise ServerError(str(exc), exc.status) from None

    async def disable(self, path: str) -> None:
        try:
            await self._app[MOUNTS].disable(path)
        except PluginError as exc:
            raise ServerError(str(exc), exc.status) from None

    async def policies(self) -> list[str]:
        return await self._app[POLICIES].list()

    async def read_policy(self, name: str) -> LivePolicy | None:
        found = await self._app[POLICIES].entry(name)
        if found is None:
            return None
        return LivePolicy(found.text, found.flags, {"cas": found.version, "cas_required": found.cas_required,
                                                    "expiration": found.expiration})

    async def write_policy(self, name: str, text: str, flags: dict[str, bool] | None = None,
                           live: LivePolicy | None = None) -> None:
        try:
            await self._app[POLICIES].put(name, text, flags, **(live.kept if live is not None else CREATE_ONLY))
        except PluginError as exc:
            raise ServerError(str(exc), exc.status) from None

    async def delete_policy(self, name: str) -> None:
        try:
            await self._app[POLICIES].delete(name)
        except PluginError as exc:
            raise ServerError(str(exc), exc.status) from None

    async def fingerprints(self, path: str, values: dict[str, Any]) -> dict[str, str]:
        mount, rel = self._mount(path)
        return {
            name: mount.system.sealer.fingerprint(json.dumps(value).encode("utf-8"), f"{rel}#{name}")
            for name, value in values.items()
        }
