"""Mutation testing of the security code with mutmut 2.5 (run through ``scripts/mutation``).

Usage::

    scripts/mutation                         # the default module set (about an hour of CPU, fresh)
    scripts/mutation plugin/keys.py          # some modules, with their tests from MODULES
    scripts/mutation server/tokens/backend.py=tests/server/test_token_backend.py
    scripts/mutation -j 1 --html --fresh plugin/cidrutil.py

mutmut 2 rewrites the files it mutates in place. This script never lets it touch the
checkout: each worker copies the tree (tracked and untracked, not ignored files) into a
scratch directory, runs mutmut there and deletes the copy afterwards, also on Ctrl-C. The
per-module mutmut caches are kept in ``.mutmut/`` (git-ignored), so a second run only tests
mutants that survived or are new (``--fresh`` starts over); ``.mutmut/report.txt`` holds the
last report and ``--html`` writes mutmut's HTML pages to ``.mutmut/html/<module>/``.

Each module runs against the narrowest tests that exercise it (``MODULES``), with ``-x``, and
each mutant only against those of them that run its line (one coverage run per module), in a
fork server that imported pytest and the third-party libraries once. Any failing exit of
pytest (also a collection error) counts as the mutant being killed. A
surviving mutant listed in the table of ``docs/mutation.md`` (same file, line and mutation) is
reported as a documented equivalent; any other survivor makes the exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import queue
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".mutmut"
DOC = ROOT / "docs" / "mutation.md"

#: Module -> the tests that exercise it, the quickest killers first (pytest stops at the
#: first failure). Test files that do not exist are left out with a warning.
MODULES: dict[str, tuple[str, ...]] = {
    "plugin/jose_verify.py": (
        "tests/plugin/test_parse_rules.py",
        "tests/plugin/test_jwk_rules.py",
        "tests/plugin/test_jose_verify.py",
        "tests/plugin/test_keys.py",
        "tests/plugin/test_attacks.py",
        "tests/plugin/test_login_boundaries.py",
    ),
    "plugin/keys.py": (
        "tests/plugin/test_key_source_rules.py",
        "tests/plugin/test_keys.py",
        "tests/plugin/test_jwk_rules.py",
        "tests/plugin/test_attacks.py",
        "tests/plugin/test_path_config.py",
        "tests/server/test_metrics.py",
        "tests/plugin/test_client_auth.py",  # the client certificate a key fetch presents
    ),
    "plugin/claims.py": (
        "tests/plugin/test_claims.py",
        "tests/plugin/test_login_checks.py",
        "tests/plugin/test_login_boundaries.py",
        "tests/plugin/test_path_login.py",
        "tests/plugin/test_explain.py",
        "tests/plugin/test_path_oidc.py",
        "tests/plugin/test_verbose_oidc_logging.py",
    ),
    "plugin/path_login.py": (
        "tests/plugin/test_login_checks.py",
        "tests/plugin/test_login_boundaries.py",
        "tests/plugin/test_path_login.py",
        "tests/plugin/test_explain.py",
        "tests/plugin/test_claims.py",
        "tests/plugin/test_attacks.py",
        "tests/plugin/test_path_oidc.py",
        "tests/plugin/test_verbose_oidc_logging.py",
        "tests/server/test_login_errors.py",
        "tests/server/test_security_rules.py",
        "tests/test_docs.py",
        "tests/plugin/test_claim_sources.py",  # the distributed_claims check
    ),
    "plugin/sealing.py": (
        "tests/plugin/test_sealing_rules.py",
        "tests/server/test_keyring.py",
        "tests/plugin/test_oidc_state.py",
        "tests/plugin/test_path_config.py",
    ),
    "plugin/oidc_state.py": (
        "tests/plugin/test_oidc_state_rules.py",
        "tests/plugin/test_oidc_state.py",
        "tests/plugin/test_path_oidc.py",
        "tests/plugin/test_oidc_modes.py",  # the direct and device modes' state fields, oidc/poll
    ),
    "plugin/oidc_redirect.py": (
        "tests/plugin/test_oidc_redirect_rules.py",
        "tests/plugin/test_oidc_state.py",
        "tests/plugin/test_path_oidc.py",
    ),
    "plugin/cidrutil.py": (
        "tests/plugin/test_shared_rules.py",
        "tests/server/test_security_rules.py",
        "tests/plugin/test_login_boundaries.py",
    ),
    "server/http/inline.py": (  # inline authentication's headers: what an anonymous caller sends
        "tests/server/test_inline_auth.py",
    ),
    "server/http/tlsnames.py": (  # override_allowed_server_names: whom outbound TLS trusts
        "tests/server/test_tlsnames.py",
        "tests/server/test_fetcher.py",
    ),
    "plugin/policyutil.py": (
        "tests/plugin/test_shared_rules.py",
        "tests/server/test_security_rules.py",
        "tests/server/test_tokens.py",
    ),
    "server/acl/policies.py": (
        "tests/server/test_policies.py",
        "tests/server/test_policy_versions.py",  # OpenBao's version, cas_required, modified, expiration
        "tests/server/test_acl_rules.py",
        "tests/server/test_security_rules.py",
        "tests/server/test_sys_capabilities.py",
        "tests/server/test_wrapping.py",  # the built-in response-wrapping policy
        "tests/server/test_policy_templates.py",  # identity templates in paths: filling, caching, flags
        "tests/server/test_acl_parameters.py",  # parameter constraints, resultant-acl
    ),
    "server/acl/hcl.py": (
        "tests/server/test_policies.py",
        "tests/server/test_acl_rules.py",
    ),
    "server/tokens/store.py": (
        "tests/server/test_tokens.py",
        "tests/server/test_token_rules.py",
        "tests/server/test_token_selectors.py",
        "tests/server/test_token_scans.py",  # lease listing edges, pages across storage pages, background logs
        "tests/server/test_counters.py",
        "tests/server/test_keyring.py",  # batch keys sealed under a term this node has not read yet
        "tests/server/test_oidc_provider.py",  # an access token gets none of its entity's identity policies
        "tests/server/test_security_rules.py",
        "tests/server/test_token_backend.py",
        "tests/server/test_metrics.py",
        "tests/server/test_identity.py",
        "tests/server/test_wrapping.py",
        "tests/server/test_leases.py",  # sys/leases: lease ids, lookups, revoke-prefix
        "tests/server/test_remount.py",  # a moved mount's tokens
        "tests/server/test_inline_auth.py",  # the entry an inline login stands for
        "tests/server/test_entities_made.py",  # an operator's entity alias decides a login's entity
        "tests/server/test_token_roles.py",  # a token role's tokens (their role, identity policies)
    ),
    "server/tokens/backend.py": (  # auth/token/*: who may create, renew, look up and revoke what
        "tests/server/test_token_backend.py",
        "tests/server/test_token_rules.py",
        "tests/server/test_tokens.py",
        "tests/server/test_security_rules.py",
        "tests/server/test_token_roles.py",
        "tests/server/test_leases.py",
        "tests/server/test_unknown_parameters.py",
        "tests/server/test_wrapping.py",  # every token creation path is wrapped (issues_token)
        "tests/server/test_token_scans.py",  # accessor pages
        "tests/server/test_inline_auth.py",  # what the token of an inline authentication cannot do
        "tests/server/test_identity.py",  # a token for the entity alias of a disabled entity
    ),
    "server/tokens/roles.py": (  # token roles: the policies and TTLs their tokens may get
        "tests/server/test_token_roles.py",
        "tests/server/test_token_backend.py",
        "tests/server/test_gitops.py",  # a new role's defaults and the deprecated spellings, as `apply` compares them
    ),
    "server/acl/parameters.py": (  # policy parameter constraints
        "tests/server/test_acl_parameters.py",
        "tests/server/test_policies.py",
    ),
    "server/acl/templating.py": (  # identity templates in policy paths
        "tests/server/test_policy_templates.py",
        "tests/server/test_acl_rules.py",
        "tests/server/test_policies.py",
    ),
    "server/tokens/keys.py": (
        "tests/server/test_token_hmac.py",
        "tests/server/test_token_keys.py",
        "tests/server/test_token_rules.py",
        "tests/server/test_token_selectors.py",
        "tests/server/test_tokens.py",
    ),
    "server/keyring.py": (
        "tests/server/test_keyring.py",
        "tests/server/test_seed_reload.py",
        "tests/server/test_key_rotation.py",  # automatic rotation: its config, when a term is due
        "tests/server/test_identity_tokens.py",  # identity keys sealed again by a rotation
        "tests/server/test_oidc_provider.py",  # OIDC provider client secrets sealed again by a rotation
    ),
    "server/http/ratelimit.py": (  # the per-address limits on what anonymous callers may send
        "tests/server/test_ratelimit.py",
        "tests/server/test_ratelimit_shared.py",
    ),
    "server/quotas.py": (  # rate limit quotas (sys/quotas/rate-limit): who is refused, and for how long
        "tests/server/test_quotas.py",
        "tests/server/test_sys_backend.py",  # quotas written through the API: their paths split at the mount
        "tests/server/test_gitops.py",  # quotas applied from a file
    ),
    "server/identity/metadata.py": (  # what identity metadata may hold: Vault's limits
        "tests/server/test_entities_made.py",
    ),
    "server/http/connguard.py": (
        "tests/server/test_connguard.py",
    ),
    "server/audit/entry.py": (
        "tests/server/test_audit.py",
        "tests/server/test_inline_auth.py",  # the entries of an inline login and its request
    ),
    "plugin/cel.py": (
        "tests/plugin/test_cel.py",
    ),
    "server/tokens/entry.py": (
        "tests/server/test_tokens.py",
        "tests/server/test_token_rules.py",
        "tests/server/test_token_selectors.py",
        "tests/server/test_token_backend.py",
    ),
    "server/tokens/ttl.py": (
        "tests/server/test_hot_paths.py",
        "tests/server/test_token_rules.py",
        "tests/server/test_tokens.py",
    ),
    "server/tokens/batch.py": (
        "tests/server/test_hot_paths.py",
        "tests/server/test_token_hmac.py",
        "tests/server/test_token_rules.py",
        "tests/server/test_tokens.py",
    ),
    "server/tokens/ids.py": (
        "tests/server/test_token_selectors.py",
        "tests/server/test_token_rules.py",
        "tests/server/test_tokens.py",
    ),
}
DEFAULT_SET = tuple(MODULES)

#: Extra pytest arguments: slow tests that no mutant of the module needs.
_DESELECT = ("--deselect", "tests/server/test_token_selectors.py::test_mint_ids_unique_over_100k_in_one_millisecond")
PYTEST_EXTRA: dict[str, tuple[str, ...]] = {
    "server/tokens/store.py": _DESELECT,
    "server/tokens/entry.py": _DESELECT,
}

_STATUS = {
    "ok_killed": "killed",
    "bad_timeout": "timeout",
    "ok_suspicious": "suspicious",
    "bad_survived": "survived",
    "skipped": "skipped",
    "untested": "untested",
}


@dataclass
class Job:
    module: str
    tests: tuple[str, ...]
    extra: tuple[str, ...] = ()
    result: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    @property
    def slug(self) -> str:
        return self.module.replace("/", "_").removesuffix(".py")


# -- the runner mutmut calls for each mutant ----------------------------------------------------
#
# mutmut starts the runner once per mutant. Starting pytest costs more than most test runs
# here (interpreter, pytest, its plugins, aiohttp, cryptography, python-jose: ~0.5 s of CPU),
# so each job starts a small fork server: it imports those third-party modules once (the ones
# a collection of the job's tests imports, nothing from the tree under test), then forks a
# child per mutant that runs pytest and imports the project's modules fresh from disk. The
# runner mutmut calls just asks the server over a Unix socket and exits with the answer.

SOCKET_ENV = "AUTHMOUNT_MUTATION_SOCKET"
#: The job's extra pytest arguments (``PYTEST_EXTRA``), as JSON: given to every pytest run.
EXTRA_ENV = "AUTHMOUNT_MUTATION_EXTRA"
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "--assert=plain")


def _extra() -> list[str]:
    return list(json.loads(os.environ.get(EXTRA_ENV) or "[]"))


def run_pytest(args: list[str], plugins: list[Any] | None = None) -> int:
    """pytest in this process; any failure (tests, collection, usage) is exit status 1.

    mutmut 2 counts only status 1 as "killed": a mutant that breaks an import makes pytest
    exit with 2 and would otherwise show up as a survivor.
    """
    import pytest

    code = pytest.main([*PYTEST_ARGS, *_extra(), *args], plugins=plugins)
    return 0 if code == 0 else 1


#: pytest's exit status when every test it was given is deselected (``PYTEST_EXTRA``).
_NO_TESTS = 5


def run_client(args: list[str]) -> int:
    """The runner: pytest through the job's fork server (in this process without one)."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return run_pytest(args)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall((json.dumps({"args": args, "cwd": os.getcwd()}) + "\n").encode())
        reply = conn.makefile().readline().strip()
    return 0 if reply == "0" else 1


