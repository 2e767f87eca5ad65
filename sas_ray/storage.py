"""Object storage for every stage: URLs -> fsspec, atomic writes, content hashes, listings, one retry layer.

A reader never sees a half-written object: local files are written under a temporary name and renamed; object
stores (s3://) get a single PUT, or a multipart upload, which is no object until it completes. Relative paths are
built only from safe components, so a unit id can never escape the output root.

Retries live here and only here (docs/reliability.md). Every filesystem is made by `filesystem`, which tells s3fs and
botocore to try once; `retrying` then makes at most ATTEMPTS attempts within DEADLINE_S for one object, with jittered
exponential backoff, and only on transient errors (throttling, 5xx, timeouts, dropped connections). Permanent ones
(no space left, permission denied, 403, no such bucket) fail at once with a message naming the object.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import random
import stat as stat_module
import threading
import time
import uuid
import warnings
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

ATTEMPTS = 5  # per object operation, in all (the object store's client makes one each)
DEADLINE_S = 60.0  # per object operation: no retry starts after this
BACKOFF_S = 0.25  # first wait; doubles per attempt, up to BACKOFF_MAX_S, jittered to 50-100 %
BACKOFF_MAX_S = 8.0
TMP_PREFIX = ".tmp-"  # a local write in flight; renamed into place when complete
STALE_TMP_S = 3600.0  # no single write lasts this long: an older temporary or multipart upload is a killed writer's
_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.EINVAL,
                     errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOSYS}


class WriteError(StorageError):
    """An output could not be written (permanently, or after every retry): the stage stops, what it wrote stays."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Errors of the S3 client stack that s3fs would retry itself (it is told not to): connection refused or
    dropped, timeouts, truncated bodies."""
    try:
        from s3fs.core import S3_RETRYABLE_ERRORS
    except ImportError:
        return ()
    return S3_RETRYABLE_ERRORS


def _s3_code(err: BaseException) -> str:
    """The S3 error code behind an s3fs error ('' if none)."""
    for e in (err, err.__cause__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def is_transient(err: BaseException) -> bool:
    """Whether another attempt may succeed: throttling, 5xx, timeouts, dropped connections; not a full disk, a denied
    permission, a missing bucket or object, or a bad request."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return False
    if isinstance(err, (TimeoutError, ConnectionError)):
        return True
    if isinstance(err, OSError):
        return err.errno not in _PERMANENT_ERRNOS
    return isinstance(err, _transport_errors())


def describe(err: BaseException) -> str:
    """An error as a user reads it: what it means, then the system's own words."""
    code = _s3_code(err)
    if code:
        return f"{code}: {err}"
    name = errno.errorcode.get(getattr(err, "errno", None) or -1)
    if name and isinstance(err, OSError):
        return f"{os.strerror(err.errno).lower()} ({name})"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def retrying(what: str, fn, error: type[StorageError] = StorageError):
    """`fn()` with at most ATTEMPTS attempts within DEADLINE_S, retrying transient errors only. A missing object
    stays FileNotFoundError (callers decide what absence means) unless its bucket is missing; every other storage
    failure becomes `error` naming `what`; errors that are not storage errors pass unchanged."""
    start = time.monotonic()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001  (classified below; anything else is re-raised unchanged)
            if isinstance(err, FileNotFoundError) and _s3_code(err) != "NoSuchBucket":
                raise
            if not is_transient(err):
                if isinstance(err, OSError):
                    raise error(f"{what}: {describe(err)}") from err
                raise
            wait = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            elapsed = time.monotonic() - start
            if attempt == ATTEMPTS or elapsed + wait > DEADLINE_S:
                raise error(f"{what}: failed after {attempt} attempts in {elapsed:.1f} s: {describe(err)}") from err
            time.sleep(wait)


def filesystem(url: str, options: dict | None = None):
    """(fsspec filesystem, path) of `url`. Object-store clients are told to make one attempt per call: `retrying`
    is the one retry layer (nested layers multiply: 5 x 5 x 2 requests for one write with S3 down)."""
    options = dict(options or {})
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol in ("s3", "s3a"):
        options["config_kwargs"] = {**(options.get("config_kwargs") or {}),
                                    "retries": {"total_max_attempts": 1, "mode": "standard"}}
    fs, path = fsspec.core.url_to_fs(url, **options)
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs's own loop around each call
    return fs, path


