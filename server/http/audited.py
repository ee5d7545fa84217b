"""The HTTP edge's audit and request metrics: one ``Exchange`` per request of a mount or sys path.

``auth_handler``, ``sys_handler`` and ``identity_handler`` (``server.http.handlers``) drive it
the same way::

    ex = Exchange(...)                       # after the path is resolved
    try:
        entry = <token + ACL check>
        await ex.requested(entry)            # the request entry: fails closed (503) before anything runs
        resp = <the backend>
        out = <the HTTP reply>
    except Exception as exc:
        await ex.failed(exc)                 # request and response entries with the error
        raise
    await ex.responded(resp, out)            # the response entry; a login whose entry cannot be
    return out                               # written has its token revoked and fails (503)

With no audit device enabled an Exchange only times the request (``vault_core_handle_request``
or ``vault_core_handle_login_request``, ``vault_route_<op>_<mount>``) and counts logins
(``authmount_logins_total``).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web

from plugin.errors import PluginError, RateLimited
from plugin.framework import Operation, Request, Response
from server import telemetry
from server.appkeys import AUDIT, ISSUED, MOUNTS, REQUEST_ID, TOKEN_RAW, TOKENS
from server.audit import AuditUnavailable, Record
from server.http.log import new_request_id
from server.mounts import MountEntry
from server.storage import unavailable_reason
from server.tokens.entry import TokenEntry, login_display_name

__all__ = ["Exchange", "login_outcome"]

log = structlog.get_logger("authmount.audit")

#: The reason code of a refused login that failed no check (an unknown role, a missing token ...).
_STATUS_OUTCOME = {400: "invalid_request", 403: "permission_denied", 429: "rate_limited", 502: "upstream_error"}


def login_outcome(exc: BaseException) -> str:
    """The ``outcome`` of a refused login: the failed check's name, else by status."""
    if isinstance(exc, PluginError):
        return exc.check or _STATUS_OUTCOME.get(exc.status, "error")
    return "error"


def _error_text(exc: BaseException) -> tuple[str, bool]:
    """The error as the audit log writes it, and whether it is also the entry's top-level
    ``error`` (Vault: a 400's message is only in ``response.data.error``, hashed)."""
    if isinstance(exc, PluginError):
        text = "; ".join(exc.messages) or exc.default_message or {404: "not found"}.get(exc.status, "error")
        return text, exc.status != 400
    if isinstance(exc, web.HTTPException):
        return exc.reason.lower(), True
    reason = unavailable_reason(exc)
    return (f"storage unavailable: {reason}" if reason else "internal error"), True


