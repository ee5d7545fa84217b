"""The ``config`` path: mount-wide key source and OIDC settings (docs/reference/vault-api.md section 2)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from plugin.client_auth import check_client_credentials, check_client_tls
from plugin.errors import InvalidRequest
from plugin.framework import Operation, PathSpec, Request, Response
from plugin.jose_verify import HMAC_ALGS, SUPPORTED_ALGS
from plugin.schema import Field, FieldSet, FieldType
from plugin.sealing import Sealer, is_sealed

if TYPE_CHECKING:
    from plugin.backend import JWTAuthBackend
    from plugin.keys import KeySource

__all__ = [
    "CONFIG_KEY", "CONFIG_FIELDS", "FINGERPRINTS", "KEY_SOURCES", "PROVIDER_SECRETS", "JWTConfig", "validate_config", "check_offline", "allowed_algs",
    "path_config",
]

CONFIG_KEY = "config"
#: The GET key holding the fingerprints of the secrets that are set (``JWTConfig.fingerprints``).
FINGERPRINTS = "sensitive_fingerprints"
#: The GET key holding each remote key source's fetch state (``KeySource.status``).
KEY_SOURCES = "key_sources"

_S = FieldType.STRING
_CSS = FieldType.COMMA_STRING_SLICE

CONFIG_FIELDS = FieldSet(
    {
        "oidc_discovery_url": Field(
            _S,
            "OIDC Discovery URL, without any .well-known component (base path). Cannot be used "
            "with 'jwks_url', 'jwks_pairs', 'jwt_validation_pubkeys' or "
            "'jwt_validation_hmac_secrets'.",
            default="",
        ),
        "oidc_discovery_ca_pem": Field(
            _S, "The CA certificate or chain of certificates, in PEM format, to use to validate "
            "connections to the OIDC Discovery URL. If not set, system certificates are used.",
            default="",
        ),
        "oidc_client_id": Field(_S, "The OAuth Client ID configured with your OIDC provider.", default=""),
        "oidc_client_secret": Field(
            _S, "The OAuth Client Secret configured with your OIDC provider. Never returned. "
            "Cannot be used with 'oidc_client_private_key'.",
            default="", sensitive=True,
        ),
        "oidc_client_private_key": Field(
            _S, "A PEM private key (RSA of at least 2048 bits, EC P-256/P-384/P-521 or Ed25519, "
            "not encrypted) instead of 'oidc_client_secret': authmount authenticates to the "
            "IdP's token and device endpoints with a client assertion signed by it "
            "(private_key_jwt, RFC 7523); register its public key with the IdP. Never returned.",
            default="", sensitive=True,
        ),
        "oidc_client_assertion_alg": Field(
            _S, "The client assertion's signing algorithm: RS256 (the default for RSA keys), "
            "RS384, RS512, PS256, PS384 or PS512; EC and Ed25519 keys have one (ES256, ES384, "
            "ES512 by curve; EdDSA). Only with 'oidc_client_private_key'.", default="",
        ),
        "oidc_client_assertion_kid": Field(
            _S, "The 'kid' header of the client assertion (the key's id as registered with the "
            "IdP); none when empty. Only with 'oidc_client_private_key'.", default="",
        ),
        "oidc_response_mode": Field(
            _S, "The response mode to be used in the OAuth2 request: 'query' (the default) or "
            "'form_post'.", default="",
        ),
        "oidc_response_types": Field(
            _CSS, "The response types to request: 'code' (the default) and/or 'id_token'.", default=[]
        ),
        "jwks_url": Field(
            _S, "JWKS URL to use to authenticate signatures. Cannot be used with the other key "
            "sources.", default="",
        ),
        "jwks_ca_pem": Field(
            _S, "The CA certificate or chain of certificates, in PEM format, to use to validate "
            "connections to the JWKS URL. If not set, system certificates are used.", default="",
        ),
        "jwks_pairs": Field(
            FieldType.SLICE,
            "Set of JWKS URL and optional CA certificate pairs, as a list of objects "
            '{"jwks_url": ..., "jwks_ca_pem": ...}. Tokens must then carry a kid header. Cannot '
            "be used with 'jwks_url', 'jwks_ca_pem' or 'bound_issuer'.",
            default=[],
        ),
        "jwt_validation_pubkeys": Field(
            _CSS, "A list of PEM-encoded public keys (or certificates) to use to authenticate "
            "signatures locally. Cannot be used with the other key sources.", default=[],
        ),
        "jwt_validation_hmac_secrets": Field(
            _CSS, "A list of shared HMAC secrets of at least 32 bytes each, for HS256/HS384/HS512 "
            "tokens (send a JSON list: a string is split on commas). Never returned. Cannot be "
            "used with the other key sources.", default=[], sensitive=True,
        ),
        "jwt_supported_algs": Field(
            _CSS, "A list of supported signing algorithms. Defaults to all asymmetric algorithms "
            "(RS*, PS*, ES*, EdDSA) for JWT login, or HS256 with 'jwt_validation_hmac_secrets'. "
            "HS* may only be used with 'jwt_validation_hmac_secrets'.", default=[],
        ),
        "bound_issuer": Field(_S, "The value against which to match the 'iss' claim in a JWT.", default=""),
        "default_role": Field(
            FieldType.LOWER_STRING, "The default role to use if none is provided during login.", default=""
        ),
        "provider_config": Field(FieldType.MAP, "Provider-specific configuration.", default={}),
        "namespace_in_state": Field(
            FieldType.BOOL, "Pass namespace in the OIDC state parameter instead of as a separate "
            "query parameter. Defaults to true for new configs; kept when not sent on update.",
            default=True,
        ),
        "unsupported_critical_cert_extensions": Field(
            _CSS, "A list of ASN1 OIDs of certificate extensions marked Critical that are "
            "unsupported by Vault and should be ignored.", default=[],
        ),
        "override_allowed_server_names": Field(
            _CSS, "A list of host names (or IP addresses) to accept when validating the TLS "
            "certificate of the IdP's servers: the discovery URL, the JWKS URL(s), the token, "
            "userinfo and device endpoints and claim sources. The certificate must name one "
            "of them, whatever host the URL names; its chain is still checked against the CA "
            "pins or the system's CAs. Empty: the URL's host.", default=[],
        ),
        "client_tls_cert": Field(
            _S, "A PEM certificate (chain) authmount presents when the IdP asks for a client "
            "certificate (mTLS) on its discovery, JWKS, token, userinfo and device endpoints "
            "and claim sources; the CA pins ('oidc_discovery_ca_pem', 'jwks_ca_pem') still "
            "decide which servers are trusted. Requires 'client_tls_key'.", default="",
        ),
        "client_tls_key": Field(
            _S, "The PEM private key of 'client_tls_cert' (not encrypted). Never returned.",
            default="", sensitive=True,
        ),
        "skip_jwks_validation": Field(
            FieldType.BOOL, "Store the config even when its remote keys (the discovery "
            "document, the JWKS) cannot be fetched now, e.g. while the IdP is down: the write "
            "answers with a warning, the keys are fetched at the first login, and GET shows "
            "each key source's status in 'key_sources'. Checks that need no network (CA PEMs, "
            "keys) still refuse the write.", default=False,
        ),
    }
)

_PROVIDERS = {"azure", "gsuite", "secureauth", "ibmisam", "okta"}
#: The ``provider_config`` keys that are secrets, by provider: sealed at rest, never returned.
PROVIDER_SECRETS: dict[str, tuple[str, ...]] = {"gsuite": ("gsuite_service_account",), "okta": ("api_token",)}
_PROVIDER_SENSITIVE = PROVIDER_SECRETS
_KEY_FAMILIES = (
    "'jwt_validation_pubkeys', 'jwt_validation_hmac_secrets', 'jwks_url', 'jwks_pairs' "
    "or 'oidc_discovery_url'"
)


@dataclass(slots=True)
class JWTConfig:
    """The stored ``config`` entry (one attribute per ``CONFIG_FIELDS`` entry)."""

    oidc_discovery_url: str = ""
    oidc_discovery_ca_pem: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_client_private_key: str = ""
    oidc_client_assertion_alg: str = ""
    oidc_client_assertion_kid: str = ""
    oidc_response_mode: str = ""
    oidc_response_types: list[str] = field(default_factory=list)
    jwks_url: str = ""
    jwks_ca_pem: str = ""
    jwks_pairs: list[Any] = field(default_factory=list)
    jwt_validation_pubkeys: list[str] = field(default_factory=list)
    jwt_validation_hmac_secrets: list[str] = field(default_factory=list)
    jwt_supported_algs: list[str] = field(default_factory=list)
    bound_issuer: str = ""
    default_role: str = ""
    provider_config: dict[str, Any] = field(default_factory=dict)
    namespace_in_state: bool = True
    unsupported_critical_cert_extensions: list[str] = field(default_factory=list)
    override_allowed_server_names: list[str] = field(default_factory=list)
    client_tls_cert: str = ""
    client_tls_key: str = ""
    skip_jwks_validation: bool = False

    @classmethod
    def from_storage(cls, raw: dict[str, Any]) -> JWTConfig:
        """Build from a stored dict: unknown keys ignored, missing ones defaulted, nulls as zero."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names and v is not None}
        return cls(**kwargs)

    def to_storage(self) -> dict[str, Any]:
        """Every field as a dict (secrets in the clear: never write this form to storage)."""
        return dataclasses.asdict(self)

    def sealed(self, sealer: Sealer) -> dict[str, Any]:
        """The dict written to storage: secrets (the sensitive fields and the provider's
        credentials) sealed for ``config#<field>`` (``<storage key>#<innermost field name>``,
        the rule ``server.keyring.reseal`` relies on)."""
        out = CONFIG_FIELDS.sealed(self.to_storage(), sealer, CONFIG_KEY)
        provider = dict(self.provider_config)
        for key in _PROVIDER_SENSITIVE.get(str(provider.get("provider", "")), ()):
            if provider.get(key):
                provider[key] = sealer.seal(json.dumps(provider[key]).encode(), f"{CONFIG_KEY}#{key}")
        out["provider_config"] = provider
        return out

    @staticmethod
    def has_clear_secrets(raw: dict[str, Any]) -> bool:
        """Whether a stored config holds a secret in the clear (an older version's)."""
        clear = [raw.get(n) for n, f in CONFIG_FIELDS.items() if f.sensitive]
        provider = raw.get("provider_config") or {}
        if isinstance(provider, dict):
            clear += [provider.get(k) for k in _PROVIDER_SENSITIVE.get(str(provider.get("provider", "")), ())]
        return any(v and not is_sealed(v) for v in clear)

    @classmethod
    def unsealed(cls, raw: dict[str, Any], sealer: Sealer) -> JWTConfig:
        """A config read from storage (``sealed``'s inverse; secrets an older version stored
        in the clear are taken as they are, and sealed at the next write).

        :raises SealError: a secret that does not open with this server's keys.
        """
        values = CONFIG_FIELDS.unsealed(raw, sealer, CONFIG_KEY)
        provider = dict(values.get("provider_config") or {})
        for key in _PROVIDER_SENSITIVE.get(str(provider.get("provider", "")), ()):
            value = provider.get(key)
            if isinstance(value, str) and is_sealed(value):
                provider[key] = json.loads(sealer.unseal(value, f"{CONFIG_KEY}#{key}"))
        values["provider_config"] = provider
        return cls.from_storage(values)

    def public(self) -> dict[str, Any]:
        """GET output: sensitive fields and provider secrets left out (docs/reference/vault-api.md 2.3)."""
        out = CONFIG_FIELDS.public(self.to_storage())
        provider = dict(self.provider_config)
        for key in _PROVIDER_SENSITIVE.get(str(provider.get("provider", "")), ()):
            provider.pop(key, None)
        out["provider_config"] = provider
        return out

    def fingerprints(self, sealer: Sealer) -> dict[str, str]:
        """``{field: fingerprint}`` of every secret that is set (provider credentials as
        ``provider_config.<key>``), each for context ``config#<field>``: what GET shows
        instead of the secret, so that ``authmount apply`` can tell whether a file's secret
        is the stored one (docs/configuration.md, "Secrets in apply")."""
        out: dict[str, str] = {}
        stored = self.to_storage()
        for name, spec in CONFIG_FIELDS.items():
            if spec.sensitive and stored.get(name):
                out[name] = sealer.fingerprint(json.dumps(stored[name]).encode("utf-8"), f"{CONFIG_KEY}#{name}")
        provider = self.provider_config
        for key in _PROVIDER_SENSITIVE.get(str(provider.get("provider", "")), ()):
            if provider.get(key):
                name = f"provider_config.{key}"
                out[name] = sealer.fingerprint(json.dumps(provider[key]).encode("utf-8"), f"{CONFIG_KEY}#{name}")
        return out

    @property
    def is_oidc_flow(self) -> bool:
        """True when the OIDC browser flow is configured (discovery + client credentials:
        the secret or the private key)."""
        credential = self.oidc_client_secret or self.oidc_client_private_key
        return bool(self.oidc_discovery_url and self.oidc_client_id and credential)


