"""``sys/metrics``: every metric (``server.telemetry``), as Vault serves them.

``?format=prometheus`` answers the Prometheus text format; without ``format``, Vault's JSON
shape. It needs a token with ``read`` on ``sys/metrics`` unless the setting
``telemetry.unauthenticated_metrics_access`` (Vault's listener option of that name) opens it
(``SysBackend.resolve`` hands out the unauthenticated twin of this path then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from plugin.errors import InvalidRequest
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server import telemetry
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "METRICS_FIELDS"]

METRICS_FIELDS = FieldSet({
    "format": Field(FieldType.STRING, "'prometheus' for the Prometheus text format; empty for Vault's JSON.",
                    default=""),
})


def paths(b: SysBackend) -> list[SysPath]:
    async def metrics(req: Request, values: dict[str, Any]) -> Response:
        fmt = values.get("format", "")
        if fmt == "prometheus":
            return Response(raw_body=telemetry.exposition(), content_type=telemetry.CONTENT_TYPE)
        if fmt in ("", "json"):
            return Response(raw_body=orjson.dumps(telemetry.metrics_json()), content_type="application/json")
        raise InvalidRequest(f"unsupported metrics format {str(fmt)[:32]!r} (use prometheus, or none for JSON)")

    return [
        SysPath("metrics", METRICS_FIELDS, {Operation.READ: metrics},
                "Metrics in the Prometheus text format (format=prometheus) or Vault's JSON."),
    ]