def _in_tree(module: Any, tree: Path) -> bool:
    """Is ``module`` (or, for a namespace package, one of its folders) inside ``tree``?"""
    places = [getattr(module, "__file__", None) or "", *(getattr(module, "__path__", None) or [])]
    return any(str(p).startswith(str(tree)) for p in places)


def _third_party_modules(args: list[str], tree: Path) -> list[str]:
    """The modules a collection of ``args`` imports from outside ``tree`` (in a child)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1)
        os.dup2(null, 2)
        import pytest

        pytest.main([*PYTEST_ARGS, "--collect-only", *args])
        names = [n for n, m in list(sys.modules.items()) if n != "__main__" and not _in_tree(m, tree)]
        os.write(write, "\n".join(names).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return [n for n in data.decode().split("\n") if n]


# Killers first, one test file at a time. pytest imports every test file named on its
# command line before it runs a test, and importing a test file (with the project modules
# and keys it builds) costs about as much as running its tests. So a child runs the selected
# tests file by file and stops at the first failure, and the server orders the files and
# the tests in them by how many mutants each test killed so far in this job (a test that
# killed mutants on other lines is the likeliest to kill this one), else as the job lists
# them.


class _Killers:
    """Records, in a child, which test failed first; counts, in the server, how often."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.failed: str = ""

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed and not self.failed:
            self.failed = report.nodeid.split("[")[0]

    def score(self, test: str) -> int:
        if "::" in test:
            return self.counts.get(test, 0)
        return sum(n for t, n in self.counts.items() if t.split("::")[0] == test)

    def stages(self, tests: list[str]) -> list[list[str]]:
        """``tests`` grouped by file, killers first, in the order to run them."""
        files: dict[str, list[str]] = {}
        for test in tests:
            files.setdefault(test.split("::")[0], []).append(test)
        groups = [sorted(group, key=lambda t: -self.score(t)) for group in files.values()]
        return sorted(groups, key=lambda g: -sum(self.score(t) for t in g))