def allowed_algs(config: JWTConfig) -> tuple[str, ...]:
    """Algorithms JWT login accepts: ``jwt_supported_algs``, else the source's default set."""
    if config.jwt_supported_algs:
        return tuple(config.jwt_supported_algs)
    if config.jwt_validation_hmac_secrets:
        return _HMAC_DEFAULT
    return SUPPORTED_ALGS


_HMAC_DEFAULT = ("HS256",)


def _check_algs(config: JWTConfig) -> None:
    hmac_source = bool(config.jwt_validation_hmac_secrets)
    for alg in config.jwt_supported_algs:
        if alg not in SUPPORTED_ALGS and alg not in HMAC_ALGS:
            raise InvalidRequest(f'invalid jwt_supported_algs: unsupported signing algorithm "{alg}"')
        if alg in HMAC_ALGS and not hmac_source:
            raise InvalidRequest(
                f'invalid jwt_supported_algs: signing algorithm "{alg}" may only be used with '
                "'jwt_validation_hmac_secrets'"
            )
        if alg not in HMAC_ALGS and hmac_source:
            raise InvalidRequest(
                f"invalid jwt_supported_algs: only {', '.join(HMAC_ALGS)} may be used with "
                f"'jwt_validation_hmac_secrets', got \"{alg}\""
            )


