"""``authmount server --workers N``: N real worker processes on one port and one storage.

On SQLite (the embedded default) the workers share one file: what one worker writes is
used by the others (mounts, configs, roles, policies within 100 ms, a revoked token at
once), a ``num_uses`` token is used up across workers, and a second server is still
refused the file. On both engines ``kill -9`` of one worker loses no acknowledged login,
the other worker keeps serving, and the supervisor starts a replacement; a killed
supervisor takes its workers with it. Connections are pinned to a worker by finding, in
``/proc``, which process accepted them (``tests/e2e/workerconn.py``).
"""

from __future__ import annotations

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

import pytest
import requests

from tests.e2e.idp import free_port
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
                return http.get(f"{workers.srv.url}/v1/auth/token/lookup-self", headers={"X-Vault-Token": token},
                                timeout=TIMEOUT).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(use, range(8)))
        assert codes == [200] + [403] * 7, codes


def test_a_second_server_is_refused_the_file_while_workers_run(workers: Workers, tmp_path: Path) -> None:
    config = workers.srv.stdout_text()  # the workers' file, from the banner
    assert "Storage: sqlite" in config
    db = next(line.split("(", 1)[1].rstrip(")") for line in config.splitlines() if "Storage: sqlite" in line)
    cfg = tmp_path / "second.yaml"
    cfg.write_text(f"listen_address: 127.0.0.1:0\nstorage:\n  type: sqlite\n  path: {db}\n")
    done = subprocess.run([sys.executable, "-m", "server.cli", "server", "--config", str(cfg)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "in use by another process" in done.stderr, done.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "server.cli", "operator", "generate-root", "--config", str(cfg)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "in use by another process" in done.stderr, done.stderr[-2000:]


# -- crashes ----------------------------------------------------------------------------------


def _burst_until(srv: ServerProc, done: threading.Event, acknowledged: list[str], errors: list[str],
                 lock: threading.Lock, worker: int) -> None:  # fmt: skip
    """Log in over and over (new connection after a failed one) until ``done``."""
    http = requests.Session()
    i = 0
    while not done.is_set():
        i += 1
        try:
            resp = http.post(f"{srv.url}/v1/auth/{MOUNT}/login", json=login_body(sub=f"k{worker}-{i}"),
                             timeout=TIMEOUT)
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


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_kill_9_of_one_worker_mid_burst(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A worker killed with SIGKILL during a login burst: no acknowledged token is lost,
    the other worker answers throughout (only connections the dead worker held fail), the
    supervisor starts a replacement that serves the same state, and a later SIGTERM still
    stops everything with exit code 0."""
    config = sqlite_config(tmp_path, free_port())
    if engine == "postgres":
        config["storage"] = {"type": "postgres", "dsn": request.getfixturevalue("postgres_dsn")}
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


def test_a_killed_supervisor_takes_its_workers_along(tmp_path: Path) -> None:
    """kill -9 of the supervisor: the workers stop themselves (they would otherwise hold
    the port and the storage lock), so the same configuration starts again."""
    port = free_port()
    config = sqlite_config(tmp_path, port)
    srv = launch(config=config, workdir=tmp_path, args=["--workers", "2"])
    try:
        srv.wait_ready(60)
        workers = wait_for_workers(srv, 2)
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
    with start_server(config=config, workdir=tmp_path, args=["--workers", "2"], root_token="unused") as again:
        assert len(wait_for_workers(again, 2)) == 2
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
    done = subprocess.run([sys.executable, "-m", "server.cli", "server", "--dev", "--workers", flag],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 2 and message in done.stderr, done.stderr
