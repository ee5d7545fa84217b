"""CORS seen by a real browser: a page served from another origin (another loopback port)
calls authmount with ``fetch`` and its token in ``X-Vault-Token`` (so Chromium sends a
preflight first). Before ``sys/config/cors`` lists the page's origin the browser blocks the
call; once it does, the page reads the answer; for an origin not listed it is blocked again."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from tests.e2e.browser import browser_available, chromium
from tests.e2e.serverproc import ServerProc, start_server

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.e2e

PAGE = """<!doctype html><html><head><title>waiting</title></head><body><script>
fetch(%(api)s + "/v1/auth/token/lookup-self", {headers: {"X-Vault-Token": %(token)s}})
  .then(r => r.json().then(j => { document.title = "ok:" + r.status + ":" + j.data.policies.join(","); }))
  .catch(e => { document.title = "blocked:" + e.name; });
</script></body></html>"""


class PageServer:
    """A loopback HTTP server answering every GET with ``PAGE`` (another origin than authmount's)."""

    def __init__(self, api: str, token: str) -> None:
        body = (PAGE % {"api": json.dumps(api), "token": json.dumps(token)}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[ServerProc]:
    with start_server(dev=True, workdir=tmp_path) as v:
        yield v


def _title(driver: WebDriver, url: str) -> str:
    """The page's title once its script has run: ``ok:<status>:<policies>`` or ``blocked:<error>``."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.title != "waiting")
    return str(driver.title)


def test_a_page_on_another_origin_reads_the_api_once_cors_lists_it(vault: ServerProc, tmp_path: Path) -> None:
    reason = browser_available()
    if reason:
        pytest.skip(reason)
    root = str(vault.root_token)
    page = PageServer(vault.url, root)
    head = {"X-Vault-Token": root}
    try:
        with chromium(tmp_path) as driver:
            assert _title(driver, page.origin + "/") == "blocked:TypeError"  # CORS off: no preflight answer
            resp = requests.post(f"{vault.url}/v1/sys/config/cors", json={"allowed_origins": [page.origin]},
                                 headers=head, timeout=10)
            assert resp.status_code == 204, resp.text
            assert _title(driver, page.origin + "/") == "ok:200:root"
            resp = requests.post(f"{vault.url}/v1/sys/config/cors",
                                 json={"allowed_origins": ["https://another.example.com"]}, headers=head, timeout=10)
            assert resp.status_code == 204, resp.text
            assert _title(driver, page.origin + "/?again") == "blocked:TypeError"
    finally:
        page.close()
