"""TLS on the listener, as Vault's ``listener "tcp"`` has it: a certificate and key, a
minimum version, optionally client certificates verified against a CA bundle.

``server_context`` builds the ``ssl.SSLContext`` the listening socket serves with;
``reload_certificate`` loads the files again into the same context (SIGHUP): connections
made afterwards get the new certificate, open ones keep theirs.
"""

from __future__ import annotations

import ssl

from server.settings import Settings, SettingsError

__all__ = ["server_context", "reload_certificate"]

_VERSIONS = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context, or None for plain HTTP (no ``tls_cert_file``).

    :raises SettingsError: a file that cannot be read or does not hold what it should,
        naming the setting.
    """
    if not settings.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[settings.tls_min_version]
    context.set_alpn_protocols(["http/1.1"])
    reload_certificate(context, settings)
    if settings.tls_client_ca_file:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"tls_client_ca_file: {settings.tls_client_ca_file}: {_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED if settings.tls_require_and_verify_client_cert else ssl.CERT_OPTIONAL
    return context


def reload_certificate(context: ssl.SSLContext, settings: Settings) -> None:
    """Load ``tls_cert_file`` and ``tls_key_file`` into ``context`` (the old pair stays in
    use when the new one does not load).

    :raises SettingsError: naming the file and why it does not load.
    """
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(
            f"tls_cert_file/tls_key_file: {settings.tls_cert_file}, {settings.tls_key_file}: {_reason(exc)}"
        ) from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