def _check_oidc_options(config: JWTConfig) -> None:
    for kind in config.oidc_response_types:
        if kind not in ("code", "id_token"):
            shown = "[" + " ".join(config.oidc_response_types) + "]"
            raise InvalidRequest(f"invalid response_types {shown}. 'code' and 'id_token' are allowed")
    mode = config.oidc_response_mode
    if mode in ("", "query"):
        if "id_token" in config.oidc_response_types:
            raise InvalidRequest("query response_mode may not be used with an id_token response_type")
    elif mode != "form_post":
        raise InvalidRequest(f'invalid response_mode: "{mode}"')
    if config.provider_config:
        provider = config.provider_config.get("provider")
        if provider is None:
            raise InvalidRequest("invalid provider_config: 'provider' field not found in provider_config")
        if not isinstance(provider, str) or provider not in _PROVIDERS:
            shown = provider if isinstance(provider, str) else json.dumps(provider)
            raise InvalidRequest(f'invalid provider_config: provider "{shown}" not found in custom providers')


def validate_config(config: JWTConfig) -> None:
    """The local (no network) checks of docs/reference/vault-api.md 2.2 that come before the key-source check.

    :raises InvalidRequest: the first failing check, with Vault's message.
    """
    families = [
        bool(config.oidc_discovery_url),
        bool(config.jwt_validation_pubkeys),
        bool(config.jwt_validation_hmac_secrets),
        bool(config.jwks_url),
        bool(config.jwks_pairs),
    ]
    if sum(families) != 1:
        raise InvalidRequest(f"exactly one of {_KEY_FAMILIES} must be set")
    check_client_credentials(config)
    if bool(config.oidc_client_id) != bool(config.oidc_client_secret or config.oidc_client_private_key):
        raise InvalidRequest("both 'oidc_client_id' and 'oidc_client_secret' must be set for OIDC")
    check_client_tls(config.client_tls_cert, config.client_tls_key)
    check_server_names(config.override_allowed_server_names)


