"""Storage under faults, with the one retry layer as configured by default (sas-ray's `retrying`; s3fs and botocore
make one attempt each). A proxy on 127.0.0.1 in front of the moto server counts every request and answers chosen
ones with a fault: 503 SlowDown (S3 throttling), a dropped connection (S3 down), 403 AccessDenied. Local permanent
errors (ENOSPC, EACCES) are raised by the OS calls of a write. Checked: the number of requests per object is bounded
(ATTEMPTS, not 5 x 5 x 2), permanent errors fail at the first attempt naming the object, and nothing is lost: the
earlier object and manifest stay, no temporary is left."""

import errno
import http.client
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

import sas_ray.storage as storage_module
from sas_ray.errors import StorageError
from sas_ray.lineage import stage_recipe
from sas_ray.manifest import Manifest, UnitResult
from sas_ray.storage import ATTEMPTS, Storage, WriteError

SLOW_DOWN = (503, b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Reduce your request '
                  b'rate.</Message></Error>')
ACCESS_DENIED = (403, b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access '
                      b'Denied</Message></Error>')
DROP = "drop"  # close the connection without an answer, as a dead endpoint behind a load balancer does


class FaultyProxy:
    """Forwards every request to `upstream`, except that request k (method, path) gets `fault(k, method, path)`:
    None (forward), DROP, or (status, body)."""

    def __init__(self, upstream: str, fault):
        target = urlparse(upstream)
        self.requests = 0
        self.faults = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and `Expect: 100-continue`, as botocore uses them

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    proxy.requests += 1
                    answer = fault(proxy.requests, self.command, self.path)
                    proxy.faults += answer is not None
                if answer == DROP:
                    self.close_connection = True
                    return
                if answer is not None:
                    status, reply = answer
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                conn.request(self.command, self.path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _through(proxy: FaultyProxy, root: str, options: dict) -> Storage:
    """A Storage reaching S3 through the proxy, configured as any user's would be (no retry settings)."""
    return Storage(root, {**options, "endpoint_url": proxy.url, "skip_instance_cache": True})


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(storage_module, "BACKOFF_S", 0.01)


def test_writes_survive_throttling_and_land_whole(s3_bucket, fast_backoff):
    root, options = s3_bucket
    recipe = stage_recipe(1).unit()
    with FaultyProxy(options["endpoint_url"], lambda k, *_: SLOW_DOWN if k % 3 == 0 else None) as proxy:
        store = _through(proxy, root + "/flaky", options)
        manifest = Manifest(store.child("stage"))
        blobs = {f"scene{i:04d}_00.bin": bytes([i]) * (1000 + i) for i in range(6)}
        for name, data in blobs.items():
            manifest.record(UnitResult.ok(name, name, store.child("stage").put(name, data), 0.0, recipe))
        manifest.flush()
        assert proxy.faults > 0
        # every third request fails once: at most one retry per request, never a second layer's retries
        assert proxy.requests <= 1.5 * (proxy.requests - proxy.faults) + 1
    clean = Storage(root + "/flaky", options)
    for name, data in blobs.items():
        assert clean.read_bytes(f"stage/{name}") == data
    assert Manifest(clean.child("stage")).plan({name: recipe for name in blobs}).todo == []


@pytest.mark.parametrize("fault", ["throttling", "down"])
def test_request_count_per_object_is_bounded(s3_bucket, fast_backoff, fault):
    """S3 throttling every request, or down (every connection dropped): one write makes ATTEMPTS requests (before:
    50, sas-ray's retries around s3fs's around botocore's), then fails naming the object; nothing is half written
    and the earlier object is unchanged. A read is bounded the same way. A dropped connection may cost two requests
    an attempt: aiohttp resends an idempotent request once when the server closes the connection (RFC 9112 9.3.1)."""
    root, options = s3_bucket
    clean = Storage(root + "/down", options)
    clean.write_bytes("earlier.bin", b"kept")
    answer = SLOW_DOWN if fault == "throttling" else DROP
    with FaultyProxy(options["endpoint_url"], lambda *_: answer) as proxy:
        store = _through(proxy, root + "/down", options)
        start = time.monotonic()
        per_attempt = 1 if fault == "throttling" else 2
        with pytest.raises(WriteError, match=rf"writing s3://.*/down/scene0001_00\.bin: failed after {ATTEMPTS} "):
            store.write_bytes("scene0001_00.bin", b"x" * 5000)
        assert ATTEMPTS <= proxy.requests <= per_attempt * ATTEMPTS
        written = proxy.requests
        with pytest.raises(StorageError, match=rf"reading s3://.*/down/earlier\.bin: failed after {ATTEMPTS} "):
            store.read_bytes("earlier.bin")
        assert ATTEMPTS <= proxy.requests - written <= per_attempt * ATTEMPTS
        assert time.monotonic() - start < 10
    assert not clean.exists("scene0001_00.bin")
    assert clean.read_bytes("earlier.bin") == b"kept"


def test_time_per_object_is_capped(s3_bucket, monkeypatch):
    """No retry starts after DEADLINE_S: with waits longer than the deadline, one attempt is all."""
    root, options = s3_bucket
    monkeypatch.setattr(storage_module, "BACKOFF_S", 2.0)
    monkeypatch.setattr(storage_module, "DEADLINE_S", 0.5)
    with FaultyProxy(options["endpoint_url"], lambda *_: SLOW_DOWN) as proxy:
        start = time.monotonic()
        with pytest.raises(WriteError, match="failed after 1 attempts"):
            _through(proxy, root, options).write_bytes("x.bin", b"x")
        assert proxy.requests == 1 and time.monotonic() - start < 2.0


def test_access_denied_and_missing_bucket_fail_at_once(s3_bucket, fast_backoff):
    root, options = s3_bucket
    with FaultyProxy(options["endpoint_url"], lambda k, method, path: ACCESS_DENIED if method == "PUT" else None) \
            as proxy:
        with pytest.raises(WriteError, match=r"writing s3://.*/scene0001_00\.safetensors: AccessDenied"):
            _through(proxy, root, options).write_bytes("scene0001_00.safetensors", b"x")
        assert proxy.requests == 1
    missing = Storage("s3://no-such-bucket-here/out", options)
    with pytest.raises(WriteError, match=r"writing s3://no-such-bucket-here/out/a\.bin: NoSuchBucket"):
        missing.write_bytes("a.bin", b"x")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES], ids=["ENOSPC", "EACCES"])
