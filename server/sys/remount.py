"""``sys/remount`` and ``sys/remount/status/<migration_id>``: move an auth mount to another
path, the way Vault operators rename one (``vault auth move auth/jwt auth/gitlab``, hvac's
``sys.move_backend``). The mount keeps its accessor, uuid, config and roles; the service tokens
it issued at its old path are revoked, with their children, as Vault revokes a moved mount's
leases (batch tokens have no lease and are left, as in Vault).

Where authmount differs from Vault (docs/vault-differences.md):
- The mount table changes before the answer, so every refusal (no mount at exactly ``from``,
  a destination in use) is the request's ``400``, never a ``failure`` status found later.
- The status is stored (``core/remount/<id>``), so every node and worker answers it, after a
  restart too; the move itself is stored with the mount entry (``moves``) until its old tokens
  are revoked, so a restart finishes a revocation a crash interrupted.
- The old path's tokens are swept twice: at once, and ``SETTLE_SECONDS`` later for a login
  that was still running on the old path (on this node or on another one whose copy of the
  table had not yet changed). Only the moved mount's tokens: a mount enabled at the old path
  in between keeps its own.
- ``auth/token`` is protected by whole segments (Vault's string prefix also refuses
  ``auth/tokens-ci``).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog

from plugin.errors import InvalidRequest
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.mounts import MountEntry, MountTable, normalize_path
from server.storage import Engine
from server.sys.core import SysPath
from server.tokens.store import TokenStore

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "resume", "STATUS_PREFIX", "SETTLE_SECONDS"]

log = structlog.get_logger("authmount.remount")

STATUS_PREFIX = "core/remount/"
#: When the old path's tokens are swept again: ten times the bound within which every node
#: and worker sees a mount table change (docs/operations.md).
SETTLE_SECONDS = 1.0
#: How long ``sys/remount`` waits for the first sweep before it answers, so that the CLI's
#: first status poll (it polls again only 10 s later) usually reads ``success``.
_ANSWER_WAIT_SECONDS = 1.0
#: Status rows older than this are dropped when a new move is made.
_STATUS_KEPT_SECONDS = 30 * 86400
#: Vault's paths no secrets engine may be moved from or to (authmount has none: only the
#: refusal's text matters for a ``from`` outside ``auth/``).
_PROTECTED = ("audit/", "auth/", "sys/", "cubbyhole/", "identity/")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _path(raw: Any) -> str:
    if not isinstance(raw, str):
        raise InvalidRequest("both 'from' and 'to' path must be specified as a string")
    return raw


def _mount_path(full: str) -> str | None:
    """``auth/jwt/`` as the mount table names it (``jwt/``), or None when the table would
    not name it so (an empty, ``.`` or ``..`` segment, a character a mount path refuses)."""
    rel = full.removeprefix("auth/")
    try:
        return rel if normalize_path(rel) == rel else None
    except InvalidRequest:
        return None


def _sanitized(path: str) -> str:
    """Vault's ``sanitizePath``: one leading ``/`` dropped, a trailing ``/`` added if missing."""
    path = path.removeprefix("/")
    return path if path.endswith("/") else path + "/"


def _sides(values: dict[str, Any]) -> tuple[str, str]:
    """The mount table paths of ``from`` and ``to``, checked in Vault's order.

    :raises InvalidRequest: Vault's texts, in its order.
    """
    src, dst = values.get("from", ""), values.get("to", "")
    if not src or not dst:
        raise InvalidRequest("both 'from' and 'to' path must be specified as a string")
    for name, value in (("from", src), ("to", dst)):
        if value != value.strip(" "):
            raise InvalidRequest(f"'{name}' path cannot contain trailing whitespace")
    src_full, dst_full = (_sanitized(src), _sanitized(dst))
    if not src_full.startswith("auth/"):
        # Vault takes it for a secrets engine (authmount has none): its refusals, in its order.
        for prefix in _PROTECTED:
            if src_full.startswith(prefix):
                raise InvalidRequest(f'cannot remount "{src_full}"')
        for prefix in _PROTECTED:
            if dst_full.startswith(prefix):
                raise InvalidRequest(f"cannot remount to destination {dst_full}")
        raise InvalidRequest(f'no matching mount at "{src_full}"')
    if not dst_full.startswith("auth/"):
        raise InvalidRequest(f'cannot remount auth mount to non-auth mount "{dst_full}"')
    if dst_full == "auth/":
        raise InvalidRequest(f'invalid destination mount path "{dst}"')
    src_path, dst_path = _mount_path(src_full), _mount_path(dst_full)
    if src_path is None:  # no mount has such a path
        raise InvalidRequest(f'no matching mount at "{src_full}"')
    if dst_path is None:
        raise InvalidRequest(f"invalid destination mount: invalid mount path '{dst}'")
    return src_path, dst_path