#: A DNS host name: dot-separated labels of letters, digits and inner hyphens (or underscores,
#: which internal names use), at most 253 characters.
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def check_server_names(names: list[str]) -> None:
    """``override_allowed_server_names``: each a host name or an IP address (a wildcard or a
    URL would never match a certificate, so it is refused rather than stored).

    :raises InvalidRequest: the first name that is neither.
    """
    for name in names:
        host = name.rstrip(".")
        try:
            ipaddress.ip_address(host)
            continue
        except ValueError:
            pass
        if not (0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in host.split("."))):
            raise InvalidRequest(
                f"invalid override_allowed_server_names: {json.dumps(name)[:100]} is not a host name or an IP address"
            )


def _check_after_discovery(config: JWTConfig) -> None:
    if config.oidc_client_id and not config.oidc_discovery_url:
        raise InvalidRequest("'oidc_discovery_url' must be set for OIDC")
    if config.jwks_pairs:
        if config.jwks_ca_pem:
            raise InvalidRequest(
                "CA PEMs must be provided as part of the 'jwks_pairs' when using multiple JWKS URLs"
            )
        if config.bound_issuer:
            raise InvalidRequest("Bound issuer is not supported for use with 'jwks_pairs'")
        for pair in config.jwks_pairs:
            if (
                not isinstance(pair, dict)
                or not isinstance(pair.get("jwks_url"), str)
                or not isinstance(pair.get("jwks_ca_pem", ""), str)
            ):
                raise InvalidRequest(
                    "invalid jwks_pairs: jwks_pairs must be provided as a list of json objects "
                    "with the fields jwks_url and jwks_ca_pem"
                )


