"""The HTML pages of the OIDC callback: errors, the form_post relay, and the ``direct``
callback mode's confirmation and result pages.

Every value a page shows is HTML-escaped, whatever its origin (an IdP's
``error_description``, a role name, an address): OpenBao's CVE-2026-33758 was an
``error_description`` reflected unescaped. Every page is sent with a strict
Content-Security-Policy (no script unless its hash is listed, forms only to this
server), may not be framed (so the confirmation cannot be clicked through an overlay),
and is never cached.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Mapping
from typing import Any

from plugin.framework import Response

__all__ = ["error_page", "success_page", "confirm_page", "relay_page", "page_headers"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;line-height:1.4}"
    "h1{font-size:1.4em}.who{background:#f4f4f4;padding:.6em 1em;border-radius:4px}"
    "button{font-size:1em;padding:.5em 1.2em}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()


def page_headers(csp: str) -> dict[str, str]:
    """Defence in depth for our HTML pages: no caching, no sniffing, no framing, a strict CSP."""
    return {
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": csp + "; frame-ancestors 'none'",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


def _page(status: int, title: str, body: str, csp: str = "default-src 'none'") -> Response:
    doc = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    return Response(
        status=status,
        content_type="text/html; charset=utf-8",
        raw_body=doc.encode("utf-8"),
        headers=page_headers(f"{csp}; style-src 'sha256-{_STYLE_HASH}'"),
    )


def error_page(status: int, summary: str, detail: str) -> Response:
    """A login failure: ``summary`` and ``detail``, both escaped."""
    return _page(status, "Vault login", f"<h1>{html.escape(summary)}</h1><p>{html.escape(detail)}</p>")


def success_page() -> Response:
    """The ``direct`` mode's page once the login is ready for the polling client."""
    return _page(
        200,
        "Vault Authentication Succeeded",
        "<h1>Authentication Succeeded</h1><p>You may close this window and return to the terminal: "
        "the login finishes there.</p>",
    )


def confirm_page(requester: str, role: str, fields: Mapping[str, str]) -> Response:
    """Ask the user to confirm a ``direct`` mode login before its token is released.

    It shows who asked for the login (address and role); the form repeats ``fields`` (the
    callback's state and code, escaped) with ``confirmation=1`` to this same path, by GET,
    so no script is needed.
    """
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
    )
    body = (
        "<h1>Sign-in confirmation required</h1>"
        "<p>A sign-in to Vault was started from the address below. <strong>Confirm only if you "
        "started it yourself</strong> (for example with <code>vault login -method=oidc</code> in your "
        "terminal); if you did not, close this page and nobody is logged in.</p>"
        f'<p class="who">Source address: <b>{html.escape(requester or "unknown")}</b><br>'
        f"Role: <b>{html.escape(role or 'unknown')}</b></p>"
        f'<form method="get" action="callback">{hidden}'
        '<input type="hidden" name="confirmation" value="1">'
        '<button type="submit">Confirm sign-in</button></form>'
    )
    return _page(200, "Vault Sign-in Confirmation", body, "default-src 'none'; form-action 'self'")


def relay_page(message: Mapping[str, Any]) -> Response:
    """The form_post page: hands ``message`` to the window that opened the login (the UI)."""
    # JSON inside <script>: escape <, > and & so no value can close the script element.
    payload = json.dumps(dict(message)).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    script = f"window.opener.postMessage({payload}, window.origin);"
    body = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>OIDC callback</title></head>"
        f"<body><script>{script}</script></body></html>"
    )
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return Response(
        status=200,
        content_type="text/html; charset=utf-8",
        raw_body=body.encode(),
        headers=page_headers(f"default-src 'none'; script-src 'sha256-{digest}'"),
    )
