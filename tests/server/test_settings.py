"""Settings: defaults, YAML loading and validation errors that name the bad key."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from server.settings import SettingsError, dev_settings, load_settings, settings_from_mapping

REPO = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    s = settings_from_mapping({})
    assert s.listen_address == "127.0.0.1:8200"
    assert (s.storage.type, s.storage.path) == ("sqlite", "data/authmount.db")
    assert s.default_lease_ttl == s.max_lease_ttl == 768 * 3600
    assert s.max_request_size == 1 << 20
    assert s.workers == 1 and s.log_format == "json" and s.trusted_proxies == ()
    assert s.event_loop == "asyncio"  # fair under overload; uvloop is opt-in (performance.md)


def test_full_mapping() -> None:
    s = settings_from_mapping({
        "listen_address": "0.0.0.0:9000", "storage": {"type": "postgres", "dsn": "postgresql://x/y", "pool_size": 3},
        "default_lease_ttl": "1h", "max_lease_ttl": "2h", "log_level": "DEBUG", "log_format": "console",
        "trusted_proxies": ["10.0.0.0/8", "::1"], "x_forwarded_for_hop_skips": 1,
        "mounts": [{"path": "jwt", "type": "jwt", "tune": {"default_lease_ttl": "1h"},
                    "config": {"bound_issuer": "x"}, "roles": {"r": {"user_claim": "sub"}}}],
        "policies": {"p": 'path "x" { capabilities = ["read"] }', "q": {"path": {"y": {"capabilities": ["list"]}}}},
    })
    assert s.host_port == ("0.0.0.0", 9000)
    assert s.storage.as_mapping() == {"type": "postgres", "path": "", "dsn": "postgresql://x/y", "pool_size": 3}
    assert (s.default_lease_ttl, s.max_lease_ttl, s.log_level) == (3600, 7200, "debug")
    assert s.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert s.mounts[0].roles == {"r": {"user_claim": "sub"}}
    assert s.policies["q"].startswith("{")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"storage": {"type": "redis"}}, "storage.type: must be one of memory, sqlite, postgres"),
        ({"storage": {"type": "postgres"}}, "storage.dsn: required"),
        ({"storage": {"bogus": 1}}, "storage.bogus: unknown setting"),
        ({"listen": "x"}, "listen: unknown setting"),
        ({"listen_address": "nohost"}, "listen_address: must be host:port"),
        ({"listen_address": "h:99999"}, "listen_address: port"),
        ({"api_addr": "ftp://authmount.example.com"}, "api_addr: must be a URL of scheme, host and optional port"),
        ({"api_addr": "https://authmount.example.com/v1"}, "api_addr: must be a URL of scheme, host and optional port"),
        ({"api_addr": "https://authmount.example.com:99999"}, "api_addr: must be a URL of scheme, host"),
        ({"api_addr": 8200}, "api_addr: must be a string"),
        ({"default_lease_ttl": "forever"}, "default_lease_ttl: invalid duration"),
        ({"default_lease_ttl": "2h", "max_lease_ttl": "1h"}, "default_lease_ttl: must not be greater"),
        ({"log_format": "xml"}, "log_format: must be one of json, console"),
        ({"event_loop": "trio"}, "event_loop: must be one of asyncio, uvloop"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies[0]: invalid CIDR"),
        ({"workers": 0}, "workers: must be an integer >= 1"),
        ({"max_request_size": "big"}, "max_request_size: must be an integer"),
        ({"mounts": [{"type": "jwt"}]}, "mounts[0].path: required string"),
        ({"mounts": [{"path": "a", "type": "jwt", "roles": ["x"]}]}, "mounts[0].roles: must map"),
        ({"mounts": [{"path": "a", "type": "jwt", "colour": 1}]}, "mounts[0].colour: unknown setting"),
        ({"policies": {"p": 3}}, "policies.p: must be HCL or JSON text"),
        ([1, 2], "settings: must be a mapping"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_errors_name_the_key(raw: Any, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(raw)
    assert str(info.value).startswith(message)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: [unclosed\n")
    with pytest.raises(SettingsError, match="invalid YAML"):
        load_settings(bad)
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["dev.yaml", "postgres.yaml", "seeded.yaml"])
def test_shipped_configs_load(name: str) -> None:
    s = load_settings(REPO / "configs" / name)
    assert s.storage.type in ("sqlite", "postgres")


def test_dev_settings() -> None:
    s = dev_settings("myroot", "127.0.0.1:0")
    assert s.dev and s.storage.type == "memory" and s.dev_root_token_id == "myroot"
    with pytest.raises(SettingsError, match="dev-listen-address"):
        dev_settings("", "nope")


@pytest.mark.parametrize(("value", "expected"), [("asyncio", None), ("UVLOOP", "uvloop")])
def test_event_loop_setting_picks_the_loop(value: str, expected: str | None) -> None:
    from server.cli import _loop_factory

    s = settings_from_mapping({"event_loop": value})
    factory = _loop_factory(s.event_loop)
    if expected is None:
        assert factory is None  # asyncio.Runner's default: the standard library loop
    else:
        uvloop = pytest.importorskip("uvloop")
        assert factory is uvloop.new_event_loop
