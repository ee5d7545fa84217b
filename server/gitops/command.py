"""The ``authmount apply`` and ``authmount export`` commands: their options, how they find
the server (as the Vault CLI does) and what they print."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from server.gitops.desired import Desired, GitopsError, load_file
from server.gitops.export import Export, dump_yaml, export_state
from server.gitops.live import HttpServer, ServerError
from server.gitops.plan import Target, apply_plan, make_plan, parse_target
from server.sys.status import VERSION

__all__ = ["add_commands", "run_apply", "run_export", "DEFAULT_ADDRESS"]

#: Where the commands go without ``-address`` or ``VAULT_ADDR``: authmount's default listener.
DEFAULT_ADDRESS = "http://127.0.0.1:8200"
_TRUE = ("1", "t", "true", "yes")


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server (as the Vault CLI: flags win over the environment)")
    group.add_argument("--address", "-address", metavar="URL",
                       help=f"the server (VAULT_ADDR; default {DEFAULT_ADDRESS})")
    group.add_argument("--ca-cert", "-ca-cert", metavar="FILE", help="CA bundle to verify TLS with (VAULT_CACERT)")
    group.add_argument("--client-cert", "-client-cert", metavar="FILE", help="TLS client certificate (VAULT_CLIENT_CERT)")
    group.add_argument("--client-key", "-client-key", metavar="FILE", help="its private key (VAULT_CLIENT_KEY)")
    group.add_argument("--tls-skip-verify", "-tls-skip-verify", action="store_true", default=None,
                       help="do not verify the server's certificate (VAULT_SKIP_VERIFY)")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``apply`` and ``export`` on the CLI's subcommands."""
    ap = sub.add_parser(
        "apply", help="make a server match a YAML file (mounts, configs, roles, policies, token roles, groups, "
                      "entities, identity token keys and roles, rate limit quotas, key rotation, CORS, the OIDC provider)",
        description="Compare the server with FILE (the settings file's mounts, policies, token_roles, groups, "
                    "entities, identity_token_keys, identity_token_roles, rate_limit_quotas, quota_config, rotate_config, cors, "
                    "oidc_scopes, "
                    "oidc_assignments, oidc_clients and oidc_providers), print the "
                    "plan and "
                    "apply it. The token comes from VAULT_TOKEN or ~/.vault-token.",
    )
    ap.add_argument("-f", "--file", "-file", required=True, metavar="FILE", help="the YAML file to apply")
    ap.add_argument("--dry-run", "-dry-run", action="store_true", help="print the plan, change nothing")
    ap.add_argument("--detailed-exitcode", "-detailed-exitcode", action="store_true",
                    help="exit 0 when there is nothing to change, 2 when there is (1 on errors)")
    ap.add_argument("--prune", "-prune", action="store_true",
                    help="delete mounts, roles, policies, token roles, groups, entities and identity token keys and "
                         "roles and rate limit quotas the file does not declare (else they are listed)")
    ap.add_argument("--target", "-target", action="append", default=[], metavar="KIND:NAME",
                    help="only this object: mount:<path> (with its config and roles), config:<path>, "
                         "role:<path>/<name>, policy:<name>, token-role:<name>, group:<name>, entity:<name>, "
                         "oidc-key:<name>, oidc-role:<name>, quota:<name>, cors:cors; repeatable")
    _connection_options(ap)
    ex = sub.add_parser(
        "export", help="write a server's mounts, configs, roles, policies, token roles, groups, entities and "
                       "identity token keys and roles and rate limit quotas as an apply file",
        description="Read authmount, Vault or OpenBao over the HTTP API and write its jwt/oidc mounts, policies and "
                    "token roles as YAML for 'authmount apply'. Secrets are written as ${env:NAME} references.",
    )
    ex.add_argument("-o", "--output", "-output", metavar="FILE", help="write to FILE instead of stdout")
    _connection_options(ex)


def _server(args: argparse.Namespace, env: Mapping[str, str]) -> HttpServer:
    """The server the options and the environment name.

    :raises GitopsError: no token anywhere.
    """
    address = args.address or env.get("VAULT_ADDR") or DEFAULT_ADDRESS
    token = env.get("VAULT_TOKEN", "").strip()
    if not token:
        helper = Path(env.get("HOME", "~")).expanduser() / ".vault-token"
        try:
            token = helper.read_text(encoding="utf-8").strip()
        except OSError:
            token = ""
    if not token:
        raise GitopsError("no token: set VAULT_TOKEN (or log in with the Vault CLI, which writes ~/.vault-token)")
    skip = args.tls_skip_verify if args.tls_skip_verify is not None else env.get("VAULT_SKIP_VERIFY", "").lower() in _TRUE
    return HttpServer(
        address, token,
        ca_cert=args.ca_cert or env.get("VAULT_CACERT", ""),
        client_cert=args.client_cert or env.get("VAULT_CLIENT_CERT", ""),
        client_key=args.client_key or env.get("VAULT_CLIENT_KEY", ""),
        skip_verify=skip,
    )


def run_apply(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """``authmount apply``: 0 done (or nothing to do), 2 changes with ``--detailed-exitcode``,
    1 an error (nothing after the failing change is applied)."""
    environ = os.environ if env is None else env
    try:
        targets = [parse_target(t) for t in args.target]
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    try:
        desired = load_file(args.file, env=environ)
        server = _server(args, environ)
        return asyncio.run(_apply(args, desired, server, targets))
    except (GitopsError, ServerError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # an unreadable CA or client certificate
        print(f"Error: {exc}", file=sys.stderr)
        return 1


async def _apply(args: argparse.Namespace, desired: Desired, server: HttpServer, targets: list[Target]) -> int:
    async with server:
        plan = await make_plan(desired, server, prune=args.prune, targets=targets)
        print(plan.render(), flush=True)
        changed = 2 if args.detailed_exitcode and plan.has_changes else 0
        if args.dry_run or not plan.has_changes:
            return changed
        print("", flush=True)
        await apply_plan(plan, server, report=lambda line: print(line, flush=True))
        c = plan.counts()
        print(f"\nApply complete: {c['create']} created, {c['update']} updated, {c['delete']} deleted.", flush=True)
        return changed


def run_export(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """``authmount export``: 0, or 1 on an error. Notes (secrets to provide, what was left
    out) go to stderr."""
    environ = os.environ if env is None else env
    try:
        server = _server(args, environ)
        export = asyncio.run(_export(server))
    except (GitopsError, ServerError, OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    header = f"authmount export of {server.name} (authmount v{VERSION}); apply with: authmount apply -f <this file>"
    text = dump_yaml(export, header=header)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"Error: {args.output}: {exc.strerror}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    for note in export.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


async def _export(server: HttpServer) -> Export:
    async with server:
        return await export_state(server)