def _run_stages(stages: list[list[str]], report_fd: int) -> int:
    """Run ``stages`` one pytest session each (in a child), stop at the first failure and
    write the test that failed (if one did) to ``report_fd``."""
    import pytest

    for stage in stages:
        killers = _Killers()
        code = pytest.main([*PYTEST_ARGS, *_extra(), *stage], plugins=[killers])
        if code not in (0, _NO_TESTS):
            os.write(report_fd, killers.failed.encode())
            return 1
    return 0


def _fork_pytest(
    args: list[str], cwd: str, conn: socket.socket, server: socket.socket, killers: _Killers
) -> tuple[int, str, int]:
    """(exit status, the test that failed first, test files run) of ``args`` in a child."""
    stages = killers.stages(args)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            server.close()
            conn.close()
            os.setpgid(0, 0)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.chdir(cwd)
            code = _run_stages(stages, write)
        finally:
            os._exit(code)
    os.close(write)
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            ready, _, _ = select.select([pidfd, conn.fileno()], [], [])
            if pidfd in ready:
                _, status = os.waitpid(pid, 0)
                failed = os.read(read, 1 << 16).decode(errors="replace")
                return (0 if os.waitstatus_to_exitcode(status) == 0 else 1), failed, len(stages)
            if not conn.recv(1):  # the runner is gone: mutmut's timeout killed it
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                return 1, "", len(stages)
    finally:
        os.close(pidfd)
        os.close(read)


