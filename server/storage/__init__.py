"""Storage engines behind the plugin ``Storage`` protocol: memory, SQLite, PostgreSQL.

INTERFACE STUB — owned by the storage work.

``open_storage(settings)`` returns an object implementing ``plugin.storage.Storage`` plus
``async close()`` and ``set_invalidation_callback(cb)``: ``cb(key)`` is called when another
node changes ``key`` (PostgreSQL LISTEN/NOTIFY); single-node engines never call it.
"""
