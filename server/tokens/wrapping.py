"""Response wrapping (Vault's ``X-Vault-Wrap-TTL``): a response kept sealed and handed out once,
to whoever presents its single-use wrapping token.

A wrapping token is a service token of the token store: one use, its TTL the wrap TTL, an
orphan, with the built-in policy ``response-wrapping`` only (it may unwrap or rewrap itself,
nothing else; the policy is never assignable). So it is stored only as an HMAC like every
token, expires like every token, and ``auth/token/lookup`` shows it. The response is the
exact JSON body the client would have received, stored at ``sys/wrapping/<row id>`` (the
wrapping token's row in ``sys/token/id/``) sealed by the keyring under the context
``sys/wrapping/<row id>#response``; the token store deletes it with the token. Unwrapping
takes it out with one atomic delete, so of two concurrent unwraps exactly one gets it.
"""

from __future__ import annotations

from typing import Any

from plugin.errors import InvalidRequest
from plugin.sealing import NewerTermError
from server.acl.policies import RESPONSE_WRAPPING
from server.keyring import Keyring
from server.tokens.entry import TokenEntry
from server.tokens.store import WRAP_PREFIX, TokenStore
from server.tokens.ttl import rfc3339

__all__ = ["Wrapping", "INVALID", "is_wrapping", "wrap_envelope"]

#: Vault's answer for a wrapping token that is unknown, used, expired or no wrapping token.
INVALID = "wrapping token is not valid or does not exist"


def is_wrapping(entry: TokenEntry | None) -> bool:
    """Whether ``entry`` is a wrapping token (its one policy is ``response-wrapping``, which
    nothing else may carry)."""
    return entry is not None and entry.type == "service" and entry.policies == [RESPONSE_WRAPPING]


def wrap_envelope(info: dict[str, Any], request_id: str = "") -> dict[str, Any]:
    """Vault's reply carrying a wrapping token: the envelope with only ``wrap_info`` set."""
    return {
        "request_id": request_id, "lease_id": "", "renewable": False, "lease_duration": 0, "data": None,
        "wrap_info": info, "warnings": None, "auth": None, "mount_type": "",
    }


class Wrapping:
    """Wrap, look up, unwrap and rewrap responses over the token store and the keyring."""

    def __init__(self, tokens: TokenStore, keyring: Keyring) -> None:
        self.tokens = tokens
        self.sealer = keyring

    async def wrap(
        self, body: bytes, *, ttl: int, creation_path: str, path: str, wrapped_accessor: str = ""
    ) -> dict[str, Any]:
        """Keep ``body`` sealed behind a new wrapping token valid ``ttl`` seconds; return Vault's
        ``wrap_info`` (the token, its accessor, the TTL, when and for which path it was made).

        ``path`` is the request that made the token (its entry's ``path``); ``creation_path``
        the request whose response is wrapped (the same, except for a rewrap).
        """
        now = self.tokens.clock()
        entry = TokenEntry(
            id_hash="", accessor="", policies=[RESPONSE_WRAPPING], display_name="response-wrapping", path=path,
            creation_time=int(now), ttl=ttl, expire_time=now + ttl, explicit_max_ttl=ttl, num_uses=1,
            renewable=False,
        )
        raw = await self.tokens.mint(entry)
        key = WRAP_PREFIX + entry.id_hash
        record = {
            "response": self.sealer.seal(body, key + "#response"),
            "creation_path": creation_path, "creation_time": now, "creation_ttl": ttl,
        }
        try:
            await self.tokens.storage.put(key, record)
        except BaseException:
            await self.tokens.revoke(entry)  # a token without a response must not outlive this call
            raise
        info: dict[str, Any] = {
            "token": raw, "accessor": entry.accessor, "ttl": ttl, "creation_time": rfc3339(now),
            "creation_path": creation_path,
        }
        if wrapped_accessor:
            info["wrapped_accessor"] = wrapped_accessor
        return info

    async def entry(self, raw: Any) -> TokenEntry:
        """The live wrapping token ``raw``, no use consumed.

        :raises InvalidRequest: ``wrapping token is not valid or does not exist``.
        """
        entry = await self.tokens.lookup(raw) if isinstance(raw, str) and raw else None
        if entry is None or not is_wrapping(entry):
            raise InvalidRequest(INVALID)
        return entry

    async def lookup(self, entry: TokenEntry) -> dict[str, Any]:
        """``sys/wrapping/lookup``: when and for which path the response was wrapped, and the TTL.

        :raises InvalidRequest: the response was already taken.
        """
        record = await self.tokens.storage.get(WRAP_PREFIX + entry.id_hash)
        if record is None:
            raise InvalidRequest(INVALID)
        return {
            "creation_path": record["creation_path"], "creation_time": rfc3339(record["creation_time"]),
            "creation_ttl": record["creation_ttl"],
        }

    async def unwrap(self, entry: TokenEntry, *, revoke: bool) -> bytes:
        """Take the response out (once) and revoke the token when ``revoke`` (the caller's own
        token, used up by this request, is revoked by the server after the request).

        :raises InvalidRequest: the response was already taken.
        """
        body, _ = await self._take(entry)
        if revoke:
            await self.tokens.revoke(entry)
        return body

    async def rewrap(self, entry: TokenEntry, *, revoke: bool) -> dict[str, Any]:
        """Move the response behind a new wrapping token with the same TTL and creation path;
        the old one is used up. Returns the new ``wrap_info``.

        :raises InvalidRequest: the response was already taken.
        """
        body, record = await self._take(entry)
        if revoke:
            await self.tokens.revoke(entry)
        return await self.wrap(
            body, ttl=int(record["creation_ttl"]), creation_path=record["creation_path"], path="sys/wrapping/rewrap"
        )

    async def _take(self, entry: TokenEntry) -> tuple[bytes, dict[str, Any]]:
        """Delete the record and return its opened response: atomic, so only one caller gets it.

        The response is opened before the record goes, in the same update, so a response
        that does not open is never lost with its record. One sealed under a key term another
        node made a moment ago opens after this node re-reads the keyring (the wrapping
        token's one use is spent by then: a retry by the client could not take it)."""
        key = WRAP_PREFIX + entry.id_hash
        taken: list[tuple[bytes, dict[str, Any]]] = []

        def take(old: Any) -> None:
            taken.clear()
            if old is not None:
                taken.append((self.sealer.unseal(old["response"], key + "#response"), old))
            return None

        storage = self.tokens.storage
        try:
            await storage.update(key, take)
        except NewerTermError:  # wrapped by another node since a rotation this one has not read yet
            await self.sealer.reload(storage)
            await storage.update(key, take)
        if not taken:
            raise InvalidRequest(INVALID)
        return taken[0]
