"""What ``vault debug`` and ``vault monitor`` read (``server.diagnostics``): ``sys/monitor``
(the log as it is written, streamed), ``sys/in-flight-req``, ``sys/host-info`` and
``sys/config/state/sanitized``, each needing ``read`` on its path (none is in Vault's
unauthenticated or sudo lists) and answering for the process that serves the request (a
monitor streams every worker's lines: ``server.diagnostics.LogRelay``); and
``sys/replication/status`` (no token, as in Vault), which ``vault debug`` also polls: a 404
there ends every other capture of a default run (OpenBao 2.7.2 answers 404).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest, RateLimited
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server import diagnostics
from server.http.log import redact
from server.sys.core import SysPath, raw_json

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "MONITOR_FIELDS", "PPROF_FIELDS"]

MONITOR_FIELDS = FieldSet({
    "log_level": Field(FieldType.STRING, "Lowest level streamed: trace (as debug), debug, info, warn, error.",
                       default="info"),
    "log_format": Field(FieldType.STRING, "standard (Vault's text lines) or json (the log file's lines).",
                        default="standard"),
})

PPROF_FIELDS = FieldSet({
    "target": Field(FieldType.NAME, "The profile: only goroutine (with debug=2) is served."),
    "debug": Field(FieldType.INT, "2: the stacks as text (the only form served).", default=0),
})


def paths(b: SysBackend) -> list[SysPath]:
    async def monitor(req: Request, values: dict[str, Any]) -> Response:
        level_name = str(values.get("log_level") or "info").strip().lower()
        level = diagnostics.MONITOR_LEVELS.get(level_name)
        if level is None:
            raise InvalidRequest(f"unknown log level {level_name[:32]!r}: use trace, debug, info, warn or error")
        fmt = str(values.get("log_format") or "standard").strip().lower()
        if fmt not in diagnostics.MONITOR_FORMATS:
            raise InvalidRequest(f"unknown log format {fmt[:32]!r}: use standard or json")
        try:
            stream = diagnostics.LOG_HUB.open(level, json=fmt == "json")
        except diagnostics.TooManyMonitors as exc:
            raise RateLimited(f"{exc}; stop one first") from None
        return Response(stream=stream.lines(), content_type="text/plain; charset=utf-8")

    async def in_flight(req: Request, values: dict[str, Any]) -> Response:
        return raw_json(diagnostics.in_flight(redact))

    async def host_info(req: Request, values: dict[str, Any]) -> Response:
        data, warnings = await asyncio.to_thread(diagnostics.host_info)
        return Response(data=data, warnings=warnings)

    async def sanitized(req: Request, values: dict[str, Any]) -> Response:
        return Response(data=diagnostics.sanitized_settings(b.core.settings))

    async def pprof(req: Request, values: dict[str, Any]) -> Response:
        if values.get("target") == "goroutine" and values.get("debug") == 2:
            return Response(raw_body=diagnostics.stacks().encode(), content_type="text/plain; charset=utf-8")
        target = str(values.get("target", ""))[:64]
        raise InvalidRequest(f"sys/pprof/{target}: Go's profiles have no Python counterpart; "
                             f"sys/pprof/goroutine?debug=2 gives every thread's and task's stack, and py-spy "
                             f"profiles the process (docs/operations.md)")

    async def replication(req: Request, values: dict[str, Any]) -> Response:
        return Response(data={"dr": {"mode": "disabled"}, "performance": {"mode": "disabled"}})

    return [
        SysPath("monitor", MONITOR_FIELDS, {Operation.READ: monitor},
                "Stream this server's log as it is written (vault monitor), at a level of its own."),
        SysPath("in-flight-req", FieldSet({}), {Operation.READ: in_flight},
                "The requests this server is answering, by request id (vault debug)."),
        SysPath("host-info/?", FieldSet({}), {Operation.READ: host_info},
                "The host: CPUs, CPU times, the root file system, memory, and the system (vault debug)."),
        SysPath("config/state/sanitized", FieldSet({}), {Operation.READ: sanitized},
                "The settings in effect, without secrets (vault debug)."),
        SysPath("pprof/(?P<target>[^/]+)", PPROF_FIELDS, {Operation.READ: pprof},
                "goroutine?debug=2: every thread's and asyncio task's stack (vault debug's goroutines.txt)."),
        SysPath("replication/status", FieldSet({}), {Operation.READ: replication},
                "Replication (none: every node serves the shared storage), as Vault's community edition answers.",
                unauthenticated=True),
    ]
