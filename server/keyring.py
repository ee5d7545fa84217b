"""Secrets at rest: a copy of the storage is not a credential.

Two levels, as in Vault's barrier:

- The **storage key** (32 bytes) never enters the storage. It comes from the environment
  (``AUTHMOUNT_STORAGE_KEY``, base64) or from a key file created with mode 0600 at first
  start (``storage.key_file``). Nodes sharing a database share it the same way.
- The **keyring** (``core/keyring``) holds the data keys ("terms"), sealed as a whole under
  the storage key. Every secret the server keeps (the token salt, the batch signing keys,
  an auth method's client secrets and HMAC keys, OIDC flow states) is sealed under the
  active term.

The sealed format and cipher are ``plugin/sealing.py``'s. A value's *context* is where it
lives (the storage key and field, ``auth/<mount uuid>/config#oidc_client_secret``) or what it
is for (an OIDC flow state).

The **fingerprint key** (``core/fingerprint-key``, 32 random bytes sealed like any secret
for ``core/fingerprint-key#sealed``) keys the fingerprints of secrets (``Keyring.fingerprint``,
``plugin.sealing.fingerprint_bytes``): the same value at the same place always has the same
fingerprint, rotation included, and nobody without the server can compute one.

``rotate`` adds a term and makes it active; older terms stay so that values sealed under
them still open (the callers re-seal what they own). ``core/rotate-config`` (``RotationConfig``,
Vault's ``sys/rotate/config``) asks for a rotation when the active term is older than its
``interval``; ``rotate(due=...)`` makes it on one node only. ``rewrap`` seals the keyring under a
new storage key (``authmount operator rekey``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import orjson
import structlog

from plugin.sealing import (
    EphemeralSealer,
    NewerTermError,
    Sealer,
    SealError,
    b64d,
    b64e,
    fingerprint_bytes,
    format_sealed,
    is_sealed,
    open_bytes,
    parse_sealed,
    seal_bytes,
)
from plugin.storage import Storage, walk

log = structlog.get_logger("authmount.keyring")

__all__ = [
    "PROCESS_SEALER",
    "PrefixSealer",
    "KEYRING_KEY",
    "ENV_KEY",
    "Keyring",
    "SealError",
    "StorageKeyError",
    "is_sealed",
    "load_storage_key",
    "write_key_file",
    "key_fingerprint",
    "reseal",
    "RESEAL_PREFIXES",
    "FINGERPRINT_KEY",
    "ROTATE_CONFIG_KEY",
    "RotationConfig",
]

KEYRING_KEY = "core/keyring"
FINGERPRINT_KEY = "core/fingerprint-key"
ENV_KEY = "AUTHMOUNT_STORAGE_KEY"
ROTATE_CONFIG_KEY = "core/rotate-config"
KEY_BYTES = 32


class StorageKeyError(RuntimeError):
    """The storage key is missing, malformed, or not the one the keyring was sealed with;
    the message says which and what to do."""


#: The sealer of stores built without a keyring (tests, tools): one per process, so that
#: several stores on one storage open each other's secrets. Never for durable storage.
PROCESS_SEALER: Sealer = EphemeralSealer()


class PrefixSealer:
    """A ``Sealer`` whose contexts are relative to ``prefix`` (a mount's storage prefix,
    ``auth/<uuid>/``): the full context is where the value lives in the root storage."""

    __slots__ = ("_sealer", "_prefix")

    def __init__(self, sealer: Sealer, prefix: str) -> None:
        self._sealer = sealer
        self._prefix = prefix

    def seal(self, plaintext: bytes, context: str) -> str:
        return self._sealer.seal(plaintext, self._prefix + context)

    def unseal(self, sealed: str, context: str) -> bytes:
        return self._sealer.unseal(sealed, self._prefix + context)

    def fingerprint(self, plaintext: bytes, context: str) -> str:
        return self._sealer.fingerprint(plaintext, self._prefix + context)


def key_fingerprint(key: bytes) -> str:
    """A short public name of a storage key (not enough to recover it): 16 hex digits."""
    return hashlib.sha256(b"authmount storage key\0" + key).hexdigest()[:16]


def load_storage_key(
    *, key_file: str | None, env: Mapping[str, str] | None = None, create: bool
) -> tuple[bytes, str]:
    """The storage key and where it came from (``"env"`` or the file path).

    The environment wins over the file. A missing file is created (0600, atomically) when
    ``create`` is true, i.e. when the storage holds no keyring yet.

    :raises StorageKeyError: no key anywhere (and ``create`` is false), a malformed key, a
        key file readable by others.
    """
    environ = os.environ if env is None else env
    raw = environ.get(ENV_KEY, "").strip()
    if raw:
        return _decode_key(raw, ENV_KEY), "env"
    if not key_file:
        raise StorageKeyError(
            f"no storage key: set {ENV_KEY} or storage.key_file (the key that seals this server's secrets)"
        )
    path = Path(key_file)
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise StorageKeyError(f"storage key file {path} is readable by others (mode {mode:o}); chmod 600 it")
        return _decode_key(path.read_text(encoding="ascii").strip(), str(path)), str(path)
    if not create:
        raise StorageKeyError(
            f"storage key file {path} does not exist, but the storage holds secrets sealed with a storage key: "
            f"copy the key file from the node that created it (or set {ENV_KEY})"
        )
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write_key_file(tmp, key)
    try:
        os.link(tmp, path)  # never replaces a key another process created meanwhile
    except FileExistsError:
        tmp.unlink()
        return load_storage_key(key_file=key_file, env=environ, create=False)
    tmp.unlink()
    return key, str(path)


def write_key_file(path: Path, key: bytes) -> None:
    """Write a storage key to a new file (mode 0600, created exclusively, synced).

    :raises FileExistsError: ``path`` exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise StorageKeyError(f"storage key from {where} must be {KEY_BYTES} bytes in base64")
    return key


