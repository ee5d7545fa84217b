"""The OIDC flow's state: sealed into the ``state`` parameter, recorded once when redeemed.

``oidc/auth_url`` needs no token, so it must cost no storage: everything the callback needs
travels with the flow. The ``state`` parameter *is* the sealed state,
``sealer.seal(<compact JSON>, "oidc/state")`` (``plugin/sealing.py``: authenticated
encryption under the server's keyring, the mount's storage prefix bound into the context),
so it cannot be read, forged, extended, or moved to another mount or role. Its JSON::

    {"k": <32 random bytes, base64url>, "r": <redirect URI>, "o": <role>, "e": <expiry>,
     "c": <SHA-256 of the client_nonce, 16 bytes>, "a": <max_age>,
     "m": <callback mode: "direct" or "device">, "d": <the IdP's device_code>,
     "i": <the address that asked for the auth URL>}

(``c``, ``a``, ``m``, ``d`` and ``i`` only when set.) The state id, the OIDC ``nonce`` and
the PKCE verifier are derived from ``k`` (HMAC-SHA-256 with a label each), so they cost no
bytes of their own. In the ``device`` callback mode the IdP's ``device_code`` travels sealed
in the state too, so ``oidc/auth_url`` stores nothing in that mode either.

A state is redeemed once: after the code exchange and the ID token checks have passed, the
callback records ``oidc/used/<expiry>-<id>`` with put-if-absent (``Storage.update``); of
concurrent callbacks, on any node, exactly one records it. A form_post callback stores its
verified result (claims, warnings, the IdP tokens a role's ``oauth2_metadata`` returns,
sealed) in that record for the GET that follows, which takes it; a ``direct``-mode
callback stores its result (or, once the code exchange succeeded, its failure) for
``oidc/poll`` the same way. So an anonymous caller cannot make the server write anything
without completing a real login at the IdP. The expiry leads the record's name, so the sweep lists names in expiry
order and deletes only those past it, in bounded batches, reading no value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from plugin.sealing import Sealer
from plugin.storage import Storage

__all__ = [
    "STATE_TTL",
    "MAX_WIRE_BYTES",
    "STATE_CONTEXT",
    "USED_PREFIX",
    "SWEEP_BATCH",
    "SWEEP_GRACE",
    "FlowState",
    "record_once",
    "redeem",
    "used_name",
    "has_result",
    "take_result",
    "sweep_used",
]

STATE_TTL = 600  # Vault's oidcRequestTimeout
#: The longest ``state`` parameter authmount issues or accepts (bytes).
MAX_WIRE_BYTES = 4096
STATE_CONTEXT = "oidc/state"
USED_PREFIX = "oidc/used/"
#: Used-state records one sweep looks at (and at most deletes).
SWEEP_BATCH = 500
#: A record outlives its state by this much before the sweep deletes it, so a node whose
#: clock is behind still finds it while it accepts the state.
SWEEP_GRACE = 300
_SEED_BYTES = 32
_NONCE_HASH_BYTES = 16
_EXPIRY_DIGITS = 10  # zero-padded, so names sort in expiry order (until the year 2286)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def client_nonce_hash(client_nonce: str) -> str:
    """What the state keeps of a ``client_nonce``: enough to compare, nothing to echo."""
    return _b64(hashlib.sha256(client_nonce.encode("utf-8")).digest()[:_NONCE_HASH_BYTES])


@dataclass(frozen=True, slots=True)
class FlowState:
    """One OIDC login in flight, as sealed into its ``state`` parameter."""

    seed: bytes
    redirect_uri: str
    role: str
    expires_at: int
    client_nonce_hash: str = ""
    max_age: int = 0
    #: The callback mode ("direct", "device"; "" for the classic client mode).
    mode: str = ""
    #: The IdP's device_code (device mode).
    device_code: str = ""
    #: The address that asked for the auth URL (shown by the direct mode's confirmation).
    requester: str = ""

    @classmethod
    def new(
        cls,
        *,
        role: str,
        redirect_uri: str,
        client_nonce: str,
        max_age: int,
        now: float,
        mode: str = "",
        device_code: str = "",
        requester: str = "",
        ttl: int = STATE_TTL,
    ) -> FlowState:
        return cls(
            seed=secrets.token_bytes(_SEED_BYTES),
            redirect_uri=redirect_uri,
            role=role,
            expires_at=int(now) + min(ttl, STATE_TTL),
            client_nonce_hash=client_nonce_hash(client_nonce) if client_nonce else "",
            max_age=max_age,
            mode=mode,
            device_code=device_code,
            requester=requester,
        )

    def _derive(self, label: bytes) -> str:
        return _b64(hmac.new(self.seed, label, hashlib.sha256).digest())

    @property
    def id(self) -> str:
        """The state's id (128 bits): names its used-record; the seed stays secret."""
        return self._derive(b"id")[:22]

    @property
    def nonce(self) -> str:
        """The OIDC ``nonce`` the ID token must carry."""
        return "n_" + self._derive(b"nonce")[:20]

    @property
    def code_verifier(self) -> str:
        """The PKCE verifier: 43 characters, 256 bits (RFC 7636 4.1)."""
        return self._derive(b"pkce")

    @property
    def used_key(self) -> str:
        """Where redeeming this state is recorded: ``oidc/used/<expiry>-<id>``."""
        return USED_PREFIX + used_name(self.expires_at, self.id)

    def client_nonce_matches(self, given: str) -> bool:
        """True when no ``client_nonce`` was registered, or ``given`` is that one."""
        if not self.client_nonce_hash:
            return True
        return hmac.compare_digest(client_nonce_hash(given), self.client_nonce_hash)

    def seal(self, sealer: Sealer) -> str:
        """The ``state`` parameter: URL-safe (``am1.<term>.<base64url>``)."""
        body: dict[str, Any] = {"k": _b64(self.seed), "r": self.redirect_uri, "o": self.role, "e": self.expires_at}
        if self.client_nonce_hash:
            body["c"] = self.client_nonce_hash
        if self.max_age:
            body["a"] = self.max_age
        for key, value in (("m", self.mode), ("d", self.device_code), ("i", self.requester)):
            if value:
                body[key] = value
        plain = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return sealer.seal(plain, STATE_CONTEXT)

    @classmethod
    def open(cls, sealer: Sealer, raw: str, now: float) -> FlowState | None:
        """The state sealed in ``raw`` (a ``,ns=<namespace>`` suffix is ignored), or None when
        it does not open here (forged, tampered, another mount, an unknown key term), is
        malformed, or has expired."""
        sealed = raw.split(",", 1)[0]
        try:
            body = json.loads(sealer.unseal(sealed, STATE_CONTEXT))
            state = cls(
                seed=_unb64(_text(body["k"])),
                redirect_uri=_text(body["r"]),
                role=_text(body["o"]),
                expires_at=_int(body["e"]),
                client_nonce_hash=_text(body.get("c", "")),
                max_age=_int(body.get("a", 0)),
                mode=_text(body.get("m", "")),
                device_code=_text(body.get("d", "")),
                requester=_text(body.get("i", "")),
            )
        except (ValueError, TypeError, KeyError, AttributeError):  # SealError is a ValueError
            # A ``NewerTermError`` too: the state is the caller's input, so a made-up term must
            # not make this node re-read its keyring. A real state sealed in the moment after
            # another node's rotation is refused as expired; the user starts the login again.
            return None
        if len(state.seed) != _SEED_BYTES or state.expires_at <= now:
            return None
        return state


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


