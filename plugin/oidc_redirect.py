"""Redirect URIs of the OIDC flow: which ones a role allows, the mount one names, and the
``namespace`` query parameter Vault's UI adds (docs/reference/vault-api.md 6.1, 6.4, 6.5)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from plugin.cidrutil import is_loopback_host

__all__ = ["valid_redirect", "parse_mount", "split_namespace"]



def _redirect_parts(uri: str) -> tuple[str, str, str, str, str] | None:
    """``(scheme, userinfo, host, port, rest)`` of ``uri``: scheme and host lower-cased,
    the rest as written (``rest`` is everything after the authority: path, query,
    fragment). None when it does not parse or holds whitespace or control characters."""
    if any(c <= " " or c == "\x7f" for c in uri):
        return None
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    n = len(parts.scheme)
    if not parts.scheme or uri[n : n + 3] != "://":
        return ("", "", "", "", uri)  # no authority: only an exact match
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if hostport.startswith("["):
        host, bracket, port = hostport.partition("]")
        host += bracket
    else:
        host, colon, port = hostport.partition(":")
        port = colon + port
    return (parts.scheme.lower(), userinfo + at, host.lower(), port, uri[n + 3 + len(parts.netloc) :])


def valid_redirect(uri: str, allowed: list[str]) -> bool:
    """Is ``uri`` one of ``allowed``? Scheme and host compare case-insensitively, everything
    else (user info, port, path, query, fragment) exactly. Loopback hosts keep Vault's rule
    (RFC 8252 7.3): the port is ignored; scheme, host, path and query must match. An
    unparseable URI is never valid. (Vault compares non-loopback URIs as whole strings,
    case-insensitively: docs/vault-differences.md row 6.)"""
    want = _redirect_parts(uri)
    if want is None:
        return False
    parsed = urlsplit(uri)
    if not is_loopback_host(parsed.hostname or ""):
        return any(_redirect_parts(a) == want for a in allowed)
    loop = (parsed.scheme, parsed.hostname or "", parsed.path, parsed.query)
    for candidate in allowed:
        try:
            c = urlsplit(candidate)
            if (c.scheme, c.hostname or "", c.path, c.query) == loop:
                return True
        except ValueError:
            continue
    return False


def parse_mount(redirect_uri: str) -> str:
    """The mount named in ``.../v1/auth/<mount>/...`` (first segment), or ``""``."""
    try:
        path = urlsplit(redirect_uri).path
    except ValueError:
        return ""
    parts = path.split("/")
    for i in range(len(parts) - 2):
        if parts[i] == "v1" and parts[i + 1] == "auth" and parts[i + 2]:
            return parts[i + 2]
    return ""


def split_namespace(uri: str) -> tuple[str, str]:
    """Remove a ``namespace`` query parameter from ``uri``; return (uri, namespace)."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ns = [v for k, v in query if k == "namespace"]
    if not ns:
        return uri, ""
    rest = urlencode([(k, v) for k, v in query if k != "namespace"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), ns[0]
