"""Static checks: mypy finds no error in the checked modules, ruff finds nothing in the tree,
and the narrowing mypy relies on holds.

It covers ``plugin``, ``server``, ``tests`` and ``bench``; settings (python version, untyped
third-party modules) live in ``[tool.mypy]`` in pyproject.toml.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugin.backend import JWTAuthBackend
from plugin.framework import Auth, Operation, Request, StaticSystemView
from plugin.storage import InMemoryStorage

ROOT = Path(__file__).resolve().parent.parent

#: Paths (relative to the repository root) that must type-check cleanly. The modules they
#: import are analysed too (for their types) but their own errors are not reported
#: (``--follow-imports=silent``) until they join this list.
CHECKED = ("plugin", "server", "tests", "bench")

#: Files left out of CHECKED (glob patterns relative to the repository root); none now.
EXCLUDED: tuple[str, ...] = ()


def _exclude_regex(pattern: str) -> str:
    """mypy's ``--exclude`` takes a regular expression searched in each file's path."""
    return "(^|/)" + fnmatch.translate(pattern)


def test_mypy_finds_no_errors() -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install -e '.[test]')")
    stdout, stderr, status = api.run([
        "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", os.devnull,  # no .mypy_cache in the tree; a cold run takes ~2 s of CPU
        "--follow-imports", "silent",
        "--no-error-summary",
        *(arg for pattern in EXCLUDED for arg in ("--exclude", _exclude_regex(pattern))),
        *(str(ROOT / path) for path in CHECKED),
    ])
    assert (status, stdout, stderr) == (0, "", ""), f"mypy found errors:\n{stdout}{stderr}"


def test_ruff_finds_nothing() -> None:
    """The rule set in ``[tool.ruff.lint]`` (pyproject.toml) over the whole tree."""
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[test]')")
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(ROOT)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert run.returncode == 0, f"ruff found problems:\n{run.stdout}{run.stderr}"


# ---------------------------------------------------------------------------
# Request.require_storage: the one place handlers narrow ``Request.storage``


def test_require_storage_returns_the_storage() -> None:
    storage = InMemoryStorage()
    assert Request(Operation.READ, "config", storage=storage).require_storage() is storage


@pytest.mark.parametrize(
    ("operation", "path", "data"),
    [
        (Operation.READ, "config", {}),
        (Operation.UPDATE, "config", {"jwks_url": "https://idp.example/keys"}),
        (Operation.LIST, "role/", {}),
        (Operation.READ, "role/r", {}),
        (Operation.UPDATE, "role/r", {"user_claim": "sub", "bound_audiences": ["a"]}),
        (Operation.DELETE, "role/r", {}),
        (Operation.UPDATE, "login", {"role": "r", "jwt": "e30.e30.sig"}),
        (Operation.UPDATE, "oidc/auth_url", {"role": "r", "redirect_uri": "https://app.example/cb"}),
        (Operation.RENEW, "login", {}),
    ],
    ids=[
        "config read", "config write", "role list", "role read", "role write", "role delete",
        "login", "oidc auth_url", "renew",
    ],
)
async def test_request_without_storage_is_a_clear_internal_error(
    operation: Operation, path: str, data: dict[str, Any]
) -> None:
    """A hand-built request without storage fails with a message naming the path, not
    with ``AttributeError: 'NoneType' ...`` from deep inside a handler (or an assert that
    ``python -O`` strips)."""
    req = Request(
        operation, path, data=data, system=StaticSystemView(),
        auth=Auth(internal_data={"role": "r"}) if operation is Operation.RENEW else None,
    )
    with pytest.raises(RuntimeError, match=f"request for '{path}' has no storage"):
        await JWTAuthBackend().handle_request(req)
