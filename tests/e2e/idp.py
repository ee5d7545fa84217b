"""A real local IdP for end-to-end tests: node-oidc-provider (tests/idp/server.mjs) in a subprocess.

``start_idp(workdir)`` generates signing keys, starts the provider on a free loopback port
and waits for its discovery document. The returned ``IdP`` can rotate keys (genkeys
``--rotate`` + SIGHUP), sign arbitrary JWTs with the very keys it publishes (PyJWT) and
mint ``client_credentials`` access tokens. ``idp_available()`` says why it cannot run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests

__all__ = ["IDP_DIR", "IdP", "free_port", "idp_available", "start_idp", "CLIENT_ID", "CLIENT_SECRET"]

IDP_DIR = Path(__file__).resolve().parent.parent / "idp"
CLIENT_ID = "vault"
CLIENT_SECRET = "vault-secret"
_START_TIMEOUT = 30.0


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind to port 0 and release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def idp_available() -> str | None:
    """None when the IdP can run here, else the reason to skip (node or its packages missing)."""
    if shutil.which("node") is None:
        return "node is not installed (scripts/test installs the test IdP's dependencies)"
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        if shutil.which("npm") is None:
            return "tests/idp/node_modules is missing and npm is not installed"
        proc = subprocess.run(
            ["npm", "ci", "--prefix", str(IDP_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            return f"npm ci in tests/idp failed: {proc.stderr.strip()[-300:]}"
    return None


@dataclass
class IdP:
    """A running node-oidc-provider process and the private keys it signs with."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    redirect_uris: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        """What goes into ``oidc_discovery_url`` (the issuer; discovery is appended)."""
        return self.issuer

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/jwks"

    @property
    def jwks_file(self) -> Path:
        return self.workdir / "jwks.json"

    # -- keys ---------------------------------------------------------------------------
    def private_keys(self) -> list[dict[str, Any]]:
        """Every private JWK the provider publishes, newest first."""
        return list(json.loads(self.jwks_file.read_text())["keys"])

    def key(self, alg: str = "RS256") -> dict[str, Any]:
        """The current (first) private JWK for ``alg``: the one the provider signs with."""
        for k in self.private_keys():
            if k["alg"] == alg:
                return k
        raise KeyError(alg)

    def published_kids(self) -> list[str]:
        """The ``kid`` values served at the JWKS endpoint right now."""
        resp = requests.get(self.jwks_url, timeout=5)
        resp.raise_for_status()
        return [k["kid"] for k in resp.json()["keys"]]

    def sign(
        self,
        claims: dict[str, Any],
        *,
        alg: str = "RS256",
        key: dict[str, Any] | None = None,
        kid: str | None | bool = True,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Sign ``claims`` with a published private key.

        ``kid=True`` uses the key's own kid, ``None``/``False`` omits it, a string overrides it.
        """
        jwk = key or self.key(alg)
        hdr: dict[str, Any] = dict(headers or {})
        if kid is True:
            hdr["kid"] = jwk["kid"]
        elif isinstance(kid, str):
            hdr["kid"] = kid
        return jwt.encode(claims, jwt.PyJWK(jwk).key, algorithm=jwk["alg"], headers=hdr or None)

    def claims(self, **extra: Any) -> dict[str, Any]:
        """A fresh, valid claim set from this issuer (iat now, exp in 5 minutes)."""
        now = int(time.time())
        out: dict[str, Any] = {"iss": self.issuer, "sub": "svc-1", "iat": now, "nbf": now - 5, "exp": now + 300}
        out.update(extra)
        return out

    def rotate(self) -> list[str]:
        """Prepend a fresh RS256+ES256 pair (old keys stay published), reload via SIGHUP.

        Returns the new kids once the JWKS endpoint serves them.
        """
        before = {k["kid"] for k in self.private_keys()}
        _run_node(["genkeys.mjs", str(self.jwks_file), "--rotate"])
        new = [k["kid"] for k in self.private_keys() if k["kid"] not in before]
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if set(new) <= set(self.published_kids()):
                return new
            time.sleep(0.05)
        raise RuntimeError(f"IdP did not publish rotated keys {new}; log:\n{self.log()}")

    # -- tokens from the provider itself ------------------------------------------------
    def client_credentials_token(self, resource: str | None = None) -> str:
        """A JWT access token (typ at+jwt, aud ``urn:test:vault`` unless ``resource``)."""
        data = {"grant_type": "client_credentials"}
        if resource:
            data["resource"] = resource
        resp = requests.post(self.issuer + "/token", data=data, auth=(CLIENT_ID, CLIENT_SECRET), timeout=10)
        if resp.status_code != 200:
            raise RuntimeError(f"client_credentials failed: {resp.status_code} {resp.text[:300]}")
        return str(resp.json()["access_token"])

    # -- lifecycle ----------------------------------------------------------------------
    def log(self) -> str:
        """The provider's output so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate the provider (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _run_node(args: list[str], cwd: Path = IDP_DIR) -> str:
    proc = subprocess.run(["node", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"node {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def start_idp(workdir: Path, redirect_uris: Iterable[str] = (), env: Mapping[str, str] | None = None) -> IdP:
    """Generate keys in ``workdir``, start the provider on a free port, wait for discovery.

    ``redirect_uris`` are registered (exactly) for the provider's web clients; ``env`` adds
    settings of tests/idp/server.mjs (``CLIENT_JWKS_FILE``, ``CLAIMS_ENDPOINT``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    jwks_file = workdir / "jwks.json"
    _run_node(["genkeys.mjs", str(jwks_file)])
    uris = list(redirect_uris)
    last_error = ""
    for _attempt in range(3):  # the free port can be taken between probe and listen
        port = free_port()
        log_path = workdir / f"idp-{port}.log"
        proc_env = dict(os.environ)
        proc_env.update(PORT=str(port), JWKS_FILE=str(jwks_file), REDIRECT_URIS=",".join(uris), **(env or {}))
        proc_env.pop("ISSUER", None)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["node", str(IDP_DIR / "server.mjs")],
                cwd=IDP_DIR,
                env=proc_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        idp = IdP(port=port, workdir=workdir, proc=proc, log_path=log_path, redirect_uris=uris)
        if _wait_ready(idp):
            return idp
        last_error = idp.log()
        idp.stop()
    raise RuntimeError(f"node-oidc-provider did not start:\n{last_error}")


def _wait_ready(idp: IdP) -> bool:
    url = idp.issuer + "/.well-known/openid-configuration"
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if idp.proc.poll() is not None:
            return False
        try:
            resp = requests.get(url, timeout=2)
            if resp.status_code == 200 and resp.json().get("issuer") == idp.issuer:
                return True
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.1)
    return False
