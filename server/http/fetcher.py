"""The aiohttp implementation of ``plugin.framework.Fetcher`` (outbound calls to IdPs)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import tempfile
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from plugin.errors import UpstreamError
from plugin.framework import ClientCert, FetchResult
from server.http.tlsnames import restrict_server_names

__all__ = ["AiohttpFetcher"]

MAX_REDIRECTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)


class AiohttpFetcher:
    """Outbound HTTP with a timeout, a streamed size cap, per-CA (and per client
    certificate) TLS contexts and same-origin-only redirects. Failures raise
    ``UpstreamError`` with a short reason."""

    def __init__(self, *, user_agent: str = "authmount") -> None:
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._user_agent = user_agent

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self._user_agent},
                auto_decompress=True,
                trust_env=False,
            )
        return self._session

    def _ssl_context(
        self, ca_pem: str | None, client_cert: ClientCert | None = None, server_names: tuple[str, ...] = ()
    ) -> ssl.SSLContext | bool:
        if not ca_pem and client_cert is None and not server_names:
            return True
        parts = [ca_pem or "", *(client_cert or ("", "")), *server_names]
        key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
            if client_cert is not None:
                _load_client_cert(ctx, *client_cert)
            if server_names:
                restrict_server_names(ctx, server_names)
            if len(self._contexts) > 64:  # bounded: CA PEMs and certificates come from mount configs
                self._contexts.clear()
            self._contexts[key] = ctx
        return ctx

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        ca_pem: str | None = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        max_bytes: int = 1 << 20,
        client_cert: ClientCert | None = None,
        server_names: tuple[str, ...] = (),
    ) -> FetchResult:
        """Send one request (following same-origin redirects) and read at most ``max_bytes``;
        present ``client_cert`` when the server asks for a client certificate; with
        ``server_names``, accept a certificate for any of them instead of the URL's host.

        :raises UpstreamError: network, TLS, timeout, size, or redirect failures.
        """
        try:
            ssl_ctx = self._ssl_context(ca_pem, client_cert, server_names)
        except _ClientCertError as exc:
            raise UpstreamError("invalid TLS client certificate or key") from exc
        except (ssl.SSLError, ValueError) as exc:
            raise UpstreamError("invalid CA PEM for the TLS connection") from exc
        origin = urlsplit(url)
        if origin.scheme not in ("http", "https") or not origin.netloc:
            raise UpstreamError(f"unsupported URL {url[:200]!r}")
        try:
            async with asyncio.timeout(timeout):
                return await self._fetch(method, url, origin, ssl_ctx, form, headers, max_bytes)
        except UpstreamError:
            raise
        except TimeoutError as exc:
            raise UpstreamError(f"timeout after {timeout:g}s fetching {_short(url)}") from exc
        except aiohttp.ClientSSLError as exc:
            raise UpstreamError(f"TLS error fetching {_short(url)}: {_reason(exc)}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"error fetching {_short(url)}: {_reason(exc)}") from exc

    async def _fetch(
        self, method: str, url: str, origin: Any, ssl_ctx: Any, form: Any, headers: Any, max_bytes: int
    ) -> FetchResult:
        session = self._get_session()
        for _ in range(MAX_REDIRECTS + 1):
            async with session.request(
                method, url, data=form, headers=headers, ssl=ssl_ctx, allow_redirects=False
            ) as resp:
                if resp.status in _REDIRECTS and "Location" in resp.headers:
                    target = urljoin(url, resp.headers["Location"])
                    parts = urlsplit(target)
                    if (parts.scheme, parts.netloc) != (origin.scheme, origin.netloc):
                        raise UpstreamError(f"refusing redirect from {_short(url)} to another host")
                    url = target
                    if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                        method, form = "GET", None
                    continue
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise UpstreamError(f"response from {_short(url)} exceeds {max_bytes} bytes")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UpstreamError(f"response from {_short(url)} exceeds {max_bytes} bytes")
                    chunks.append(chunk)
                return FetchResult(
                    status=resp.status,
                    headers={k.lower(): v for k, v in resp.headers.items()},
                    body=b"".join(chunks),
                )
        raise UpstreamError(f"too many redirects fetching {_short(url)}")

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class _ClientCertError(ValueError):
    """The client certificate or its key could not be loaded."""


def _load_client_cert(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """Load a client certificate chain and its key into ``ctx``.

    ``ssl`` reads them only from a file: on Linux an anonymous in-memory file (memfd)
    keeps the private key off every disk; elsewhere a 0600 temporary file, removed at once.

    :raises _ClientCertError: the PEMs do not load (or do not match).
    """
    data = (cert_pem.strip() + "\n" + key_pem.strip() + "\n").encode("utf-8")
    memfd = getattr(os, "memfd_create", None)
    try:
        if memfd is not None and os.path.isdir("/proc/self/fd"):
            fd = memfd("authmount-client-cert")
            try:
                _write_all(fd, data)
                ctx.load_cert_chain(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
            return
        fd, path = tempfile.mkstemp(prefix="authmount-cert-")  # mode 0600
        try:
            _write_all(fd, data)
            os.close(fd)
            fd = -1
            ctx.load_cert_chain(path)
        finally:
            if fd >= 0:
                os.close(fd)
            os.unlink(path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise _ClientCertError(str(exc)) from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _short(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:200]


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
