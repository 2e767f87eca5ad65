"""Object storage for every stage: URLs -> fsspec, atomic writes, content hashes, per-stage manifests.

A reader never sees a half-written object: local files are written under a temporary name and renamed; object
stores (s3://) get a single PUT, which is atomic by the store's semantics. Relative paths are built only from
safe components, so a unit id can never escape the output root.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import uuid
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from sas_ray.errors import InputError, StorageError
from sas_ray.ids import check_id

_RETRY_ATTEMPTS = 5
_RETRY_BASE_S = 0.2
TMP_PREFIX = ".tmp-"  # a local write in flight; renamed into place when complete
STALE_TMP_S = 3600.0  # no single write lasts this long: an older temporary is left by a killed writer


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _retrying(what: str, fn):
    """Run `fn` with exponential backoff on transient errors; raise StorageError naming `what` when exhausted."""
    for attempt in range(_RETRY_ATTEMPTS):
        try:
            return fn()
        except (FileNotFoundError, InputError, PermissionError, IsADirectoryError):
            raise
        except OSError as err:  # s3fs maps throttling/5xx/timeouts to OSError subclasses
            if attempt == _RETRY_ATTEMPTS - 1:
                raise StorageError(f"{what}: failed after {_RETRY_ATTEMPTS} attempts: {err}") from err
            time.sleep(_RETRY_BASE_S * 2**attempt)


def absolute_root(root: str) -> str:
    """`root` with a relative local path made absolute (URLs unchanged): Ray workers run in their own working
    directory, so a path handed to them must not depend on the driver's."""
    return root if "://" in root else os.path.abspath(root)