def serve(path: str, warm_args: list[str]) -> int:
    """The fork server of one job (its cwd is the scratch copy)."""
    import importlib

    sys.dont_write_bytecode = True  # a mutant's .pyc must never outlive it
    tree = Path.cwd().resolve()
    for name in _third_party_modules([*_extra(), *warm_args], tree):
        try:
            importlib.import_module(name)
        except Exception:  # a module that only imports in its own context: the child will
            pass
    own = [n for n, m in list(sys.modules.items()) if n != "__main__" and _in_tree(m, tree)]
    if own:  # never fork with a module of the tree already imported: mutants would not show
        raise SystemExit(f"fork server imported modules of the tree: {own}")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    try:
        _serve_forever(server)
    except KeyboardInterrupt:  # SIGTERM at the end of the job
        pass
    return 0


def _serve_forever(server: socket.socket) -> None:
    killers = _Killers()
    while True:
        conn, _ = server.accept()
        with conn:
            line = conn.makefile().readline()
            if not line:
                continue
            request = json.loads(line)
            started = time.monotonic()
            code, failed, files = _fork_pytest(request["args"], request["cwd"], conn, server, killers)
            if failed:
                killers.counts[failed] = killers.counts.get(failed, 0) + 1
            outcome = f"killed by {failed}" if failed else ("killed" if code else "passed")
            print(f"{time.monotonic() - started:6.2f}s {outcome} ({len(request['args'])} tests, {files} files)",
                  flush=True)
            try:
                conn.sendall(f"{code}\n".encode())
            except OSError:
                pass


# -- mutmut itself, with one fix ------------------------------------------------------------------