def absolute_root(root: str) -> str:
    """`root` with a relative local path made absolute (URLs unchanged): Ray workers run in their own working
    directory, so a path handed to them must not depend on the driver's."""
    return root if "://" in root else os.path.abspath(root)


@dataclass(frozen=True)
class ObjectStat:
    """What a listing says of an object: its size and version (S3 ETag, local mtime in ns), enough to tell that
    it is still the object a manifest recorded without reading it."""

    size: int
    version: str


@dataclass(frozen=True)
class StoredObject:
    """An object just written: its content hash and what listings will say of it."""

    sha256: str
    size: int
    version: str


def version_of(info: dict) -> str:
    """The version of an fsspec `info` entry: its ETag (object stores), else its time stamp (memory://)."""
    for key in ("ETag", "etag"):
        if info.get(key):
            return str(info[key]).strip('"')
    stamp = info.get("mtime") or info.get("created") or info.get("LastModified") or ""
    return str(stamp.timestamp() if hasattr(stamp, "timestamp") else stamp)


def _local_version(st: os.stat_result) -> str:
    return str(st.st_mtime_ns)


_IN_PROCESS = threading.Lock()  # conditional writes to in-process filesystems (memory://)


@contextlib.contextmanager
def _folder_lock(folder: str):
    """An exclusive lock of a local folder for the time of a compare-and-swap: `flock` on the folder itself, so no
    file is added and a dead holder's lock is released by the kernel."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Storage:
    """A root URL (local path, file://, s3://bucket/prefix, memory://...) and the fsspec options to reach it."""

    def __init__(self, root: str, options: dict | None = None):
        self.options = dict(options or {})
        self.fs, path = filesystem(root, self.options)
        self.root = path.rstrip("/")
        self.root_url = root.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.is_local = "file" in protocols
        self.is_s3 = "s3" in protocols

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
    def put(self, rel: str, data: bytes) -> StoredObject:
        """Atomically write `data` at `rel`; a failure is a WriteError naming the object (the old object, if any,
        is unchanged)."""
        path = self._path(rel)

        def put() -> str:
            if self.is_local:
                return self._local_write(path, data, lambda tmp: os.replace(tmp, path))
            reply = self.fs.pipe_file(path, data)
            return version_of(reply) if isinstance(reply, dict) and reply.get("ETag") else self._remote_version(path)

        version = retrying(f"writing {self.url(rel)}", put, WriteError)
        return StoredObject(sha256_bytes(data), len(data), version)

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Atomically write `data` at `rel`; returns its sha256."""
        return self.put(rel, data).sha256

    def _local_write(self, path: str, data: bytes, publish) -> str:
        """Write `data` to a temporary beside `path`, then `publish(tmp)`; returns the version. The temporary is
        removed whatever happens."""
        parent = path.rsplit("/", 1)[0]
        os.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                version = _local_version(os.fstat(f.fileno()))
            publish(tmp)
            return version
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def _remote_version(self, path: str) -> str:
        self.fs.invalidate_cache(path)
        return version_of(self.fs.info(path))

    def read_bytes(self, rel: str) -> bytes:
        path = self._path(rel)
        try:
            return retrying(f"reading {self.url(rel)}", lambda: self.fs.cat_file(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(rel)}: no such object") from None

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object (a header without the body)."""
        path = self._path(rel)
        try:
            return retrying(f"reading {self.url(rel)}", lambda: self.fs.cat_file(path, start=start, end=end))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(rel)}: no such object") from None

    def exists(self, rel: str) -> bool:
        path = self._path(rel)
        return bool(retrying(f"checking {self.url(rel)}", lambda: self.fs.exists(path)))

    def stat(self, rel: str) -> ObjectStat | None:
        """Size and version of an object, or None if absent."""
        path = self._path(rel)

        def stat() -> ObjectStat | None:
            try:
                if self.is_local:
                    st = os.stat(path)
                    return ObjectStat(st.st_size, _local_version(st)) if stat_module.S_ISREG(st.st_mode) else None
                self.fs.invalidate_cache(path)
                info = self.fs.info(path)
                return ObjectStat(int(info["size"]), version_of(info)) if info.get("type") != "directory" else None
            except FileNotFoundError:
                return None

        return retrying(f"checking {self.url(rel)}", stat)

    def delete(self, rel: str) -> None:
        path = self._path(rel)

        def delete() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)

        retrying(f"deleting {self.url(rel)}", delete, WriteError)

    def delete_tree(self, rel: str) -> None:
        """Remove a folder and everything under it (nothing if absent)."""
        path = self._path(rel)

        def delete() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path, recursive=True)

        retrying(f"deleting {self.url(rel)}", delete, WriteError)

    def list(self, rel: str = "") -> list[str]:
        """Names directly under a folder (empty if it does not exist)."""
        path = self._path(rel) if rel else self.root

        def ls() -> list[str]:
            try:
                self.fs.invalidate_cache(path)
                return self.fs.ls(path, detail=False)
            except FileNotFoundError:
                return []

        entries = retrying(f"listing {self.url(rel)}", ls)
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries
                      if not e.rsplit("/", 1)[-1].startswith(TMP_PREFIX))

    def listing(self, rel: str = "") -> dict[str, ObjectStat]:
        """Every object under a folder, at any depth: relative path -> size and version, from one listing (on S3,
        one request per 1000 objects); temporaries left out."""
        base = self._path(rel) if rel else self.root
        if self.is_local:
            found = {}
            for folder, _, names in os.walk(base):
                for name in names:
                    if not name.startswith(TMP_PREFIX):
                        with contextlib.suppress(FileNotFoundError):
                            st = os.stat(os.path.join(folder, name))
                            found[os.path.relpath(os.path.join(folder, name), base)] = ObjectStat(
                                st.st_size, _local_version(st))
            return found

        def find() -> dict:
            self.fs.invalidate_cache(base)
            try:
                return self.fs.find(base, detail=True)
            except FileNotFoundError:
                return {}

        entries = retrying(f"listing {self.url(rel)}", find)
        prefix = base.rstrip("/") + "/"
        return {path[len(prefix):]: ObjectStat(int(info["size"]), version_of(info)) for path, info in entries.items()
                if path.startswith(prefix) and info.get("type") != "directory"
                and not path.rsplit("/", 1)[-1].startswith(TMP_PREFIX)}

    # -- conditional writes (leases) -------------------------------------------------------------------------
    def create_exclusive(self, rel: str, data: bytes) -> str | None:
        """Write `data` at `rel` only if no object is there; returns its version, or None if one was. Atomic on
        local disks (link of a complete temporary) and S3 (conditional PUT If-None-Match)."""
        path = self._path(rel)

        def create() -> str | None:
            try:
                if self.is_local:
                    return self._local_write(path, data, lambda tmp: os.link(tmp, path))
                if self.is_s3:
                    return version_of(self.fs.pipe_file(path, data, mode="create"))
                with _IN_PROCESS:  # memory:// and the like live in this process
                    if self.fs.exists(path):
                        return None
                    self.fs.pipe_file(path, data)
                    return self._remote_version(path)
            except FileExistsError:
                return None

        return retrying(f"creating {self.url(rel)}", create, WriteError)

    def replace_if(self, rel: str, data: bytes, version: str) -> str | None:
        """Replace the object at `rel` with `data` only if its version is still `version` (compare-and-swap);
        returns the new version, or None if the object changed or vanished. S3: conditional PUT If-Match; local:
        compare and rename under an exclusive lock of the folder (`flock`, released if the process dies), so the
        object is never absent."""
        path = self._path(rel)

        def replace() -> str | None:
            if self.is_s3:
                try:
                    return version_of(self.fs.pipe_file(path, data, IfMatch=f'"{version}"'))
                except (FileNotFoundError, OSError) as err:
                    if isinstance(err, FileNotFoundError) or _s3_code(err) == "PreconditionFailed":
                        return None
                    raise
            if self.is_local:
                try:
                    return self._local_write(path, data, lambda tmp: self._swap_if(tmp, path, version))
                except FileExistsError:
                    return None
            with _IN_PROCESS:
                current = self.stat(rel)
                if current is None or current.version != version:
                    return None
                self.fs.pipe_file(path, data)
                return self._remote_version(path)

        return retrying(f"replacing {self.url(rel)}", replace, WriteError)

    def delete_if(self, rel: str, version: str) -> None:
        """Delete the object at `rel` if its version is still `version` (S3: checked, then deleted)."""
        path = self._path(rel)

        def delete() -> None:
            if self.is_local:
                with _folder_lock(path.rsplit("/", 1)[0]):
                    with contextlib.suppress(FileNotFoundError):
                        if _local_version(os.stat(path)) == version:
                            os.remove(path)
                return
            current = self.stat(rel)
            if current is not None and current.version == version:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)

        retrying(f"deleting {self.url(rel)}", delete, WriteError)

    @staticmethod
    def _swap_if(tmp: str, path: str, version: str) -> None:
        """Rename `tmp` over `path` if `path` is still at `version` (else FileExistsError), under the folder lock."""
        with _folder_lock(path.rsplit("/", 1)[0]):
            try:
                current = _local_version(os.stat(path))
            except FileNotFoundError:
                raise FileExistsError(path) from None
            if current != version:
                raise FileExistsError(path)
            os.replace(tmp, path)

    def sweep_temporaries(self, older_than_s: float = STALE_TMP_S) -> int:
        """Remove what killed writers left under this root: local temporaries, S3 multipart uploads never completed
        (never visible as objects, but stored and billed); returns how many. Younger ones may be writes in flight
        and stay."""
        cutoff = time.time() - older_than_s
        if self.is_s3:
            return self._abort_multipart_uploads(cutoff)
        if not self.is_local or not os.path.isdir(self.root):
            return 0
        removed = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    if name.startswith(TMP_PREFIX) and os.path.getmtime(path) < cutoff:
                        os.remove(path)
                        removed += 1
        return removed

    def _abort_multipart_uploads(self, cutoff: float) -> int:
        bucket, _, key = self.root.partition("/")
        prefix = f"{key}/" if key else ""
        listed = retrying(f"listing multipart uploads under {self.root_url}",
                          lambda: self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix))
        stale = [u for u in listed.get("Uploads", []) if u["Initiated"].timestamp() < cutoff]
        for upload in stale:
            retrying(f"aborting the multipart upload of s3://{bucket}/{upload['Key']}",
                     lambda u=upload: self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=u["Key"],
                                                      UploadId=u["UploadId"]), WriteError)
        return len(stale)

    def sha256(self, rel: str) -> str:
        return sha256_bytes(self.read_bytes(rel))

    # -- tensors (safetensors) ---------------------------------------------------------------------------
    def put_tensors(self, rel: str, tensors: dict[str, torch.Tensor],
                    metadata: dict[str, str] | None = None) -> StoredObject:
        return self.put(rel, tensors_blob(tensors, metadata))

    def write_tensors(self, rel: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
        return self.put_tensors(rel, tensors, metadata).sha256

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


def tensors_blob(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of `tensors`, the same bytes in every process: safetensors writes its header's maps in
    hash order, which differs between processes, so the header is re-serialised with sorted keys (the same members,
    hence the same length; the padding is unchanged). Equal outputs then have equal sha256, and lineage sees that an
    upstream unit recomputed to the same bytes changed nothing."""
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(header) > n:  # not expected: safetensors writes the same compact JSON
        return blob
    return blob[:8] + header.ljust(n) + blob[8 + n:]


def load_tensors(blob: bytes, source: str) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; a corrupt blob is an InputError naming `source`."""
    try:
        return st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise InputError(f"{source}: not a valid safetensors file: {err}") from None


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def tensor_views(blob: bytes, source: str) -> dict[str, torch.Tensor]:
    """`load_tensors` without a copy: read-only views into `blob` (which they keep alive), for a reader that only
    copies out of them (a state dict loaded into a model: a checkpoint's GBs are not duplicated first)."""
    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n])
        views, start = {}, 8 + n
        with warnings.catch_warnings():  # torch warns that a view of bytes must not be written: it is not
            warnings.simplefilter("ignore", UserWarning)
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                dtype, shape = _SAFETENSORS_DTYPES[entry["dtype"]], [int(d) for d in entry["shape"]]
                first, last = (int(x) for x in entry["data_offsets"])
                count = math.prod(shape)
                if not 0 <= first <= last <= len(blob) - start or last - first != count * dtype.itemsize:
                    raise ValueError(f"{key}: offsets {first}..{last} do not hold {entry['dtype']} {shape} "
                                     f"in {len(blob) - start} data bytes")
                views[key] = (torch.frombuffer(blob, dtype=dtype, count=count, offset=start + first).reshape(shape)
                              if count else torch.empty(shape, dtype=dtype))
        return views
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"{source}: not a valid safetensors file: {err}") from None


def tensor_metadata(blob: bytes, source: str) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob without materialising tensors."""
    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n])
    except (ValueError, json.JSONDecodeError) as err:
        raise InputError(f"{source}: not a valid safetensors file: {err}") from None
    return header.get("__metadata__", {}) or {}