@dataclass(frozen=True, slots=True)
class Term:
    """One data key."""

    number: int
    key: bytes
    created: float


#: Vault's ceiling and default of ``max_operations`` (``barrier.AbsoluteOperationMaximum``).
_MAX_OPERATIONS = 3_865_470_566


@dataclass(frozen=True, slots=True)
class RotationConfig:
    """Vault's automatic rotation settings (``sys/rotate/config``), kept at ``ROTATE_CONFIG_KEY``.

    ``interval`` (seconds; 0: never) is how old the active term may grow before a rotation.
    ``max_operations`` is kept and shown as Vault's, and never triggers one: every seal derives
    a key of its own (``plugin/sealing.py``), so the GCM limit it guards does not apply.
    """

    enabled: bool = True
    max_operations: int = _MAX_OPERATIONS
    interval: int = 0

    #: Vault's bounds (``barrier.AbsoluteOperationMinimum``/``Maximum``, ``MinimumRotationInterval``).
    MIN_OPERATIONS: ClassVar[int] = 1_000_000
    MAX_OPERATIONS: ClassVar[int] = _MAX_OPERATIONS
    MIN_INTERVAL: ClassVar[int] = 24 * 3600

    @classmethod
    def from_stored(cls, stored: Any) -> RotationConfig:
        """The settings as stored (the defaults when there are none)."""
        if not isinstance(stored, dict):
            return cls()
        return cls(enabled=bool(stored.get("enabled", True)),
                   max_operations=int(stored.get("max_operations", cls.MAX_OPERATIONS)),
                   interval=int(stored.get("interval", 0)))

    def to_storage(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "max_operations": self.max_operations, "interval": self.interval}

    def due(self) -> int | None:
        """The age at which the active term is rotated, or None (off, or no interval)."""
        return self.interval if self.enabled and self.interval > 0 else None


