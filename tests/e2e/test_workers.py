"""``authmount server --workers N``: N real worker processes on one port and one storage.

On SQLite (the embedded default) the workers share one file: what one worker writes is
used by the others (mounts, configs, roles, policies, audit devices within 100 ms; a
revoked token, a disabled mount's batch tokens at once), a ``num_uses`` token is used up
across workers, concurrent writes on both never meet a lock error, audit lines of both
never interleave (and SIGHUP reopens on both), the per-IP login limit is shared, an OIDC
state is redeemed once, and a second server is still refused the file. On every engine
(memory storage included: its workers share a database in /dev/shm) ``kill -9`` of one
worker loses no acknowledged login, the other worker keeps serving, and the supervisor
starts a replacement; a killed supervisor takes its workers with it. Connections are pinned to a worker by finding, in
``/proc``, which process accepted them (``tests/e2e/workerconn.py``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from server.storage.shared_memory import STALE_AFTER_SECONDS
from tests.e2e.browser import CallbackListener, drive_login
from tests.e2e.idp import CLIENT_ID, CLIENT_SECRET, IdP, free_port
from tests.e2e.serverproc import REPO_ROOT, ServerProc, launch, start_server
from tests.e2e.workerconn import Pinned, pinned, wait_for_workers, worker_pids
from tests.plugin.keyfactory import default_claims, make_token, rsa_key

pytestmark = pytest.mark.e2e

KEY = rsa_key(kid="workers-1", slot=41)
OTHER_KEY = rsa_key(kid="workers-2", slot=42)
MOUNT = "wk"
TIMEOUT = 30
#: The stated bound (docs/operations.md, "Workers"): a change acknowledged by one worker
#: is used by the others within this many seconds.
BOUND = 0.1
ROLE = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"], "token_policies": ["p"]}


def sqlite_config(workdir: Path, port: int) -> dict[str, Any]:
    return {
        "listen_address": f"127.0.0.1:{port}",
        "storage": {"type": "sqlite", "path": str(workdir / "data" / "authmount.db")},
        "log_format": "json",
        "rate_limit": {"login_per_ip_per_second": 0},
    }


def login_body(key: Any = KEY, **claims: Any) -> dict[str, Any]:
    return {"role": "svc", "jwt": make_token(default_claims(**claims), key=key)}


def set_up_mount(conn: Pinned) -> None:
    conn.ok("POST", f"sys/auth/{MOUNT}", body={"type": "jwt"})
    conn.ok("POST", f"auth/{MOUNT}/config", body={"jwt_validation_pubkeys": [KEY.pem]})
    conn.ok("POST", f"auth/{MOUNT}/role/svc", body=ROLE)


class Workers:
    """A 2-worker SQLite server with one connection pinned to each worker."""

    def __init__(self, srv: ServerProc, a: Pinned, b: Pinned, workdir: Path) -> None:
        self.srv, self.a, self.b, self.workdir = srv, a, b, workdir


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    workdir = tmp_path_factory.mktemp("workers")
    with start_server(config=sqlite_config(workdir, free_port()), workdir=workdir, args=["--workers", "2"]) as srv:
        assert srv.root_token
        conns = pinned(srv)
        assert len(conns) == 2, conns
        a, b = conns.values()
        set_up_mount(a)
        yield Workers(srv, a, b, workdir)
        for conn in conns.values():
            conn.close()
    assert srv.returncode == 0


def seen_within(check: Callable[[], bool], limit: float = 10.0) -> float:
    """Seconds from now to the start of the first call of ``check`` that passes."""
    acked = time.monotonic()
    while True:
        started = time.monotonic()
        if check():
            return started - acked
        if started - acked > limit:
            raise AssertionError(f"not seen within {limit}s")
        time.sleep(0.002)


def test_state_from_one_worker_is_used_by_the_other_at_once(workers: Workers) -> None:
    """Mount, config and role were written through A: B logs in with them, first try."""
    status, body = workers.b.call("POST", f"auth/{MOUNT}/login", token="", body=login_body())
    assert status == 200, body
    token = body["auth"]["client_token"]
    assert workers.a.ok("GET", "auth/token/lookup-self", token=token)["data"]["policies"] == ["default", "p"]


def audited(conn: Pinned, audit_log: Path) -> bool:
    """Is a request answered by ``conn``'s worker now written to ``audit_log``?"""
    request_id = conn.ok("GET", "sys/auth")["request_id"]
    return audit_log.exists() and request_id in audit_log.read_text()


