"""Bound CIDRs, written once for roles (login) and tokens (every use): what a valid entry is,
and whether an address lies inside one (Vault ``sdk/helper/cidrutil``)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from plugin.errors import InvalidRequest

__all__ = ["parse_cidrs", "cidr_allows", "peer_ip", "narrow_cidrs", "is_loopback_host"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_cidrs(values: list[str]) -> list[str]:
    """Validate IPs and CIDRs; return them trimmed but otherwise as given (host bits kept,
    as Vault shows them; a bare address is a /32 or /128, and a /32 or /128 is shown as
    the bare address, as Vault's sockaddr does). Empty entries are dropped.

    :raises InvalidRequest: ``error parsing address "<x>": <reason>`` for the first value
        that is neither (an IPv6 zone, ``fe80::1%eth0``, is no CIDR either).
    """
    out: list[str] = []
    for raw in values:
        text = raw.strip()
        if not text:
            continue
        try:
            if "%" in text:
                raise ValueError("an IPv6 zone is not allowed in a bound CIDR")
            net = _network(text)
        except ValueError as exc:
            raise InvalidRequest(f'error parsing address "{text}": {exc}') from None
        address, slash, _ = text.partition("/")
        out.append(address if slash and net.prefixlen == net.max_prefixlen else text)
    return out


def cidr_allows(cidrs: list[str], remote_addr: str | None) -> bool:
    """True when ``remote_addr`` lies in one of ``cidrs``.

    An IPv4-mapped IPv6 peer (``::ffff:10.0.0.1``, what a dual-stack socket reports) is
    its IPv4 address, and an IPv4-mapped CIDR is its IPv4 network, so the two spellings of
    one address meet the same rule. An IPv6 zone (``fe80::1%eth0``) is ignored. An
    address that does not parse, or an entry that does not, never matches.
    """
    ip = peer_ip((remote_addr or "").strip())
    if ip is None:
        return False
    for cidr in cidrs:
        try:
            net = _network(cidr)
        except (ValueError, TypeError):
            continue
        if ip in net:
            return True
    return False


def peer_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address as the CIDR rules compare it: an IPv6 zone (``fe80::1%eth0``) dropped,
    an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) as its IPv4 address; None when ``text``
    is no IP address."""
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def narrow_cidrs(parent: list[str], requested: list[str]) -> list[str]:
    """The bound CIDRs of a token created by a caller bound to ``parent``: the parent's own
    when none are requested, else the intersection (a child is never usable from more
    places than its parent). Both lists are already parsed (``parse_cidrs``).

    :raises InvalidRequest: when the requested CIDRs share no address with the parent's.
    """
    if not parent:
        return list(requested)
    if not requested:
        return list(parent)
    out: list[str] = []
    for want in requested:
        w = _network(want)
        for have in parent:
            h = _network(have)
            if w.version != h.version:
                continue
            if w.subnet_of(h):  # type: ignore[arg-type]  # same version, checked above
                out.append(want)
                break
            if h.subnet_of(w):  # type: ignore[arg-type]
                out.append(have)
    if not out:
        raise InvalidRequest(
            f"bound_cidrs {requested} are outside the creating token's bound CIDRs {parent}"
        )
    return list(dict.fromkeys(out))


@lru_cache(maxsize=1024)
def _network(cidr: str) -> _Network:
    """One bound CIDR parsed once (roles and tokens repeat the same strings)."""
    net = ipaddress.ip_network(cidr.strip(), strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def is_loopback_host(host: str) -> bool:
    """Whether a URL's host (as ``urlsplit(...).hostname`` gives it) is this machine:
    ``localhost`` or a loopback address. The one rule for where plain ``http`` is allowed
    (OIDC redirect URIs, claim sources)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