class Keyring:
    """The data keys, opened with the storage key. Thread-safe for reads."""

    def __init__(self, storage_key: bytes, terms: dict[int, Term], active: int) -> None:
        self._storage_key = storage_key
        self._terms = terms
        self.active = active
        #: Set by ``open`` (``core/fingerprint-key``); until then fingerprints are refused.
        self._fingerprint_key = b""
        #: Seals this process made, by term: ``sys/key-status``'s ``encryptions``.
        self._seals: dict[int, int] = {}

    # -- storage ---------------------------------------------------------------------------
    @classmethod
    async def exists(cls, storage: Storage) -> bool:
        """Whether the storage already holds a keyring (so the storage key must exist)."""
        return await storage.get(KEYRING_KEY) is not None

    @classmethod
    async def open(cls, storage: Storage, storage_key: bytes, *, now: float | None = None) -> Keyring:
        """The keyring in ``storage``, created (term 1) when there is none.

        :raises StorageKeyError: the keyring was sealed under another storage key.
        """
        created = time.time() if now is None else now
        first = {"terms": {"1": {"key": b64e(secrets.token_bytes(KEY_BYTES)), "created": created}}, "active": 1}
        fresh = cls._stored_form(storage_key, first)
        # update() so two nodes starting together agree on one keyring.
        stored = await storage.update(KEYRING_KEY, lambda old: old if old else fresh)
        ring = cls.from_stored(storage_key, stored)
        ring._fingerprint_key = await ring._load_fingerprint_key(storage)
        return ring

    async def _load_fingerprint_key(self, storage: Storage) -> bytes:
        """The fingerprint key, created on the first start of a version that has it."""
        context = FINGERPRINT_KEY + "#sealed"

        def ensure(old: Any) -> Any:
            if isinstance(old, dict) and isinstance(old.get("sealed"), str):
                return old
            return {"sealed": self.seal(secrets.token_bytes(KEY_BYTES), context)}

        stored = await storage.update(FINGERPRINT_KEY, ensure)  # one key when nodes start together
        try:
            return self.unseal(stored["sealed"], context)
        except SealError as exc:
            raise StorageKeyError(f"{FINGERPRINT_KEY} does not open with this keyring: {exc}") from None

    async def reload(self, storage: Storage) -> None:
        """Re-read the keyring (another node rotated it)."""
        stored = await storage.get(KEYRING_KEY)
        if stored is not None:
            self._adopt(self.from_stored(self._storage_key, stored))

    def _adopt(self, other: Keyring) -> None:
        """Take ``other``'s terms unless this keyring is newer: terms are only ever added, and
        the newest term is the active one, so the keyring with the highest term is the latest.
        A reload that read storage before a rotation finished (this node's own, or a second
        one elsewhere) must not take back the terms the rotation added: values sealed under
        them would stop opening here until the next rotation."""
        if max(other._terms) < max(self._terms):
            return
        self._terms, self.active = {**self._terms, **other._terms}, other.active

    def due(self, age: int, now: float) -> bool:
        """Whether the active term is at least ``age`` seconds old at ``now``."""
        return now - self._terms[self.active].created >= age

    async def rotate(self, storage: Storage, *, now: float | None = None, due: int | None = None) -> int | None:
        """Add a term and make it active; returns its number.

        ``due``: only if the stored active term is at least that many seconds old, judged in
        the same storage update, so that of nodes checking together one rotates; None when
        it is not (the keyring is then re-read, since another node may have rotated it).
        """
        created = time.time() if now is None else now
        rotated = [True]

        def add(old: Any) -> Any:
            ring = self.from_stored(self._storage_key, old)
            if due is not None and not ring.due(due, created):
                rotated[0] = False
                return old
            number = max(ring._terms) + 1
            body = ring._body()
            body["terms"][str(number)] = {"key": b64e(secrets.token_bytes(KEY_BYTES)), "created": created}
            body["active"] = number
            return self._stored_form(self._storage_key, body)

        stored = await storage.update(KEYRING_KEY, add)
        self._adopt(self.from_stored(self._storage_key, stored))
        return self.active if rotated[0] else None

    async def rewrap(self, storage: Storage, new_storage_key: bytes) -> None:
        """Seal the keyring under ``new_storage_key`` (the data keys stay)."""

        def swap(old: Any) -> Any:
            ring = self.from_stored(self._storage_key, old)
            return self._stored_form(new_storage_key, ring._body())

        await storage.update(KEYRING_KEY, swap)
        self._storage_key = new_storage_key

    def status(self) -> dict[str, Any]:
        """What ``sys/key-status`` shows: the active term, when it was made, and the seals this
        process made under it (a number, as the Vault CLI needs; no count limits a term)."""
        term = self._terms[self.active]
        return {
            "term": term.number,
            "install_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(term.created)),
            "encryptions": self._seals.get(term.number, 0),
            "terms": len(self._terms),
            "storage_key_fingerprint": key_fingerprint(self._storage_key),
        }

    def _body(self) -> dict[str, Any]:
        return {
            "terms": {str(n): {"key": b64e(t.key), "created": t.created} for n, t in self._terms.items()},
            "active": self.active,
        }

    @staticmethod
    def _stored_form(storage_key: bytes, body: dict[str, Any]) -> dict[str, Any]:
        blob = seal_bytes(storage_key, orjson.dumps(body), KEYRING_KEY)
        return {"v": 1, "storage_key": key_fingerprint(storage_key), "sealed": b64e(blob)}

    @classmethod
    def from_stored(cls, storage_key: bytes, stored: Any) -> Keyring:
        """The keyring as stored at ``KEYRING_KEY``, opened with ``storage_key`` (no storage
        read: a snapshot's row, or one read by ``authmount operator diagnose``).

        :raises StorageKeyError: not a keyring, or sealed under another storage key.
        """
        if not isinstance(stored, dict) or stored.get("v") != 1 or not isinstance(stored.get("sealed"), str):
            raise StorageKeyError(f"{KEYRING_KEY} in storage is not a keyring this version can read")
        if stored.get("storage_key") != key_fingerprint(storage_key):
            raise StorageKeyError(
                f"the keyring in storage was sealed with storage key {stored.get('storage_key')}, "
                f"but this node has {key_fingerprint(storage_key)}: give every node the same key file "
                f"(or {ENV_KEY})"
            )
        try:
            body = orjson.loads(open_bytes(storage_key, b64d(stored["sealed"]), KEYRING_KEY))
            terms = {
                int(n): Term(int(n), b64d(t["key"]), float(t["created"])) for n, t in body["terms"].items()
            }
            active = int(body["active"])
        except (SealError, ValueError, KeyError, TypeError) as exc:
            raise StorageKeyError(f"the keyring in storage does not open with this storage key: {exc}") from None
        if active not in terms:
            raise StorageKeyError("the keyring in storage has no active term")
        return cls(storage_key, terms, active)

    # -- sealing -------------------------------------------------------------------------------
    def seal(self, plaintext: bytes, context: str) -> str:
        """``plaintext`` sealed under the active term for ``context``."""
        term = self._terms[self.active]
        self._seals[term.number] = self._seals.get(term.number, 0) + 1
        return format_sealed(term.number, seal_bytes(term.key, plaintext, context))

    def unseal(self, sealed: str, context: str) -> bytes:
        """The plaintext of a value ``seal`` made for ``context``.

        :raises NewerTermError: sealed under a term newer than this keyring's (re-read it).
        :raises SealError: malformed, an unknown term, another context, tampered.
        """
        number, blob = parse_sealed(sealed)
        term = self._terms.get(number)
        if term is None:
            if number > max(self._terms):
                raise NewerTermError(f"sealed under term {number}, newer than this keyring's {max(self._terms)}")
            raise SealError(f"sealed under unknown term {number}")
        return open_bytes(term.key, blob, context)

    def fingerprint(self, plaintext: bytes, context: str) -> str:
        """The fingerprint of ``plaintext`` at ``context`` (see the module docstring).

        :raises RuntimeError: the keyring was built without ``open`` (a caller bug).
        """
        if not self._fingerprint_key:
            raise RuntimeError("keyring has no fingerprint key (not opened with Keyring.open)")
        return fingerprint_bytes(self._fingerprint_key, plaintext, context)

    def term_of(self, sealed: str) -> int | None:
        """The term a sealed value was made with (None: not a sealed value)."""
        try:
            return parse_sealed(sealed)[0]
        except SealError:
            return None


