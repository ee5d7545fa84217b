"""Key sources for JWT verification: static PEMs, HMAC secrets, JWKS URLs, JWKS pairs, discovery.

Remote key sets are fetched lazily and cached with a maximum age. A stale set is refreshed in
the background while the cached keys keep serving, an unknown ``kid`` triggers one
single-flight refresh at most once per cooldown window, and a failed or empty fetch never
replaces the last good key set.

What a remote source knows about its fetches is visible: ``KeySource.status()`` (shown by
``GET config``: last fetch, last error, key count, next refresh), a refusal for an unknown
``kid`` names the kid, the kids the cached set holds, when it was fetched and the last
refresh error, and a failed refresh is logged once per streak of failures (``jwks_fetch_failed``,
``discovery_fetch_failed``; the streak's end as ``..._recovered``) and every fetch is counted
by the mount's ``Events`` (the server's ``authmount_key_fetches_total{kind, result}``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypedDict

import structlog
from cryptography import x509

from plugin import jsonlimits
from plugin.errors import InvalidRequest, PluginError
from plugin.framework import NO_EVENTS, ClientCert, Events, Fetcher
from plugin.jose_verify import (
    MAX_KEYS_PER_TOKEN,
    ParsedToken,
    VerifyKey,
    keys_from_hmac_secrets,
    keys_from_jwks,
    keys_from_pems,
    verify_signature,
)

__all__ = [
    "KeySource",
    "StaticKeySource",
    "RemoteJWKS",
    "JWKSKeySource",
    "DiscoveryKeySource",
    "JWKSPairsKeySource",
    "build_key_source",
    "fetch_discovery",
    "check_ca_pem",
    "client_cert_of",
    "FailureStreak",
]

log = structlog.get_logger("plugin.keys")

FETCH_TIMEOUT = 10.0
MAX_BODY_BYTES = 1 << 20
WELL_KNOWN = "/.well-known/openid-configuration"

_SIG_PREFIX = "error validating token: error verifying token signature: "
_BAD_ALG = (
    "error validating token: invalid algorithm (alg) header parameter: "
    "token signed with unexpected algorithm"
)
_JWKS_FAILED = "failed to verify id token signature"

Clock = Callable[[], float]
#: Kids an error message lists at most.
_KIDS_SHOWN = 10


def _rfc3339(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FailureStreak:
    """Consecutive failures of one remote fetch (``kind``: ``jwks`` or ``discovery``): logged
    when a streak starts and when it ends; every fetch counted (``failures`` in this streak,
    ``total`` failures ever, and each fetch's result reported to ``events``, the metrics)."""

    def __init__(self, kind: str, url: str, mount: str = "", events: Events = NO_EVENTS) -> None:
        self.kind = kind
        self.url = url
        self.mount = mount
        self.events = events
        self.failures = 0
        self.total = 0

    def failed(self, reason: str) -> None:
        self.failures += 1
        self.total += 1
        self.events.key_fetch(self.kind, False)
        if self.failures == 1:
            log.warning(f"{self.kind}_fetch_failed", mount=self.mount or None, url=self.url, reason=reason)

    def succeeded(self) -> None:
        self.events.key_fetch(self.kind, True)
        if self.failures:
            log.info(f"{self.kind}_fetch_recovered", mount=self.mount or None, url=self.url, failures=self.failures)
        self.failures = 0


def _show(value: str, limit: int = 128) -> str:
    """``value`` for an error message: as-is when short and printable, else JSON-escaped."""
    if value and len(value) <= limit and value.isascii() and value.isprintable() and " " not in value:
        return value
    shown = json.dumps(value[:limit])
    return shown + ("..." if len(value) > limit else "")


def check_ca_pem(ca_pem: str | None) -> str | None:
    """Return a reason if ``ca_pem`` is set but holds no parseable certificate, else None."""
    if not ca_pem:
        return None
    try:
        certs = x509.load_pem_x509_certificates(ca_pem.encode("utf-8"))
    except Exception:
        return "could not parse CA PEM value successfully"
    return None if certs else "could not parse CA PEM value successfully"


async def _get_json(
    fetcher: Fetcher, url: str, ca_pem: str | None, client_cert: ClientCert | None = None,
    server_names: tuple[str, ...] = (),
) -> Any:
    """GET ``url`` and decode its JSON body (any content type); ``server_names``: the hosts
    the server's certificate may name instead of the URL's (``override_allowed_server_names``).

    :raises ValueError: with a short reason (status, not JSON, network) and no body text.
    """
    try:
        result = await fetcher.fetch(
            "GET", url, ca_pem=ca_pem or None, timeout=FETCH_TIMEOUT, max_bytes=MAX_BODY_BYTES,
            client_cert=client_cert, server_names=server_names,
        )
    except PluginError as exc:
        raise ValueError(str(exc) or "request failed") from None
    except Exception as exc:  # a Fetcher should only raise UpstreamError; be safe anyway
        raise ValueError(f"request failed ({type(exc).__name__})") from None
    if result.status != 200:
        raise ValueError(f"unexpected HTTP status {result.status}")
    try:
        return jsonlimits.loads(result.body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ValueError("response is not valid JSON") from None


class KeySource:
    """Where the verification keys of a mount come from (base class)."""

    #: The Vault text used when no key verifies the token.
    failure = "no known key successfully validated the token signature"

    async def verify(self, token: ParsedToken, allowed_algs: Sequence[str]) -> None:
        """Check ``token.alg`` against ``allowed_algs`` and verify the signature.

        :raises InvalidRequest: with Vault's messages (``error validating token: ...``).
        """
        if token.alg not in allowed_algs:
            raise InvalidRequest(_BAD_ALG)
        await self._verify(token)

    async def _verify(self, token: ParsedToken) -> None:
        raise NotImplementedError

    async def check(self, *, fetch: bool = True) -> None:
        """Validate the source at config-write time: what needs no network (CA PEMs)
        always, and with ``fetch`` the remote keys now.

        :raises InvalidRequest: naming what failed.
        """

    def status(self) -> list[dict[str, Any]]:
        """Each remote fetch's state (``GET config`` shows it); empty for local keys."""
        return []

    async def close(self) -> None:
        """Cancel background work (config change, mount disable)."""


class StaticKeySource(KeySource):
    """Keys parsed once from ``jwt_validation_pubkeys`` or ``jwt_validation_hmac_secrets``."""

    def __init__(self, keys: list[VerifyKey]) -> None:
        self.keys = keys

    async def _verify(self, token: ParsedToken) -> None:
        if not verify_signature(token, self.keys):
            raise InvalidRequest(_SIG_PREFIX + self.failure)


def _load_jwks(doc: Any) -> tuple[list[VerifyKey], int]:
    """The verification keys of a JWK set and how many of its JWKs gave any.

    :raises ValueError: the document is not a JWK set.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("response is not a JWK set")
    keys: list[VerifyKey] = []
    usable = 0
    for obj in doc["keys"][:100]:
        found = keys_from_jwks({"keys": [obj]})
        usable += bool(found)
        keys.extend(found)
    return keys, usable


class _Remote:
    """What every remote fetch of a mount is given: the URL, its CA, the fetcher, the cache
    settings (``_CacheArgs``), and a ``FailureStreak`` of its ``kind`` for the log and metrics."""

    kind = ""

    def __init__(
        self,
        url: str,
        ca_pem: str | None,
        fetcher: Fetcher,
        *,
        clock: Clock = time.time,
        max_age: float = 3600,
        refresh_cooldown: float = 10.0,
        client_cert: ClientCert | None = None,
        server_names: tuple[str, ...] = (),
        mount: str = "",
        events: Events = NO_EVENTS,
    ) -> None:
        self.url = url
        self.ca_pem = ca_pem or None
        self.fetcher = fetcher
        self.clock = clock
        self.max_age = max_age
        self.refresh_cooldown = refresh_cooldown
        self.client_cert = client_cert
        self.server_names = server_names
        self.mount = mount
        #: Fetches, cache hits and the fetch time of the key set in use (metrics).
        self.events = events
        self.streak = FailureStreak(self.kind, url, mount, events)
        self._init_state()

    def _init_state(self) -> None:
        """Set up the subclass's own state (the last step of ``__init__``)."""

    def cache_args(self) -> _CacheArgs:
        """These settings, for a fetch this one leads to (a discovered key set)."""
        return {"clock": self.clock, "max_age": self.max_age, "refresh_cooldown": self.refresh_cooldown,
                "client_cert": self.client_cert, "server_names": self.server_names, "mount": self.mount,
                "events": self.events}


class RemoteJWKS(_Remote):
    """One cached remote JWK set with lazy fetch, max age, single flight and cooldown."""

    kind = "jwks"

    def _init_state(self) -> None:
        self.keys: list[VerifyKey] | None = None
        self.key_count = 0
        self.fetched_at = 0.0
        self.last_attempt: float | None = None
        self.last_error: str | None = None
        self._inflight: asyncio.Task[bool] | None = None

    # -- fetching ----------------------------------------------------------------------
    async def _fetch(self) -> bool:
        """Fetch and install a new key set; never raises, records ``last_error``."""
        try:
            doc = await _get_json(self.fetcher, self.url, self.ca_pem, self.client_cert, self.server_names)
            keys, count = _load_jwks(doc)
            if not keys:
                raise ValueError("JWK set contains no usable signing keys")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep the last good set whatever went wrong
            self.last_error = str(exc) or type(exc).__name__
            self.streak.failed(self.last_error)
            return False
        self.keys, self.key_count = keys, count
        self.fetched_at = self.clock()
        self.last_error = None
        self.streak.succeeded()
        self.events.key_set_fetched(self.url, self.fetched_at)
        return True

    def _start(self) -> asyncio.Task[bool]:
        if self._inflight is None or self._inflight.done():
            self.last_attempt = self.clock()
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        return self._inflight

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch now unless one is in flight (then join it) or the cooldown forbids it.

        Returns True if a fetch this call started or joined succeeded.
        """
        if self._inflight is not None and not self._inflight.done():
            return await asyncio.shield(self._inflight)
        if (
            not force
            and self.last_attempt is not None
            and self.clock() - self.last_attempt < self.refresh_cooldown
        ):
            return False
        return await asyncio.shield(self._start())

    async def current(self) -> list[VerifyKey]:
        """The cached keys, fetching the first time; a stale set refreshes in the background."""
        if self.keys is None:
            await self.refresh()
        else:
            self.events.key_cache_hit()
        if self.keys is not None and self.clock() - self.fetched_at >= self.max_age:
            in_cooldown = (
                self.last_attempt is not None
                and self.clock() - self.last_attempt < self.refresh_cooldown
            )
            if not in_cooldown:
                self._start()
        return self.keys or []

    def has_kid(self, kid: str) -> bool:
        return any(k.kid == kid for k in self.keys or ())

    def kids(self) -> list[str]:
        """The kids of the cached set, in order, once each."""
        return list(dict.fromkeys(k.kid for k in self.keys or () if k.kid is not None))

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def unavailable_reason(self) -> str:
        return f"could not fetch keys from {self.url}: {self.last_error or 'no keys'}"

    def next_refresh(self) -> float | None:
        """When the next fetch may happen: at the set's maximum age, or (after a failure,
        with no keys yet) when the cooldown ends; None before the first use."""
        if self.last_attempt is None:
            return None
        if self.keys is None or self.last_error is not None:
            return self.last_attempt + self.refresh_cooldown
        return self.fetched_at + self.max_age

    def status(self, source: str) -> dict[str, Any]:
        """This set's fetch state for ``GET config`` (``source`` names the config field)."""
        return {
            "source": source,
            "url": self.url,
            "key_count": self.key_count if self.keys is not None else 0,
            "kids": self.kids()[:_KIDS_SHOWN],
            "last_fetch": _rfc3339(self.fetched_at if self.keys is not None else None),
            "last_error": self.last_error,
            "consecutive_failures": self.streak.failures,
            "failures": self.streak.total,
            "next_refresh": _rfc3339(self.next_refresh()) or "at first use",
        }

    def describe(self) -> str:
        """What the cache holds, for a refusal: its kids, when it was fetched, the last error."""
        if self.keys is None:
            held = f"no key set from {self.url} yet"
        else:
            kids = self.kids()
            shown = ", ".join(_show(k, 64) for k in kids[:_KIDS_SHOWN]) + (", ..." if len(kids) > _KIDS_SHOWN else "")
            held = f"the key set from {self.url} holds kids [{shown}] (fetched {_rfc3339(self.fetched_at)})"
        if self.last_error:
            held += f"; last refresh error: {self.last_error}"
        return held


def _candidates(keys: list[VerifyKey], token: ParsedToken) -> list[VerifyKey]:
    """Keys for the token's ``kid`` (all keys when it has none), bound to its alg."""
    return [
        k for k in keys if k.alg == token.alg and (token.kid is None or k.kid == token.kid)
    ][:MAX_KEYS_PER_TOKEN]


async def _verify_remote(cache: RemoteJWKS, token: ParsedToken) -> None:
    """Verify against a remote set, refreshing once (rate-limited) when the kid is unknown."""
    keys = await cache.current()
    if verify_signature(token, _candidates(keys, token)):
        return
    known_kid = token.kid is not None and cache.has_kid(token.kid)
    # A kid we know means a forged or broken signature: fetching again cannot help.
    if not known_kid and await cache.refresh():
        if verify_signature(token, _candidates(cache.keys or [], token)):
            return
    message = _SIG_PREFIX + _JWKS_FAILED
    if not cache.keys:
        message += ": " + cache.unavailable_reason()
    elif token.kid is not None and not cache.has_kid(token.kid):
        message += f": no key with kid {_show(token.kid)}: {cache.describe()}"
    raise InvalidRequest(message)


class JWKSKeySource(KeySource):
    """Keys from one ``jwks_url``."""

    failure = _JWKS_FAILED

    def __init__(self, jwks: RemoteJWKS) -> None:
        self.jwks = jwks

    async def _verify(self, token: ParsedToken) -> None:
        await _verify_remote(self.jwks, token)

    async def check(self, *, fetch: bool = True) -> None:
        reason = check_ca_pem(self.jwks.ca_pem)
        if reason:
            raise InvalidRequest(f"error checking jwks_ca_pem: {reason}")
        if fetch and not await self.jwks.refresh(force=True):
            raise InvalidRequest(f"error checking jwks URL {self.jwks.url}: {self.jwks.last_error}")

    def status(self) -> list[dict[str, Any]]:
        return [self.jwks.status("jwks_url")]

    async def close(self) -> None:
        await self.jwks.close()


async def fetch_discovery(
    url: str, ca_pem: str | None, fetcher: Fetcher, client_cert: ClientCert | None = None,
    server_names: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fetch and check ``<url>/.well-known/openid-configuration``.

    The document's ``issuer`` must equal ``url`` byte for byte, and ``jwks_uri`` (if present)
    must be an absolute http(s) URL, https when the discovery URL is https.

    :raises InvalidRequest: ``error checking oidc discovery URL: <reason>``.
    """

    def fail(reason: str) -> InvalidRequest:
        return InvalidRequest(f"error checking oidc discovery URL: {reason}")

    if url.rstrip("/").endswith(WELL_KNOWN):
        raise fail(f"the URL must be the issuer, without {WELL_KNOWN}")
    reason = check_ca_pem(ca_pem)
    if reason:
        raise fail(reason)
    try:
        doc = await _get_json(fetcher, url.rstrip("/") + WELL_KNOWN, ca_pem, client_cert, server_names)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not isinstance(doc, dict):
        raise fail("discovery document is not a JSON object")
    issuer = doc.get("issuer")
    if issuer != url:
        shown = _show(issuer) if isinstance(issuer, str) else "missing"
        raise fail(f"issuer in discovery document is {shown}, expected {_show(url)}")
    jwks_uri = doc.get("jwks_uri")
    if jwks_uri is not None:
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise fail("jwks_uri in discovery document is not an http(s) URL")
        if url.startswith("https://") and not jwks_uri.startswith("https://"):
            raise fail("jwks_uri in discovery document is not https")
    return doc


class DiscoveryKeySource(_Remote, KeySource):
    """Keys from the ``jwks_uri`` of an OIDC discovery document (fetched once, lazily).

    A failed discovery fetch is remembered for the refresh cooldown, so logins cannot
    force a fetch each while the IdP is down.
    """

    kind = "discovery"
    failure = _JWKS_FAILED

    def _init_state(self) -> None:
        self.jwks: RemoteJWKS | None = None
        self._lock = asyncio.Lock()
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._failure = ""

    def _install(self, doc: dict[str, Any]) -> RemoteJWKS:
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise InvalidRequest("error checking oidc discovery URL: discovery document has no jwks_uri")
        self.jwks = RemoteJWKS(jwks_uri, self.ca_pem, self.fetcher, **self.cache_args())
        self._fetched_at, self._failed_at, self._failure = self.clock(), None, ""
        return self.jwks

    async def _discover(self) -> dict[str, Any]:
        try:
            doc = await fetch_discovery(self.url, self.ca_pem, self.fetcher, self.client_cert, self.server_names)
        except InvalidRequest as exc:
            self._failure = exc.messages[0]
            self.streak.failed(self._failure)
            raise
        self.streak.succeeded()
        return doc

    async def _resolve(self) -> RemoteJWKS:
        if self.jwks is not None:
            return self.jwks
        async with self._lock:  # single flight for the discovery fetch too
            if self.jwks is not None:
                return self.jwks
            now = self.clock()
            if self._failed_at is None or now - self._failed_at >= self.refresh_cooldown:
                try:
                    return self._install(await self._discover())
                except InvalidRequest as exc:
                    self._failed_at, self._failure = now, exc.messages[0]
            raise InvalidRequest(_SIG_PREFIX + _JWKS_FAILED + ": " + self._failure)

    async def _verify(self, token: ParsedToken) -> None:
        await _verify_remote(await self._resolve(), token)

    async def check(self, *, fetch: bool = True) -> None:
        reason = check_ca_pem(self.ca_pem)
        if reason:
            raise InvalidRequest(f"error checking oidc discovery URL: {reason}")
        if not fetch:
            return
        doc = await self._discover()
        if self.jwks is None:
            self._install(doc)

    def status(self) -> list[dict[str, Any]]:
        doc: dict[str, Any] = {
            "source": "oidc_discovery_url",
            "url": self.url,
            "last_fetch": _rfc3339(self._fetched_at),
            "last_error": self._failure or None,
            "consecutive_failures": self.streak.failures,
            "failures": self.streak.total,
        }
        if self.jwks is not None:
            doc["next_refresh"] = "never (the jwks_uri is kept until the config changes)"
            return [doc, self.jwks.status("jwks_uri")]
        doc["next_refresh"] = (
            _rfc3339(self._failed_at + self.refresh_cooldown) if self._failed_at is not None else "at first use"
        )
        return [doc]

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()


class JWKSPairsKeySource(KeySource):
    """Several JWKS endpoints (``jwks_pairs``); tokens must name their key with ``kid``."""

    failure = _JWKS_FAILED

    def __init__(self, caches: list[RemoteJWKS]) -> None:
        self.caches = caches

    async def _verify(self, token: ParsedToken) -> None:
        if token.kid is None:
            raise InvalidRequest(_SIG_PREFIX + "token missing kid header parameter")
        kid = token.kid
        await asyncio.gather(*(c.current() for c in self.caches))
        holders = [c for c in self.caches if c.has_kid(kid)]
        if not holders:
            await asyncio.gather(*(c.refresh() for c in self.caches))
            if not any(c.keys for c in self.caches):
                raise InvalidRequest(
                    _SIG_PREFIX + f"failed to refresh all {len(self.caches)} JWKS caches - "
                    "check network connectivity and JWKS endpoints"
                )
            holders = [c for c in self.caches if c.has_kid(kid)]
        if not holders:
            shown = _show(kid)
            raise InvalidRequest(
                _SIG_PREFIX + f"error searching for key set with kid {shown}: "
                f"no key found with kid {shown} in any JWKS endpoint: "
                + "; ".join(c.describe() for c in self.caches)
            )
        keys = [k for c in holders for k in _candidates(c.keys or [], token)]
        if not verify_signature(token, keys):
            raise InvalidRequest(_SIG_PREFIX + self.failure)

    async def check(self, *, fetch: bool = True) -> None:
        for cache in self.caches:
            reason = check_ca_pem(cache.ca_pem)
            if reason:
                raise InvalidRequest(f"error checking jwks_ca_pem: {reason}")
        if not fetch:
            return
        results = await asyncio.gather(*(c.refresh(force=True) for c in self.caches))
        for cache, ok in zip(self.caches, results, strict=True):
            if not ok:
                raise InvalidRequest(f"error checking jwks URL {cache.url}: {cache.last_error}")

    def status(self) -> list[dict[str, Any]]:
        return [c.status(f"jwks_pairs[{i}]") for i, c in enumerate(self.caches)]

    async def close(self) -> None:
        for cache in self.caches:
            await cache.close()


class _CacheArgs(TypedDict):
    """The settings every remote key source takes as keyword arguments."""

    clock: Clock
    max_age: float
    refresh_cooldown: float
    client_cert: ClientCert | None
    server_names: tuple[str, ...]
    mount: str
    events: Events


def client_cert_of(config: Mapping[str, Any]) -> ClientCert | None:
    """The config's TLS client certificate (``client_tls_cert``/``client_tls_key``), or None."""
    cert, key = config.get("client_tls_cert"), config.get("client_tls_key")
    return (cert, key) if cert and key else None


def build_key_source(
    config: Mapping[str, Any],
    fetcher: Fetcher,
    *,
    clock: Clock = time.time,
    max_age: float = 3600,
    refresh_cooldown: float = 10.0,
    mount: str = "",
    events: Events = NO_EVENTS,
) -> KeySource:
    """Build the key source for a stored jwt config (exactly one family is set).

    Static PEM and HMAC keys are parsed here; remote sources fetch nothing until the first
    ``verify`` or ``check``. ``mount`` names the mount in log lines.

    :raises InvalidRequest: for unparseable PEM keys or HMAC secrets, or no key source.
    """
    cache_args: _CacheArgs = {
        "clock": clock, "max_age": max_age, "refresh_cooldown": refresh_cooldown,
        "client_cert": client_cert_of(config),
        "server_names": tuple(config.get("override_allowed_server_names") or ()), "mount": mount, "events": events,
    }
    if config.get("jwt_validation_pubkeys"):
        return StaticKeySource(keys_from_pems(list(config["jwt_validation_pubkeys"])))
    if config.get("jwt_validation_hmac_secrets"):
        return StaticKeySource(keys_from_hmac_secrets(list(config["jwt_validation_hmac_secrets"])))
    if config.get("jwks_url"):
        return JWKSKeySource(
            RemoteJWKS(config["jwks_url"], config.get("jwks_ca_pem"), fetcher, **cache_args)
        )
    if config.get("jwks_pairs"):
        caches = []
        for pair in config["jwks_pairs"]:
            if not isinstance(pair, Mapping) or not isinstance(pair.get("jwks_url"), str):
                raise InvalidRequest(
                    "invalid jwks_pairs: jwks_pairs must be provided as a list of json objects "
                    "with the fields jwks_url and jwks_ca_pem"
                )
            caches.append(RemoteJWKS(pair["jwks_url"], pair.get("jwks_ca_pem"), fetcher, **cache_args))
        return JWKSPairsKeySource(caches)
    if config.get("oidc_discovery_url"):
        return DiscoveryKeySource(
            config["oidc_discovery_url"], config.get("oidc_discovery_ca_pem"), fetcher, **cache_args
        )
    raise InvalidRequest(
        "exactly one of 'jwt_validation_pubkeys', 'jwks_url', 'jwks_pairs' or "
        "'oidc_discovery_url' must be set"
    )
