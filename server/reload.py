"""SIGHUP: apply what can change while the server runs, and say what was done.

The settings file is read again (with the same command-line overrides) and each *reload
hook* of the application gets the old and the new settings; it applies what it owns and
returns one line per change, which the server logs (``sighup_reload``). The built-in hooks
reload the log level, the rate limits and the seeded objects (``server.app``), and the
listener's TLS certificate (``server.cli``). Another part of the server adds its own with
``add_reload_hook`` (audit devices reopen their files this way). Settings no hook reloads
are listed as needing a restart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from server.appkeys import RELOAD_HOOKS
from server.http.log import set_log_level
from server.http.ratelimit import LIMITER
from server.settings import Settings
from server.sys import loggers

__all__ = ["ReloadHook", "add_reload_hook", "reload_settings", "reload_log_level", "reload_rate_limits",
           "RELOADED_SETTINGS"]

log = structlog.get_logger("authmount.reload")

#: ``(app, old settings, new settings) -> lines saying what changed`` (empty: nothing).
ReloadHook = Callable[[web.Application, Settings, Settings], Awaitable[list[str]]]

#: Settings a built-in hook applies on SIGHUP; a change of any other needs a restart.
RELOADED_SETTINGS = frozenset({
    "log_level", "rate_limit", "mounts", "policies", "token_roles", "groups", "entities", "identity_token_keys",
    "identity_token_roles", "rate_limit_quotas", "quota_config", "rotate_config", "cors", "oidc_scopes", "oidc_assignments", "oidc_clients",
    "oidc_providers",
    "tls_cert_file", "tls_key_file", "source",
})


def add_reload_hook(app: web.Application, hook: ReloadHook, *, settings: frozenset[str] = frozenset()) -> None:
    """Run ``hook`` on every SIGHUP (after the hooks added before it). ``settings`` names
    the settings it applies, so that their change is no longer reported as needing a
    restart."""
    app[RELOAD_HOOKS].append((hook, settings))


async def reload_settings(app: web.Application, old: Settings, new: Settings) -> list[str]:
    """Run every reload hook; returns what they changed plus what needs a restart. A hook
    that fails is logged (``reload_hook_failed``) and the others still run."""
    changes: list[str] = []
    handled = set(RELOADED_SETTINGS)
    hooks: list[tuple[ReloadHook, frozenset[str]]] = app[RELOAD_HOOKS]
    for hook, names in list(hooks):
        handled |= names
        try:
            changes += await hook(app, old, new)
        except Exception as exc:  # one broken hook must not stop the others
            log.error("reload_hook_failed", hook=getattr(hook, "__name__", repr(hook)), error=str(exc))
            changes.append(f"{getattr(hook, '__name__', 'hook')} failed: {exc}")
    restart = [
        f.name for f in dataclasses.fields(Settings)
        if f.name not in handled and getattr(old, f.name) != getattr(new, f.name)
    ]
    if restart:
        changes.append("not applied until a restart: " + ", ".join(restart))
    return changes


async def reload_log_level(app: web.Application, old: Settings, new: Settings) -> list[str]:
    """The log level (every logger of the process; the levels sys/loggers set are forgotten)."""
    if old.log_level == new.log_level:
        return []
    set_log_level(new.log_level)
    loggers.SHARED.publish()  # a worker started again later takes this level, not sys/loggers' older ones
    return [f"log_level: {old.log_level} -> {new.log_level}"]


async def reload_rate_limits(app: web.Application, old: Settings, new: Settings) -> list[str]:
    """The abuse limits of the unauthenticated paths (buckets start full again)."""
    if old.rate_limit == new.rate_limit:
        return []
    limiter = app.get(LIMITER)
    if limiter is not None:
        limiter.reconfigure(new.rate_limit)
    changed = [
        f"rate_limit.{f.name}: {getattr(old.rate_limit, f.name)} -> {getattr(new.rate_limit, f.name)}"
        for f in dataclasses.fields(new.rate_limit)
        if getattr(old.rate_limit, f.name) != getattr(new.rate_limit, f.name)
    ]
    return changed