def test_changes_reach_the_other_worker_within_the_bound(workers: Workers) -> None:
    """Role, config, policy, mount and audit-device changes made on one worker take effect
    on the other within BOUND of their acknowledgement (the change log is polled every
    20 ms). Each delay runs from the moment the writer's answer arrived to the start of the
    first request on the other worker that shows the change; only the give-up time of the
    polling is generous (``seen_within``), the assertion is BOUND itself."""
    a, b = workers.a, workers.b
    token = b.ok("POST", f"auth/{MOUNT}/login", token="", body=login_body())["auth"]["client_token"]

    def login_status(conn: Pinned, key: Any = KEY) -> int:
        return conn.call("POST", f"auth/{MOUNT}/login", token="", body=login_body(key))[0]

    def caps(conn: Pinned) -> list[str]:
        return list(conn.ok("POST", "sys/capabilities-self", token=token, body={"paths": ["secret/x"]})["capabilities"])

    delays: dict[str, float] = {}
    for writer, reader in ((a, b), (b, a)):
        tag = f"{writer.pid}->{reader.pid}"
        writer.ok("POST", f"auth/{MOUNT}/role/svc", body={**ROLE, "bound_audiences": ["other"]})
        delays[f"role {tag}"] = seen_within(lambda: login_status(reader) in (400, 403))  # noqa: B023
        writer.ok("POST", f"auth/{MOUNT}/role/svc", body=ROLE)
        delays[f"role back {tag}"] = seen_within(lambda: login_status(reader) == 200)  # noqa: B023
        writer.ok("POST", f"auth/{MOUNT}/config", body={"jwt_validation_pubkeys": [OTHER_KEY.pem]})
        delays[f"config {tag}"] = seen_within(lambda: login_status(reader, OTHER_KEY) == 200)  # noqa: B023
        writer.ok("POST", f"auth/{MOUNT}/config", body={"jwt_validation_pubkeys": [KEY.pem]})
        delays[f"config back {tag}"] = seen_within(lambda: login_status(reader) == 200)  # noqa: B023
        writer.ok("PUT", "sys/policies/acl/p", body={"policy": 'path "secret/x" { capabilities = ["read"] }'})
        delays[f"policy {tag}"] = seen_within(lambda: caps(reader) == ["read"])  # noqa: B023
        writer.ok("PUT", "sys/policies/acl/p", body={"policy": 'path "secret/x" { capabilities = ["list"] }'})
        delays[f"policy change {tag}"] = seen_within(lambda: caps(reader) == ["list"])  # noqa: B023
        writer.ok("POST", "sys/auth/extra", body={"type": "jwt"})
        delays[f"mount {tag}"] = seen_within(lambda: reader.call("GET", "sys/auth/extra/tune")[0] == 200)  # noqa: B023
        writer.ok("POST", "sys/auth/extra/tune", body={"default_lease_ttl": "7m"})
        delays[f"tune {tag}"] = seen_within(
            lambda: reader.ok("GET", "sys/auth/extra/tune")["default_lease_ttl"] == 420  # noqa: B023
        )
        writer.ok("DELETE", "sys/auth/extra")
        delays[f"unmount {tag}"] = seen_within(lambda: reader.call("GET", "sys/auth/extra/tune")[0] == 400)  # noqa: B023
        audit_log = workers.workdir / f"audit-{tag}.log"
        writer.ok("PUT", "sys/audit/bound", body={"type": "file", "options": {"file_path": str(audit_log)}})
        delays[f"audit enable {tag}"] = seen_within(lambda: audited(reader, audit_log))  # noqa: B023
        writer.ok("DELETE", "sys/audit/bound")
        delays[f"audit disable {tag}"] = seen_within(lambda: not audited(reader, audit_log))  # noqa: B023
    slow = {k: round(v, 3) for k, v in delays.items() if v > BOUND}
    assert not slow, f"seen later than {BOUND}s: {slow} (all: {delays})"


def test_a_revoked_token_is_refused_by_the_other_worker_at_once(workers: Workers) -> None:
    """The token store reads the token row on every use, from the shared file: the first
    request after the revoke was acknowledged is refused, on either worker."""
    for writer, reader in ((workers.a, workers.b), (workers.b, workers.a)) * 10:
        token = writer.ok("POST", f"auth/{MOUNT}/login", token="", body=login_body())["auth"]["client_token"]
        assert reader.call("GET", "auth/token/lookup-self", token=token)[0] == 200
        writer.ok("POST", "auth/token/revoke-self", token=token)
        assert reader.call("GET", "auth/token/lookup-self", token=token)[0] == 403


def test_a_disabled_mounts_batch_tokens_die_on_the_other_worker_at_once(workers: Workers) -> None:
    """Disabling a mount revokes its tokens; a batch token has no row, only the mount's
    revocation epoch kills it, and the other worker reads that epoch at every use: the
    first request after the disable was acknowledged is refused there."""
    for writer, reader in ((workers.a, workers.b), (workers.b, workers.a)):
        writer.ok("POST", "sys/auth/bt", body={"type": "jwt"})
        writer.ok("POST", "auth/bt/config", body={"jwt_validation_pubkeys": [KEY.pem]})
        writer.ok("POST", "auth/bt/role/svc", body={**ROLE, "token_type": "batch"})
        body = writer.ok("POST", "auth/bt/login", token="", body=login_body())
        token = body["auth"]["client_token"]
        assert not body["auth"]["renewable"] and body["auth"]["accessor"] == ""  # a batch token
        seen_within(lambda: reader.call("GET", "auth/token/lookup-self", token=token)[0] == 200)  # noqa: B023
        writer.ok("DELETE", "sys/auth/bt")
        status, body = reader.call("GET", "auth/token/lookup-self", token=token)
        assert status == 403, (reader.pid, body)


def test_num_uses_are_counted_across_workers(workers: Workers) -> None:
    a, b = workers.a, workers.b
    token = a.ok("POST", "auth/token/create", body={"num_uses": 3, "policies": ["p"]})["auth"]["client_token"]
    statuses = [conn.call("GET", "auth/token/lookup-self", token=token)[0] for conn in (a, b, a, b)]
    assert statuses == [200, 200, 200, 403]
    # Raced on both workers at once (fresh connections land on either): exactly one wins.
    for _ in range(3):
        token = a.ok("POST", "auth/token/create", body={"num_uses": 1})["auth"]["client_token"]
        barrier = threading.Barrier(8)

        def use(_: int, token: str = token, barrier: threading.Barrier = barrier) -> int:
            with requests.Session() as http:
                http.get(f"{workers.srv.url}/v1/sys/health", timeout=TIMEOUT)  # connect first
                barrier.wait()
                return http.get(
                    f"{workers.srv.url}/v1/auth/token/lookup-self", headers={"X-Vault-Token": token}, timeout=TIMEOUT
                ).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(use, range(8)))
        assert codes == [200] + [403] * 7, codes