def run_mutmut(args: list[str]) -> int:
    """``mutmut`` with its cached-status lookup fixed.

    mutmut 2.5 looks the cached status of a mutant up by its line's text only
    (``get_cached_mutation_statuses``), so a mutant on a line that repeats an earlier line
    (``"orphan": entry.orphan,`` in two dicts) takes that line's status: once the earlier one
    is killed, the later one is never run again and keeps whatever status it had.
    """
    import mutmut.cache as cache
    from mutmut import BAD_TIMEOUT, OK_KILLED, OK_SUSPICIOUS, UNTESTED
    from mutmut.__main__ import climain

    @cache.init_db
    @cache.db_session
    def cached_statuses(filename: str, mutations: list[Any], hash_of_tests: str) -> dict[Any, str]:
        sourcefile = cache.SourceFile.get(filename=filename)
        assert sourcefile
        result = {}
        for mid in mutations:
            line = cache.Line.get(sourcefile=sourcefile, line=mid.line, line_number=mid.line_number)
            assert line
            mutant = cache.Mutant.get(line=line, index=mid.index) or cache.get_or_create(
                cache.Mutant, line=line, index=mid.index, defaults={"status": UNTESTED}
            )
            fresh = mutant.tested_against_hash == hash_of_tests and hash_of_tests != cache.NO_TESTS_FOUND
            # A mutant that made the tests fail, hang or crawl stays detected (mutmut itself
            # only keeps "killed": a timeout would cost ten test runs' time on every rerun).
            detected = mutant.status in (OK_KILLED, BAD_TIMEOUT, OK_SUSPICIOUS)
            result[mid] = mutant.status if detected or fresh else UNTESTED
        return result

    cache.get_cached_mutation_statuses = cached_statuses
    sys.argv = ["mutmut", *args]
    try:
        climain()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


# -- the report, read from a copy's .mutmut-cache -------------------------------------------


_TOKEN = re.compile(
    r"""\w+|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\*\*=?|//=?|>>=?|<<=?|->|:=|[-+*/%&|^@<>=!]=|\S"""
)


def fragments(before: str, after: str) -> tuple[str, str]:
    """The differing part of two source lines, widened to whole tokens."""
    a = [(m.start(), m.end()) for m in _TOKEN.finditer(before)]
    b = [(m.start(), m.end()) for m in _TOKEN.finditer(after)]
    ta = [before[s:e] for s, e in a]
    tb = [after[s:e] for s, e in b]
    p = 0
    while p < min(len(ta), len(tb)) and ta[p] == tb[p]:
        p += 1
    s = 0
    while s < min(len(ta), len(tb)) - p and ta[-1 - s] == tb[-1 - s]:
        s += 1
    da, db = a[p : len(a) - s], b[p : len(b) - s]
    fa = before[da[0][0] : da[-1][1]] if da else ""
    fb = after[db[0][0] : db[-1][1]] if db else ""
    return fa, fb


def _changed(old: list[str], new: list[str]) -> tuple[str, str]:
    """The first changed line of a mutant, before and after ("" for a deleted line)."""
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag != "equal":
            return ("\n".join(old[i1:i2]), "\n".join(new[j1:j2]))
    return ("", "")


def report(module: str) -> dict[str, Any]:
    """Counts by status and the survivors of ``module`` (run in the copy, next to its cache)."""
    from mutmut import Context, mutate
    from mutmut.cache import Mutant, db_session, filename_and_mutation_id_from_pk, init_db

    @init_db
    @db_session
    def collect() -> dict[str, Any]:
        counts: dict[str, int] = {}
        survivors = []
        source = Path(module).read_text()
        lines = source.splitlines()
        for m in Mutant.select(lambda m: m.line.sourcefile.filename == module).order_by(Mutant.id):
            status = _STATUS.get(m.status, m.status)
            counts[status] = counts.get(status, 0) + 1
            if status not in ("survived", "timeout", "suspicious", "untested", "skipped"):
                continue
            _, mid = filename_and_mutation_id_from_pk(m.id)
            mutated, _n = mutate(Context(source=source, mutation_id=mid, filename=module, dict_synonyms=[""]))
            before, after = _changed(lines, mutated.splitlines())
            lineno = mid.line_number
            fa, fb = fragments(before, after)
            survivors.append(
                {"id": m.id, "status": status, "line": lineno + 1, "before": before.strip(),
                 "after": after.strip(), "from": fa, "to": fb}
            )
        return {"counts": counts, "survivors": survivors}

    result: dict[str, Any] = collect()
    return result


# -- documented equivalent mutants ------------------------------------------------------------


_DOC_ROW = re.compile(r"^\|\s*`(?P<file>[^`:]+):(?P<line>\d+)`\s*\|\s*(?P<mutation>.*?)\s*\|\s*(?P<why>.*?)\s*\|\s*$")


def _code(text: str) -> str:
    """A fragment as a Markdown code span inside a table (empty: ``(nothing)``)."""
    if not text:
        return "(nothing)"
    ticks = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text.replace('|', '&#124;')}{pad}{ticks}"