class Exchange:
    """One request of a mount or sys path, as the audit log and the request metrics see it.

    ``mount`` is the auth mount serving it (None: ``sys/``). ``login``: the path needs no
    token (timed as a login request). ``audited``: write entries (the unauthenticated
    ``sys/`` status paths are not audited, as in Vault).
    """

    __slots__ = ("request", "req", "path", "mount", "rec", "start", "mount_point", "mount_type", "login", "logged",
                 "broker", "entry", "inline")

    def __init__(
        self, request: web.Request, req: Request, path: str, *, mount: MountEntry | None, login: bool,
        audited: bool = True, point: str = "sys/", kind: str = "system", inline: bool = False,
    ) -> None:
        self.request = request
        #: An inline authentication's login (``server.http.handlers.caller``): its entries have
        #: a request id of their own (the request's own pair follows them), and its token, which
        #: has no id, is recorded from ``resp.auth_block``.
        self.inline = inline
        self.req = req
        self.start = time.perf_counter()
        # ``point``/``kind``: the built-in backend serving a request of no auth mount
        # (``sys/``, ``identity/``), as Vault names its mount.
        self.mount_point = "auth/" + mount.path if mount is not None else point
        self.mount_type = mount.type if mount is not None else kind
        self.login = login
        self.logged = False  # the request entry was written
        self.path, self.mount = path, mount
        self.entry: TokenEntry | None = None
        broker = request.app.get(AUDIT) if audited else None
        self.broker = broker
        self.rec: Record | None = None
        if broker is not None and broker.active:
            self.rec = self._record()

    def _record(self) -> Record:
        path, mount = self.path, self.mount
        request, req = self.request, self.req
        rec = Record()
        rec.request_id = new_request_id() if self.inline else request.get(REQUEST_ID, "")
        rec.operation = req.operation.value
        rec.path = path
        rec.mount_point = self.mount_point
        rec.mount_type = self.mount_type
        rec.mount_class = "auth" if mount is not None else "secret"
        if mount is not None:
            rec.mount_accessor = mount.accessor
            cfg = mount.config
        else:  # sys/ or identity/: their tuning (sys/mounts/<point>/tune)
            table = request.app.get(MOUNTS)
            cfg = table.builtin.get(self.mount_point, {}) if table is not None else {}
        if cfg:
            keys = cfg.get("audit_non_hmac_request_keys")
            if keys:
                rec.non_hmac_request = frozenset(keys)
            keys = cfg.get("audit_non_hmac_response_keys")
            if keys:
                rec.non_hmac_response = frozenset(keys)
        conn = req.connection
        rec.remote_address = conn.remote_addr if conn is not None else (request.remote or "")
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[1], int):
            rec.remote_port = peer[1]
        if req.data:
            rec.data = req.data
        if req.operation is Operation.LIST:
            rec.is_list = True
        broker = self.broker
        if broker is not None and broker.headers:
            rec.headers = broker.audited_headers(request.headers)
        return rec

    # -- the three moments -----------------------------------------------------------------
    async def requested(self, entry: TokenEntry | None) -> None:
        """The token check passed: write the request entry before anything runs.

        :raises AuditUnavailable: no device recorded it (the request fails, 503).
        """
        self.entry = entry
        rec = self.rec
        if rec is None:
            return
        self._caller(rec)
        assert self.broker is not None
        pending = self.broker.log_request(rec)
        if pending is not None:
            await pending
        self.logged = True

    async def responded(self, resp: Response | None, out: web.StreamResponse | None) -> None:
        """Write the response entry and count the request (``out``: the reply, None for an
        inline login, which has none; its token is ``resp.auth_block``, without ``client_token``).

        :raises AuditUnavailable: no device recorded it; a token the request issued is
            revoked first, so no token exists that the audit log does not show.
        """
        rec = self.rec
        if rec is None and self.broker is not None and self.broker.active:
            rec = self.rec = self._record()  # the request enabled the first device: Vault logs its response
            self._caller(rec)
        # A login refused with a page (the OIDC callback's): recorded like a raised refusal.
        refusal = resp.refused if resp is not None and self.login else None
        failure = refusal.login if refusal is not None else None
        if rec is not None:
            issued: dict[str, Any] | None = self.request.get(ISSUED)
            if resp is not None:
                rec.response_data = resp.data
                rec.warnings = resp.warnings or None
                if issued is None:
                    issued = resp.auth_block
                if issued is not None and (issued.get("client_token") or self.inline):
                    name = login_display_name(self.mount_point, resp.auth) if resp.auth is not None else ""
                    rec.response_auth = (issued, name)
                    if resp.auth is not None and resp.auth.response_metadata:
                        rec.response_secrets = resp.auth.response_metadata  # hashed, always
                if refusal is not None and failure is not None:
                    rec.login_failure = {"reason": login_outcome(refusal), **failure}
            elif out is not None and out.status >= 400:
                rec.error, rec.error_top = "not found", True
            assert self.broker is not None
            try:
                pending = self.broker.log_response(rec)
                if pending is not None:
                    await pending
            except AuditUnavailable:
                await self._revoke(issued)
                self._observe("audit_unavailable" if self.login and resp is not None and resp.auth else None)
                raise
        if refusal is not None and failure is not None:
            self._observe(login_outcome(refusal), None, failure)
            return
        outcome = None
        if self.login and resp is not None and resp.auth is not None:
            outcome = "success"
        self._observe(outcome, resp)

    async def failed(self, exc: BaseException) -> None:
        """The request failed with ``exc``: write its entries (when it was not the audit
        itself that failed) and count it. Never raises: the request's own error stands."""
        rec = self.rec
        login = getattr(exc, "login", None)
        if isinstance(exc, RateLimited):
            telemetry.RATE_LIMITED.labels(self.mount_point, getattr(exc, "limit", "oidc_states")).inc()
        if rec is not None and not isinstance(exc, AuditUnavailable):
            text, top = _error_text(exc)
            rec.error, rec.error_top = text, top
            if isinstance(exc, PluginError) and exc.status == 403 and not self.logged:
                rec.allowed = False
                rec.client_token = rec.client_token or _caller_token(self.request)
            if login is not None:
                rec.login_failure = {"reason": login_outcome(exc), **login}
            assert self.broker is not None
            try:
                if not self.logged:
                    rec.request_error = text if top else ""
                    pending = self.broker.log_request(rec)
                    if pending is not None:
                        await pending
                    self.logged = True
                pending = self.broker.log_response(rec)
                if pending is not None:
                    await pending
            except AuditUnavailable:
                log.error("audit_unavailable", path=rec.path, error=text)
        self._observe(login_outcome(exc) if login is not None else None, None, login)

    # -- helpers --------------------------------------------------------------------------------
    def _caller(self, rec: Record) -> None:
        if self.entry is not None:
            rec.token = self.entry
            rec.client_token = self.request.get(TOKEN_RAW, "")

    async def _revoke(self, issued: dict[str, Any] | None) -> None:
        """Revoke the token a request issued (its response entry could not be written)."""
        raw = (issued or {}).get("client_token")
        if not raw:
            return
        tokens = self.request.app[TOKENS]
        try:
            entry = await tokens.lookup(raw)
            if entry is not None and entry.type == "service":
                await tokens.revoke(entry)
        except Exception:  # the 503 stands whatever happens here
            log.exception("audit_revoke_failed")
        else:
            log.error("audit_unavailable_token_revoked", path=self.rec.path if self.rec else "")

    def _observe(self, outcome: str | None, resp: Response | None = None, login: dict[str, str] | None = None) -> None:
        ms = telemetry.ms_since(self.start)
        (telemetry.HANDLE_LOGIN_REQUEST if self.login else telemetry.HANDLE_REQUEST).observe(ms)
        timer = telemetry.route_timer(self.req.operation.value, self.mount_point)
        if timer is not None:
            timer.observe(ms)
        if outcome is not None:
            role = ""
            if login is not None:
                role = login.get("role", "")
            elif resp is not None and resp.auth is not None:
                role = str(resp.auth.internal_data.get("role", ""))
            telemetry.count_login(self.mount_point, role, outcome)


def _caller_token(request: web.Request) -> str:
    """The token the caller sent, for ``request.client_token`` of a refused request."""
    headers = request.headers
    token = headers.get("X-Vault-Token")
    if token:
        return token
    authz = headers.get("Authorization") or ""
    return authz[7:].strip() if authz[:7].lower() == "bearer " else ""
