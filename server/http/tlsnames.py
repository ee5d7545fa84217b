"""Outbound TLS whose certificate must name one of a list of hosts instead of the URL's host:
the jwt config's ``override_allowed_server_names`` (OpenBao's field).

The chain is verified as always (against the CA pin or the system's CAs); only the name
check changes. It runs at the end of the handshake, before a byte of the request is sent
(a token request carries the client's secret), by the ``ssl.SSLObject`` class the context
hands to the event loop (asyncio's and uvloop's TLS both create it through ``wrap_bio``).
Names are matched as Go's ``crypto/x509`` matches them: a certificate's DNS names (a
``*`` leftmost label stands for exactly one label), and its IP addresses for a name that
is an IP address; never the subject's common name.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["restrict_server_names", "certificate_names", "names_match"]


def restrict_server_names(ctx: ssl.SSLContext, names: Sequence[str]) -> None:
    """Make ``ctx`` accept a verified certificate that names any of ``names`` (and no other),
    whatever host the URL named."""
    allowed = tuple(names)
    ctx.check_hostname = False  # the URL's host is not the name to check ...
    ctx.verify_mode = ssl.CERT_REQUIRED  # ... but the chain is still verified

    class _NamedPeer(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            found = certificate_names(self.getpeercert() or {})
            if not any(names_match(name, found) for name in allowed):
                shown = ", ".join(found[:5]) or "no DNS name or IP address"
                raise ssl.SSLCertVerificationError(
                    f"certificate is for {shown}, not for any of override_allowed_server_names "
                    f"({', '.join(allowed)})"
                )

    ctx.sslobject_class = _NamedPeer


def certificate_names(cert: dict[str, Any]) -> list[str]:
    """The DNS names and IP addresses a certificate is for (its subjectAltName), as
    ``ssl.SSLSocket.getpeercert`` gives them."""
    return [str(value).strip() for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]


def names_match(name: str, certified: Iterable[str]) -> bool:
    """Whether a certificate for ``certified`` is valid for the host ``name``."""
    ip = _ip(name)
    if ip is not None:
        return any(_ip(entry) == ip for entry in certified)
    host = name.lower().rstrip(".")
    return bool(host) and any(_dns_match(entry.lower().rstrip("."), host) for entry in certified)


def _dns_match(pattern: str, host: str) -> bool:
    wanted, labels = pattern.split("."), host.split(".")
    if len(wanted) != len(labels) or not all(labels):
        return False
    if wanted[0] == "*" and len(wanted) > 2:  # a wildcard, never for a whole domain ("*.com")
        return wanted[1:] == labels[1:]
    return wanted == labels


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
