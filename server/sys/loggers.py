"""``sys/loggers`` and ``sys/loggers/<name>``: the log level of the running server, of every
logger or of one, changed without a restart (``vault write sys/loggers level=debug``), as in
Vault: not kept in storage (a restart, or SIGHUP with a new ``log_level``, starts again from
the settings), per node, and ``DELETE`` goes back to the settings' level.

Vault's levels are read as Vault reads them (``trace``, ``debug``, ``notice``/``info``,
``warn``/``warning``, ``err``/``error``); authmount logs nothing below debug, so ``trace`` logs
what ``debug`` does and reads back as ``trace``.

With ``--workers N`` a write reaches one worker, so it also writes the levels to a file in
the supervisor's directory (``SharedLevels``), which every worker reads within
``SharedLevels.PERIOD`` of its change: the workers of one node keep one set of levels, as one
Vault node has, and a worker the supervisor starts again takes them too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

import orjson

from plugin.errors import InvalidRequest
from plugin.framework import Operation, Request, Response
from plugin.schema import Field, FieldSet, FieldType
from server.http.log import level_number, logger_levels, set_logger_levels
from server.sys.core import SysPath

if TYPE_CHECKING:
    from server.sys.backend import SysBackend

__all__ = ["paths", "LOGGER_NAMES", "parse_level", "SharedLevels", "SHARED"]

#: The loggers of authmount (``structlog.get_logger(<name>)`` in ``server/`` and ``plugin/``).
LOGGER_NAMES = (
    "authmount.app", "authmount.audit", "authmount.connections", "authmount.errors", "authmount.http",
    "authmount.identity", "authmount.keyring", "authmount.leases", "authmount.mounts", "authmount.nodes",
    "authmount.policies", "authmount.reload", "authmount.remount", "authmount.request", "authmount.server",
    "authmount.storage", "authmount.supervisor", "authmount.telemetry", "authmount.tokens", "plugin.backend",
    "plugin.keys", "plugin.login", "plugin.path_oidc",
)
#: Vault's level names (``logging.ParseLogLevel``; "" is info) to the log's levels.
_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "notice": logging.INFO, "info": logging.INFO, "": logging.INFO,
           "warn": logging.WARNING, "warning": logging.WARNING, "err": logging.ERROR, "error": logging.ERROR}
#: The name a level reads back as, when ``trace`` was not asked for.
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error"}
FIELDS = FieldSet({"level": Field(FieldType.STRING, "The level: trace, debug, info (or notice), warn (or warning), "
                                                    "error (or err).")})
NAMED_FIELDS = FieldSet({
    "name": Field(FieldType.NAME, "The logger's name."),
    "level": Field(FieldType.STRING, "The level: trace, debug, info (or notice), warn (or warning), error (or err)."),
})


def parse_level(values: dict[str, Any]) -> tuple[int, bool]:
    """The level a write asks for, and whether it is ``trace``.

    :raises InvalidRequest: Vault's texts.
    """
    if "level" not in values:
        raise InvalidRequest("level is required")
    text = str(values["level"])
    if not text:
        raise InvalidRequest("level is empty")
    name = text.strip().lower()
    if name not in _LEVELS:
        raise InvalidRequest(f"invalid level provided: unknown log level: {name}")
    return _LEVELS[name], name == "trace"


def _shown(name: str) -> str:
    base, by_name, traced = logger_levels()
    level = by_name.get(name, base)
    return "trace" if level == logging.DEBUG and (name if name in by_name else "") in traced else _NAMES[level]


class SharedLevels:
    """The levels of one node's workers, in a file of the supervisor's directory: each write
    replaces it (one ``rename``), and each worker looks at it every ``PERIOD``."""

    PERIOD = 1.0
    FILE = "loggers.json"

    def __init__(self) -> None:
        self.path = ""
        self._seen: tuple[int, int] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, directory: str) -> None:
        """Follow ``directory``'s file (read it now: a worker started again takes the levels)."""
        self.path = os.path.join(directory, self.FILE)
        self._check()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def publish(self) -> None:
        """This process's levels, for the other workers (nothing without a directory)."""
        if not self.path:
            return
        base, by_name, traced = logger_levels()
        body = orjson.dumps({"base": base, "by_name": by_name, "traced": sorted(traced)})
        temporary = f"{self.path}.{os.getpid()}"
        try:
            with open(temporary, "wb") as out:
                out.write(body)
            os.replace(temporary, self.path)
            self._seen = self._stamp()
        except OSError:
            pass  # the directory is gone (the server is stopping): this worker keeps its levels

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino

    def _check(self) -> None:
        stamp = self._stamp()
        if stamp is not None and stamp != self._seen:
            self._seen = stamp
            try:
                with open(self.path, "rb") as f:
                    state = orjson.loads(f.read())
                set_logger_levels(int(state["base"]), {str(k): int(v) for k, v in state["by_name"].items()},
                                  frozenset(str(n) for n in state["traced"]))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass  # half a file cannot be: it is renamed into place; anything else is not ours
        self._timer = asyncio.get_running_loop().call_later(self.PERIOD, self._check)


#: This process's follower (``server.app`` starts it for a worker of ``--workers N``).
SHARED = SharedLevels()


def paths(b: SysBackend) -> list[SysPath]:
    def configured() -> int:
        return level_number(b.core.settings.log_level)

    async def read_all(req: Request, values: dict[str, Any]) -> Response:
        return Response(data={name: _shown(name) for name in LOGGER_NAMES})

    async def write_all(req: Request, values: dict[str, Any]) -> None:
        level, trace = parse_level(values)
        set_logger_levels(level, {}, frozenset({""} if trace else ()))
        SHARED.publish()

    async def reset_all(req: Request, values: dict[str, Any]) -> None:
        set_logger_levels(configured(), {})
        SHARED.publish()

    async def read_one(req: Request, values: dict[str, Any]) -> Response:
        name = values["name"]
        return Response(data={name: _shown(name)} if name in LOGGER_NAMES else {})

    def set_one(name: str, level: int, trace: bool) -> None:
        if name not in LOGGER_NAMES:
            raise InvalidRequest(f'logger "{name}" not found')
        base, by_name, traced = logger_levels()
        set_logger_levels(base, {**by_name, name: level}, traced - {name} | ({name} if trace else set()))
        SHARED.publish()

    async def write_one(req: Request, values: dict[str, Any]) -> None:
        set_one(values["name"], *parse_level(values))

    async def reset_one(req: Request, values: dict[str, Any]) -> None:
        set_one(values["name"], configured(), False)

    return [
        SysPath("loggers/?", FIELDS, {Operation.READ: read_all, Operation.UPDATE: write_all, Operation.DELETE: reset_all},
                "Read the level of every logger, set them all, or put them back to the settings' log_level."),
        SysPath("loggers/(?P<name>.+)", NAMED_FIELDS,
                {Operation.READ: read_one, Operation.UPDATE: write_one, Operation.DELETE: reset_one},
                "Read, set or put back (to the settings' log_level) the level of one logger."),
    ]