class Storage:
    """A root URL (local path, file://, s3://bucket/prefix, memory://...) and the fsspec options to reach it."""

    def __init__(self, root: str, options: dict | None = None):
        self.options = dict(options or {})
        self.fs, path = fsspec.core.url_to_fs(root, **self.options)
        self.root = path.rstrip("/")
        self.root_url = root.rstrip("/")
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def child(self, *parts: str) -> Storage:
        """A Storage rooted at a sub-folder."""
        return Storage(self.url(*parts), self.options)

    def _path(self, rel: str) -> str:
        if not rel:
            raise StorageError(f"empty path under {self.root_url}")
        if rel.startswith("/"):
            raise StorageError(f"{rel!r}: absolute paths are not safe under {self.root_url}")
        parts = rel.split("/")
        for p in parts:
            check_id(p, "path component")
        return "/".join([self.root, *parts])

    def url(self, *parts: str) -> str:
        """Full URL of a relative path (for messages and for readers outside this class)."""
        rel = "/".join(parts)
        if not rel:
            return self.root_url
        path = self._path(rel)
        return self.root_url + path[len(self.root):]

    # -- bytes -------------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> str:
        """Atomically write `data` at `rel`; returns its sha256."""
        path = self._path(rel)

        def put() -> None:
            parent = path.rsplit("/", 1)[0]
            if self.is_local:
                self.fs.makedirs(parent, exist_ok=True)
                tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}"
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.remove(tmp)
                    raise
            else:
                self.fs.pipe_file(path, data)

        _retrying(f"writing {self.url(rel)}", put)
        return sha256_bytes(data)

    def read_bytes(self, rel: str) -> bytes:
        path = self._path(rel)
        try:
            return _retrying(f"reading {self.url(rel)}", lambda: self.fs.cat_file(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(rel)}: no such object") from None

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object (a header without the body)."""
        path = self._path(rel)
        try:
            return _retrying(f"reading {self.url(rel)}", lambda: self.fs.cat_file(path, start=start, end=end))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(rel)}: no such object") from None

    def exists(self, rel: str) -> bool:
        path = self._path(rel)
        return bool(_retrying(f"checking {self.url(rel)}", lambda: self.fs.exists(path)))

    def delete(self, rel: str) -> None:
        path = self._path(rel)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def list(self, rel: str = "") -> list[str]:
        """Names directly under a folder (empty if it does not exist)."""
        path = self._path(rel) if rel else self.root
        try:
            self.fs.invalidate_cache(path)
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries
                      if not e.rsplit("/", 1)[-1].startswith(TMP_PREFIX))

    def sweep_temporaries(self, older_than_s: float = STALE_TMP_S) -> int:
        """Remove the temporaries that killed writers left anywhere under this local root (object stores have none:
        a PUT is whole or absent); returns how many. Younger ones may be writes in flight and stay."""
        if not self.is_local or not os.path.isdir(self.root):
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    if name.startswith(TMP_PREFIX) and os.path.getmtime(path) < cutoff:
                        os.remove(path)
                        removed += 1
        return removed

    def sha256(self, rel: str) -> str:
        return sha256_bytes(self.read_bytes(rel))

    # -- tensors (safetensors) ---------------------------------------------------------------------------
    def write_tensors(self, rel: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
        blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
        return self.write_bytes(rel, blob)

    def read_tensors(self, rel: str) -> dict[str, torch.Tensor]:
        return load_tensors(self.read_bytes(rel), self.url(rel))

    def read_tensor_metadata(self, rel: str) -> dict[str, str]:
        """The safetensors `__metadata__`, reading only the header."""
        size = int.from_bytes(self.read_range(rel, 0, 8), "little")
        return tensor_metadata(self.read_range(rel, 0, 8 + size), self.url(rel))

    # -- tables (parquet) --------------------------------------------------------------------------------
    def write_table(self, rel: str, table: pa.Table) -> str:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return self.write_bytes(rel, sink.getvalue())

    def read_table(self, rel: str) -> pa.Table:
        data = self.read_bytes(rel)
        try:
            return pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as err:
            raise InputError(f"{self.url(rel)}: not a valid parquet file: {err}") from None

    # -- json --------------------------------------------------------------------------------------------
    def write_json(self, rel: str, obj) -> str:
        return self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, rel: str):
        try:
            return json.loads(self.read_bytes(rel))
        except json.JSONDecodeError as err:
            raise InputError(f"{self.url(rel)}: not valid JSON: {err}") from None


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Raw size of a tensor dict (what a manifest row records as `bytes`)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def load_tensors(blob: bytes, source: str) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; a corrupt blob is an InputError naming `source`."""
    try:
        return st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise InputError(f"{source}: not a valid safetensors file: {err}") from None


def tensor_metadata(blob: bytes, source: str) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob without materialising tensors."""
    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n])
    except (ValueError, json.JSONDecodeError) as err:
        raise InputError(f"{source}: not a valid safetensors file: {err}") from None
    return header.get("__metadata__", {}) or {}


MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("status", pa.string()),  # "ok" or "error"
    ("error", pa.string()),
    ("path", pa.string()),  # output object relative to the stage folder ("" if none)
    ("bytes", pa.int64()),
    ("seconds", pa.float64()),
    ("sha256", pa.string()),
    ("config_hash", pa.string()),
])


@dataclass(frozen=True)
class UnitResult:
    """One manifest row: what happened to one unit of work."""

    id: str
    status: str
    error: str = ""
    path: str = ""
    bytes: int = 0
    seconds: float = 0.0
    sha256: str = ""
    config_hash: str = ""

    @staticmethod
    def ok(unit_id: str, path: str, sha256: str, nbytes: int, seconds: float, config_hash: str = "") -> UnitResult:
        return UnitResult(unit_id, "ok", "", path, nbytes, seconds, sha256, config_hash)

    @staticmethod
    def failed(unit_id: str, error: str, seconds: float = 0.0, config_hash: str = "") -> UnitResult:
        return UnitResult(unit_id, "error", error, "", 0, seconds, "", config_hash)


class Manifest:
    """`{stage}/manifest.parquet`: one row per unit (latest wins). Written only by the driver, atomically.

    A unit is done iff its row says ok and the object it names still exists with the recorded sha256, so a deleted
    or corrupted output is recomputed on the next run and nothing else is.
    """

    FILE = "manifest.parquet"

    def __init__(self, stage: Storage, flush_every_s: float = 5.0):
        stage.sweep_temporaries()  # a stage's (re)start tidies what a killed run of it left
        self.stage = stage
        self.flush_every_s = flush_every_s
        self.rows: dict[str, UnitResult] = {}
        self._dirty = False
        self._last_flush = time.monotonic()
        if stage.exists(self.FILE):
            for row in stage.read_table(self.FILE).to_pylist():
                self.rows[row["id"]] = UnitResult(**row)

    def is_done(self, unit_id: str) -> bool:
        row = self.rows.get(unit_id)
        if row is None or row.status != "ok":
            return False
        if not row.path:
            return True
        try:
            return self.stage.sha256(row.path) == row.sha256
        except FileNotFoundError:
            return False

    def pending(self, unit_ids: list[str]) -> list[str]:
        """The ids that still need work, in input order."""
        return [u for u in unit_ids if not self.is_done(u)]

    def record(self, result: UnitResult) -> None:
        self.rows[result.id] = result
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        rows = [self.rows[k].__dict__ for k in sorted(self.rows)]
        self.stage.write_table(self.FILE, pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
        self._dirty = False
        self._last_flush = time.monotonic()

    def errors(self) -> list[UnitResult]:
        return [r for r in self.rows.values() if r.status != "ok"]