# ---------------------------------------------------------------------------
# Redeeming


class _Refused(Exception):
    """Raised inside an ``update`` function to leave the stored value as it is."""


def used_name(expires_at: int, ident: str) -> str:
    """A used record's name below its prefix: the expiry first, zero-padded, so that names
    sort in expiry order (what ``sweep_used`` reads), then the id."""
    return f"{expires_at:0{_EXPIRY_DIGITS}d}-{ident}"


async def record_once(storage: Storage, key: str, record: dict[str, Any]) -> bool:
    """Put-if-absent ``record`` at ``key``: True for the one caller, on any node, that
    recorded it; False when something was there already (nothing is written then)."""

    def put_if_absent(old: Any) -> dict[str, Any]:
        if old is not None:
            raise _Refused
        return record

    try:
        await storage.update(key, put_if_absent)
    except _Refused:
        return False
    return True


async def redeem(storage: Storage, state: FlowState, result: dict[str, Any] | None = None) -> bool:
    """Record ``state`` as used, with ``result`` (a form_post's verified claims) if given.

    Put-if-absent: True for the one caller that recorded it, False when it was already
    used (nothing is written then).
    """
    return await record_once(storage, state.used_key, {"expires_at": state.expires_at, **(result or {})})


def has_result(record: Any) -> bool:
    """Whether a used-state record holds a result left to take (claims, or an error)."""
    return isinstance(record, dict) and ("claims" in record or "error" in record)


async def take_result(storage: Storage, state: FlowState) -> dict[str, Any] | None:
    """The result a form_post or direct-mode callback stored for ``state`` (its claims, or
    its ``error``), removed from its record (which stays, marking the state used), or None
    when there is none (left to take)."""
    box: dict[str, Any] = {}

    def take(old: Any) -> dict[str, Any]:
        if not has_result(old):
            raise _Refused
        box["result"] = old  # a retried transaction calls this again: the last call counts
        return {"expires_at": old.get("expires_at", state.expires_at)}

    try:
        await storage.update(state.used_key, take)
    except _Refused:
        return None
    return box.get("result")


async def sweep_used(storage: Storage, now: float, limit: int = SWEEP_BATCH, prefix: str = USED_PREFIX) -> int:
    """Delete up to ``limit`` used-state records (below ``prefix``: the OIDC provider's
    redeemed codes are named the same way) whose state expired more than ``SWEEP_GRACE``
    seconds ago; return how many. Reads names only, oldest first."""
    cutoff = now - SWEEP_GRACE
    deleted = 0
    for name in await storage.list_page(prefix, limit=limit):
        head = name.split("-", 1)[0]
        if not head.isdigit() or len(head) != _EXPIRY_DIGITS or name.endswith("/"):
            continue  # not ours: leave it
        if int(head) > cutoff:
            break  # names come in expiry order: the rest are younger
        await storage.delete(prefix + name)
        deleted += 1
    return deleted