def test_a_second_server_is_refused_the_file_while_workers_run(workers: Workers, tmp_path: Path) -> None:
    config = workers.srv.stdout_text()  # the workers' file, from the banner
    assert "Storage: sqlite" in config
    db = next(line.split("(", 1)[1].rstrip(")") for line in config.splitlines() if "Storage: sqlite" in line)
    cfg = tmp_path / "second.yaml"
    cfg.write_text(f"listen_address: 127.0.0.1:0\nstorage:\n  type: sqlite\n  path: {db}\n")
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "server", "--config", str(cfg)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "in use by another process" in done.stderr, done.stderr[-2000:]
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "operator", "generate-root", "--config", str(cfg)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "in use by another process" in done.stderr, done.stderr[-2000:]


def test_concurrent_writes_on_both_workers_never_reach_a_lock_error(workers: Workers) -> None:
    """Both workers write at once (logins, token creation and revocation, roles, policies):
    every request succeeds. SQLite allows one writer at a time; the writer lock makes the
    other process's group commit wait, so ``database is locked`` never reaches a client
    (nor the log)."""
    failures: list[Any] = []
    lock = threading.Lock()

    def write(i: int) -> int:
        conns = pinned(workers.srv)
        done = 0
        try:
            for n in range(15):
                for conn in conns.values():
                    calls: list[tuple[str, str, dict[str, Any]]] = [
                        ("POST", f"auth/{MOUNT}/login", {"token": "", "body": login_body(sub=f"c{i}-{n}")}),
                        ("POST", f"auth/{MOUNT}/role/c{i}", {"body": {**ROLE, "token_ttl": 60 + n}}),
                        (
                            "PUT",
                            f"sys/policies/acl/c{i}",
                            {"body": {"policy": f'path "c/{n}" {{ capabilities = ["read"] }}'}},
                        ),
                    ]
                    for method, path, kw in calls:
                        status, body = conn.call(method, path, **kw)
                        done += 1
                        if status not in (200, 204):
                            with lock:
                                failures.append((conn.pid, path, status, body))
                    status, body = conn.call("POST", "auth/token/create", body={"ttl": "1m"})
                    if status != 200:
                        with lock:
                            failures.append((conn.pid, "auth/token/create", status, body))
                        continue
                    token = body["auth"]["client_token"]
                    for other in conns.values():  # revoked by the worker that did not create it
                        if other is not conn:
                            status, body = other.call("POST", "auth/token/revoke-self", token=token)
                            done += 2
                            if status != 204:
                                with lock:
                                    failures.append((other.pid, "revoke-self", status, body))
        finally:
            for conn in conns.values():
                conn.close()
        return done

    with ThreadPoolExecutor(4) as pool:
        total = sum(pool.map(write, range(4)))
    assert not failures, failures[:5]
    assert total >= 4 * 15 * 2 * 5
    log = workers.srv.log_text()
    assert "database is locked" not in log and "database is busy" not in log


def test_a_mount_made_on_one_worker_is_tuned_and_disabled_on_the_other_at_once(workers: Workers) -> None:
    """Enable on A, then at once tune and disable on B (a client whose next request lands on
    the other worker): B acts on the stored table, where its own copy, not yet told of the
    mount, made the tune a refusal and the disable a silent 204 that left the mount in place."""
    for n in range(5):
        path = f"fresh{n}"
        workers.a.ok("POST", f"sys/auth/{path}", body={"type": "jwt"})
        workers.b.ok("POST", f"sys/auth/{path}/tune", body={"default_lease_ttl": "42m"})
        assert workers.b.ok("GET", f"sys/auth/{path}/tune")["data"]["default_lease_ttl"] == 42 * 60

        def tuned(path: str = path) -> bool:
            return bool(workers.a.ok("GET", f"sys/auth/{path}/tune")["data"]["default_lease_ttl"] == 42 * 60)

        assert seen_within(tuned) <= BOUND
        path2 = f"gone{n}"
        workers.a.ok("POST", f"sys/auth/{path2}", body={"type": "jwt"})
        assert workers.b.call("DELETE", f"sys/auth/{path2}")[0] == 204
        gone = (400, {"errors": [f"No auth engine at {path2}/"]})
        assert workers.b.call("GET", f"sys/auth/{path2}") == gone

        def disabled(path2: str = path2, gone: tuple[int, Any] = gone) -> bool:
            return workers.a.call("GET", f"sys/auth/{path2}") == gone

        assert seen_within(disabled) <= BOUND
        workers.a.ok("DELETE", f"sys/auth/{path}")


def test_a_mount_moved_on_one_worker_is_served_at_its_new_path_by_the_other_at_once(workers: Workers) -> None:
    """``sys/remount`` on B of a mount A made: A logs in at the new path and reads the move's
    status on its next request, refuses the old path's token, and stops serving the old path
    within the bound."""
    workers.a.ok("POST", "sys/auth/mv-a", body={"type": "jwt"})
    workers.a.ok("POST", "auth/mv-a/config", body={"jwt_validation_pubkeys": [KEY.pem]})
    workers.a.ok("POST", "auth/mv-a/role/svc", body=ROLE)
    old = workers.a.ok("POST", "auth/mv-a/login", token="", body=login_body())["auth"]["client_token"]
    moved = workers.b.ok("POST", "sys/remount", body={"from": "auth/mv-a", "to": "auth/mv-b"})
    status = workers.a.ok("GET", f"sys/remount/status/{moved['data']['migration_id']}")["data"]["migration_info"]
    assert status == {"source_mount": "auth/mv-a/", "target_mount": "auth/mv-b/", "status": "success"}
    new = workers.a.ok("POST", "auth/mv-b/login", token="", body=login_body())["auth"]["client_token"]
    assert workers.a.call("GET", "auth/token/lookup-self", token=old)[0] == 403

    def old_path_gone() -> bool:
        return workers.a.call("POST", "auth/mv-a/login", token="", body=login_body())[0] != 200

    assert seen_within(old_path_gone) <= BOUND
    time.sleep(1.5)  # the second sweep: only the old path's tokens
    assert workers.b.call("GET", "auth/token/lookup-self", token=new)[0] == 200
    workers.a.ok("DELETE", "sys/auth/mv-b")