def test_full_disk_and_denied_permission_fail_at_once_and_lose_nothing(tmp_path, monkeypatch, code):
    """A local write that hits ENOSPC (at fsync) or EACCES (at the rename) is tried once, names the object and the
    cause; the object it would have replaced, the manifest and the folder are as they were."""
    stage = Storage(str(tmp_path / "features"))
    recipe = stage_recipe(1).unit()
    manifest = Manifest(stage)
    manifest.record(UnitResult.ok("s0", "s0.bin", stage.put("s0.bin", b"old"), 0.0, recipe))
    manifest.flush()
    before = sorted(os.listdir(tmp_path / "features"))
    calls = []

    def fail(*args):
        calls.append(args)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(storage_module.os, "fsync" if code == errno.ENOSPC else "replace", fail)
    expected = {errno.ENOSPC: r"no space left on device \(ENOSPC\)", errno.EACCES: r"permission denied \(EACCES\)"}
    with pytest.raises(WriteError, match=rf"writing {tmp_path}/features/s0\.bin: {expected[code]}"):
        stage.put("s0.bin", b"new")
    manifest.record(UnitResult.ok("s1", "s1.bin", None, 0.0, recipe))
    with pytest.raises(WriteError, match=rf"writing {tmp_path}/features/manifest\.parquet: {expected[code]}"):
        manifest.flush()
    assert len(calls) == 2  # one attempt each
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "features")) == before  # no temporary left
    assert stage.read_bytes("s0.bin") == b"old"
    assert list(Manifest(stage).rows) == ["s0"]


def test_a_stage_stops_at_the_first_output_it_cannot_write(ray_session, s3_bucket, tmp_path, capsys):
    """S3 refuses the feature files (403) but not the rest: `sas-ray superpoints` stops at once with the object's
    name instead of computing every scene to fail each write; what it read and wrote before is untouched."""
    import yaml
    from distill_data import write_dataset

    from jobs.cli import main as cli_main

    root, options = s3_bucket
    write_dataset(Storage(root, options), num_scenes=3, points=300)
    denied = lambda k, method, path: ACCESS_DENIED if method == "PUT" and path.split("?")[0].endswith(  # noqa: E731
        ".safetensors") and "/run/" in path else None
    with FaultyProxy(options["endpoint_url"], denied) as proxy:
        config = tmp_path / "superpoints.yaml"
        config.write_text(yaml.safe_dump({"prepared": root, "output": f"{root}/run", "mode": "points",
                                          "storage": {"options": {**options, "endpoint_url": proxy.url}},
                                          "progress": False}))
        assert cli_main(["superpoints", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "error: superpoints stopped: writing s3://" in err and "/run/superpoints/scene000" in err
    assert "AccessDenied" in err and err.count("AccessDenied") == 1
    clean = Storage(root, options)
    assert [n for n in clean.list("run/superpoints") if n.endswith(".safetensors")] == []
    assert not clean.exists("run/superpoints/lease.json")  # given back
    rows = clean.read_table("run/superpoints/manifest.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["error"] and "AccessDenied" in rows[0]["error"]
