"""MountTable: path rules, longest prefix, nested refusal, persistence, tune, disable, invalidation."""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from typing import Any

import pytest

from plugin import registry
from plugin.errors import InvalidRequest
from plugin.framework import Backend
from plugin.storage import InMemoryStorage
from server.mounts import MOUNTS_KEY, MountEntry, MountTable, normalize_path
from server.storage import Engine
from tests.server.tokenkit import count_reads

DAY = 86400


class RecordingBackend(Backend):
    """Remembers invalidations and cleanups."""

    type_name = "rec"

    def __init__(self) -> None:
        super().__init__()
        self.invalidated: list[str] = []
        self.cleaned = False

    def invalidate(self, key: str) -> None:
        self.invalidated.append(key)

    async def cleanup(self) -> None:
        self.cleaned = True


registry.register("rec", RecordingBackend)


async def make_table(storage: Engine | None = None, **kw: Any) -> MountTable:
    table = MountTable(storage or InMemoryStorage(), default_lease_ttl=32 * DAY, max_lease_ttl=32 * DAY, **kw)
    await table.load()
    return table


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("jwt", nullcontext("jwt/")), ("/jwt/", nullcontext("jwt/")), ("team-a/jwt", nullcontext("team-a/jwt/")),
     ("", pytest.raises(InvalidRequest, match="empty")), ("a//b", pytest.raises(InvalidRequest, match="invalid")),
     ("a/../b", pytest.raises(InvalidRequest, match="invalid")), ("a b", pytest.raises(InvalidRequest)),
     ("//jwt//", nullcontext("jwt/")), (" jwt", pytest.raises(InvalidRequest, match="invalid mount path")),
     ("jwt\t", pytest.raises(InvalidRequest)), ("\xa0jwt", pytest.raises(InvalidRequest)),
     ("jwt\n", pytest.raises(InvalidRequest)), ("jwt\x00", pytest.raises(InvalidRequest)),
     ("jwt\u2028", pytest.raises(InvalidRequest)), ("/", pytest.raises(InvalidRequest, match="empty")),
     *((f"a{c}b", pytest.raises(InvalidRequest, match="invalid mount path")) for c in "*+?#%\\"),
     ("a.b-c_d:e~f/é", nullcontext("a.b-c_d:e~f/é/"))],
    ids=["plain", "slashes stripped", "nested path", "empty", "empty segment", "dot-dot", "space", "many slashes",
         "leading space (no strip)", "tab", "nbsp", "newline", "nul", "line separator", "only a slash",
         "glob", "plus", "query", "fragment", "percent", "backslash", "other punctuation"],
)
def test_normalize_path(raw: str, expected: Any) -> None:
    with expected as value:
        assert normalize_path(raw) == value


async def test_token_mount_always_present_and_not_disableable() -> None:
    table = await make_table()
    assert table.mounts["token/"].entry.type == "token"
    assert table.mounts["token/"].entry.accessor.startswith("auth_token_")
    with pytest.raises(InvalidRequest, match="cannot be disabled"):
        await table.disable("token")


@pytest.mark.parametrize(
    ("mounted", "path", "expected"),
    [
        (["jwt"], "jwt/login", ("jwt/", "login")),
        (["jwt"], "jwt", ("jwt/", "")),
        (["jwt"], "jwt/role/a/b", ("jwt/", "role/a/b")),
        (["team-a/jwt", "team-b"], "team-a/jwt/login", ("team-a/jwt/", "login")),
        (["team-b"], "team-b/x", ("team-b/", "x")),
        (["jwt"], "jwtx/login", None),
        (["jwt"], "other", None),
    ],
    ids=["simple", "mount root", "deep", "slash in mount path", "sibling", "prefix is not a segment", "none"],
)
async def test_longest_prefix(mounted: list[str], path: str, expected: Any) -> None:
    table = await make_table()
    for p in mounted:
        await table.enable(p, "rec")
    found = table.match(path)
    assert (None if found is None else (found[0].entry.path, found[1])) == expected