def test_an_entity_alias_written_on_one_worker_is_followed_by_the_other_within_the_bound(workers: Workers) -> None:
    """An entity and its alias made on A: B's logins with that name get the entity within
    the bound, and B finds both at once when asked for them."""
    accessor = workers.a.ok("GET", "sys/auth")["data"][f"{MOUNT}/"]["accessor"]
    entity = workers.a.ok("POST", "identity/entity", body={"name": "wk-bot", "policies": ["bot"]})["data"]["id"]
    alias = workers.a.ok("POST", "identity/entity-alias",
                         body={"name": "wk-bot-sub", "mount_accessor": accessor, "canonical_id": entity})["data"]["id"]
    assert workers.b.ok("GET", f"identity/entity-alias/id/{alias}")["data"]["canonical_id"] == entity
    assert workers.b.ok("GET", "identity/entity/name/wk-bot")["data"]["id"] == entity

    def reached() -> bool:
        status, body = workers.b.call("POST", f"auth/{MOUNT}/login", token="", body=login_body(sub="wk-bot-sub"))
        return status == 200 and body["auth"]["entity_id"] == entity

    assert seen_within(reached) <= BOUND
    workers.b.ok("DELETE", f"identity/entity/id/{entity}")


def test_a_merge_and_a_templated_policy_on_one_worker_are_followed_by_the_other_within_the_bound(
    workers: Workers,
) -> None:
    """An entity merged on A: B gives the tokens of the entity merged from the policies of
    the one merged into within the bound. A policy with an identity template written on A,
    then the entity's metadata changed on A: B's answers follow each within the bound."""
    a, b = workers.a, workers.b
    into = a.ok("POST", "identity/entity", body={"name": "wk-into", "policies": ["merged-in"]})["data"]["id"]
    login = b.ok("POST", f"auth/{MOUNT}/login", token="", body=login_body(sub="wk-merged"))["auth"]
    token, source = login["client_token"], login["entity_id"]

    def identity_policies() -> list[str]:
        return list(b.ok("GET", "auth/token/lookup-self", token=token)["data"].get("identity_policies") or [])

    assert identity_policies() == []
    a.ok("POST", "identity/entity/merge", body={"to_entity_id": into, "from_entity_ids": [source]})
    delays = {"merge": seen_within(lambda: identity_policies() == ["merged-in"])}

    def caps(path: str) -> list[str]:
        return list(b.ok("POST", "sys/capabilities-self", token=token, body={"paths": [path]})["capabilities"])

    a.ok("PUT", "sys/policies/acl/p", body={"policy": 'path "secret/{{identity.entity.metadata.team}}" '
                                                      '{ capabilities = ["read"] }'})
    a.ok("POST", f"identity/entity/id/{into}", body={"metadata": {"team": "red"}})
    delays["template"] = seen_within(lambda: caps("secret/red") == ["read"])
    a.ok("POST", f"identity/entity/id/{into}", body={"metadata": {"team": "blue"}})
    delays["metadata"] = seen_within(lambda: caps("secret/blue") == ["read"] and caps("secret/red") == ["deny"])
    a.ok("DELETE", f"identity/entity/id/{into}")
    a.ok("PUT", "sys/policies/acl/p", body={"policy": 'path "secret/x" { capabilities = ["list"] }'})
    assert max(delays.values()) <= BOUND, delays


def test_one_name_written_on_both_workers_at_once_is_one_group_and_one_alias(workers: Workers) -> None:
    """Clients register the same group name on both workers at the same moment (neither worker
    has heard of the other's group yet): one group per name, and every register succeeds, the
    later ones updating the first's group as on one Vault node. Then aliases of one name on
    one mount for two groups, on both workers at once: one is stored, the other refused with
    Vault's message."""
    accessor = workers.a.ok("GET", "sys/auth")["data"][f"{MOUNT}/"]["accessor"]
    rounds, per_worker = 12, 2
    barrier = threading.Barrier(2 * per_worker)
    statuses: list[int] = []
    alias_results: list[tuple[int, Any]] = []
    aliased: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        conns = pinned(workers.srv)
        conn = list(conns.values())[worker]
        try:
            for n in range(rounds):
                barrier.wait()
                status, _ = conn.call("POST", "identity/group", body={"name": f"race-{n}", "type": "external"})
                with lock:
                    statuses.append(status)
            barrier.wait()
            name = f"aliased-{worker}-{id(conn)}"
            status, _ = conn.call("POST", "identity/group", body={"name": name, "type": "external"})
            assert status == 200
            with lock:
                aliased.append(name)
            gid = conn.ok("GET", f"identity/group/name/{name}")["data"]["id"]
            barrier.wait()
            result = conn.call("POST", "identity/group-alias", body={"name": "idp-race", "mount_accessor": accessor, "canonical_id": gid})
            with lock:
                alias_results.append(result)
        finally:
            for c in conns.values():
                c.close()

    with ThreadPoolExecutor(2 * per_worker) as pool:
        list(pool.map(client, [0, 1] * per_worker))
    assert sorted(set(statuses)) in ([200, 204], [200]), statuses
    assert statuses.count(200) == rounds  # one create per name; the rest updated it
    want = sorted(f"race-{n}" for n in range(rounds))
    for conn in (workers.a, workers.b):  # each worker lists what both wrote within the bound
        names: list[str] = []

        def listed(conn: Pinned = conn, names: list[str] = names) -> bool:
            # the aliased groups too: written last, they may reach this worker after the race ones
            names[:] = conn.ok("LIST", "identity/group/name")["data"]["keys"]
            return sorted(n for n in names if n.startswith("race-")) == want and set(aliased) <= set(names)

        assert seen_within(listed) <= BOUND
        assert len(conn.ok("LIST", "identity/group/id")["data"]["keys"]) == len(names)
    stored = [r for r in alias_results if r[0] == 200]
    refused = [r for r in alias_results if r[0] != 200]
    assert len(stored) == 1, alias_results
    assert {(s, tuple(b["errors"])) for s, b in refused} == {
        (400, ("combination of mount and group alias name is already in use",)),
    }
    for conn in (workers.a, workers.b):

        def one_alias(conn: Pinned = conn) -> bool:
            status, body = conn.call("LIST", "identity/group-alias/id")
            return status == 200 and [a["name"] for a in body["data"]["key_info"].values()].count("idp-race") == 1

        assert seen_within(one_alias) <= BOUND


