"""Fixtures every test package may use: a real PostgreSQL server (``postgres_server``,
``postgres_dsn``; see ``tests/pg.py``) and a real dev-mode authmount process
(``dev_server``; see ``tests/e2e/serverproc.py``). Helpers are imported as modules of the
``tests`` package (``from tests.plugin.keyfactory import rsa_key``), never by bare name."""

from __future__ import annotations

from tests.e2e.serverproc import dev_server
from tests.pg import postgres_dsn, postgres_server

__all__ = ["dev_server", "postgres_dsn", "postgres_server"]