@pytest.mark.parametrize(
    ("first", "second"),
    [("jwt", "jwt"), ("jwt", "jwt/sub"), ("team/jwt", "team"), ("token/x", None)],
    ids=["duplicate", "nested below", "nested above", "below token/"],
)
async def test_nested_mounts_refused(first: str, second: str | None) -> None:
    table = await make_table()
    if second is None:
        first, second = "jwt", first
        await table.enable(first, "rec")
        conflict = "token/"
    else:
        await table.enable(first, "rec")
        conflict = normalize_path(first)
    with pytest.raises(InvalidRequest, match=f"path is already in use at {conflict}$"):
        await table.enable(second, "rec")


async def test_unknown_type_names_it() -> None:
    table = await make_table()
    with pytest.raises(InvalidRequest, match="plugin not found in the catalog: nosuch"):
        await table.enable("x", "nosuch")


async def test_persisted_and_reloaded() -> None:
    storage = InMemoryStorage()
    table = await make_table(storage)
    entry = await table.enable("team-a/jwt", "rec", description="d", config={"default_lease_ttl": "1h"})
    again = await make_table(storage)
    loaded = again.mounts["team-a/jwt/"].entry
    assert (loaded.uuid, loaded.accessor, loaded.description) == (entry.uuid, entry.accessor, "d")
    assert loaded.config["default_lease_ttl"] == 3600
    assert again.mounts["token/"].entry.uuid == table.mounts["token/"].entry.uuid


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"default_lease_ttl": "1h", "max_lease_ttl": "2h"}, nullcontext((3600, 7200))),
        ({"default_lease_ttl": "3h", "max_lease_ttl": "2h"}, pytest.raises(
            InvalidRequest, match="^backend max lease TTL of 7200 would be less than backend default lease TTL of 10800$")),
        ({"max_lease_ttl": "999h"}, nullcontext((32 * DAY, 999 * 3600))),  # a mount's max overrides the server's
        ({"token_type": "nope"}, pytest.raises(InvalidRequest, match="invalid value for 'token_type'")),
        ({"default_lease_ttl": "-1s"}, pytest.raises(InvalidRequest, match="negative")),
        ({"default_lease_ttl": "system"}, nullcontext((32 * DAY, 32 * DAY))),
        ({"default_lease_ttl": "1h", "max_lease_ttl": ""}, nullcontext((3600, 32 * DAY))),
    ],
    ids=["ok", "default > max", "above system max", "bad token_type", "negative", "system resets", "empty is kept"],
)
async def test_tune(values: dict[str, Any], expected: Any) -> None:
    table = await make_table()
    await table.enable("jwt", "rec")
    before = dict(table.mounts["jwt/"].entry.config)
    with expected as ttls:
        await table.tune("jwt", values)
        mount = table.mounts["jwt/"]
        assert table.effective_ttls(mount.entry) == ttls
        assert (mount.system.default_lease_ttl, mount.system.max_lease_ttl) == ttls
        return
    assert table.mounts["jwt/"].entry.config == before  # a failed tune changes nothing


async def test_an_empty_value_on_a_tune_keeps_the_ttl_and_resets_the_token_type() -> None:
    """Vault's tune: ``""`` leaves a TTL as it is (the CLI sends both TTLs on every tune);
    ``token_type: ""`` is ``default-service``."""
    table = await make_table()
    await table.enable("jwt", "rec", config={"default_lease_ttl": "1h", "max_lease_ttl": "2h", "token_type": "batch"})
    await table.tune("jwt", {"default_lease_ttl": "30m", "max_lease_ttl": ""})
    entry = table.mounts["jwt/"].entry
    assert table.effective_ttls(entry) == (1800, 7200) and entry.config["token_type"] == "batch"
    await table.tune("jwt", {"default_lease_ttl": "", "max_lease_ttl": None, "token_type": ""})
    assert table.effective_ttls(entry) == (1800, 7200)
    assert table.mounts["jwt/"].entry.config["token_type"] == "default-service"
    fresh = await table.enable("other", "rec", config={"default_lease_ttl": "", "token_type": ""})
    assert table.effective_ttls(fresh) == (32 * DAY, 32 * DAY) and fresh.config["token_type"] == "default-service"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"default_lease_ttl": "3h", "max_lease_ttl": "2h"},
         pytest.raises(InvalidRequest, match="^given default lease TTL greater than given max lease TTL$")),
        ({"default_lease_ttl": "999h"},
         pytest.raises(InvalidRequest, match="^given default lease TTL greater than system max lease TTL of 2764800$")),
        ({"default_lease_ttl": "999h", "max_lease_ttl": "1000h"}, nullcontext((999 * 3600, 1000 * 3600))),
        ({"max_lease_ttl": "999h"}, nullcontext((32 * DAY, 999 * 3600))),
    ],
    ids=["default > max", "default > system max", "both above system max", "max above system max"],
)
async def test_enable_checks_ttls_as_openbao(config: dict[str, Any], expected: Any) -> None:
    """OpenBao 2.7.2's checks at enable; a tune checks only a max below the default."""
    table = await make_table()
    with expected as ttls:
        entry = await table.enable("jwt", "rec", config=config)
        assert table.effective_ttls(entry) == ttls
        return
    assert "jwt/" not in table.mounts


