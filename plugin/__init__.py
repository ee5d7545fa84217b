"""authmount's auth methods: framework-free backends behind ``handle_request``.

Importing this package does nothing by itself. The mountable types are declared in
``plugin.registry`` (``jwt`` and ``oidc``, both ``plugin.backend.JWTAuthBackend``); the
protocol between server and backends is ``plugin.framework``.
"""
