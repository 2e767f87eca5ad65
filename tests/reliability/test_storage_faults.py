"""Storage under a flaky S3: a proxy on 127.0.0.1 in front of the moto server answers some requests with 503 SlowDown
(S3's throttling reply). Writes are retried with backoff and land whole; when retries run out the error names the
object, and nothing half-written is visible."""

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

import sas_ray.storage as storage_module
from sas_ray.errors import StorageError
from sas_ray.storage import Manifest, Storage, UnitResult

SLOW_DOWN = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Reduce your request rate.' \
            b'</Message></Error>'


class FlakyProxy:
    """Forwards every request to `upstream`, except that request k fails when `fail(k)` is true."""

    def __init__(self, upstream: str, fail):
        target = urlparse(upstream)
        self.requests = 0
        self.failed = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and `Expect: 100-continue`, as botocore uses them

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    proxy.requests += 1
                    failing = fail(proxy.requests)
                    proxy.failed += failing
                if failing:
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
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


def _store(root: str, options: dict, endpoint: str) -> Storage:
    # One attempt inside botocore, so the retries measured are sas-ray's own (Storage._retrying).
    return Storage(root, {**options, "endpoint_url": endpoint, "skip_instance_cache": True,
                          "config_kwargs": {"retries": {"max_attempts": 1}}})


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(storage_module, "_RETRY_BASE_S", 0.01)


def test_writes_survive_throttling_and_land_whole(s3_bucket, fast_backoff):
    root, options = s3_bucket
    with FlakyProxy(options["endpoint_url"], fail=lambda k: k % 3 == 0) as proxy:  # every third request: 503
        store = _store(root + "/flaky", options, proxy.url)
        manifest = Manifest(store.child("stage"))
        blobs = {f"scene{i:04d}_00.bin": bytes([i]) * (1000 + i) for i in range(12)}
        for name, data in blobs.items():
            digest = store.child("stage").write_bytes(name, data)
            manifest.record(UnitResult.ok(name, name, digest, len(data), 0.0))
        manifest.flush()
        assert proxy.failed > 0
    clean = Storage(root + "/flaky", options)
    for name, data in blobs.items():
        assert clean.read_bytes(f"stage/{name}") == data
    assert Manifest(clean.child("stage")).pending(list(blobs)) == []


def test_exhausted_retries_name_the_object_and_leave_nothing(s3_bucket, fast_backoff):
    root, options = s3_bucket
    clean = Storage(root + "/down", options)
    clean.write_bytes("earlier.bin", b"kept")
    with FlakyProxy(options["endpoint_url"], fail=lambda k: True) as proxy:  # S3 throttles everything
        store = _store(root + "/down", options, proxy.url)
        with pytest.raises(StorageError, match=r"writing s3://.*/down/scene0001_00\.bin: failed after 5 attempts"):
            store.write_bytes("scene0001_00.bin", b"x" * 5000)
        assert proxy.requests >= 5
    assert not clean.exists("scene0001_00.bin")
    assert clean.read_bytes("earlier.bin") == b"kept"