async def test_a_new_mount_never_takes_a_live_or_retired_accessor(monkeypatch: pytest.MonkeyPatch) -> None:
    """An accessor names one mount for good: a new mount that draws the accessor of a live
    mount, or of a disabled one (whose revocation epoch kills its tokens), draws again."""
    retired_accessors = {"auth_rec_00000002"}

    async def retired(accessor: str) -> bool:
        return accessor in retired_accessors

    table = await make_table(retired=retired)
    draws = iter(["00000001", "00000001", "00000002", "00000001", "00000003"])
    monkeypatch.setattr("server.mounts.secrets.token_hex", lambda n: next(draws))
    first = await table.enable("a", "rec")
    second = await table.enable("b", "rec")  # draws 1 (live), 2 (retired), 1 (live), then 3
    assert (first.accessor, second.accessor) == ("auth_rec_00000001", "auth_rec_00000003")
    assert table.has_accessor("auth_rec_00000003") and not table.has_accessor("auth_rec_00000002")


async def test_disable_deletes_storage_revokes_and_cleans_up() -> None:
    storage = InMemoryStorage()
    revoked: list[str] = []

    async def on_disable(entry: MountEntry) -> None:
        revoked.append(entry.accessor)

    table = await make_table(storage, on_disable=on_disable)
    entry = await table.enable("jwt", "rec")
    mount = table.mounts["jwt/"]
    assert isinstance(mount.backend, RecordingBackend)
    await mount.storage.put("config", {"x": 1})
    await storage.put("auth/other/keep", 1)
    assert await table.disable("/jwt/") is True
    assert revoked == [entry.accessor]
    assert await storage.get(f"auth/{entry.uuid}/config") is None
    assert await storage.get("auth/other/keep") == 1
    assert mount.backend.cleaned
    assert table.match("jwt/login") is None
    assert await table.disable("jwt") is False  # missing mount: not an error


async def test_a_request_in_flight_keeps_its_mounts_system_view_after_a_disable() -> None:
    """A role write that had its mount when it started read the mount's TTLs through its
    SystemView after another request disabled the mount: a ``KeyError``, a 500 (found by a
    concurrent campaign). The view now answers for its own mount, also when another mount
    is enabled at the same path since."""
    table = await make_table()
    await table.enable("jwt", "rec")
    await table.tune("jwt", {"max_lease_ttl": "2h", "default_lease_ttl": "1h"})
    old = table.mounts["jwt/"].system
    accessor = old.mount_accessor
    assert await table.disable("jwt")
    assert (old.default_lease_ttl, old.max_lease_ttl, old.mount_accessor) == (3600, 7200, accessor)
    await table.enable("jwt", "rec")  # another mount at the same path
    assert (old.max_lease_ttl, old.mount_accessor) == (7200, accessor)
    assert table.mounts["jwt/"].system.max_lease_ttl == 32 * DAY


