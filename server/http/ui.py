"""The OIDC provider's sign-in page (the setting ``ui``; Vault's UI serves these addresses).

An application sends its users to ``/ui/vault/identity/oidc/provider/<name>/authorize?...``
(the ``authorization_endpoint`` of the provider's discovery document). The page signs them
in through an auth mount's OIDC role, then asks the provider's ``authorize`` for a code with
the token it got, revokes that token, and sends the browser back to the application:

1. the page keeps the authorization request in the tab's ``sessionStorage`` and offers the
   jwt/oidc mounts tuned ``listing_visibility: unauth`` (``sys/internal/ui/mounts``; with one,
   it starts at once). It asks ``auth/<mount>/oidc/auth_url`` (the mount's ``default_role``)
   for the IdP's address, with ``/ui/vault/auth/<mount>/oidc/callback`` as the redirect URI
   (the one Vault's UI uses, so a role that allows Vault's UI allows this page) and a
   ``client_nonce`` of its own;
2. the IdP sends the browser to ``/ui/vault/auth/<mount>/oidc/callback``: the same page
   finishes the login (``auth/<mount>/oidc/callback`` with the nonce), calls ``authorize``
   with the new token and the kept request, revokes the token, and goes to the application's
   ``redirect_uri`` with ``code`` and ``state`` (or OAuth's ``error``, once the server has
   accepted that ``redirect_uri`` for the client; before that, the error is shown here).

So the browser never keeps a token: it lives for one ``authorize`` call. The page is static:
nothing of the request is written into it (the script reads the address itself and writes
text only as text), and its headers allow scripts and requests to this server alone, no
framing, no referrer.
"""

from __future__ import annotations

import re

from aiohttp import hdrs, web

from server.appkeys import SETTINGS
from server.http.errors import error_response

__all__ = ["PAGE_PATHS", "SCRIPT_PATH", "ui_handler"]

