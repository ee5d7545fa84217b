"""An in-memory index of keys by folder, so Vault-style ``list`` costs O(children), not O(keys)."""

from __future__ import annotations

__all__ = ["KeyTree"]


def _split(key: str) -> tuple[str, str]:
    """``"a/b/c"`` → ``("a/b/", "c")``: the folder holding a key and its leaf name."""
    cut = key.rfind("/") + 1
    return key[:cut], key[cut:]


class KeyTree:
    """Maps each key to an int (its row id) and keeps the folder structure of all keys.

    ``_folders[folder]`` maps child names to values: a leaf name (no ``/``) maps to the
    key's row id, a sub-folder name (ending with ``/``) to 0. A folder exists only while
    it has children, so adding or removing a key under an existing folder is O(1).
    Single dict operations are atomic under the GIL, so one thread may write while
    another reads; ``list`` copies a folder's names in one call before using them.
    """

    def __init__(self) -> None:
        self._folders: dict[str, dict[str, int]] = {}
        self.size = 0

    def get(self, key: str) -> int | None:
        """The value stored for ``key``, or None."""
        parent, name = _split(key)
        folder = self._folders.get(parent)
        return folder.get(name) if folder is not None else None

    def set(self, key: str, value: int) -> None:
        """Add ``key`` or change its value."""
        parent, name = _split(key)
        folder = self._folders.get(parent)
        if folder is None:
            folder = self._folders[parent] = {}
            self._link(parent)
        if name not in folder:
            self.size += 1
        folder[name] = value

    def _link(self, path: str) -> None:
        """Register the new folder ``path`` in its parent folders (creating them)."""
        while path:
            parent, child = _split(path[:-1])
            folder = self._folders.get(parent)
            created = folder is None
            if folder is None:
                folder = self._folders[parent] = {}
            folder[child + "/"] = 0
            if not created:
                return
            path = parent

    def remove(self, key: str) -> bool:
        """Drop ``key``; return whether it was present."""
        parent, name = _split(key)
        folder = self._folders.get(parent)
        if folder is None or name not in folder:
            return False
        del folder[name]
        self.size -= 1
        # A folder exists only while it has children: unlink emptied ones upwards.
        while not folder and parent:
            del self._folders[parent]
            parent, child = _split(parent[:-1])
            folder = self._folders[parent]
            del folder[child + "/"]
        return True

    def list(self, prefix: str) -> list[str]:
        """Immediate children under ``prefix``, as ``plugin.storage.list_children`` defines."""
        parent, partial = _split(prefix)
        folder = self._folders.get(parent)
        if not folder:
            return []
        names = list(folder)  # one atomic copy: the writer thread may change the folder
        if not partial:
            return sorted(n for n in names if n)
        cut = len(partial)
        found = {n[cut:] for n in names if n.startswith(partial)}
        found.discard("")
        return sorted(found)

    def items_with_prefix(self, prefix: str) -> dict[str, int]:
        """Every ``key: value`` whose key starts with ``prefix``."""
        parent, partial = _split(prefix)
        folder = self._folders.get(parent)
        if not folder:
            return {}
        out: dict[str, int] = {}
        todo: list[str] = []
        for name, value in list(folder.items()):
            if name.startswith(partial):
                if name.endswith("/"):
                    todo.append(parent + name)
                else:
                    out[parent + name] = value
        while todo:
            path = todo.pop()
            for name, value in list(self._folders.get(path, {}).items()):
                if name.endswith("/"):
                    todo.append(path + name)
                else:
                    out[path + name] = value
        return out