def test_audit_lines_from_both_workers_never_interleave_and_sighup_reopens(workers: Workers) -> None:
    """Both workers append to one audit file at once (each turn's lines in one ``O_APPEND``
    write): every line is whole JSON, every acknowledged request has its request and its
    response entry. A logrotate-style move plus SIGHUP to the supervisor: every worker
    writes to the new file, nothing is lost across the two."""
    a, b = workers.a, workers.b
    current = workers.workdir / "shared-audit.log"
    rotated = workers.workdir / "shared-audit.log.1"
    a.ok("PUT", "sys/audit/shared", body={"type": "file", "options": {"file_path": str(current)}})
    try:
        seen_within(lambda: audited(b, current))
        acknowledged: list[str] = []
        failures: list[Any] = []
        lock = threading.Lock()
        stop = threading.Event()

        def log_in(i: int) -> None:
            conns = pinned(workers.srv)
            n = 0
            try:
                while not stop.is_set() or n < 10:
                    for conn in conns.values():
                        n += 1
                        status, body = conn.call(
                            "POST", f"auth/{MOUNT}/login", token="", body=login_body(sub=f"audit-{i}-{n}")
                        )
                        with lock:
                            if status == 200:
                                acknowledged.append(body["request_id"])
                            else:
                                failures.append((conn.pid, status, body))
            finally:
                for conn in conns.values():
                    conn.close()

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(log_in, i) for i in range(4)]
            time.sleep(1.0)
            current.rename(rotated)
            os.kill(workers.srv.proc.pid, signal.SIGHUP)
            for conn in (a, b):
                seen_within(lambda conn=conn: audited(conn, current), limit=TIMEOUT)  # type: ignore[misc]
            time.sleep(0.5)
            stop.set()
            for f in futures:
                f.result(TIMEOUT * 2)
        assert not failures, failures[:5]
        assert len(acknowledged) > 40
        entries: dict[str, list[str]] = {}
        for path in (rotated, current):
            text = path.read_text()
            assert text.endswith("\n")
            for line in text.splitlines():
                entry = json.loads(line)  # a torn or interleaved line fails here
                entries.setdefault(entry["request"]["id"], []).append(entry["type"])
        missing = [rid for rid in acknowledged if sorted(entries.get(rid, [])) != ["request", "response"]]
        assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged logins not audited exactly once"
        assert any(rid in rotated.read_text() for rid in acknowledged)
        assert any(rid in current.read_text() for rid in acknowledged)
    finally:
        a.ok("DELETE", "sys/audit/shared")


def test_a_monitor_streams_every_workers_lines(workers: Workers) -> None:
    """``vault monitor`` lands on one worker and streams both workers' lines (each marked
    with its worker), as it streams a single process's. The other worker finds the monitor
    within its scan interval (a second): the requests are sent again until both are seen."""
    seen: dict[str, int] = {}
    with requests.get(f"{workers.srv.url}/v1/sys/monitor?log_format=json", stream=True, timeout=30,
                      headers={"X-Vault-Token": workers.srv.root_token or ""}) as monitor:
        assert monitor.status_code == 200

        def read() -> None:
            for line in monitor.iter_lines(chunk_size=1):  # a line as soon as it comes
                event = json.loads(line)
                if event.get("path") in ("/v1/sys/leader", "/v1/sys/init"):
                    seen[event["path"]] = event["worker"]
                if len(seen) == 2:
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + TIMEOUT
        while reader.is_alive() and time.monotonic() < deadline:
            workers.a.call("GET", "sys/leader")  # each path on its own worker
            workers.b.call("GET", "sys/init")
            reader.join(0.2)
    assert set(seen) == {"/v1/sys/leader", "/v1/sys/init"} and seen["/v1/sys/leader"] != seen["/v1/sys/init"], seen


def test_per_ip_rate_limit_is_shared_by_the_workers(tmp_path: Path) -> None:
    """``login_per_ip_per_second: 1, login_burst: 6``: a client whose logins alternate
    between the two workers gets 6 (plus what one second refills), not 6 per worker."""
    config = sqlite_config(tmp_path, free_port())
    config["rate_limit"] = {"login_per_ip_per_second": 1, "login_burst": 6}
    with start_server(config=config, workdir=tmp_path, args=["--workers", "2"]) as srv:
        conns = pinned(srv)
        assert len(conns) == 2
        set_up_mount(next(iter(conns.values())))
        statuses: dict[int, list[int]] = {pid: [] for pid in conns}
        started = time.monotonic()
        for _ in range(12):
            for pid, conn in conns.items():
                statuses[pid].append(conn.call("POST", f"auth/{MOUNT}/login", token="", body=login_body())[0])
        elapsed = time.monotonic() - started
        for conn in conns.values():
            conn.close()
        allowed = sum(codes.count(200) for codes in statuses.values())
        assert all(set(codes) <= {200, 429} for codes in statuses.values()), statuses
        assert 6 <= allowed <= 6 + int(elapsed) + 1, (allowed, elapsed, statuses)
        assert all(200 in codes and 429 in codes for codes in statuses.values()), statuses
    assert srv.returncode == 0


