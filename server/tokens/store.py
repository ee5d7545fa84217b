"""Token store with Vault semantics (service tokens by HMAC only, batch tokens signed)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from time import perf_counter  # timers (tests replace the module's time)
from typing import Any, TypeVar

import orjson
import structlog

from plugin.cidrutil import cidr_allows, parse_cidrs
from plugin.errors import InvalidRequest, PermissionDenied, quoted
from plugin.framework import Auth
from plugin.policyutil import refuse_root, sanitize_policies
from plugin.sealing import NewerTermError, Sealer
from plugin.storage import Storage, walk
from server import telemetry
from server.acl.policies import ACL, RESPONSE_WRAPPING, PolicyStore
from server.identity.store import IdentityStore
from server.keyring import PROCESS_SEALER, Keyring
from server.storage import Engine
from server.tokens.batch import decode_batch, encode_batch
from server.tokens.entry import (
    InlineEntry,
    MountInfo,
    RenewHook,
    TokenEntry,
    check_assignable,
    login_display_name,
    resolve_token_type,
)
from server.tokens.ids import (
    SELECTOR_LEN,
    accessor_selector,
    due_cutoff,
    mint_ids,
    random_b62,
    token_selector,
)
from server.tokens.keys import (
    BATCH_KEY,
    SALT_KEY,
    BatchKeys,
    HmacSha256,
    load_batch_keys,
    load_salt,
    rotate_batch_keys,
)
from server.tokens.ttl import DEFAULT_MAX_TTL, calculate_ttl, remaining_ttl, rfc3339

__all__ = [
    "TokenStore", "TokenUsage", "SALT_KEY", "BATCH_KEY", "ID_PREFIX", "ACCESSOR_PREFIX", "PARENT_PREFIX",
    "EPOCH_PREFIX", "WRAP_PREFIX",
]

log = structlog.get_logger("authmount.tokens")

ID_PREFIX = "sys/token/id/"
ACCESSOR_PREFIX = "sys/token/accessor/"
PARENT_PREFIX = "sys/token/parent/"
EPOCH_PREFIX = "sys/token/mount-epoch/"
#: The sealed response of a wrapping token, ``sys/wrapping/<its row id>`` (server.tokens.wrapping);
#: deleted with the token.
WRAP_PREFIX = "sys/wrapping/"
_MAX_TOKEN_LEN = 8192
#: An unknown batch signature re-reads the batch keys at most this often (seconds).
_BATCH_RELOAD_SECONDS = 1.0

#: Decoded token entries kept for lookups (each holds its ~1 KiB of cached bytes alive).
DECODED_ENTRIES = 1024
_EPOCH_CACHE_SECONDS = 1.0
_PENDING_GRACE = 30.0  # seconds a num_uses-exhausted entry may linger before the sweeper drops it
_MAX_PARENT_DEPTH = 32
#: Token trees revoked at once by a revocation of many (a mount disabled, ``revoke-prefix``).
REVOKE_BATCH = 64
#: Renewed tokens the sweeper remembers (selector → expiry) so it does not re-read them
#: every interval once their minted expiry has passed. Bounded: ~2 MB at most.
_SWEEP_HINTS = 16384
_ENTITY_CACHE_SIZE = 4096
#: Distinct granted policy lists remembered by ``_token_policies`` (cleared when full).
_POLICY_CACHE_SIZE = 256
#: Entries a full scan (sweep, mount revocation) handles between two event-loop turns.
_SCAN_CHUNK = 64
#: Keys the due-only sweep may skip (no read) between two event-loop turns.
_SKIP_CHUNK = 4096
#: Keys of ``ID_PREFIX`` a full scan fetches per storage call (``list_page``): only one
#: page is alive at a time, not every token's key (~80 bytes each: ~80 MB at 1 M tokens).
SCAN_PAGE = 2048
_Entry = TypeVar("_Entry", bound=TokenEntry)


def _disabled_during(mount: MountInfo) -> InvalidRequest:
    """The refusal of a login whose mount was disabled while it ran."""
    return InvalidRequest(f"auth/{mount.path.removeprefix('auth/')} was disabled during this login; no token "
                          f"was issued")


async def _pause(n: int) -> None:
    """Let requests run every ``_SCAN_CHUNK`` entries of a full scan.

    A storage read may complete without suspending (SQLite's cache and reader), so a scan
    of 40k tokens held the event loop for 0.7 s, every sweep interval.
    """
    if n % _SCAN_CHUNK == _SCAN_CHUNK - 1:
        await asyncio.sleep(0)


def _id_keys(storage: Storage, after: str = "") -> AsyncIterator[str]:
    """Every token row's name after ``after``, in key order, ``SCAN_PAGE`` at a time (``walk``)."""
    return walk(storage, ID_PREFIX, after, SCAN_PAGE)


class TokenUsage:
    """Counts of live tokens (``TokenStore.usage``)."""

    def __init__(self) -> None:
        self.total = 0
        self.leases = 0
        self.by_accessor: dict[str, int] = {}
        self.by_policy: dict[str, int] = {}
        self.by_ttl: dict[str, int] = {}

    def add(self, data: dict[str, Any]) -> None:
        self.total += 1
        ttl = int(data.get("ttl") or 0)
        if ttl:
            self.leases += 1
        acc = str(data.get("mount_accessor") or "")
        self.by_accessor[acc] = self.by_accessor.get(acc, 0) + 1
        for policy in data.get("policies") or ():
            self.by_policy[policy] = self.by_policy.get(policy, 0) + 1
        bucket = telemetry.ttl_bucket(ttl)
        self.by_ttl[bucket] = self.by_ttl.get(bucket, 0) + 1


class TokenStore:
    """Issue, look up, use, renew and revoke tokens.

    Storage layout (under the server's root storage, not a mount view):

    - a minted service token ``hvs.<selector><secret>`` is ONE row,
      ``sys/token/id/<selector>`` → entry with ``verifier`` = HMAC(salt, token); its
      accessor is ``<selector><random>`` and is found through the same row. The selector
      (``server.tokens.ids.mint_ids``) is the minting time, the minted expiry and a
      random tail: keys append in time order, and the sweeper skips rows not yet due;
    - a token whose id the caller chose (``--dev-root-token-id``), and any token stored
      before selectors existed: ``sys/token/id/<hmac(token)>`` → entry plus
      ``sys/token/accessor/<hmac(accessor)>`` → ``{"id_hash": <hmac(token)>}``;
    - ``sys/token/parent/<parent id>/<child id>`` → 1 for child tokens (ids as above);
    - ``sys/token/salt`` (32 random bytes), ``sys/token/batch_key``,
      ``sys/token/mount-epoch/<mount accessor>`` → time;
    - ``sys/wrapping/<id>`` → the sealed response of the wrapping token with row id ``<id>``
      (``server.tokens.wrapping``), deleted with that token.

    There is deliberately no in-process cache of token entries: a revocation on another
    node must take effect on the next request everywhere.
    """

    def __init__(
        self,
        storage: Engine,
        *,
        clock: Callable[[], float] | None = None,
        default_lease_ttl: int = DEFAULT_MAX_TTL,
        max_lease_ttl: int = DEFAULT_MAX_TTL,
        sweep_interval: float = 60.0,
        sealer: Sealer | None = None,
        mount_exists: Callable[[str], bool] | None = None,
        on_mint: Callable[[TokenEntry], None] | None = None,
        identity: IdentityStore | None = None,
        fresh_epochs: bool = False,
    ) -> None:
        self.storage = storage
        #: Read a mount's revocation epoch at every use instead of caching it for
        #: ``_EPOCH_CACHE_SECONDS`` (SQLite ``--workers``, where a read is local: a mount
        #: disabled on one worker kills its batch tokens on every worker at once).
        self.fresh_epochs = fresh_epochs
        #: Called with every token minted (the ``vault_token_creation`` metric).
        self.on_mint = on_mint
        #: Entities and groups: a login creates or refreshes its entity, and a token's
        #: identity policies (its entity's groups' policies) are judged at each use.
        self.identity = identity
        #: Seals the salt and batch keys at rest (the server's keyring; tests: one
        #: process-wide ephemeral sealer, so stores sharing a storage agree).
        self.sealer: Sealer = sealer or PROCESS_SEALER
        #: Does a mount with this accessor exist? (batch tokens of a removed mount are dead)
        self.mount_exists = mount_exists
        self.clock: Callable[[], float] = clock or time.time
        self.default_lease_ttl = default_lease_ttl
        self.max_lease_ttl = max_lease_ttl
        self.sweep_interval = sweep_interval
        self._salt: bytes | None = None
        self._hmac: HmacSha256 | None = None  # keyed with the salt by start()
        self._entity_ids: dict[str, str] = {}
        self._policy_lists: dict[tuple[str | bool, ...], tuple[str, ...]] = {}
        self._batch: BatchKeys | None = None
        self._batch_reloaded = 0.0
        self._entity_ns: uuid.UUID | None = None
        self._epochs: dict[str, tuple[float | None, float]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # revocations and tidies answered 202
        self._tidy: asyncio.Task[None] | None = None
        # Decoded entries keyed on the exact bytes object the storage holds in memory
        # (``peek_cached``): a write stores new bytes, so a hit is never stale.
        self._decoded: dict[str, tuple[bytes, TokenEntry]] = {}
        self._sweep_hints: dict[str, float] = {}

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, *, sweep: bool = True) -> None:
        """Load or create the salt and batch signing key; start the expiry sweeper."""
        self._salt = await load_salt(self.storage, self.sealer)
        self._batch = await load_batch_keys(self.storage, self.sealer, self.clock())
        self._entity_ns = uuid.UUID(bytes=hmac.new(self._salt, b"entity-namespace", hashlib.sha256).digest()[:16])
        self._hmac = HmacSha256(self._salt)
        if sweep and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="token-sweeper")

    async def close(self) -> None:
        """Stop the sweeper and any background revocation or tidy (one stopped half-way is
        not resumed: the same ``revoke-prefix`` or tidy again finishes it)."""
        tasks = [t for t in (self._sweeper, *self._background) if t is not None]
        self._sweeper = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass

    def invalidate(self, key: str) -> None:
        """A write by another node: forget a cached mount epoch so revocation applies now."""
        if key.startswith(EPOCH_PREFIX):
            self._epochs.pop(key[len(EPOCH_PREFIX):], None)
        elif key == BATCH_KEY:
            self._batch_reloaded = 0.0  # the next unknown signature re-reads the keys

    async def rotate_batch_key(self) -> None:
        """Sign new batch tokens with a new key; the old ones verify until their tokens
        have expired (``max_lease_ttl``)."""
        try:
            self._batch = await rotate_batch_keys(self.storage, self.sealer, self.clock(), self.max_lease_ttl)
        except NewerTermError:  # the new key is stored; a key another node added is sealed under its new term
            await self._reload_keyring()
            self._batch = await load_batch_keys(self.storage, self.sealer, self.clock())

    async def reload_batch_keys(self) -> None:
        """Re-read the batch keys (another node rotated them), and the keyring first if they
        were sealed under a term this node has not read yet."""
        try:
            self._batch = await load_batch_keys(self.storage, self.sealer, self.clock())
        except NewerTermError:
            await self._reload_keyring()
            self._batch = await load_batch_keys(self.storage, self.sealer, self.clock())
        self._batch_reloaded = time.monotonic()

    async def _reload_keyring(self) -> None:
        """Re-read the keyring: another node rotated it, and its announcement has not arrived
        yet. A sealer that is no keyring (tests' ephemeral one) has no newer term to find."""
        if not isinstance(self.sealer, Keyring):
            raise RuntimeError("a value is sealed under a newer term, and this store's sealer is no keyring")
        await self.sealer.reload(self.storage)

    def _ready(self) -> bytes:
        if self._salt is None:
            raise RuntimeError("TokenStore.start() was not awaited")
        return self._salt

    def hash(self, value: str) -> str:
        """HMAC-SHA256(salt, value) in hex: the only form a token is stored under."""
        keyed = self._hmac
        if keyed is None:
            raise RuntimeError("TokenStore.start() was not awaited")
        return keyed.hexdigest(value.encode("utf-8", "surrogatepass"))

    def _token_policies(self, granted: list[str], no_default: bool) -> list[str]:
        """The policies of a token minted with ``granted``: sanitised, root refused, ``default``
        added unless ``no_default``, internal ones refused. Remembered per distinct list (a
        role's logins grant the same one again and again); a refusal is never remembered.

        :raises InvalidRequest: root, or a policy that cannot be assigned.
        """
        key: tuple[str | bool, ...] = (*granted, no_default)
        cached = self._policy_lists.get(key)
        if cached is None:
            policies = refuse_root(granted)
            if not no_default:
                policies = sanitize_policies([*policies, "default"])
            check_assignable(policies)
            if len(self._policy_lists) >= _POLICY_CACHE_SIZE:
                self._policy_lists.clear()
            cached = self._policy_lists[key] = tuple(policies)
        return list(cached)

    def entity_of(self, mount_accessor: str, alias_name: str) -> tuple[str, str]:
        """The (entity id, entity alias id) of a login's alias: an operator's entity alias
        (``identity/entity-alias``) decides, else both are derived from the mount and name."""
        if self.identity is not None:
            written = self.identity.login_alias(mount_accessor, alias_name)
            if written is not None:
                return written.canonical_id, written.id
        return self.entity_id(mount_accessor, alias_name), self.entity_alias_id(mount_accessor, alias_name)

    def entity_id(self, mount_accessor: str, alias_name: str) -> str:
        """A stable UUID per (mount accessor, alias name), derived without storage."""
        return self._derived_id(f"{mount_accessor}:{alias_name}")

    def entity_alias_id(self, mount_accessor: str, alias_name: str) -> str:
        """The id of the entity alias of (mount accessor, alias name), derived like its entity's."""
        return self._derived_id(f"alias:{mount_accessor}:{alias_name}")

    def _derived_id(self, name: str) -> str:
        self._ready()
        assert self._entity_ns is not None
        cached = self._entity_ids.get(name)
        if cached is not None:
            return cached
        # uuid.uuid5 spelled out (~2x cheaper than building a UUID object).
        digest = bytearray(hashlib.sha1(self._entity_ns.bytes + name.encode("utf-8")).digest()[:16])
        digest[6] = (digest[6] & 0x0F) | 0x50
        digest[8] = (digest[8] & 0x3F) | 0x80
        h = digest.hex()
        value = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        if len(self._entity_ids) >= _ENTITY_CACHE_SIZE:
            self._entity_ids.clear()  # bounded; the same identities log in again and again
        self._entity_ids[name] = value
        return value

    @property
    def default_mount(self) -> MountInfo:
        """The system TTLs, for tokens whose mount is unknown."""
        return MountInfo("auth/token/", "", self.default_lease_ttl, self.max_lease_ttl)

    # -- issuing -------------------------------------------------------------------------
    async def issue(
        self,
        auth: Auth,
        *,
        mount: MountInfo,
        parent: TokenEntry | None = None,
        path: str | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Mint a token from a backend's Auth. Returns (Vault ``auth`` block, warnings).

        ``path`` is the login path (default ``<mount path>login``).

        :raises InvalidRequest: ``auth methods cannot create root tokens`` and friends.
        """
        entry, identity_policies, warnings = await self._login_entry(auth, mount, path, TokenEntry)
        raw = await self.mint(entry, parent=parent)
        if self._mount_gone(mount):
            # The mount was disabled while this login ran. A disable takes the mount out of the
            # table before it revokes its tokens, so a token written before this check is found
            # by that revocation; this one may have come after it: never hand out a dead token.
            if entry.type != "batch":
                await self._delete_one(entry.id_hash)
            raise _disabled_during(mount)
        return self.auth_block(entry, raw, identity_policies=identity_policies), warnings

    async def inline(self, auth: Auth, *, mount: MountInfo, path: str) -> tuple[InlineEntry, dict[str, Any], list[str]]:
        """The token an inline authentication (``X-Vault-Inline-Auth-*``) stands for: the
        entry a login with ``auth`` would mint, checked as minting checks it, but given no
        id and written nowhere (``InlineEntry``). Returns it, its ``auth`` block (no
        ``client_token``: there is none) and the warnings.

        :raises InvalidRequest: as ``issue``.
        """
        entry, identity_policies, warnings = await self._login_entry(auth, mount, path, InlineEntry)
        self._ready()
        if entry.type == "batch":
            self._batch_rules(entry)
        if self._mount_gone(mount):
            raise _disabled_during(mount)
        block = self.auth_block(entry, "", identity_policies=identity_policies)
        del block["client_token"]
        return entry, block, warnings

    async def _login_entry(
        self, auth: Auth, mount: MountInfo, path: str | None, kind: type[_Entry]
    ) -> tuple[_Entry, list[str], list[str]]:
        """The entry a login with ``auth`` on ``mount`` makes (not yet minted), its identity
        policies, and the TTL warnings."""
        policies = self._token_policies(auth.policies, auth.no_default_policy)
        token_type = resolve_token_type(auth.token_type, mount.token_type)
        if auth.num_uses < 0:
            raise InvalidRequest("number of uses cannot be negative")
        entity_id, alias_id = self.entity_of(mount.accessor, auth.alias.name) if auth.alias else ("", "")
        identity_policies: list[str] = []
        if self.identity is not None and auth.alias is not None:
            identity_policies = await self.identity.login(
                entity_id, alias_id, mount.accessor, auth.alias, auth.group_aliases,
            )
        now = self.clock()
        ttl, warnings = calculate_ttl(
            now=now,
            default_ttl=mount.default_lease_ttl,
            mount_max=mount.max_lease_ttl,
            backend_ttl=auth.ttl,
            period=auth.period,
            backend_max=auth.max_ttl,
            explicit_max=auth.explicit_max_ttl,
        )
        entry = kind(
            id_hash="",
            accessor="",
            policies=policies,
            meta=dict(auth.metadata),
            display_name=login_display_name(mount.path, auth),
            path=path or mount.path + "login",
            mount_accessor=mount.accessor,
            creation_time=int(now),
            ttl=ttl,
            expire_time=now + ttl,
            # a batch token keeps no explicit max (its TTL is capped by it already), as Vault's
            explicit_max_ttl=auth.explicit_max_ttl if token_type == "service" else 0,
            period=auth.period,
            num_uses=auth.num_uses,
            bound_cidrs=parse_cidrs(auth.bound_cidrs),
            type=token_type,
            renewable=auth.renewable and token_type == "service",
            entity_id=entity_id,
            internal_data=dict(auth.internal_data),
        )
        return entry, identity_policies, warnings

    def _mount_gone(self, mount: MountInfo) -> bool:
        """Whether ``mount`` was disabled (while a login on it ran)."""
        return bool(mount.accessor) and self.mount_exists is not None and not self.mount_exists(mount.accessor)

    async def mint(self, entry: TokenEntry, *, parent: TokenEntry | None = None) -> str:
        """Give ``entry`` an id and accessor, persist it (service) and return the raw token.

        ``entry`` is completed in place. Batch tokens are never written to storage.

        :raises InvalidRequest: for options batch tokens cannot have.
        """
        self._ready()
        if parent is not None:
            entry.parent, entry.orphan = parent.id_hash, False
        else:
            entry.parent, entry.orphan = None, True
        if entry.ttl == 0:
            entry.renewable = False
        if self.on_mint is not None:
            self.on_mint(entry)
        if entry.type == "batch":
            return self._mint_batch(entry)
        selector, raw, entry.accessor = mint_ids(self.clock(), entry.expire_time)
        entry.id_hash, entry.verifier = selector, self.hash(raw)
        if entry.parent is None:
            await self.storage.put(ID_PREFIX + selector, entry.stored())
            return raw
        # Written concurrently so a group-committing engine needs one commit. If a write
        # fails the caller never sees the token; a stray entry just expires (and a child
        # without its parent index still dies with the parent: see _check_live).
        items: list[tuple[str, object]] = [
            (ID_PREFIX + selector, entry.stored()),
            (f"{PARENT_PREFIX}{entry.parent}/{selector}", 1),
        ]
        await self.storage.put_many(items)  # one queue hand-off, no task per write
        return raw

    async def create_root(self, token_id: str | None = None) -> str:
        """Create a root token (random or given id) and return the raw token.

        A random one is a selector token like any minted token. A given id is stored under
        its HMAC (a chosen value has no selector); one that already names a root token is
        not written again (dev restarts). Ids shaped like minted tokens are refused: lookup
        would look for a selector row.

        :raises InvalidRequest: ``invalid root token id``.
        """
        self._ready()
        now = self.clock()
        entry = TokenEntry(
            id_hash="",
            accessor="",
            policies=["root"],
            display_name="root",
            path="auth/token/root",
            creation_time=int(now),
            renewable=False,
        )
        if token_id is None:
            return await self.mint(entry)
        bad = not token_id or len(token_id) > 256 or token_id.startswith("hvb.") or token_selector(token_id) is not None
        if bad or any(ch.isspace() or not ch.isprintable() for ch in token_id):
            raise InvalidRequest("invalid root token id")
        entry.id_hash = self.hash(token_id)
        existing = await self.storage.get(ID_PREFIX + entry.id_hash)
        if existing is not None and "root" in existing.get("policies", []):
            return token_id
        entry.accessor = random_b62()
        await self.storage.put(ACCESSOR_PREFIX + self.hash(entry.accessor), {"id_hash": entry.id_hash})
        await self.storage.put(ID_PREFIX + entry.id_hash, entry.to_dict())
        return token_id

    def auth_block(
        self, entry: TokenEntry, raw: str, *, lease_duration: int | None = None, identity_policies: list[str] | None = None
    ) -> dict[str, Any]:
        """The Vault envelope's ``auth`` object for ``entry``: ``policies`` are the token's
        and its identity policies (``identity_policies``, left out when there are none)."""
        block: dict[str, Any] = {
            "client_token": raw,
            "accessor": entry.accessor,
            "policies": sanitize_policies([*entry.policies, *identity_policies]) if identity_policies else list(entry.policies),
            "token_policies": list(entry.policies) or None,  # OpenBao: null when there are none
            "metadata": dict(entry.meta) or None,
            "lease_duration": entry.ttl if lease_duration is None else lease_duration,
            "renewable": entry.renewable,
            "entity_id": entry.entity_id,
            "token_type": entry.type,
            "orphan": entry.orphan,
            "mfa_requirement": None,
            "num_uses": entry.num_uses,
        }
        if identity_policies:
            block["identity_policies"] = list(identity_policies)
        return block

    # -- identity policies ---------------------------------------------------------------
    async def identity_policies(self, entry: TokenEntry) -> list[str]:
        """The policies ``entry`` gets from its entity's groups now (empty without an entity,
        and without any lookup when no group grants a policy)."""
        if self.identity is None or not entry.entity_id or entry.internal_data.get("no_identity_policies"):
            return []
        return await self.identity.policies_for(entry.entity_id)

    def entity_disabled(self, entry: TokenEntry) -> bool:
        """Whether ``entry``'s entity is disabled: Vault refuses every use of such a token."""
        return bool(entry.entity_id) and self.identity is not None and self.identity.disabled(entry.entity_id)

    async def policies_of(self, entry: TokenEntry) -> list[str]:
        """Every policy the ACL judges ``entry`` by: its own and its identity policies, as
        they are at this use (a group's policy change applies at the next use, as in Vault)."""
        extra = await self.identity_policies(entry)
        if not extra:
            return entry.policies
        return sanitize_policies([*entry.policies, *extra])

    async def acl(self, entry: TokenEntry, policies: PolicyStore, path: str | None = None) -> ACL:
        """The ACL ``entry`` is judged by at this use (``policies_of``, the templates filled
        for its entity); ``path``: only that path is judged (``PolicyStore.acl_for``)."""
        return await policies.acl_for(await self.policies_of(entry), entry.entity_id, path)

    # -- batch tokens --------------------------------------------------------------------
    @staticmethod
    def _batch_rules(entry: TokenEntry) -> None:
        """What a batch token cannot be: a root token, use-limited, periodic. It is not
        renewable and has no accessor (Vault).

        :raises InvalidRequest: naming the rule.
        """
        if entry.is_root():
            raise InvalidRequest("batch tokens cannot be root tokens")
        if entry.num_uses:
            raise InvalidRequest("batch tokens cannot have a limited number of uses")
        if entry.period:
            raise InvalidRequest("batch tokens cannot be periodic")
        entry.renewable = False
        entry.accessor = ""

    def _mint_batch(self, entry: TokenEntry) -> str:
        self._batch_rules(entry)
        assert self._batch is not None
        raw = encode_batch(entry, self._batch.signing)
        if len(raw) > _MAX_TOKEN_LEN:
            # lookup() refuses longer tokens, so this one could never be used.
            raise InvalidRequest(f"batch token would be {len(raw)} bytes (limit {_MAX_TOKEN_LEN}); reduce its metadata or policies")
        entry.id_hash = self.hash(raw)
        return raw

    async def _decode_batch(self, raw: str) -> TokenEntry | None:
        assert self._batch is not None
        entry = decode_batch(raw, self._batch.verifying)
        if entry is None and time.monotonic() - self._batch_reloaded > _BATCH_RELOAD_SECONDS:
            # Signed with a key another node made a moment ago? Re-read, at most once a
            # second however many bad signatures arrive.
            await self.reload_batch_keys()
            entry = decode_batch(raw, self._batch.verifying)
        if entry is None or not self._batch_claims_hold(entry):
            return None
        entry.id_hash = self.hash(raw)
        return entry

    def _batch_claims_hold(self, entry: TokenEntry) -> bool:
        """Re-check what minting guarantees, so a signature alone (from a stolen key, or a
        bug) never yields more: no root policy, a finite expiry within the maximum TTL, a
        mount that exists."""
        problem = ""
        if "root" in sanitize_policies(entry.policies):
            problem = "root policy"
        elif not entry.expire_time or entry.expire_time - entry.creation_time > self.max_lease_ttl + 1:
            problem = "expiry missing or beyond max_lease_ttl"
        elif self.mount_exists is not None and entry.mount_accessor and not self.mount_exists(entry.mount_accessor):
            problem = "mount does not exist"
        if problem:
            log.error("batch_token_refused", reason=problem, mount_accessor=entry.mount_accessor)
            return False
        return True

    # -- lookup and use ------------------------------------------------------------------
    async def lookup(self, raw_token: str) -> TokenEntry | None:
        """The live entry of a token, or None (unknown, expired, revoked). Uses nothing."""
        start = perf_counter()
        try:
            return await self._lookup(raw_token)
        finally:
            telemetry.TOKEN_LOOKUP.observe(telemetry.ms_since(start))

    async def _lookup(self, raw_token: str) -> TokenEntry | None:
        self._ready()
        if not isinstance(raw_token, str) or not raw_token or len(raw_token) > _MAX_TOKEN_LEN:
            return None
        if raw_token.startswith("hvb."):
            entry = await self._decode_batch(raw_token)
        elif (selector := token_selector(raw_token)) is not None:
            entry = await self._load(selector)
            # A known selector with the wrong secret is as unknown as any other token (and
            # must not reach _check_live, which may revoke the row).
            if entry is not None and not hmac.compare_digest(entry.verifier, self.hash(raw_token)):
                entry = None
        else:
            entry = await self._load(self.hash(raw_token))
        if entry is None:
            return None
        return await self._check_live(entry)

    async def _load(self, row_id: str) -> TokenEntry | None:
        """The entry stored at ``sys/token/id/<row_id>`` (not checked for liveness)."""
        key = ID_PREFIX + row_id
        entry = self._decoded_entry(key)
        if entry is None:
            data = await self.storage.get(key)
            entry = TokenEntry.from_dict(data) if data is not None else None
        return entry

    def _decoded_entry(self, key: str) -> TokenEntry | None:
        """The entry decoded from the storage's cached bytes of ``key`` (None: not cached).

        The entry object is shared between requests: nothing mutates a looked-up entry
        (changes go through ``storage.update`` and a fresh ``from_dict``).
        """
        blob = self.storage.peek_cached(key)
        if blob is None:
            return None
        hit = self._decoded.get(key)
        if hit is not None and hit[0] is blob:
            return hit[1]
        entry = TokenEntry.from_dict(orjson.loads(blob))
        decoded = self._decoded
        if len(decoded) >= DECODED_ENTRIES and key not in decoded:
            del decoded[next(iter(decoded))]  # the oldest insertion
        decoded[key] = (blob, entry)
        return entry

    async def lookup_accessor(self, accessor: str) -> TokenEntry | None:
        """The live entry behind an accessor, or None."""
        row_id = await self._accessor_row(accessor)
        entry = await self._load(row_id) if row_id is not None else None
        if entry is None:
            return None
        return await self._check_live(entry)

    async def _accessor_row(self, accessor: str) -> str | None:
        """The row id an accessor names, or None (unknown, or a wrong random part)."""
        self._ready()
        if not isinstance(accessor, str) or not accessor or len(accessor) > 256:
            return None
        selector = accessor_selector(accessor)
        if selector is None:  # an HMAC-keyed token's accessor: through its index row
            index = await self.storage.get(ACCESSOR_PREFIX + self.hash(accessor))
            return index["id_hash"] if index else None
        entry = await self._load(selector)
        if entry is None or not entry.verifier or not hmac.compare_digest(entry.accessor, accessor):
            return None
        return selector

    async def _check_live(self, entry: TokenEntry, depth: int = 0, *, revoke: bool = True) -> TokenEntry | None:
        """Expiry, pending revocation, disabled mount and dead parents; revokes lazily (a dead
        service token's tree, unless ``revoke`` is false: the caller revokes it)."""
        if entry.num_uses < 0:
            return None
        dead = (
            (entry.expire_time and self.clock() >= entry.expire_time)
            or await self._mount_revoked(entry)
            or (entry.parent is not None and not await self._parent_alive(entry.parent, depth + 1))
        )
        if dead:
            if revoke and entry.type == "service":
                await self._revoke_tree(entry.id_hash)
            return None
        return entry

    async def _parent_alive(self, parent_hash: str, depth: int) -> bool:
        if depth > _MAX_PARENT_DEPTH:
            return False
        parent = await self._load(parent_hash)  # decoded once per stored version (``_decoded_entry``)
        return parent is not None and await self._check_live(parent, depth) is not None

    async def _mount_revoked(self, entry: TokenEntry) -> bool:
        acc = entry.mount_accessor
        if not acc:
            return False
        cached = self._epochs.get(acc)
        mono = time.monotonic()
        if cached is None or self.fresh_epochs or mono - cached[1] > _EPOCH_CACHE_SECONDS:
            value = await self.storage.get(EPOCH_PREFIX + acc)
            cached = (float(value) if value is not None else None, mono)
            self._epochs[acc] = cached
        # An accessor names one mount for good (enabling a path again makes a new one), so an
        # epoch means the token's mount is gone, whenever the token was made: a login still
        # running when its mount was disabled mints after the epoch, on a clock that may be
        # another node's.
        return cached[0] is not None

    async def authenticate(self, raw_token: str, remote_addr: str | None) -> TokenEntry:
        """Look up a token for a request: expiry, bound CIDRs, and consume one use.

        When the returned entry has ``num_uses == -1`` this was its last use: call
        ``release(entry)`` after the request (the sweeper removes it otherwise).

        :raises PermissionDenied: unknown, expired, exhausted or CIDR-mismatched token.
        """
        entry = await self.lookup(raw_token)
        if entry is None:
            raise PermissionDenied()
        # Vault: CIDRs bind every token except non-expiring root tokens.
        exempt = entry.ttl == 0 and entry.is_root()
        if entry.bound_cidrs and not exempt and not cidr_allows(entry.bound_cidrs, remote_addr):
            raise PermissionDenied()
        if entry.num_uses > 0 and entry.type == "service":
            entry = await self._use(entry)
        return entry

    async def _use(self, entry: TokenEntry) -> TokenEntry:
        now = self.clock()
        seen: list[dict[str, Any]] = []

        def consume(old: Any | None) -> Any | None:
            seen.clear()
            if old is None or old.get("num_uses", 0) < 0:
                return old
            n = old.get("num_uses", 0)
            if n == 1:
                old["num_uses"] = -1
                old["revoke_pending_at"] = now
            elif n > 1:
                old["num_uses"] = n - 1
            seen.append(old)
            return old

        await self.storage.update(ID_PREFIX + entry.id_hash, consume)
        if not seen:
            raise PermissionDenied()
        return TokenEntry.from_dict(seen[0])

    async def release(self, entry: TokenEntry) -> None:
        """After a request: revoke a token whose last use it was."""
        if entry.type == "service" and entry.num_uses == -1:
            await self._revoke_tree(entry.id_hash)

    # -- renewal -------------------------------------------------------------------------
    async def renew(
        self,
        entry: TokenEntry,
        increment: int = 0,
        *,
        mount: MountInfo | None = None,
        renew_hook: RenewHook | None = None,
        raw_token: str = "",
    ) -> tuple[dict[str, Any], list[str]]:
        """Extend a service token's lease. Returns (``auth`` block, warnings).

        For login tokens the caller passes the issuing mount and its backend's hook; the
        TTL is recomputed from the hook's Auth, counted from the original issue time.

        :raises InvalidRequest: ``batch tokens cannot be renewed``, ``lease is not renewable``,
            ``past the max TTL, cannot renew``, ``token not found`` (revoked, expired or used up
            since it was looked up); or whatever the hook raises.
        """
        if entry.type == "batch":
            raise InvalidRequest("batch tokens cannot be renewed")
        if not entry.renewable or entry.ttl == 0:
            raise InvalidRequest("lease is not renewable")
        data = await self.storage.get(ID_PREFIX + entry.id_hash)
        current = await self._check_live(TokenEntry.from_dict(data)) if data else None
        if current is None:  # revoked, expired or used up since the request looked it up
            raise InvalidRequest("token not found")
        mount = mount or self.default_mount
        backend_ttl, period, backend_max = current.ttl, current.period, 0
        explicit = current.explicit_max_ttl
        if renew_hook is not None:
            auth = await renew_hook(current)
            if auth is not None:
                # Vault's plugins refuse renewal when the role's policies changed; a token's
                # policies are fixed at issue, so a changed answer here must not extend it.
                now_policies = set(sanitize_policies(auth.policies, add_default=False)) - {"default"}
                if now_policies != set(current.policies) - {"default"}:
                    raise InvalidRequest("policies have changed, not renewing")
                backend_ttl, period, backend_max = auth.ttl, auth.period, auth.max_ttl
                explicit = auth.explicit_max_ttl or explicit
        now = self.clock()
        ttl, warnings = calculate_ttl(
            now=now,
            default_ttl=mount.default_lease_ttl,
            mount_max=mount.max_lease_ttl,
            increment=increment,
            backend_ttl=backend_ttl,
            period=period,
            backend_max=backend_max,
            explicit_max=explicit,
            start=current.creation_time,
        )
        kept: list[dict[str, Any]] = []

        def extend(old: Any | None) -> Any | None:
            kept.clear()
            if old is None or old.get("num_uses", 0) < 0:
                return old
            old["expire_time"] = now + ttl
            old["last_renewal_time"] = int(now)
            kept.append(old)
            return old

        await self.storage.update(ID_PREFIX + entry.id_hash, extend)
        if not kept:
            raise InvalidRequest("token not found")
        renewed = TokenEntry.from_dict(kept[0])
        block = self.auth_block(renewed, raw_token, lease_duration=ttl, identity_policies=await self.identity_policies(renewed))
        return block, warnings

    # -- revocation ----------------------------------------------------------------------
    async def revoke(self, entry: TokenEntry) -> int:
        """Revoke a token and all its descendants; returns how many entries were removed.

        :raises InvalidRequest: ``batch tokens cannot be revoked`` (they are stateless: they
            die with their expiry, their parent or their mount, as in Vault).
        """
        if entry.type == "batch":
            raise InvalidRequest("batch tokens cannot be revoked")
        return await self._revoke_tree(entry.id_hash)

    async def revoke_accessor(self, accessor: str) -> bool:
        """Revoke the token behind ``accessor`` (and its children); False if unknown."""
        row_id = await self._accessor_row(accessor)
        if row_id is None:
            return False
        await self._revoke_tree(row_id)
        return True

    async def revoke_orphan(self, entry: TokenEntry) -> None:
        """Revoke only ``entry``; its children become orphans."""
        if entry.type == "batch":
            raise InvalidRequest("batch tokens cannot be revoked")
        children = await self._children(entry.id_hash)

        def orphan(old: Any | None) -> Any | None:
            if old is not None:
                old["parent"], old["orphan"] = None, True
            return old

        for child in children:
            await self.storage.update(ID_PREFIX + child, orphan)
        await self._delete_one(entry.id_hash)

    async def accessor_retired(self, mount_accessor: str) -> bool:
        """Whether a disabled mount had this accessor (its revocation epoch is stored)."""
        return await self.storage.get(EPOCH_PREFIX + mount_accessor) is not None

    async def revoke_mount(self, mount_accessor: str) -> int:
        """Revoke every token issued through a mount (when it is disabled).

        Writes the mount's epoch first, which kills its batch tokens (and any service token
        the scan below would miss) on their next use, then deletes its service tokens.
        """
        now = self.clock()
        await self.storage.put(EPOCH_PREFIX + mount_accessor, now)
        self._epochs[mount_accessor] = (now, time.monotonic())
        return await self._revoke_where(lambda data: data.get("mount_accessor") == mount_accessor)

    async def _revoke_where(self, chosen: Callable[[dict[str, Any]], bool]) -> int:
        """Revoke the tree of every token whose stored row ``chosen`` picks (a full scan)."""
        return await self._revoke_trees([key async for key, data in self._rows() if chosen(data)])

    async def _revoke_trees(self, keys: list[str]) -> int:
        """Revoke the trees of ``keys``, ``REVOKE_BATCH`` at once: their deletes share the
        storage's commits (one by one, each waited for its own: 3.6 ms a token, 36 s for
        10,000 on SQLite)."""
        count = 0
        for start in range(0, len(keys), REVOKE_BATCH):
            # A tree already gone with its parent's (both under the prefix) removes nothing.
            done = await asyncio.gather(*(self._revoke_tree(k) for k in keys[start:start + REVOKE_BATCH]))
            count += sum(done)
        return count

    async def _rows(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Every token row as ``(row id, stored data)``: a full scan, paged, letting requests run."""
        n = 0
        async for key in _id_keys(self.storage):
            await _pause(n)
            n += 1
            data = await self.storage.get(ID_PREFIX + key)
            if data is not None:
                yield key, data

    async def lease_ids(self, prefix: str) -> list[str]:
        """``LIST sys/leases/lookup/<prefix>``: the names one level below ``prefix`` (whole
        segments) of every live service token's lease id, directories ending in ``/``.

        A token's lease id is its creation path, then its row id, as Vault names a token's
        lease by its path and a hash of it: a selector (which its accessor shows too) or an
        HMAC, never the token.
        """
        under = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        now = self.clock()
        names: set[str] = set()
        async for key, data in self._rows():
            lease = f"{data.get('path', '')}/{key}"
            if not lease.startswith(under) or data.get("num_uses", 0) < 0:
                continue
            if data.get("expire_time") and now >= data["expire_time"]:
                continue
            rest = lease[len(under):]
            cut = rest.find("/")
            names.add(rest if cut < 0 else rest[:cut + 1])
        return sorted(names)

    async def lease_entry(self, lease_id: str) -> TokenEntry | None:
        """The live token a lease id names, or None (unknown, another path, or dead)."""
        path, _, row_id = lease_id.rpartition("/")
        # A row id is a selector (base62) or an HMAC (hex): anything else names no row, and
        # must not reach the storage as part of a key (a NUL is refused there).
        if not path or len(lease_id) > 1024 or not (0 < len(row_id) <= 128 and row_id.isascii() and row_id.isalnum()):
            return None
        entry = await self._load(row_id)
        if entry is None or entry.path != path:
            return None
        return await self._check_live(entry)

    async def revoke_prefix(self, prefix: str) -> int:
        """Revoke every service token whose creation path lies under ``prefix``, each with
        its children; returns how many entries were removed (``sys/leases/revoke-prefix``).

        Whole segments, as Vault matches lease ids: ``auth/jwt`` (or ``auth/jwt/``) covers
        ``auth/jwt/login``, not ``auth/jwt2/login``. Batch tokens hold no row and no lease:
        they are left, as in Vault. A full scan, paged, letting requests run.
        """
        under = prefix if prefix.endswith("/") else prefix + "/"
        return await self._revoke_where(lambda data: f"{data.get('path', '')}/".startswith(under))

    async def revoke_moved(self, old_path: str, mount_accessor: str) -> int:
        """Revoke the service tokens a moved mount issued at its old path (``auth/jwt/``), each
        with its children (``sys/remount``: Vault revokes a moved mount's leases). Only the
        mount's own, by its accessor: a mount enabled at the old path since keeps its tokens."""
        return await self._revoke_where(lambda data: data.get("mount_accessor") == mount_accessor
                                        and f"{data.get('path', '')}/".startswith(old_path))

    def revoke_prefix_later(self, prefix: str) -> None:
        """``revoke_prefix`` in the background (``sync: false``), logged when done."""

        async def run() -> None:
            log.info("tokens_revoked_by_prefix", prefix=prefix, revoked=await self.revoke_prefix(prefix))

        self.in_background(run(), "revoke-prefix", "revoke_prefix_failed", prefix=prefix)

    def tidy_later(self) -> bool:
        """A full sweep in the background (``auth/token/tidy``, as Vault runs its tidy);
        False, and nothing started, while one runs."""
        if self._tidy is not None and not self._tidy.done():
            return False

        async def run() -> None:
            log.info("token_tidy_done", removed=await self.sweep())

        self._tidy = self.in_background(run(), "token-tidy", "token_tidy_failed")
        return True

    def in_background(self, work: Coroutine[Any, Any, None], name: str, failed: str,
                      **context: Any) -> asyncio.Task[None]:
        """Run ``work`` as a task ``close`` cancels; its failure is logged as ``failed`` (with
        ``context``), not lost: the caller has had its answer (a revocation the answer left
        to the background)."""

        async def logged() -> None:
            try:
                await work
            except Exception:
                log.exception(failed, **context)

        task = asyncio.create_task(logged(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def list_accessors(self) -> list[str]:
        """Accessors of every live service token (a full scan; for operators)."""
        out: list[str] = []
        async for _, data in self._rows():
            accessor = self._listed(data)
            if accessor:
                out.append(accessor)
        return sorted(out)

    async def count_rows(self) -> int:
        """How many service token rows there are (``sys/internal/counters/tokens``): the keys
        counted a page at a time, no row read, so it costs what a list of keys costs. Expired
        tokens count until the sweep removes them, as OpenBao counts them."""
        count = 0
        async for _ in _id_keys(self.storage):
            count += 1
        return count

    async def accessors_page(self, after: str, limit: int) -> list[str]:
        """``LIST auth/token/accessors?after=&limit=``: at most ``limit`` (0: no bound) live
        accessors, in the order of the token rows, from the row past ``after``'s. Each page
        costs the rows it reads, so an operator can walk a million tokens (Vault's full list
        times out there: hashicorp/vault#10887).

        The rows of authmount's tokens are keyed by their selector, the head of the accessor,
        so ``after`` need not exist any more; an accessor of the HMAC-keyed layout is found
        through its index, and refused if its token is gone.
        """
        self._ready()
        start = ""
        if after:
            selector = accessor_selector(after)
            if selector is not None:
                start = selector
            else:
                index = await self.storage.get(ACCESSOR_PREFIX + self.hash(after)) if len(after) <= 256 else None
                if not index:
                    raise InvalidRequest(f"cannot list after {quoted(after)}: it is not the accessor of a live "
                                         "token (list again without after)")
                start = index["id_hash"]
        out: list[str] = []
        n = 0
        async for key in _id_keys(self.storage, start):
            await _pause(n)
            n += 1
            data = await self.storage.get(ID_PREFIX + key)
            accessor = self._listed(data) if data is not None else None
            if accessor:
                out.append(accessor)
                if len(out) == limit:
                    return out
        return out

    def _listed(self, data: dict[str, Any]) -> str | None:
        """The accessor a token row shows in the accessor list: a live service token's."""
        if not data.get("accessor") or data.get("num_uses", 0) < 0:
            return None
        entry = TokenEntry.from_dict(data)
        return entry.accessor if not entry.expire_time or self.clock() < entry.expire_time else None

    async def usage(self) -> TokenUsage:
        """Live service tokens counted by mount accessor, policy and creation TTL (a full
        scan, paged, letting requests run: the usage gauges)."""
        usage = TokenUsage()
        now = self.clock()
        async for _, data in self._rows():
            if data.get("num_uses", 0) < 0:
                continue
            expire = data.get("expire_time") or 0
            if expire and now >= expire:
                continue
            usage.add(data)
        return usage

    async def _children(self, id_hash: str) -> list[str]:
        return [c for c in await self.storage.list(f"{PARENT_PREFIX}{id_hash}/") if not c.endswith("/")]

    async def _revoke_tree(self, id_hash: str) -> int:
        # The parent goes first so it stops working at once; children of a missing
        # parent are refused on use anyway (see _check_live).
        start = perf_counter()
        try:
            return await self._revoke_all(id_hash)
        finally:
            telemetry.TOKEN_REVOKE.observe(telemetry.ms_since(start))

    async def _revoke_all(self, id_hash: str) -> int:
        count, stack, seen = 0, [id_hash], set()
        while stack:
            h = stack.pop()
            if h in seen:
                continue
            seen.add(h)
            stack.extend(await self._children(h))
            count += await self._delete_one(h)
        return count

    async def _delete_one(self, id_hash: str) -> int:
        data = await self.storage.get(ID_PREFIX + id_hash)
        await self.storage.delete(ID_PREFIX + id_hash)
        await self.storage.delete_prefix(f"{PARENT_PREFIX}{id_hash}/")
        if data is None:
            return 0
        if data.get("accessor") and not data.get("verifier"):  # HMAC-keyed: an index row
            await self.storage.delete(ACCESSOR_PREFIX + self.hash(data["accessor"]))
        if data.get("parent"):
            await self.storage.delete(f"{PARENT_PREFIX}{data['parent']}/{id_hash}")
        if data.get("policies") == [RESPONSE_WRAPPING]:
            await self.storage.delete(WRAP_PREFIX + id_hash)  # a wrapping token's response
        return 1

    # -- expiry sweeper ------------------------------------------------------------------
    async def sweep(self, *, due_only: bool = False) -> int:
        """Delete expired, exhausted and orphaned-by-revocation entries; return the count.

        ``due_only`` (the periodic sweeper) reads only rows that may have expired: a
        selector carries the expiry its token was minted with, which renewals only
        extend, so younger rows are skipped on their key alone, and a row found renewed
        is remembered until its new expiry. Rows it skips are dead anyway when a use-
        exhausted token was never released or its parent was revoked without it (lookup
        refuses them); they go when they reach their expiry, or now with a full sweep
        (``auth/token/tidy``). HMAC-keyed rows (chosen ids, earlier versions) are read.
        """
        count = 0
        now = self.clock()
        start, end, cutoff = due_cutoff(now)
        hints = self._sweep_hints
        read = n = 0
        dead: list[str] = []  # revoked REVOKE_BATCH at once: their deletes share commits
        async for key in _id_keys(self.storage):
            if n % _SKIP_CHUNK == _SKIP_CHUNK - 1:
                await asyncio.sleep(0)  # ~1 ms of skipped keys: let requests run
            n += 1
            if key.endswith("/"):
                continue
            if due_only and len(key) == SELECTOR_LEN:
                if key[start:end] > cutoff:
                    continue  # minted to expire later than now
                hint = hints.get(key)
                if hint is not None:
                    if hint > now:
                        continue
                    del hints[key]
            await _pause(read)
            read += 1
            data = await self.storage.get(ID_PREFIX + key)
            if data is None:
                continue
            entry = TokenEntry.from_dict(data)
            if entry.num_uses < 0:
                if now - entry.revoke_pending_at > _PENDING_GRACE:
                    count += await self._revoke_tree(key)
                continue
            if await self._check_live(entry, revoke=False) is None:
                count += 1
                if entry.type == "service":
                    dead.append(entry.id_hash)
                if len(dead) >= REVOKE_BATCH:
                    await self._revoke_trees(dead)
                    dead = []
            elif due_only and len(key) == SELECTOR_LEN and entry.expire_time:
                if len(hints) >= _SWEEP_HINTS:
                    hints.clear()
                hints[key] = entry.expire_time
        await self._revoke_trees(dead)
        return count

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                removed = await self.sweep(due_only=True)
                if removed:
                    log.info("token_sweep", removed=removed)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep sweeping after a transient storage error
                log.exception("token_sweep_failed")

    # -- presentation --------------------------------------------------------------------
    def lookup_data(
        self, entry: TokenEntry, raw_token: str = "", *, identity_policies: list[str] | None = None
    ) -> dict[str, Any]:
        """``data`` of lookup / lookup-self / lookup-accessor (docs/reference/vault-api.md 10.5):
        ``policies`` are the token's own; ``identity_policies`` (those of its entity's groups
        now, from ``identity_policies()``) are listed apart, as in Vault, when there are any."""
        remaining = remaining_ttl(entry.expire_time, self.clock())
        out: dict[str, Any] = {
            "accessor": entry.accessor,
            "creation_time": entry.creation_time,
            "creation_ttl": entry.ttl,
            "display_name": entry.display_name,
            "entity_id": entry.entity_id,
            "expire_time": rfc3339(entry.expire_time) if entry.expire_time else None,
            "explicit_max_ttl": entry.explicit_max_ttl,
            "id": raw_token,
            "issue_time": rfc3339(entry.creation_time),
            "meta": dict(entry.meta) or None,
            "num_uses": entry.num_uses,
            "orphan": entry.orphan,
            "path": entry.path,
            "policies": list(entry.policies),
            "renewable": entry.renewable,
            "ttl": remaining,
            "type": entry.type,
        }
        if identity_policies:
            out["identity_policies"] = list(identity_policies)
            out["external_namespace_policies"] = {}  # Vault's companion key (no namespaces here)
        if entry.period:
            out["period"] = entry.period
        if entry.role:
            out["role"] = entry.role
        if entry.bound_cidrs:
            out["bound_cidrs"] = list(entry.bound_cidrs)
        if entry.last_renewal_time:
            out["last_renewal_time"] = entry.last_renewal_time
            out["last_renewal"] = rfc3339(entry.last_renewal_time)
        return out