async def _set_status(storage: Engine, migration_id: str, status: str) -> None:
    def change(old: Any) -> Any:
        return {**old, "status": status} if old else old

    await storage.update(STATUS_PREFIX + migration_id, change)


async def _prune(storage: Engine, now: float) -> None:
    for key in await storage.list(STATUS_PREFIX):
        row = await storage.get(STATUS_PREFIX + key)
        if row is not None and now - float(row.get("time", 0)) > _STATUS_KEPT_SECONDS:
            await storage.delete(STATUS_PREFIX + key)


async def _finish(mounts: MountTable, tokens: TokenStore, storage: Engine, accessor: str, move: dict[str, str],
                  first: asyncio.Event | None = None) -> None:
    """Revoke the tokens the moved mount issued at its old path, twice (at once and after
    ``SETTLE_SECONDS``); the status reads ``success`` after the first sweep, the move leaves
    the mount entry after the second. A failure is logged and the status reads ``failure``;
    the move stays in the entry, and the next start tries again."""
    migration_id, old = move["id"], "auth/" + move["from"]
    try:
        revoked = await tokens.revoke_moved(old, accessor)
        await _set_status(storage, migration_id, "success")
        if first is not None:
            first.set()
        await asyncio.sleep(SETTLE_SECONDS)
        revoked += await tokens.revoke_moved(old, accessor)
        await mounts.moved(accessor, migration_id)
    except Exception:
        await _set_status(storage, migration_id, "failure")
        raise
    finally:
        if first is not None:
            first.set()
    log.info("mount_move_finished", migration_id=migration_id, moved_from=old, revoked=revoked)


def _start(mounts: MountTable, tokens: TokenStore, storage: Engine, entry: MountEntry, move: dict[str, str],
           first: asyncio.Event | None = None) -> None:
    tokens.in_background(_finish(mounts, tokens, storage, entry.accessor, move, first), "remount",
                         "mount_move_failed", migration_id=move["id"])


def resume(mounts: MountTable, tokens: TokenStore, storage: Engine) -> int:
    """At start: finish every move whose old tokens a stop interrupted revoking (each a
    background task); returns how many."""
    pending = [(m.entry, move) for m in mounts.mounts.values() for move in m.entry.moves]
    for entry, move in pending:
        log.info("mount_move_resumed", migration_id=move["id"], mount=entry.path, moved_from=move["from"])
        _start(mounts, tokens, storage, entry, move)
    return len(pending)


def paths(b: SysBackend) -> list[SysPath]:
    core = b.core

    async def remount(req: Request, values: dict[str, Any]) -> Response:
        src, dst = _sides(values)
        migration_id, now = str(uuid.uuid4()), time.time()
        await _prune(core.storage, now)
        entry = await core.mounts.move(src, dst, migration_id)
        first = asyncio.Event()
        try:
            await core.storage.put(STATUS_PREFIX + migration_id, {
                "source_mount": "auth/" + src, "target_mount": "auth/" + dst, "status": "in-progress", "time": now,
            })
        finally:  # the mount has moved: its old tokens go, whether or not the status could be written
            _start(core.mounts, core.tokens, core.storage, entry, entry.moves[-1], first)
        try:
            await asyncio.wait_for(first.wait(), _ANSWER_WAIT_SECONDS)
        except TimeoutError:
            pass  # a large token table: the status says when it is done
        return Response(data={"migration_id": migration_id}, warnings=[
            f"Mount moved to auth/{dst}; the tokens it issued at auth/{src} are revoked in the background. "
            "Progress is at sys/remount/status/<migration_id> and in the server log, tagged with the migration_id."
        ])

    async def status(req: Request, values: dict[str, Any]) -> Response | None:
        migration_id = values["migration_id"]
        row = await core.storage.get(STATUS_PREFIX + migration_id) if _UUID.fullmatch(migration_id) else None
        if row is None:
            return None  # Vault's 404 with no error
        return Response(data={"migration_id": values["migration_id"], "migration_info": {
            k: row[k] for k in ("source_mount", "target_mount", "status")}})

    side = "The {} mount path, under auth/ (auth/jwt)."
    return [
        SysPath("remount", FieldSet({
            "from": Field(FieldType.STRING, side.format("current"), default="", parse=_path),
            "to": Field(FieldType.STRING, side.format("new"), default="", parse=_path),
        }), {Operation.UPDATE: remount}, "Move an auth mount to another path (its tokens are revoked).",
            sudo=True, copy_top=True),
        SysPath(r"remount/status/(?P<migration_id>.+)", FieldSet({
            "migration_id": Field(FieldType.NAME, "The migration id sys/remount returned."),
        }), {Operation.READ: status}, "The status of a mount move: in-progress, success or failure."),
    ]
