"""Fixtures shared by the end-to-end modules that log in through the real IdP: one loopback
callback listener and one node-oidc-provider per module (a module's own fixture of the same
name overrides these)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.browser import CallbackListener
from tests.e2e.idp import IdP, idp_available, start_idp


@pytest.fixture(scope="module")
def listener() -> Iterator[CallbackListener]:
    """The redirect target of the OIDC flow, on a free loopback port."""
    with CallbackListener() as lst:
        yield lst


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory, listener: CallbackListener) -> Iterator[IdP]:
    """node-oidc-provider allowing ``listener``'s URL as a redirect URI (skips without Node)."""
    reason = idp_available()
    if reason:
        pytest.skip(reason)
    server = start_idp(tmp_path_factory.mktemp("idp"), redirect_uris=[listener.url])
    yield server
    server.stop()