# -- OIDC ---------------------------------------------------------------------------------------


def test_oidc_state_is_single_use_across_workers(idp: IdP, listener: CallbackListener, tmp_path: Path) -> None:
    """auth_url on one worker, callback on the other; the state is then refused by both
    workers, and one state raced on both workers at once yields one token."""
    with start_server(config=sqlite_config(tmp_path, free_port()), workdir=tmp_path, args=["--workers", "2"]) as srv:
        conns = pinned(srv)
        assert len(conns) == 2
        a, b = conns.values()
        a.ok("POST", "sys/auth/oidc", body={"type": "oidc"})
        a.ok(
            "POST",
            "auth/oidc/config",
            body={
                "oidc_discovery_url": idp.discovery_url,
                "oidc_client_id": CLIENT_ID,
                "oidc_client_secret": CLIENT_SECRET,
            },
        )
        a.ok("POST", "auth/oidc/role/web", body={"user_claim": "sub", "allowed_redirect_uris": [listener.url]})

        def flow(conn: Pinned) -> tuple[str, str]:
            body = conn.ok(
                "POST", "auth/oidc/oidc/auth_url", token="", body={"role": "web", "redirect_uri": listener.url}
            )
            auth_url = body["data"]["auth_url"]
            state = parse_qs(urlsplit(auth_url).query)["state"][0]
            return state, drive_login(auth_url, listener.url, login="dana")["code"]

        def callback(conn: Pinned, state: str, code: str) -> tuple[int, Any]:
            return conn.call(
                "GET", f"auth/oidc/oidc/callback?{urlencode({'state': state, 'code': code, 'nonce': ''})}", token=""
            )

        state, code = flow(a)
        status, body = callback(b, state, code)
        assert status == 200, body
        assert b.ok("GET", "auth/token/lookup-self", token=body["auth"]["client_token"])
        for conn in (a, b):
            status, body = callback(conn, state, code)
            assert status == 400 and "Expired or missing OAuth state" in str(body), (conn.pid, status, body)

        for _ in range(3):
            state, code = flow(b)
            barrier = threading.Barrier(2)

            def race(conn: Pinned, state: str = state, code: str = code, barrier: threading.Barrier = barrier) -> int:
                barrier.wait()
                return callback(conn, state, code)[0]

            with ThreadPoolExecutor(2) as pool:
                codes = sorted(pool.map(race, (a, b)))
            assert codes == [200, 400], codes
        for conn in (a, b):
            conn.close()
    assert srv.returncode == 0


# -- crashes ----------------------------------------------------------------------------------


def _burst_until(srv: ServerProc, done: threading.Event, acknowledged: list[str], errors: list[str],
                 lock: threading.Lock, worker: int) -> None:  # fmt: skip
    """Log in over and over (new connection after a failed one) until ``done``."""
    http = requests.Session()
    i = 0
    while not done.is_set():
        i += 1
        try:
            resp = http.post(f"{srv.url}/v1/auth/{MOUNT}/login", json=login_body(sub=f"k{worker}-{i}"), timeout=TIMEOUT)
        except requests.RequestException as exc:
            with lock:
                errors.append(f"connection: {type(exc).__name__}")
            http.close()
            http = requests.Session()
            continue
        with lock:
            if resp.status_code == 200:
                acknowledged.append(resp.json()["auth"]["client_token"])
            else:
                errors.append(f"status {resp.status_code}: {resp.text[:200]}")
    http.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgres", "memory"])
