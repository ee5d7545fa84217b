"""Redirect URIs of the OIDC flow (``plugin/oidc_redirect.py``) at their edges, beyond the
table in test_path_oidc.py: URIs without an authority, IPv6 hosts, where the path starts,
unparseable candidates, the mount a redirect URI names and the ``namespace`` parameter
(issue 16; found by mutation testing, docs/mutation.md)."""

from __future__ import annotations

import pytest

from plugin.oidc_redirect import parse_mount, split_namespace, valid_redirect


@pytest.mark.parametrize(("uri", "allowed", "ok"), [
    ("https://app/cb\x7f", ["https://app/cb\x7f"], False),  # DEL, like any control character
    ("urn:ietf:wg:oauth:2.0:oob", ["urn:ietf:wg:oauth:2.0:oob"], True),  # no authority: exact only
    ("URN:ietf:wg:oauth:2.0:oob", ["urn:ietf:wg:oauth:2.0:oob"], False),
    ("https://[2001:db8::1]:8200/cb", ["https://[2001:db8::2]:8200/cb"], False),
    ("https://[2001:db8::1]:8200/cb", ["https://[2001:db8::1]:8201/cb"], False),
    ("https://app/cb", ["https://app?cb"], False),  # the path starts right after the authority
    ("https://app/cb", ["https://app#cb"], False),
    ("http://127.0.0.1:9999/cb", ["http://[::1", "http://127.0.0.1/cb"], True),  # an unparseable candidate is skipped
    ("http://127.0.0.1:9999/cb", ["http://[::1"], False),
])
def test_valid_redirect_edges(uri: str, allowed: list[str], ok: bool) -> None:
    assert valid_redirect(uri, allowed) is ok


@pytest.mark.parametrize(("uri", "mount"), [
    ("https://vault/v1/auth/jwt/", "jwt"),
    ("https://vault/v1/auth//v1/auth/oidc/cb", "oidc"),  # an empty segment names no mount
    ("https://vault/v1/secret/oidc/cb", ""),
    ("https://vault/x/auth/oidc/cb", ""),
    ("http://[::1/v1/auth/oidc/cb", ""),  # does not parse
])
def test_parse_mount_edges(uri: str, mount: str) -> None:
    assert parse_mount(uri) == mount


@pytest.mark.parametrize(("uri", "rest", "namespace"), [
    ("https://app/cb?namespace=team-a&empty=&x=1#f", "https://app/cb?empty=&x=1#f", "team-a"),
    ("https://app/cb?namespace=", "https://app/cb", ""),
    ("https://app/cb?empty=", "https://app/cb?empty=", ""),
])
def test_split_namespace(uri: str, rest: str, namespace: str) -> None:
    assert split_namespace(uri) == (rest, namespace)