async def test_failed_write_leaves_table_intact() -> None:
    table = await make_table()
    await table.enable("jwt", "rec")
    snapshot = dict(table.mounts)
    with pytest.raises(InvalidRequest):
        await table.enable("jwt/nested", "rec")
    assert table.mounts == snapshot
    stored = await table.storage.get(MOUNTS_KEY)
    assert stored is not None
    assert [e["path"] for e in stored["entries"]] == ["token/", "jwt/"]


async def test_invalidation_reaches_backend_and_reloads_table() -> None:
    storage = InMemoryStorage()
    node_a = await make_table(storage)
    node_b = await make_table(storage)
    entry = await node_a.enable("jwt", "rec")
    node_b.invalidate(MOUNTS_KEY)
    reload = node_b._refresh._task  # the invalidation itself started the re-read
    assert reload is not None and not reload.done()
    await reload
    mount_b = node_b.mounts["jwt/"]
    assert isinstance(mount_b.backend, RecordingBackend)
    node_b.invalidate(f"auth/{entry.uuid}/config")
    assert mount_b.backend.invalidated == ["config"]
    await node_a.disable("jwt")
    node_b.invalidate(MOUNTS_KEY)
    reload = node_b._refresh._task
    assert reload is not None and not reload.done()
    await reload
    assert "jwt/" not in node_b.mounts and mount_b.backend.cleaned


async def test_built_in_tuning_lives_beside_the_mounts() -> None:
    """``tune_builtin`` (sys/mounts/sys/tune): kept in the table's document, so another node
    sees it on the table's announcement, and no later change of a mount drops it."""
    storage = InMemoryStorage()
    node_a, node_b = await make_table(storage), await make_table(storage)
    await node_a.tune_builtin("sys/", {"audit_non_hmac_request_keys": "policy, name"})
    await node_a.enable("jwt", "rec")
    await node_a.tune("jwt", {"default_lease_ttl": "1h"})
    await node_a.disable("jwt")
    node_b.invalidate(MOUNTS_KEY)
    reload = node_b._refresh._task
    assert reload is not None
    await reload
    assert node_b.builtin == {"sys/": {"audit_non_hmac_request_keys": ["policy", "name"]}}
    with pytest.raises(InvalidRequest, match="^cannot tune parameter description of identity/$"):
        await node_b.tune_builtin("identity/", {"audit_non_hmac_response_keys": ["x"], "description": "d"})
    with pytest.raises(InvalidRequest, match="must be a list of strings"):
        await node_b.tune_builtin("identity/", {"audit_non_hmac_response_keys": [1]})
    await node_b.tune_builtin("sys/", {"audit_non_hmac_request_keys": []})
    assert node_b.builtin == {"sys/": {}} and (await make_table(storage)).builtin == {"sys/": {}}


async def test_sys_auth_shape() -> None:
    table = await make_table()
    entry = await table.enable("jwt", "rec", description="hello")
    public = entry.public()
    assert set(public) == {"accessor", "config", "description", "local", "options", "plugin_version",
                           "running_plugin_version", "running_sha256", "seal_wrap", "external_entropy_access",
                           "type", "uuid", "deprecation_status"}
    assert public["config"]["token_type"] == "default-service"


class SharedStorage(InMemoryStorage):
    """Storage written by several nodes whose change notifications never arrive."""

    shared = True


async def test_a_tune_keeps_another_nodes_tune_it_has_not_heard_of() -> None:
    """Node B tunes from the stored entry, not from its own copy: node A's tune a moment
    before (its announcement still on the way) is kept, not written over with B's old values."""
    storage = SharedStorage()
    a, b = await make_table(storage), await make_table(storage)
    await a.enable("jwt", "rec", config={"default_lease_ttl": "1h", "max_lease_ttl": "2h"}, description="first")
    await b.reload()
    await a.tune("jwt", {"default_lease_ttl": "30m", "options": {"a": "1"}})
    assert b.mounts["jwt/"].entry.config["default_lease_ttl"] == 3600  # b has not heard
    entry = await b.tune("jwt", {"description": "second", "options": {"b": "2"}})
    assert (entry.config["default_lease_ttl"], entry.config["max_lease_ttl"]) == (1800, 7200)
    assert entry.description == "second" and entry.options == {"a": "1", "b": "2"}
    before = await storage.get(MOUNTS_KEY)
    with pytest.raises(InvalidRequest, match="^backend max lease TTL of 900 would be less than .* of 1800$"):
        await b.tune("jwt", {"max_lease_ttl": "15m"})  # judged against the stored 30 m default
    assert await storage.get(MOUNTS_KEY) == before  # a refused tune writes nothing
    await a.tune("jwt", {"default_lease_ttl": "2h"})
    assert b.mounts["jwt/"].entry.config["default_lease_ttl"] == 1800  # b has not heard
    with pytest.raises(InvalidRequest, match="^backend max lease TTL of 5400 would be less than .* of 7200$"):
        await b.tune("jwt", {"max_lease_ttl": "90m"})  # fine by b's copy; the stored 2 h default counts


