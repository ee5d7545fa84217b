"""Headless Chromium (selenium + Debian's chromedriver) and a loopback callback listener.

``CallbackListener`` plays the Vault CLI's ``localhost:8250`` listener on a free port: it
records the query string the IdP redirects the browser to. ``browser_login`` drives the
node-oidc-provider dev login form; ``drive_login`` does the same with ``requests`` only
(docs/reference/clients.md 2.4), so the flow is covered even without a browser.
"""

from __future__ import annotations

import contextlib
import html
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

__all__ = [
    "CHROMIUM", "CHROMEDRIVER", "CHROME_FLAGS", "CallbackListener", "browser_available", "browser_login",
    "browser_session", "drive_device_login", "drive_login", "hidden_fields",
]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def browser_available() -> str | None:
    """None when headless Chromium can be driven here, else the reason to skip."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (scripts/install-browser.sh installs chromium and chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


class CallbackListener:
    """A loopback HTTP server that records the first ``GET /oidc/callback`` it receives."""

    def __init__(self, path: str = "/oidc/callback") -> None:
        self.path = path
        self.received = threading.Event()
        self.query: dict[str, str] = {}
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                parts = urlsplit(self.path)
                if parts.path != listener.path:
                    self.send_error(404)
                    return
                if not listener.received.is_set():
                    listener.query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                    listener.received.set()
                body = b"<!DOCTYPE html><title>done</title><p>You may close this window.</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def __enter__(self) -> CallbackListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait(self, timeout: float = 60.0) -> dict[str, str]:
        """The callback's query parameters (code, state, iss ...)."""
        if not self.received.wait(timeout):
            raise TimeoutError("the IdP never redirected the browser to the callback listener")
        return self.query


def browser_login(auth_url: str, listener: CallbackListener, login: str = "alice", password: str = "x") -> dict[str, str]:
    """Open ``auth_url`` in headless Chromium, submit the dev login form, return the callback query."""

    def arrived(driver: WebDriver) -> bool:
        return listener.received.is_set() and str(driver.current_url).startswith(listener.url)

    browser_session(auth_url, arrived, login=login, password=password)
    return listener.wait(0)


@contextlib.contextmanager
def chromium(profile_parent: Path | None = None) -> Iterator[WebDriver]:
    """A fresh headless Chromium (selenium WebDriver; pages time out after 60 s), its profile
    in a new directory under ``profile_parent`` (default: the temporary directory), removed after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="authmount-chromium-", dir=profile_parent)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def browser_session(
    auth_url: str, done: Callable[[WebDriver], bool], *, login: str = "alice", password: str = "x"
) -> str:
    """Open ``auth_url`` in a fresh headless Chromium, log in, wait until ``done(driver)``.

    Returns the final page source (e.g. a form_post callback page).
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
        driver.get(auth_url)
        wait = WebDriverWait(driver, 60)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=login]")))
        driver.find_element(By.CSS_SELECTOR, "input[name=login]").send_keys(login)
        driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(done)
        return str(driver.page_source)


def drive_login(auth_url: str, redirect_prefix: str, login: str = "alice") -> dict[str, str]:
    """The dev login with ``requests`` (cookie jar, 3 redirects); returns the callback query."""
    s = requests.Session()
    r = s.get(auth_url, allow_redirects=False, timeout=30)
    for _ in range(10):
        loc = urljoin(auth_url, r.headers["Location"])
        if loc.startswith(redirect_prefix):
            return {k: v[0] for k, v in parse_qs(urlsplit(loc).query).items()}
        page = s.get(loc, allow_redirects=False, timeout=30)
        if page.status_code == 200 and "/interaction/" in loc:
            found = re.search(r'name="prompt" value="(\w+)"', page.text)
            if found is None:
                raise RuntimeError(f"no prompt in the interaction page: {page.text[:200]}")
            data = {"prompt": found.group(1)}
            if data["prompt"] == "login":
                data |= {"login": login, "password": "x"}
            r = s.post(loc, data=data, allow_redirects=False, timeout=30)
        else:
            r = page
    raise RuntimeError(f"stuck: {r.status_code} {r.text[:200]}")


_FORM_ACTION = re.compile(r'<form\b[^>]*\baction="([^"]*)"', re.I)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"\s*/?>')


def hidden_fields(page: str) -> tuple[str, dict[str, str]]:
    """The first form's action and its hidden inputs (HTML-unescaped)."""
    action = _FORM_ACTION.search(page)
    if action is None:
        raise RuntimeError(f"no form in the page: {page[:300]}")
    return html.unescape(action.group(1)), {k: html.unescape(v) for k, v in _HIDDEN.findall(page)}


def drive_device_login(verification_url: str, login: str = "alice") -> str:
    """Confirm an RFC 8628 device login at node-oidc-provider with ``requests``: open the
    verification URL (its user code filled in), confirm the code, sign in with the dev
    form. Returns the final page (``Sign-in Success``)."""
    s = requests.Session()
    r = s.get(verification_url, timeout=30)
    for _ in range(12):
        if "Sign-in Success" in r.text:
            return r.text
        action, data = hidden_fields(r.text)
        if data.get("prompt") == "login":
            data |= {"login": login, "password": "x"}
        r = s.post(urljoin(r.url, action), data=data, timeout=30)
    raise RuntimeError(f"stuck: {r.status_code} {r.text[:300]}")