def mutation_text(fa: str, fb: str) -> str:
    return f"{_code(fa)} → {_code(fb)}"


def documented() -> set[tuple[str, int, str]]:
    """(file, line, mutation) of every row in the equivalent-mutant table of docs/mutation.md."""
    out: set[tuple[str, int, str]] = set()
    if not DOC.exists():
        return out
    for row in DOC.read_text().splitlines():
        m = _DOC_ROW.match(row)
        if m:
            out.add((m["file"], int(m["line"]), m["mutation"]))
    return out


# -- running ------------------------------------------------------------------------------------


def _tree_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode()
    return [p for p in out.split("\0") if p and (ROOT / p).is_file()]


def make_copy() -> Path:
    """A scratch copy of the working tree (uncommitted changes included), byte-compiled.

    The .pyc files are checked against a hash of their source, not its mtime: a mutant
    written in the same second as the original, with the same size, is still recompiled.
    """
    dest = Path(tempfile.mkdtemp(prefix="authmount-mutation-"))
    for rel in _tree_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", "plugin", "server", "tests"],
        cwd=dest, check=True, stdout=subprocess.DEVNULL,
    )
    return dest


_PROCS: set[subprocess.Popen[bytes]] = set()
_PROCS_LOCK = threading.Lock()
_STOPPING = threading.Event()


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    for name in ("VAULT_TOKEN", "VAULT_ADDR", SOCKET_ENV, EXTRA_ENV):
        env.pop(name, None)
    return env