#: Where sealed values live: every auth mount's storage, the token store's secrets, the
#: identity tokens' private keys, the OIDC provider's client secrets, and ``core/`` (the
#: keyring itself is sealed under the storage key, not a term, and skipped).
RESEAL_PREFIXES = ("auth/", "core/", "sys/token/salt", "sys/token/batch_key", "identity/oidc/key/",
                   "identity/oidc/client/")


async def reseal(storage: Storage, keyring: Keyring, prefixes: tuple[str, ...] = RESEAL_PREFIXES) -> int:
    """Seal every sealed value below ``prefixes`` again under the active term; returns how
    many values were re-sealed.

    A value's context is ``<storage key>#<name of the innermost field that holds it>``, the
    rule every writer of sealed values follows, so this walk needs no list of them. A value
    that does not open is left as it is and logged (it is no worse than before).
    """
    count = 0
    for key in await _keys_below(storage, prefixes):
        if key == KEYRING_KEY:
            continue
        changed: list[int] = []

        def again(old: Any, key: str = key, changed: list[int] = changed) -> Any:
            changed.clear()
            return _reseal_value(old, key, "", keyring, changed)

        await storage.update(key, again)
        count += len(changed)
    return count


def _reseal_value(value: Any, key: str, field: str, keyring: Keyring, changed: list[int]) -> Any:
    if isinstance(value, dict):
        return {k: _reseal_value(v, key, k, keyring, changed) for k, v in value.items()}
    if isinstance(value, list):
        return [_reseal_value(v, key, field, keyring, changed) for v in value]
    if isinstance(value, str) and is_sealed(value) and keyring.term_of(value) != keyring.active:
        context = f"{key}#{field}"
        try:
            plain = keyring.unseal(value, context)
        except SealError:
            log.error("reseal_failed", key=key, field=field)
            return value
        changed.append(1)
        return keyring.seal(plain, context)
    return value


async def _keys_below(storage: Storage, prefixes: tuple[str, ...]) -> list[str]:
    """Every key below the prefixes (a prefix without a trailing ``/`` is one key)."""
    out: list[str] = []
    folders = [p for p in prefixes if p.endswith("/")]
    out.extend(p for p in prefixes if not p.endswith("/"))
    while folders:
        folder = folders.pop()
        async for child in walk(storage, folder):
            (folders if child.endswith("/") else out).append(folder + child)
    return out
