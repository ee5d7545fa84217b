"""A loopback HTTP(S) server answering GETs with JSON: the IdP stand-in of several e2e tests."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["JSONServer"]


class JSONServer:
    """Serves ``route(path)`` as JSON (``None``: 404) on 127.0.0.1 and records every path.

    ``before(path)`` runs first on the server thread (a test can block there to play a slow
    IdP). With ``ssl_context`` the socket speaks TLS. The server runs from construction until
    ``close()``.
    """

    def __init__(
        self,
        route: Callable[[str], Any | None],
        *,
        ssl_context: ssl.SSLContext | None = None,
        before: Callable[[str], None] | None = None,
    ) -> None:
        self.paths: list[str] = []
        #: The request headers of each GET, in order (lower-case names).
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                outer.paths.append(self.path)
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                if before is not None:
                    before(self.path)
                body = route(self.path)
                if body is None:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
