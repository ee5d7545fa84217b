"""Vault's seal, unseal, rekey and root-token generation paths, which authmount has no use
for: it has no seal and no unseal keys (docs/vault-differences.md row 20). Rather than Vault's
``404 no handler``, each says what to do instead (``vault operator unseal``, ``vault operator
generate-root``, ``vault operator rekey``, OpenBao's ``bao operator rotate-keys``), so an
operator following a Vault runbook learns the authmount command at once. They change nothing
and need no token (Vault's ``unseal`` needs none either).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugin.errors import InvalidRequest
from plugin.framework import Operation, Request
from plugin.schema import FieldSet
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "NO_SEAL", "NO_ROOT_KEYS", "NO_REKEY"]

NO_SEAL = ("authmount has no seal: the server opens its secrets itself at start with the storage key (a key file or "
           "AUTHMOUNT_STORAGE_KEY); to stop serving, stop the process (docs/operations.md, \"The storage key\")")
NO_ROOT_KEYS = ("authmount has no unseal keys to generate a root token with: run `authmount operator generate-root "
                "--config <settings file>` on the server's host (docs/operations.md, \"The root token\")")
NO_REKEY = ("authmount has no unseal keys to rekey: `authmount operator rekey --config <settings file> "
            "--new-key-file <path>` replaces the storage key, with the server stopped (docs/operations.md, \"The "
            "storage key\")")

_ALL = (Operation.READ, Operation.UPDATE, Operation.DELETE)


#: Each path Vault's and OpenBao's CLIs and hvac call for these, with what it answers.
_REFUSED = {
    NO_SEAL: ("seal", "unseal"),
    NO_ROOT_KEYS: ("generate-root/attempt", "generate-root/update", "generate-root-token/attempt",
                   "generate-root-token/update", "decode-token"),
    NO_REKEY: ("rekey/init", "rekey/update", "rekey/verify", "rekey/backup", "rotate/root", "rotate/root/init",
               "rotate/root/update"),
}


def paths(b: SysBackend) -> list[SysPath]:
    def refusal(message: str) -> dict[Operation, Any]:
        async def refuse(req: Request, values: dict[str, Any]) -> None:
            raise InvalidRequest(message)

        return dict.fromkeys(_ALL, refuse)

    return [SysPath(name, FieldSet({}), refusal(message), "Not served by authmount: " + message.split(":", 1)[1].strip(),
                    unauthenticated=True, ignores_body=True)
            for message, names in _REFUSED.items() for name in names]