@pytest.mark.parametrize("shared", [True, False], ids=["shared storage", "single node"])
async def test_a_mount_made_on_another_node_is_found_on_a_miss(shared: bool) -> None:
    """Node B must not answer 404 for a mount node A has just made while A's notification is
    still on the way (a client behind a load balancer mounts, then configures). With one
    node nothing else writes, so a miss is a miss and costs no storage read."""
    storage = SharedStorage() if shared else InMemoryStorage()
    a, b = await make_table(storage), await make_table(storage)
    await a.enable("ci/jwt", "rec")
    assert b.match("ci/jwt/config") is None  # no notification reached b
    found = await b.match_fresh("ci/jwt/config")
    assert (found is not None and found[1] == "config") is shared
    assert ((await b.get_fresh("ci/jwt/")) is not None) is shared
    assert await b.match_fresh("nope/login") is None and await b.get_fresh("nope/") is None
    # Concurrent misses share one read of the table.
    reads = count_reads(storage)
    await asyncio.gather(*(b.match_fresh("missing/login") for _ in range(20)))
    assert len(reads) == (1 if shared else 0)


async def test_disable_and_tune_judge_the_stored_table_not_the_nodes_copy() -> None:
    """Node B disables and tunes a mount node A made a moment ago (no announcement reached
    B): both act on it, where B's copy alone made the disable a silent no-op (204, the mount
    left in place) and the tune a refusal. Of two nodes disabling one mount, one does it:
    its tokens are revoked once."""
    storage = SharedStorage()
    disabled: list[list[str]] = [[], []]
    a, b = await make_table(storage), await make_table(storage)
    for table, seen in zip((a, b), disabled, strict=True):

        async def on_disable(entry: MountEntry, seen: list[str] = seen) -> None:
            seen.append(entry.accessor)

        table.on_disable = on_disable
    entry = await a.enable("ci/jwt", "rec", config={"default_lease_ttl": "1h"})
    await storage.put(f"auth/{entry.uuid}/role/x", {"k": 1})
    assert b.get("ci/jwt/") is None  # b has not heard
    tuned = await b.tune("ci/jwt", {"default_lease_ttl": "30m"})
    assert tuned.config["default_lease_ttl"] == 1800 and tuned.accessor == entry.accessor
    await a.enable("other", "rec")
    assert await b.disable("other") is True
    stored = await storage.get(MOUNTS_KEY)
    assert isinstance(stored, dict) and [e["path"] for e in stored["entries"]] == ["token/", "ci/jwt/"]
    assert (await a.disable("ci/jwt"), await b.disable("ci/jwt")) == (True, False)
    assert disabled[0] == [entry.accessor] and len(disabled[1]) == 1  # b disabled "other" only
    assert await storage.list(f"auth/{entry.uuid}/") == []
    before = await storage.get(MOUNTS_KEY)
    assert await b.disable("ci/jwt") is False
    with pytest.raises(InvalidRequest, match='^tune of path "auth/ci/jwt/" failed: no mount entry found$'):
        await b.tune("ci/jwt", {"default_lease_ttl": "1m"})
    assert await storage.get(MOUNTS_KEY) == before  # neither wrote anything
    assert b.get("ci/jwt/") is None and a.get("ci/jwt/") is None