def _spawn(cmd: list[str], cwd: Path, log: Any, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group (so an interrupt can stop all of it)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with _PROCS_LOCK:
        _PROCS.add(proc)
    return proc


def _wait(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait()
    finally:
        with _PROCS_LOCK:
            _PROCS.discard(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _wait(proc)


# -- per-mutant test selection -----------------------------------------------------------------
#
# One run of the job's tests under coverage records, for each line of the module, the tests
# that execute it (a small pytest plugin names the coverage context after the test). mutmut's
# ``pre_mutation`` hook (a ``mutmut_config.py`` written into the copy) then runs only those
# tests for a mutant on that line, in their usual order. A line run outside any test (module
# level: imports, constants, decorators, defaults) or not recorded (a continuation line of a
# longer statement) gets all of the job's tests. A mutant can only change what a test sees
# when its line runs, so the selection kills exactly what the whole list would.

_COV_PLUGIN = """\
import json, os
import coverage, pytest

_order = []

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    test = item.nodeid.split("[")[0]
    if test not in _order:
        _order.append(test)
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.switch_context(test)
    yield
    if cov is not None:
        cov.switch_context("")

def pytest_sessionfinish(session):
    with open(os.environ["AUTHMOUNT_MUTATION_ORDER"], "w") as f:
        json.dump(_order, f)
"""

_MUTMUT_CONFIG = """\
import json
import shlex

with open(".mutation-map.json") as f:
    _MAP = json.load(f)


def pre_mutation(context):
    tests = _MAP["lines"].get(str(context.current_line_index + 1))
    if tests:
        context.config.test_command = _MAP["runner"] + " " + " ".join(shlex.quote(t) for t in tests)
"""


def _runner(job: Job, tests: tuple[str, ...]) -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable, "scripts/mutation.py", "_pytest", *tests])


def _select_tests(job: Job, copy: Path, log: Any) -> bool:
    """Run the job's tests under coverage and write the line -> tests map and mutmut's hook.

    False when the tests fail without mutations (their output is in the log).
    """
    from coverage import CoverageData

    data_file = copy / ".mutation-coverage"
    order_file = copy / ".mutation-order.json"
    data_file.unlink(missing_ok=True)
    (copy / "_mutation_cov.py").write_text(_COV_PLUGIN)
    env = dict(_env(copy), AUTHMOUNT_MUTATION_ORDER=str(order_file))
    log.write(f"$ coverage run -m pytest {' '.join(job.extra + job.tests)}\n")
    log.flush()
    cmd = [sys.executable, "-m", "coverage", "run", f"--data-file={data_file}", f"--include={job.module}",
           "-m", "pytest", "-p", "_mutation_cov", *PYTEST_ARGS, *job.extra, *job.tests]
    if _wait(_spawn(cmd, copy, log, env)):
        return False
    rank = {t: i for i, t in enumerate(json.loads(order_file.read_text()))}
    data = CoverageData(basename=str(data_file))
    data.read()
    lines: dict[str, list[str]] = {}
    measured = [f for f in data.measured_files() if Path(f).resolve() == (copy / job.module).resolve()]
    by_line = data.contexts_by_lineno(measured[0]) if measured else {}
    for lineno, contexts in by_line.items():
        tests = [c for c in contexts if c]
        if tests and len(tests) == len(contexts):  # run by tests only, never at import
            lines[str(lineno)] = sorted(tests, key=lambda t: rank.get(t, len(rank)))
    (copy / ".mutation-map.json").write_text(json.dumps({"runner": _runner(job, ()), "lines": lines}))
    (copy / "mutmut_config.py").write_text(_MUTMUT_CONFIG)
    return True


def _start_server(job: Job, copy: Path, log: Any) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """The job's fork server, and the environment that points mutmut's runner at it."""
    path = copy / ".mutation.sock"
    path.unlink(missing_ok=True)
    env = dict(_env(copy), **{EXTRA_ENV: json.dumps(job.extra)})
    proc = _spawn([sys.executable, "scripts/mutation.py", "_serve", str(path), *job.tests], copy, log, env)
    deadline = time.monotonic() + 120
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the fork server did not start; see .mutmut/{job.slug}.log")
        time.sleep(0.05)
    return proc, dict(env, **{SOCKET_ENV: str(path)})


def run_job(job: Job, copy: Path, *, html: bool, fresh: bool) -> None:
    python = sys.executable
    STATE.mkdir(exist_ok=True)
    cache = STATE / f"{job.slug}.cache"
    work_cache = copy / ".mutmut-cache"
    work_cache.unlink(missing_ok=True)
    if cache.exists() and not fresh:
        shutil.copy2(cache, work_cache)
    original = (copy / job.module).read_bytes()
    runner = _runner(job, job.tests)
    started = time.monotonic()
    with open(STATE / f"{job.slug}.log", "w") as log:
        # The unmutated tests first, with their output: mutmut would only say they failed.
        if not _select_tests(job, copy, log):
            job.error = f"the tests fail without mutations; see .mutmut/{job.slug}.log"
            return
        server, env = _start_server(job, copy, log)
        try:
            code = _wait(_spawn(
                [python, "scripts/mutation.py", "_mutmut", "run", "--paths-to-mutate", job.module, "--runner", runner,
                 "--tests-dir", "tests/", "--no-progress", "--simple-output"],
                copy, log, env,
            ))
        finally:
            _stop(server)
        if code & 1:
            job.error = f"mutmut failed (exit {code}); see .mutmut/{job.slug}.log"
        if html and not code & 1:
            _wait(_spawn([python, "-m", "mutmut", "html", "-d", str(STATE / "html" / job.slug)], copy, log, env))
    job.seconds = time.monotonic() - started
    if work_cache.exists():  # mutmut commits each result: keep what an interrupted run found
        shutil.copy2(work_cache, cache)
    # The copy serves the next module too: make sure no mutant is left in it.
    if (copy / job.module).read_bytes() != original:
        (copy / job.module).write_bytes(original)
    if _STOPPING.is_set():
        job.error = "interrupted"
        return
    if not job.error:
        out = subprocess.run(
            [python, "scripts/mutation.py", "_report", job.module],
            cwd=copy, env=_env(copy), capture_output=True, text=True,
        )
        if out.returncode:
            job.error = f"report failed: {out.stderr.strip()[-500:]}"
        else:
            job.result = json.loads(out.stdout)


def count_mutants(module: str) -> int:
    from mutmut import Context, list_mutations

    source = (ROOT / module).read_text()
    return len(list_mutations(Context(source=source, filename=module, dict_synonyms=[""])))


def parse_jobs(specs: list[str]) -> list[Job]:
    jobs = []
    for spec in specs or DEFAULT_SET:
        module, _, tests_text = spec.partition("=")
        module = module.strip().removeprefix("./")
        if not (ROOT / module).is_file():
            sys.exit(f"no such module: {module}")
        if tests_text:
            tests = tuple(t for t in tests_text.split(",") if t)
        elif module in MODULES:
            tests = MODULES[module]
        else:
            tests = ("tests/plugin",) if module.startswith("plugin/") else ("tests/server",)
            print(f"note: {module} is not in MODULES; running it against {tests[0]}", file=sys.stderr)
        present = tuple(t for t in tests if (ROOT / t.split("::")[0]).exists())
        for missing in sorted(set(tests) - set(present)):
            print(f"note: {missing} does not exist; left out for {module}", file=sys.stderr)
        if not present:
            sys.exit(f"no tests to run for {module}")
        jobs.append(Job(module, present, PYTEST_EXTRA.get(module, ())))
    return jobs


def print_report(jobs: list[Job], wall: float) -> int:
    known = documented()
    lines: list[str] = []
    undocumented: list[str] = []
    header = f"{'module':28} {'mutants':>7} {'killed':>7} {'timeout':>7} {'survived':>8} {'equiv.':>6} {'time':>7}"
    lines += [header, "-" * len(header)]
    totals = [0, 0, 0, 0, 0]
    survivor_lines: list[str] = []
    for job in jobs:
        if job.error:
            lines.append(f"{job.module:28} ERROR: {job.error}")
            continue
        counts = job.result["counts"]
        total = sum(counts.values())
        killed = counts.get("killed", 0) + counts.get("suspicious", 0)
        timeout = counts.get("timeout", 0)
        survived = total - killed - timeout
        equivalent = 0
        for s in job.result["survivors"]:
            if s["status"] in ("timeout", "suspicious"):
                continue
            mutation = mutation_text(s["from"], s["to"])
            where = f"{job.module}:{s['line']}"
            is_known = (job.module, s["line"], mutation) in known
            equivalent += is_known
            tag = "equivalent (docs/mutation.md)" if is_known else s["status"].upper()
            survivor_lines += [
                f"# {where}  [{tag}]  mutant {s['id']}",
                f"-    {s['before']}",
                f"+    {s['after'] or '(line deleted)'}",
            ]
            if not is_known:
                undocumented.append(f"| `{where}` | {mutation} | |")
        row = [total, killed, timeout, survived, equivalent]
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        lines.append(
            f"{job.module:28} {total:7} {killed:7} {timeout:7} {survived:8} {equivalent:6} {job.seconds:6.0f}s"
        )
    lines.append("-" * len(header))
    lines.append(f"{'total':28} {totals[0]:7} {totals[1]:7} {totals[2]:7} {totals[3]:8} {totals[4]:6} {wall:6.0f}s")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines.append(f"(wall clock {wall / 60:.1f} min; CPU of all test processes {(usage.ru_utime + usage.ru_stime) / 60:.1f} min)")
    if survivor_lines:
        lines += ["", "Surviving mutants (mutmut's cache is in .mutmut/<module>.cache):", *survivor_lines]
    if undocumented:
        lines += ["", "Survivors not in docs/mutation.md (kill them, or add the row with the reason):", *undocumented]
    text = "\n".join(lines)
    print(text)
    STATE.mkdir(exist_ok=True)
    (STATE / "report.txt").write_text(text + "\n")
    if any(job.error for job in jobs):
        return 1
    return 2 if undocumented else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["_pytest"]:
        return run_client(argv[1:])
    if argv[:1] == ["_mutmut"]:
        return run_mutmut(argv[1:])
    if argv[:1] == ["_serve"]:
        return serve(argv[1], argv[2:])
    if argv[:1] == ["_report"]:
        print(json.dumps(report(argv[1])))
        return 0
    parser = argparse.ArgumentParser(prog="scripts/mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module[=test,test...] (default: the security modules)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="parallel workers (default: cores)")
    parser.add_argument("--html", action="store_true", help="also write mutmut's HTML report to .mutmut/html/")
    parser.add_argument("--fresh", action="store_true", help="forget the cached results of earlier runs")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests, run nothing")
    args = parser.parse_args(argv)
    jobs = parse_jobs(args.modules)
    if args.list:
        for job in jobs:
            print(f"{job.module}: {' '.join(job.tests)}")
        return 0
    # Largest first, so the workers finish at about the same time.
    jobs.sort(key=lambda j: count_mutants(j.module), reverse=True)
    todo: queue.Queue[Job] = queue.Queue()
    for job in jobs:
        todo.put(job)
    copies: list[Path] = []
    started = time.monotonic()

    def worker(copy: Path) -> None:
        while not _STOPPING.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            print(f"mutating {job.module} ({count_mutants(job.module)} mutants) against {' '.join(job.tests)}",
                  flush=True)
            try:
                run_job(job, copy, html=args.html, fresh=args.fresh)
            except Exception as exc:  # report it with the others
                job.error = repr(exc)
            print(f"done {job.module} in {job.seconds:.0f}s", flush=True)

    threads = []
    try:
        for _ in range(max(1, min(args.jobs, len(jobs)))):
            copy = make_copy()
            copies.append(copy)
            t = threading.Thread(target=worker, args=(copy,), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping mutmut (the checkout was never mutated)", file=sys.stderr)
        _STOPPING.set()
        with _PROCS_LOCK:
            procs = list(_PROCS)
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for t in threads:
            t.join(10)
        return 130
    finally:
        for copy in copies:
            shutil.rmtree(copy, ignore_errors=True)
    return print_report(jobs, time.monotonic() - started)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main(sys.argv[1:]))