def test_kill_9_of_one_worker_mid_burst(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A worker killed with SIGKILL during a login burst: no acknowledged token is lost,
    the other worker answers throughout (only connections the dead worker held fail), the
    supervisor starts a replacement that serves the same state, and a later SIGTERM still
    stops everything with exit code 0. Memory storage too: its database in /dev/shm outlives
    a worker (``synchronous=OFF`` loses nothing to a process crash, only to a machine's)."""
    config = sqlite_config(tmp_path, free_port())
    if engine == "postgres":
        config["storage"] = {"type": "postgres", "dsn": request.getfixturevalue("postgres_dsn")}
    elif engine == "memory":
        config["storage"] = {"type": "memory"}
    threads = 6
    with start_server(config=config, workdir=tmp_path, args=["--workers", "2"]) as srv:
        assert srv.root_token
        first = wait_for_workers(srv, 2)
        conns = pinned(srv)
        set_up_mount(next(iter(conns.values())))
        for conn in conns.values():
            conn.close()
        acknowledged: list[str] = []
        errors: list[str] = []
        lock = threading.Lock()
        done = threading.Event()
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(_burst_until, srv, done, acknowledged, errors, lock, w) for w in range(threads)]
            try:
                deadline = time.monotonic() + 120
                while len(acknowledged) < 60 and time.monotonic() < deadline:
                    time.sleep(0.05)
                victim = first[0]
                os.kill(victim, signal.SIGKILL)
                at_kill = len(acknowledged)
                replacement = wait_for_workers(srv, 2, exclude={victim})
                while len(acknowledged) < at_kill + 60 and time.monotonic() < deadline + 120:
                    time.sleep(0.05)
            finally:
                done.set()
                for f in futures:
                    f.result(TIMEOUT * 2)
        assert len(acknowledged) >= at_kill + 60, "logins stopped after the kill"
        assert not [e for e in errors if e.startswith("status")], errors
        assert len(errors) <= 2 * threads, errors  # the connections the dead worker held
        assert set(replacement) - set(first), (first, replacement)
        # Every acknowledged token works, on each worker (the replacement included).
        conns = pinned(srv)
        assert sorted(conns) == sorted(replacement)
        for conn in conns.values():
            lost = [t for t in acknowledged if conn.call("GET", "auth/token/lookup-self", token=t)[0] != 200]
            assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged tokens unknown to worker {conn.pid}"
            conn.close()
        log = srv.log_text()
        assert '"worker_exited"' in log and "SIGKILL" in log and '"worker_replaced"' in log
    assert srv.returncode == 0


@pytest.mark.parametrize("storage", ["sqlite", "memory"])
def test_a_killed_supervisor_takes_its_workers_along(tmp_path: Path, storage: str) -> None:
    """kill -9 of the supervisor: the workers stop themselves (they would otherwise hold
    the port and the storage lock), so the same configuration starts again. With memory
    storage the killed supervisor could not delete its shared-memory directory: the next
    start does, once its owner lock is free (server/storage/shared_memory.py)."""
    port = free_port()
    config: dict[str, Any] = sqlite_config(tmp_path, port)
    if storage == "memory":
        config = {"listen_address": f"127.0.0.1:{port}", "storage": {"type": "memory"}}
    srv = launch(config=config, workdir=tmp_path, args=["--workers", "2"])
    try:
        srv.wait_ready(60)
        workers = wait_for_workers(srv, 2)
        banner = next(line for line in srv.stdout_text().splitlines() if "Storage:" in line)
        srv.kill()

        def gone(pid: int) -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
            except FileNotFoundError:
                return True

        deadline = time.monotonic() + 60
        while not all(gone(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(gone(p) for p in workers), "workers outlived their supervisor"
    finally:
        srv.kill()
        for pid in worker_pids(srv):
            os.kill(pid, signal.SIGKILL)
    left = Path(banner.split(" in ", 1)[1].rstrip(")")) if storage == "memory" else None
    if left is not None:
        assert left.is_dir(), "a SIGKILLed supervisor cannot delete its directory"
        aged = time.time() - 2 * STALE_AFTER_SECONDS  # a directory younger than that may be starting
        os.utime(left, (aged, aged))
    with start_server(config=config, workdir=tmp_path, args=["--workers", "2"], root_token="unused") as again:
        assert len(wait_for_workers(again, 2)) == 2
        if left is not None:
            assert not left.exists(), "the stale shared-memory directory was not removed"
            assert f"no longer running: {left}" in again.log_text() + again.stdout_text()
    assert again.returncode == 0


def test_a_worker_failing_its_first_start_stops_the_server(tmp_path: Path) -> None:
    """At the first start a failing worker (here: the port is taken) stops the server with
    its error; nothing is restarted in a loop."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = launch(config=sqlite_config(tmp_path, port), workdir=tmp_path, args=["--workers", "2"])
        try:
            assert srv.proc.wait(60) == 1
        finally:
            srv.kill()
    assert "Address already in use" in srv.log_text() + srv.stdout_text()


def test_workers_auto_starts_one_per_usable_core(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    with start_server(config=sqlite_config(tmp_path, free_port()), workdir=tmp_path, args=["--workers", "auto"]) as srv:
        if cores > 1:
            assert len(wait_for_workers(srv, cores)) == cores
        else:
            assert worker_pids(srv) == []  # one core: no supervisor, one process
    assert srv.returncode == 0


@pytest.mark.parametrize(("flag", "message"), [("0", "must be an integer >= 1 or auto"), ("many", "or auto")])
def test_bad_workers_flag_is_refused(flag: str, message: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "server", "--dev", "--workers", flag],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_memory_storage_is_shared_by_the_workers_and_gone_when_they_stop(tmp_path: Path) -> None:
    """``storage: memory`` with ``--workers 2``: the workers share one database in a private
    shared-memory directory (``/dev/shm``, mode 0700; the storage key beside it, 0600), so
    what one writes the other uses, a token minted on one is revoked for both at once, and
    the directory is gone when the server stops (server/storage/shared_memory.py)."""
    config = {"listen_address": f"127.0.0.1:{free_port()}", "storage": {"type": "memory"},
              "rate_limit": {"login_per_ip_per_second": 0}}
    with start_server(config=config, workdir=tmp_path, args=["--workers", "2"]) as srv:
        banner = next(line for line in srv.stdout_text().splitlines() if "Storage:" in line)
        assert "Storage: memory (shared by the workers in " in banner, banner
        directory = Path(banner.split(" in ", 1)[1].rstrip(")"))
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            assert directory.parent == Path("/dev/shm"), directory
        assert directory.stat().st_mode & 0o777 == 0o700
        assert (directory / "storage.key").stat().st_mode & 0o777 == 0o600
        assert (directory / "authmount.db").is_file()
        assert not list(tmp_path.rglob("*.db")), "memory storage wrote a database into the working directory"
        conns = pinned(srv)
        assert len(conns) == 2, conns
        a, b = conns.values()
        set_up_mount(a)  # through worker A ...
        for writer, reader in ((a, b), (b, a)):
            token = writer.ok("POST", f"auth/{MOUNT}/login", token="", body=login_body())["auth"]["client_token"]
            assert reader.ok("GET", "auth/token/lookup-self", token=token)["data"]["policies"] == ["default", "p"]
            writer.ok("POST", "auth/token/revoke-self", token=token)
            assert reader.call("GET", "auth/token/lookup-self", token=token)[0] == 403
            # A batch token has no row: the mount's revocation epoch, read at every use as
            # with a file on disk, kills it on the other worker the moment the disable is
            # acknowledged.
            writer.ok("POST", "sys/auth/bt", body={"type": "jwt"})
            writer.ok("POST", "auth/bt/config", body={"jwt_validation_pubkeys": [KEY.pem]})
            writer.ok("POST", "auth/bt/role/svc", body={**ROLE, "token_type": "batch"})
            batch = writer.ok("POST", "auth/bt/login", token="", body=login_body())["auth"]["client_token"]
            seen_within(lambda: reader.call("GET", "auth/token/lookup-self", token=batch)[0] == 200)  # noqa: B023
            writer.ok("DELETE", "sys/auth/bt")
            assert reader.call("GET", "auth/token/lookup-self", token=batch)[0] == 403
        for conn in conns.values():
            conn.close()
    assert srv.returncode == 0
    assert not directory.exists(), "the shared-memory directory outlived the server"


def test_a_quota_counts_each_client_once_across_workers(workers: Workers) -> None:
    """A rate limit quota written on A (3 requests an hour to sys/mounts) is applied by B
    within the bound, and a client alternating between the workers gets 3 in all, not 3
    per worker; deleting it on B frees A."""
    workers.a.ok("POST", "sys/quotas/rate-limit/wk-mounts", body={"path": "sys/mounts", "rate": 3, "interval": "1h"})
    assert seen_within(lambda: workers.b.call("GET", "sys/quotas/rate-limit/wk-mounts")[0] == 200) < 1.0
    codes = [conn.call("GET", "sys/mounts")[0] for _ in range(4) for conn in (workers.a, workers.b)]
    assert sorted(codes) == [200] * 3 + [429] * 5, codes
    workers.b.ok("DELETE", "sys/quotas/rate-limit/wk-mounts")
    seen_within(lambda: workers.a.call("GET", "sys/mounts")[0] == 200)


def test_identity_tokens_follow_a_rotation_on_the_other_worker_within_the_bound(workers: Workers) -> None:
    """A key and role written on A sign on B; B's key set, built before, shows A's rotation
    within the bound (the change log, not the key set's hour of validity)."""
    a, b = workers.a, workers.b
    a.ok("POST", "sys/policies/acl/p", body={"policy": 'path "identity/oidc/token/*" { capabilities = ["read"] }'})
    a.ok("POST", "identity/oidc/key/wk", body={"allowed_client_ids": "*", "algorithm": "ES256"})
    a.ok("POST", "identity/oidc/role/wk", body={"key": "wk", "client_id": "wk"})
    token = b.ok("POST", f"auth/{MOUNT}/login", token="", body=login_body())["auth"]["client_token"]

    def kids(conn: Pinned) -> set[str]:
        return {k["kid"] for k in conn.ok("GET", "identity/oidc/.well-known/keys", token="")["keys"]}

    seen_within(lambda: b.call("GET", "identity/oidc/token/wk", token=token)[0] == 200)
    before = kids(b)
    assert len(before) == 2 and before == kids(a)
    a.ok("POST", "identity/oidc/key/wk/rotate")
    after = kids(a)
    assert len(after) == 3 and before < after
    assert seen_within(lambda: kids(b) == after) < 1.0


def test_an_oidc_provider_code_made_on_one_worker_is_redeemed_once_on_another(workers: Workers) -> None:
    """Vault keeps a code in the memory of the node that made it; here a code authorize made
    on B is exchanged on A, a second exchange on B is refused, and the access token serves
    userinfo on B (docs/vault-differences.md, row 70)."""
    a, b = workers.a, workers.b
    app = "https://app.example.com/cb"
    a.ok("POST", "identity/oidc/client/wk", body={"redirect_uris": app, "assignments": "allow_all"})
    client = a.ok("GET", "identity/oidc/client/wk")["data"]
    token = b.ok("POST", f"auth/{MOUNT}/login", token="", body=login_body())["auth"]["client_token"]
    params = {"client_id": client["client_id"], "scope": "openid", "redirect_uri": app, "response_type": "code"}
    seen_within(lambda: b.call("POST", "identity/oidc/provider/default/authorize", token=token,
                               body=params)[0] == 200)
    code = b.ok("POST", "identity/oidc/provider/default/authorize", token=token, body=params)["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": app, "client_id": client["client_id"],
            "client_secret": client["client_secret"]}
    status, tokens = a.call("POST", "identity/oidc/provider/default/token", token="", body=form)
    assert status == 200 and tokens["token_type"] == "Bearer", tokens
    status, again = b.call("POST", "identity/oidc/provider/default/token", token="", body=form)
    assert (status, again["error"]) == (400, "invalid_grant")
    b.conn.request("GET", "/v1/identity/oidc/provider/default/userinfo",
                   headers={"Authorization": "Bearer " + tokens["access_token"]})
    resp = b.conn.getresponse()
    info = json.loads(resp.read())
    assert resp.status == 200 and set(info) == {"sub"}, info


def test_log_levels_set_on_one_worker_are_the_other_workers_within_a_second(workers: Workers) -> None:
    """``vault write sys/loggers/<name> level=...`` lands on one worker; the other takes the
    levels at its next look at the supervisor's directory (``SharedLevels.PERIOD``, 1 s)."""

    def level(conn: Pinned, name: str) -> str:
        return str(conn.ok("GET", f"sys/loggers/{name}")["data"][name])

    try:
        workers.a.call("POST", "sys/loggers/authmount.keyring", body={"level": "trace"})
        assert level(workers.a, "authmount.keyring") == "trace"
        assert seen_within(lambda: level(workers.b, "authmount.keyring") == "trace") < 1.5
        workers.b.call("DELETE", "sys/loggers")  # back to the settings' level, from the other one
        assert seen_within(lambda: level(workers.a, "authmount.keyring") == "info") < 1.5
    finally:
        for conn in (workers.a, workers.b):
            conn.call("DELETE", "sys/loggers")
