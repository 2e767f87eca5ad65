"""Read-only access to a raw dataset folder at any fsspec URL, where a missing or unreadable file is bad input.

Raw datasets carry names our output storage would refuse (nuScenes files contain '+'), so this reads them as they
are; everything we write goes through `sas_ray.storage.Storage`. Reads go through storage's one retry layer.
"""

from __future__ import annotations

import json

from sas_ray.errors import InputError
from sas_ray.storage import filesystem, retrying


def read_url(url: str, options: dict | None, unit: str) -> bytes:
    """Bytes at a full URL; a missing file raises InputError naming `unit` and the URL."""
    fs, path = filesystem(url, options)
    try:
        return retrying(f"{unit}: reading {url}", lambda: fs.cat_file(path))
    except (FileNotFoundError, IsADirectoryError):
        raise InputError(f"{unit}: {url} not found") from None


class RawTree:
    """A raw dataset root URL plus the fsspec options that reach it."""

    def __init__(self, root: str, options: dict | None = None):
        self.options = dict(options or {})
        self.root_url = root.rstrip("/")
        self.fs, path = filesystem(root, self.options)
        self.root_path = path.rstrip("/")

    def url(self, *parts: str) -> str:
        return "/".join([self.root_url, *parts])

    def _path(self, *parts: str) -> str:
        return "/".join([self.root_path, *parts])

    def read(self, rel: str, unit: str) -> bytes:
        """Bytes of `rel`; a missing file raises InputError naming `unit` and the URL."""
        try:
            return retrying(f"{unit}: reading {self.url(rel)}", lambda: self.fs.cat_file(self._path(rel)))
        except (FileNotFoundError, IsADirectoryError):
            raise InputError(f"{unit}: {self.url(rel)} not found") from None

    def read_many(self, rels: list[str], unit: str) -> list[bytes]:
        """Bytes of several files in one call (concurrent on object stores), in the order given; a file that call
        could not read is read again alone (retried, or an InputError naming it)."""
        paths = [self._path(r) for r in rels]
        found = self.fs.cat(paths, on_error="return") if paths else {}
        return [data if isinstance(data := found.get(path), bytes) else self.read(rel, unit)
                for rel, path in zip(rels, paths)]

    def list(self, rel: str) -> list[str]:
        """Sorted names directly under folder `rel` ([] if it does not exist)."""
        try:
            entries = retrying(f"listing {self.url(rel)}", lambda: self.fs.ls(self._path(rel), detail=False))
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def exists(self, rel: str) -> bool:
        return retrying(f"checking {self.url(rel)}", lambda: self.fs.exists(self._path(rel)))


_TABLES: dict[tuple, object] = {}
_TABLES_KEPT = 4


def cached_table(what: str, root: str, options: dict | None, build):
    """`build()` once per (what, root, options) in a process, for dataset-wide tables read by many scenes (a
    Matterport building's cameras, the nuScenes keyframe index). Keeps the last few only; a dataset edited while
    the process runs is not re-read."""
    key = (what, root, json.dumps(options or {}, sort_keys=True, default=repr))
    if key not in _TABLES:
        while len(_TABLES) >= _TABLES_KEPT:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = build()
    return _TABLES[key]
