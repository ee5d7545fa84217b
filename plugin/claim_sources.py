"""Claims from where IdPs put them: the userinfo response and distributed and aggregated
claims (OpenID Connect Core 1.0 section 5.6.2).

A token (or a userinfo response) may say that some of its claims live elsewhere::

    "_claim_names":   {"groups": "src1"},
    "_claim_sources": {"src1": {"endpoint": "https://idp/groups", "access_token": "..."}}

An *aggregated* source carries the claims as a JWT (``{"JWT": "..."}``), a *distributed*
one names an endpoint that answers them. ``resolve`` fills in the claims a role reads,
generically (Vault only knows Azure's group overage, through provider code), and bounded:
at most ``MAX_SOURCES`` sources per login, ``MAX_SOURCE_BYTES`` each, all within
``DEADLINE`` seconds; the fetcher follows no redirect to another host. What a source
answers is trusted as much as the mount's own keys make it: a JWT (aggregated, or from an
endpoint) must verify with them; a JSON object is taken from an https endpoint (or http
on a loopback address) that the verified token named. Registered claims (``sub``,
``aud``, ...) and claims the token already has are never replaced. A source that fails
(slow, huge, redirected elsewhere, unverifiable) leaves its claims unresolved, and the
login is refused naming it (``path_login``'s ``distributed_claims`` check): a role that
reads a claim never sees a token without it, so a group that restricts a user cannot be
dropped by making its source fail.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from plugin import jsonlimits
from plugin.cidrutil import is_loopback_host
from plugin.errors import PluginError
from plugin.framework import ClientCert, Fetcher

__all__ = [
    "MAX_SOURCES",
    "MAX_SOURCE_BYTES",
    "DEADLINE",
    "REGISTERED_CLAIMS",
    "Sources",
    "has_claim_sources",
    "merge_userinfo",
    "referenced_claims",
    "resolve",
]

#: Claim sources one login resolves at most.
MAX_SOURCES = 4
#: The largest answer (an endpoint's body, or an aggregated JWT) one source may give.
MAX_SOURCE_BYTES = 256 * 1024
#: Seconds one login spends resolving claim sources, all sources together.
DEADLINE = 5.0
#: Claims a claim source never provides (they identify and bind the token itself).
REGISTERED_CLAIMS = frozenset({
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "nonce", "azp", "at_hash", "c_hash",
    "auth_time", "acr", "amr", "sid", "_claim_names", "_claim_sources",
})
def _q(name: str) -> str:
    """A source or claim name for a message: JSON-quoted, at most 64 characters."""
    return json.dumps(name[:64])


_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

#: Verifies a JWT with the mount's keys and returns its claims (raises PluginError).
VerifyJWT = Callable[[str], Awaitable[dict[str, Any]]]


def merge_userinfo(claims: dict[str, Any], info: dict[str, Any], precedence: str) -> None:
    """Merge a userinfo response (whose ``sub`` matched) into the ID token's ``claims``:
    userinfo replaces same-named claims (``precedence`` "userinfo", Vault's merge), or only
    adds the claims the ID token lacks ("id_token")."""
    if precedence == "id_token":
        for name, value in info.items():
            claims.setdefault(name, value)
    else:
        claims.update(info)


def _top_level(name: str) -> str:
    """The top-level claim a claim name or JSON pointer (``/a/b``) reads."""
    if not name.startswith("/"):
        return name
    first = name.split("/")[1] if name.count("/") else ""
    return first.replace("~1", "/").replace("~0", "~")


def referenced_claims(names: Iterable[str]) -> set[str]:
    """The top-level claims behind the claim names and pointers a role reads."""
    return {top for top in (_top_level(n) for n in names if n) if top}


def has_claim_sources(claims: dict[str, Any]) -> bool:
    """Whether ``claims`` name distributed or aggregated claims."""
    return isinstance(claims.get("_claim_names"), dict) and isinstance(claims.get("_claim_sources"), dict)


@dataclass(slots=True)
class Sources:
    """What resolving needs: the fetcher and TLS settings, the mount's JWT verification,
    and the access token used when a source has none of its own."""

    fetcher: Fetcher
    verify_jwt: VerifyJWT
    access_token: str = ""
    ca_pem: str | None = None
    client_cert: ClientCert | None = None
    server_names: tuple[str, ...] = ()


def _endpoint_ok(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if not parts.hostname or any(c <= " " for c in url):
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname))


async def _answer(name: str, spec: Any, src: Sources) -> dict[str, Any]:
    """The claims one source gives (a JSON object), or raise ValueError saying why not."""
    if not isinstance(spec, dict):
        raise ValueError(f"claim source {_q(name)} is not described")
    if "JWT" in spec:
        raw = spec["JWT"]
        if not isinstance(raw, str) or len(raw) > MAX_SOURCE_BYTES:
            raise ValueError(f"claim source {_q(name)}: the aggregated JWT is not a string of at most {MAX_SOURCE_BYTES} bytes")
        return await _verified(name, raw, src)
    endpoint = spec.get("endpoint")
    if not isinstance(endpoint, str) or not _endpoint_ok(endpoint):
        raise ValueError(f"claim source {_q(name)}: the endpoint is not an https URL")
    token = spec.get("access_token", src.access_token)
    if not isinstance(token, str) or not token:
        raise ValueError(f"claim source {_q(name)}: no access token for its endpoint")
    try:
        result = await src.fetcher.fetch(
            "GET", endpoint, ca_pem=src.ca_pem,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/jwt, application/json"},
            timeout=DEADLINE, max_bytes=MAX_SOURCE_BYTES, client_cert=src.client_cert, server_names=src.server_names,
        )
    except PluginError as exc:
        raise ValueError(f"claim source {_q(name)}: {'; '.join(exc.messages) or 'request failed'}") from None
    if result.status != 200:
        raise ValueError(f"claim source {_q(name)}: HTTP {result.status}")
    text = result.body.decode("utf-8", "replace").strip()
    if _JWS.fullmatch(text):
        return await _verified(name, text, src)
    try:
        doc = jsonlimits.loads(text)
    except (ValueError, RecursionError):
        raise ValueError(f"claim source {_q(name)}: the answer is neither a JWT nor JSON") from None
    if not isinstance(doc, dict):
        raise ValueError(f"claim source {_q(name)}: the answer is not a JSON object")
    return doc


async def _verified(name: str, raw: str, src: Sources) -> dict[str, Any]:
    try:
        return await src.verify_jwt(raw)
    except PluginError as exc:
        raise ValueError(f"claim source {_q(name)}: its JWT is refused ({'; '.join(exc.messages)})") from None


async def resolve(claims: dict[str, Any], wanted: set[str], src: Sources) -> tuple[list[str], list[str]]:
    """Fill in the claims of ``wanted`` that ``claims`` name in ``_claim_names``.

    Returns the names resolved and the reasons those that could not be were not (never
    raises: a source that fails, is slow, huge or redirects elsewhere gives a reason).
    """
    names, specs = claims.get("_claim_names"), claims.get("_claim_sources")
    if not isinstance(names, dict) or not isinstance(specs, dict):
        return [], []
    todo: dict[str, list[str]] = {}
    for claim, source in names.items():
        if claim in wanted and claim not in REGISTERED_CLAIMS and claim not in claims and isinstance(source, str):
            todo.setdefault(source, []).append(claim)
    warnings: list[str] = []
    if len(todo) > MAX_SOURCES:
        skipped = sorted(todo)[MAX_SOURCES:]
        warnings.append(f"claim sources {skipped} not resolved: at most {MAX_SOURCES} per login")
        todo = {k: todo[k] for k in sorted(todo)[:MAX_SOURCES]}
    if not todo:
        return [], warnings
    tasks = {source: asyncio.ensure_future(_answer(source, specs.get(source), src)) for source in todo}
    try:
        async with asyncio.timeout(DEADLINE):
            await asyncio.wait(tasks.values())
    except TimeoutError:
        pass
    finally:  # the deadline, or the login itself cancelled: no fetch outlives it
        late = {source for source, task in tasks.items() if not task.done()}
        for source in late:
            tasks[source].cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    resolved: list[str] = []
    for source, task in tasks.items():
        if source in late:
            warnings.append(f"claim source {_q(source)}: no answer within {DEADLINE:g} seconds")
            continue
        exc = task.exception()
        if exc is not None:
            warnings.append(str(exc) if isinstance(exc, ValueError) else f"claim source {_q(source)}: failed")
            continue
        answer = task.result()
        for claim in todo[source]:
            if claim in answer:
                claims[claim] = answer[claim]
                resolved.append(claim)
            else:
                warnings.append(f"claim source {_q(source)} did not answer claim {_q(claim)}")
    return sorted(resolved), warnings
