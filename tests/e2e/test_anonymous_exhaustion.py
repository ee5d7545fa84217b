"""Issue 15 section 2 against a real process on SQLite: anonymous OIDC calls cost no storage.

Before: each ``oidc/auth_url`` stored a state row (20 calls with big ``client_nonce`` values
grew the database by 19 MB), and 10,000 states closed a mount's browser login for 10
minutes. Now the state travels sealed in the ``state`` parameter: thousands of anonymous
``auth_url`` calls (per-IP rate limit off) leave the database file, its WAL and SQLite's
``data_version`` exactly as they were; an oversized value is a 400 naming its limit; a
state works on its own mount only and logs in once; node-oidc-provider accepts the state
and the login completes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.e2e.browser import CallbackListener, drive_login
from tests.e2e.idp import CLIENT_ID, CLIENT_SECRET, IdP
from tests.e2e.serverproc import ServerProc, start_server

pytestmark = pytest.mark.e2e

TIMEOUT = 30
MOUNTS = ("oidc", "oidc2")
FLOOD = 3000


class Store:
    """Watches the server's SQLite files from outside: sizes, rows, and whether any other
    connection committed (``PRAGMA data_version`` changes on every foreign commit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def sizes(self) -> dict[str, int]:
        out = {}
        for suffix in ("", "-wal"):
            f = Path(str(self.path) + suffix)
            out["db" + suffix] = f.stat().st_size if f.exists() else 0
        return out

    def data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def rows(self) -> tuple[int, int]:
        count, size = self._conn.execute("SELECT count(*), coalesce(sum(length(key) + length(value)), 0) FROM kv").fetchone()
        return int(count), int(size)

    def keys(self, like: str) -> list[str]:
        return [k for (k,) in self._conn.execute("SELECT key FROM kv WHERE key LIKE ?", (like,))]

    def settle(self, timeout: float = 15.0) -> dict[str, int]:
        """Wait until the idle checkpoint has emptied the WAL and the sizes hold still."""
        deadline = time.monotonic() + timeout
        last: dict[str, int] = {}
        while time.monotonic() < deadline:
            now = self.sizes()
            if now == last and now["db-wal"] == 0:
                return now
            last = now
            time.sleep(0.5)
        raise AssertionError(f"the SQLite files did not settle: {last}")

    def close(self) -> None:
        self._conn.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("anon")


@pytest.fixture(scope="module")
def vault(work: Path, idp: IdP, listener: CallbackListener) -> Iterator[ServerProc]:
    config = {
        "storage": {"type": "sqlite", "path": str(work / "authmount.db")},
        "rate_limit": {"login_per_ip_per_second": 0},  # one client IP sends thousands
    }
    with start_server(config=config, workdir=work) as srv:
        assert srv.root_token
        hdr = {"X-Vault-Token": srv.root_token}

        def write(path: str, body: dict[str, Any]) -> None:
            resp = requests.post(f"{srv.url}/v1/{path}", json=body, headers=hdr, timeout=TIMEOUT)
            assert resp.status_code in (200, 204), (path, resp.text)

        for mount in MOUNTS:
            write(f"sys/auth/{mount}", {"type": "oidc"})
            write(f"auth/{mount}/config", {
                "oidc_discovery_url": idp.discovery_url, "oidc_client_id": CLIENT_ID,
                "oidc_client_secret": CLIENT_SECRET, "default_role": "web", "namespace_in_state": True,
            })
            write(f"auth/{mount}/role/web", {"user_claim": "sub", "allowed_redirect_uris": [listener.url]})
        yield srv


@pytest.fixture
def store(vault: ServerProc, work: Path) -> Iterator[Store]:
    s = Store(work / "authmount.db")
    yield s
    s.close()


def auth_url(session: requests.Session, vault: ServerProc, mount: str = "oidc", **body: Any) -> requests.Response:
    return session.post(f"{vault.url}/v1/auth/{mount}/oidc/auth_url", json=body, timeout=TIMEOUT)


def callback(vault: ServerProc, mount: str = "oidc", **params: str) -> requests.Response:
    return requests.get(f"{vault.url}/v1/auth/{mount}/oidc/callback", params=params, timeout=TIMEOUT)


def test_thousands_of_anonymous_auth_urls_write_nothing(vault: ServerProc, listener: CallbackListener, store: Store) -> None:
    session = requests.Session()
    body = {"role": "web", "redirect_uri": listener.url + "?namespace=" + "n" * 256, "client_nonce": "c" * 256}
    assert auth_url(session, vault, **body).status_code == 200  # discovery fetched and cached
    before_sizes, before_version, before_rows = store.settle(), store.data_version(), store.rows()
    for _ in range(FLOOD):
        resp = auth_url(session, vault, **body)
        assert resp.status_code == 200, resp.text
    assert store.data_version() == before_version  # no commit at all
    assert store.sizes() == before_sizes  # the database file and the WAL (still empty)
    assert store.rows() == before_rows
    assert store.keys("%oidc/%") == []


@pytest.mark.parametrize(
    ("method", "field", "limit"),
    [
        ("auth_url", "client_nonce", 256),
        ("auth_url", "redirect_uri", 2048),
        ("auth_url", "role", 512),
        ("callback", "state", 4096),
        ("callback", "code", 4096),
        ("callback", "id_token", 16384),
    ],
)
def test_oversized_values_are_400_naming_the_limit(
    vault: ServerProc, listener: CallbackListener, store: Store, method: str, field: str, limit: int
) -> None:
    version = store.data_version()
    value = "x" * 100_000
    if method == "auth_url":
        resp = auth_url(requests.Session(), vault, **{"role": "web", "redirect_uri": listener.url, field: value})
    else:  # a body, not the query: 100 KB is past any request line limit
        resp = requests.post(f"{vault.url}/v1/auth/oidc/oidc/callback", json={field: value}, timeout=TIMEOUT)
    assert resp.status_code == 400, resp.text
    assert resp.json() == {"errors": [f"{field} is too long: the limit is {limit} bytes"]}
    assert store.data_version() == version


def test_state_is_bound_to_its_mount_and_works_once(
    vault: ServerProc, idp: IdP, listener: CallbackListener, store: Store
) -> None:
    """node-oidc-provider accepts the sealed state; the login completes once; the state
    does not open on another mount of the same server."""
    resp = auth_url(requests.Session(), vault, role="web", redirect_uri=listener.url + "?namespace=team-a")
    url = resp.json()["data"]["auth_url"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    assert state.startswith("am1.") and state.endswith(",ns=team-a") and len(state) < 320
    back = drive_login(url, listener.url, login="alice")
    assert back["state"] == state  # the IdP returned it unchanged
    code = back["code"]

    other = callback(vault, mount="oidc2", state=state, code=code)
    assert other.status_code == 400
    assert other.json() == {"errors": ["Vault login failed. Expired or missing OAuth state."]}

    version = store.data_version()
    ok = callback(vault, state=state, code=code)
    assert ok.status_code == 200, ok.text
    assert ok.json()["auth"]["client_token"]
    assert store.data_version() != version  # the redemption (and the token) were written
    assert len(store.keys("%/oidc/used/%")) == 1

    again = callback(vault, state=state, code=code)
    assert again.status_code == 400
    assert again.json() == {"errors": ["Vault login failed. Expired or missing OAuth state."]}


def test_forged_and_failed_callbacks_write_nothing(vault: ServerProc, listener: CallbackListener, store: Store) -> None:
    url = auth_url(requests.Session(), vault, role="web", redirect_uri=listener.url).json()["data"]["auth_url"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    store.settle()
    version = store.data_version()
    for params in (
        {"state": state, "code": "guessed"},  # a real state, no real login at the IdP
        {"state": state[:-6] + "AAAAAA", "code": "x"},
        {"state": "am1.1." + "A" * 300, "code": "x"},
        {"state": state, "error_description": "x" * 2048},
    ):
        resp = callback(vault, **params)
        assert resp.status_code == 400, resp.text
    assert store.data_version() == version


def test_server_log_has_no_state_secret(vault: ServerProc) -> None:
    """The log may name a refused callback, never the sealed state or a code."""
    log = vault.log_text()
    assert "am1." not in log
