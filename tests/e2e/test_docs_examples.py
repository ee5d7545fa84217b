"""The docs' shell examples run: every fenced ``sh`` block of README.md and docs/*.md is run,
in order, against a real server, so a documented command cannot drift from the server.

Each document gets a fresh server started as the README says
(``authmount server --config configs/dev.yaml``, with ``--listen-address 127.0.0.1:0`` for a free
port) in a scratch directory holding ``configs/`` and ``.venv/`` of this checkout, and its blocks
run in one ``bash -euo pipefail`` with ``VAULT_ADDR``/``VAULT_TOKEN`` set. ``curl`` fails on an
HTTP error status (``--fail-with-body``), so an example the server refuses fails the test.

What the examples may use besides the server: ``ci.pub.pem`` (a CI issuer's public key) in
the directory, ``$CI_JOB_JWT`` (a token of that issuer for ``aud``
``https://authmount.example.com``, ``ref`` ``refs/heads/main``), ``$JWT`` (the same with
``ref`` ``refs/heads/dev``), ``jq`` and ``sqlite3``.

A block is marked in the document by an HTML comment on the line before its fence:
``<!-- docs-test: env -->`` (it only sets ``VAULT_ADDR``/``VAULT_TOKEN``, which the test
provides) or ``<!-- docs-test: skip <why> -->`` (it cannot run here: it starts a server,
needs an identity provider or a stopped server, ...). Every skip is listed in ``SKIPPED``
below: a new one fails the test until it is listed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.serverproc import REPO_ROOT, start_server
from tests.plugin.keyfactory import default_claims, ec_key, make_token

pytestmark = pytest.mark.e2e

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_MARK = re.compile(r"^\s*<!-- docs-test: (skip|env)\b\s*(.*?)\s*-->\s*$")

#: (document, why) of every block that is not run.
SKIPPED = {
    ("README.md", "installs and starts the server: the docs test starts it the same way, "
                  "`.venv/bin/authmount server --config configs/dev.yaml`"),
    ("README.md", "runs the whole test suite, this test included"),
    ("docs/api.md", "needs an OIDC identity provider and a browser (tests/e2e/test_oidc_e2e.py runs the flow)"),
    ("docs/api.md", "needs an OIDC identity provider and a user (tests/e2e/test_oidc_modes_e2e.py runs both modes with bao)"),
    ("docs/operations.md", "needs the server stopped (tests/e2e/test_operator_e2e.py runs it)"),
    ("docs/operations.md", "needs the server stopped (tests/e2e/test_snapshot_e2e.py runs it)"),
    ("docs/operations.md", "streams until interrupted (tests/e2e/test_bao_cli.py runs bao monitor)"),
    ("docs/operations.md", "runs for the capture's duration (tests/e2e/test_bao_cli.py runs bao debug)"),
    ("docs/performance.md", "runs the benchmark (minutes, all cores)"),
    ("docs/mutation.md", "runs the mutation campaign (about an hour of CPU)"),
}


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    code: str
    mark: str  # "" (run), "env" or "skip"
    why: str


def blocks(path: Path) -> list[Block]:
    """The ``sh`` blocks of a Markdown file, with their marks."""
    doc = str(path.relative_to(REPO_ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match.group(1), match.group(2)
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if lang == "sh":
            body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = _MARK.match(prev)
            out.append(Block(doc, i + 1, body, mark.group(1) if mark else "", mark.group(2) if mark else ""))
        i = end + 1
    return out


ALL = [b for path in DOCS for b in blocks(path)]


def test_every_example_is_run_or_listed() -> None:
    assert len(ALL) > 10
    skipped = sorted((b.doc, b.why) for b in ALL if b.mark == "skip")
    assert sorted(set(skipped)) == sorted(SKIPPED), skipped  # a new skip must be listed here
    assert len(skipped) == 11
    for b in ALL:
        if b.mark == "env":
            assert all(line.startswith("export VAULT_") for line in b.code.splitlines() if line.strip()), b


def _fixtures(work: Path) -> dict[str, str]:
    key = ec_key()
    (work / "ci.pub.pem").write_text(key.pem)
    claims = default_claims(iss="https://ci.example.com", aud="https://authmount.example.com", sub="x",
                            ref="refs/heads/main", exp=int(time.time()) + 3600)
    return {
        "CI_JOB_JWT": make_token(claims, key=key),
        "JWT": make_token({**claims, "ref": "refs/heads/dev"}, key=key),
    }


@pytest.mark.parametrize("doc", sorted({b.doc for b in ALL if not b.mark}))
def test_document_examples_run(doc: str, tmp_path: Path) -> None:
    for tool in ("curl", "jq", "sqlite3"):
        if shutil.which(tool) is None:  # pragma: no cover - Debian's curl, jq and sqlite3 are expected
            pytest.skip(f"{tool} is not installed")
    runnable = [b for b in ALL if b.doc == doc and not b.mark]
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(REPO_ROOT / "configs")
    (work / ".venv").symlink_to(Path(sys.prefix))  # this checkout's virtual environment
    env = _fixtures(work)
    script = ["set -euo pipefail", 'curl() { command curl -sS --fail-with-body "$@"; }']
    for b in runnable:
        script += [f"echo '### {b.doc}:{b.line}' >&2", b.code]
    with start_server(config=work / "configs" / "dev.yaml", workdir=work,
                      args=["--listen-address", "127.0.0.1:0"]) as srv:
        assert srv.root_token
        child = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(work), "VAULT_ADDR": srv.url, "VAULT_TOKEN": srv.root_token, **env,
        }
        result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=child, capture_output=True,
                                text=True, timeout=300)
        where = ([line for line in result.stderr.splitlines() if line.startswith("### ")] or ["?"])[-1]
        assert result.returncode == 0, f"{where} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        check = CHECKS.get(doc)
        if check is not None:
            check(work, result.stdout)


def _readme(work: Path, stdout: str) -> None:
    assert '["jwt/","token/"]' in stdout
    assert '"deploy"' in stdout  # the login's policies


def _operations(work: Path, stdout: str) -> None:
    [backup] = list((work / "backup").iterdir())
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert stat.S_IMODE((work / "backup").stat().st_mode) == 0o700
    assert subprocess.run(["sqlite3", str(backup), "SELECT count(*) FROM kv"], capture_output=True, text=True,
                          check=True).stdout.strip() != "0"
    # authmount operator diagnose beside the running server
    assert "[ ok   ] storage: sqlite: data/authmount.db, " in stdout and ", a server is using it" in stdout
    assert "[ ok   ] storage key: data/authmount.key (" in stdout and " 0 failed, " in stdout
    [snap] = list((work / "snapshots").iterdir())  # bao operator raft snapshot save
    assert stat.S_IMODE(snap.stat().st_mode) == 0o600
    with tarfile.open(snap, mode="r:gz") as tar:
        assert tar.getnames() == ["meta.json", "state.jsonl", "SHA256SUMS", "SHA256SUMS.sealed"]
    # the data key rotated by hand and every 30 days; one logger's level set and read back
    assert '{"enabled":true,"interval":"720h0m0s","max_operations":3865470566}' in stdout
    assert '{"plugin.login":"debug"}' in stdout


def _api(work: Path, stdout: str) -> None:
    # sys/remount's status right after the move, and a login through an operator's entity alias
    assert '{"source_mount":"auth/ci-old/","target_mount":"auth/ci-new/","status":"success"}' in stdout
    assert '{"identity_policies":["audit","deployer","release"],"same":true}' in stdout
    assert '{"aliases":["x"],"merged":true}' in stdout  # an entity merge
    assert '{"allow_slashes_in_identity_templates":true,"allow_wildcards_in_identity_templates":false}' in stdout
    assert "escalation: 403" in stdout and '["team-a-deploy"]' in stdout  # a policy's parameter constraints
    # an identity token: its claims, the key set (the signing key and the next), introspection
    assert '{"aud":"deploy-service","groups":["release"],"namespace":"root"}' in stdout
    assert '[{"kty":"RSA","alg":"RS256","use":"sig"},{"kty":"RSA","alg":"RS256","use":"sig"}]' in stdout
    assert '{"active":true}' in stdout
    # the OIDC provider: a code, its exchange, the ID token's claims, userinfo
    assert '{"state":"af0ifjsldkj","code":true}' in stdout and '{"token_type":"Bearer","expires_in":600}' in stdout
    assert '{"groups":["release"],"namespace":"root"}' in stdout and '{"groups":["release"]}' in stdout
    assert "200 200 429 " in stdout  # a rate limit quota
    assert '{"path":"sys/policies/acl","rate":2,"interval":60}' in stdout


#: What running a document's examples must have done, beyond exiting 0.
CHECKS: dict[str, Callable[[Path, str], None]] = {"README.md": _readme, "docs/operations.md": _operations,
                                                  "docs/api.md": _api}