def check_offline(values: dict[str, Any]) -> JWTConfig:
    """The config a write of ``values`` (already coerced by ``CONFIG_FIELDS``) would store,
    after every check a write makes without the network (the key source is fetched and
    checked only by the write itself). ``authmount apply`` validates files with it before
    it writes anything. ``namespace_in_state`` takes its default when absent.

    :raises InvalidRequest: the first failing check, with the write's message.
    """
    fresh = CONFIG_FIELDS.defaults()
    fresh.update(values)
    config = JWTConfig.from_storage(fresh)
    validate_config(config)
    _check_after_discovery(config)
    _check_algs(config)
    _check_oidc_options(config)
    return config


async def _check_source(source: KeySource, config: JWTConfig, warnings: list[str]) -> None:
    """Check the key source as a write does; with ``skip_jwks_validation`` a fetch that
    fails is a warning (the keys are fetched lazily), local problems still refuse.

    :raises InvalidRequest: the check's message.
    """
    if not config.skip_jwks_validation:
        await source.check()
        return
    await source.check(fetch=False)
    try:
        await source.check()
    except InvalidRequest as exc:
        warnings.append(
            f"{exc.messages[0]}; the config is stored anyway (skip_jwks_validation): the keys are "
            "fetched at the first login, and GET config shows their status in key_sources"
        )


def path_config(backend: JWTAuthBackend) -> PathSpec:
    """The ``config`` PathSpec (GET, POST/PUT)."""

    async def read(req: Request, values: dict[str, Any]) -> Response | None:
        config = await backend.config(req)
        if config is None:
            return None
        data = config.public()
        fingerprints = config.fingerprints(req.system.sealer)
        if fingerprints:
            data[FINGERPRINTS] = fingerprints
        try:
            status = (await backend.key_source(config, req.system)).status()
        except InvalidRequest:  # keys that no longer parse: the login says so
            status = []
        if status:
            data[KEY_SOURCES] = status
        return Response(data=data)

    async def write(req: Request, values: dict[str, Any]) -> Response | None:
        storage = req.require_storage()
        previous = await backend.config(req)
        fresh = CONFIG_FIELDS.defaults()
        fresh.update(values)
        if "namespace_in_state" not in values and previous is not None:
            fresh["namespace_in_state"] = previous.namespace_in_state
        config = JWTConfig.from_storage(fresh)
        validate_config(config)
        source = None
        warnings: list[str] = []
        try:
            if config.oidc_discovery_url:
                source = backend.build_key_source(config, req.system)
                await _check_source(source, config, warnings)
            _check_after_discovery(config)
            if source is None:
                source = backend.build_key_source(config, req.system)
                await _check_source(source, config, warnings)
            _check_algs(config)
            _check_oidc_options(config)
        except BaseException:
            if source is not None:
                await source.close()
            raise
        # Every check passed: only now replace the stored config (a failed write keeps it).
        await storage.put(CONFIG_KEY, config.sealed(req.system.sealer))
        await backend.install_config(config, source)
        return Response(warnings=warnings) if warnings else None

    return PathSpec(
        pattern="config",
        fields=CONFIG_FIELDS,
        operations={Operation.READ: read, Operation.UPDATE: write},
        summary="Configure the JWT authentication backend.",
        description="The JWT authentication backend validates JWTs (or OIDC) using the "
        "configured credentials. A write replaces the whole configuration.",
    )