SCRIPT_PATH = "/ui/authmount/signin.js"
#: The addresses that answer the page.
PAGE_PATHS = re.compile(r"/ui/vault/(?:identity/oidc/provider/[A-Za-z0-9_.-]+/authorize|auth/.+/oidc/callback)")

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_PAGE = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>Sign in</title></head>
<body>
<main>
<h1>Sign in</h1>
<p id="message">Signing in&hellip;</p>
<div id="methods"></div>
</main>
<script src="{SCRIPT_PATH}"></script>
</body>
</html>
""".encode()

_SCRIPT = br"""'use strict';
(function () {
  const KEY = 'authmount.signin';
  // Addresses that would run in this page rather than open the application (a redirect URI
  // is the operator's to register, and native applications use schemes of their own).
  const SCRIPTED = ['javascript:', 'data:', 'vbscript:', 'blob:', 'file:'];
  const KNOWN = ['client_id', 'scope', 'redirect_uri', 'response_type', 'state', 'nonce', 'max_age', 'code_challenge',
    'code_challenge_method', 'request', 'request_uri'];
  const message = document.getElementById('message');
  const methods = document.getElementById('methods');
  const show = (text) => { message.textContent = text; };
  const errorText = (json) => (json && json.errors && json.errors.join('; ')) ||
    (json && json.error_description) || 'no answer';

  async function api(method, path, token, body) {
    const headers = {};
    if (token) headers['X-Vault-Token'] = token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch('/v1/' + path, {method, headers, credentials: 'omit', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body)});
    let json = null;
    try { json = await resp.json(); } catch (e) { json = null; }
    return {status: resp.status, json};
  }

  function nonce() {
    const bytes = new Uint8Array(24);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function kept() {
    try { return JSON.parse(sessionStorage.getItem(KEY) || 'null'); } catch (e) { return null; }
  }

  async function begin(mount) {
    const request = kept();
    request.mount = mount;
    request.clientNonce = nonce();
    sessionStorage.setItem(KEY, JSON.stringify(request));
    const redirect = location.origin + '/ui/vault/auth/' + mount + '/oidc/callback';
    const started = await api('POST', 'auth/' + mount + '/oidc/auth_url', '',
      {role: '', redirect_uri: redirect, client_nonce: request.clientNonce});
    const url = started.json && started.json.data && started.json.data.auth_url;
    if (started.status !== 200 || !url) { show('Sign-in could not start: ' + errorText(started.json)); return; }
    location.assign(url);
  }

  async function offer(provider) {
    // What authorize reads; an application's other parameters (prompt, login_hint, ...) stay behind.
    const params = Object.fromEntries([...new URLSearchParams(location.search)].filter(([k]) => KNOWN.includes(k)));
    sessionStorage.setItem(KEY, JSON.stringify({provider, params}));
    const listed = await api('GET', 'sys/internal/ui/mounts', '');
    const auth = (listed.json && listed.json.data && listed.json.data.auth) || {};
    const mounts = Object.keys(auth).filter((p) => auth[p].type === 'oidc' || auth[p].type === 'jwt');
    if (!mounts.length) {
      show('No sign-in method is offered here (an operator tunes an OIDC auth mount with listing_visibility unauth).');
      return;
    }
    show('Sign in with:');
    for (const path of mounts) {
      const mount = path.replace(/\/$/, '');
      const button = document.createElement('button');
      button.type = 'button';
      button.textContent = auth[path].description || mount;
      button.addEventListener('click', () => { begin(mount); });
      methods.appendChild(button);
    }
    if (mounts.length === 1) begin(mounts[0].replace(/\/$/, ''));
  }

  function back(redirect, values) {
    const url = new URL(redirect);
    if (SCRIPTED.includes(url.protocol)) { show('The application\'s redirect URI cannot be opened here.'); return; }
    for (const [k, v] of Object.entries(values)) url.searchParams.set(k, v);
    location.replace(url.toString());
  }

  async function finish(mount) {
    const request = kept();
    sessionStorage.removeItem(KEY);
    if (!request || request.mount !== mount) { show('No sign-in is in progress in this tab.'); return; }
    const query = new URLSearchParams(location.search);
    const login = await api('GET', 'auth/' + mount + '/oidc/callback?' + new URLSearchParams({
      state: query.get('state') || '', code: query.get('code') || '', client_nonce: request.clientNonce}), '');
    const token = login.json && login.json.auth && login.json.auth.client_token;
    if (login.status !== 200 || !token) { show('Sign-in failed: ' + errorText(login.json)); return; }
    const answer = await api('POST', 'identity/oidc/provider/' + encodeURIComponent(request.provider) +
      '/authorize', token, request.params);
    await api('POST', 'auth/token/revoke-self', token, {});
    const out = answer.json || {};
    if (answer.status === 200 && out.code) { back(request.params.redirect_uri, {code: out.code, state: out.state}); return; }
    const before = out.error === 'invalid_client_id' || out.error === 'invalid_redirect_uri' ||
      out.error_description === 'redirect_uri parameter is required' || !out.error;
    if (before) { show('The application cannot be signed in to: ' + errorText(out)); return; }
    back(request.params.redirect_uri, {error: out.error, error_description: out.error_description,
      state: out.state || ''});
  }

  const path = location.pathname;
  const provider = path.match(/^\/ui\/vault\/identity\/oidc\/provider\/([^/]+)\/authorize$/);
  const callback = path.match(/^\/ui\/vault\/auth\/(.+)\/oidc\/callback$/);
  (provider ? offer(decodeURIComponent(provider[1])) : callback ? finish(callback[1]) : Promise.resolve())
    .catch((e) => show('Sign-in failed: ' + e));
})();
"""


async def ui_handler(request: web.Request) -> web.StreamResponse:
    """``/ui/...``: the sign-in page and its script when the setting ``ui`` is on (GET and
    HEAD); every other address, or with ``ui`` off, the 404 of a path outside ``/v1/``."""
    path = request.path
    if not request.app[SETTINGS].ui or request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        return error_response(404, [])
    if path == SCRIPT_PATH:
        return web.Response(body=_SCRIPT, content_type="text/javascript", charset="utf-8", headers=_HEADERS)
    if PAGE_PATHS.fullmatch(path):
        return web.Response(body=_PAGE, content_type="text/html", charset="utf-8", headers=_HEADERS)
    return error_response(404, [])
