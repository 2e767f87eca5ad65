"""How long resume takes to decide what is done: N finished units on a moto S3 server, before vs after issue #23.

Before: every finished unit's object was downloaded and hashed on the driver, one after another (the old
`Manifest.is_done`). After: the manifest's hash is trusted when one listing of the stage folder shows the object
with the size and ETag the manifest recorded (`Manifest.plan`); `verify` (the CLI's --verify) re-hashes every object,
8 at a time. The moto server runs in its own process on 127.0.0.1; both checks run in this process, one after the
other, on the same objects. Prints one JSON line; --out writes it.
Usage: python benchmarks/done_check.py [--units 10000] [--object-kb 64] [--out docs/perf/done-check-cpu.json]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sas_ray.lineage import stage_recipe  # noqa: E402
from sas_ray.manifest import Manifest, UnitResult, read_rows  # noqa: E402
from sas_ray.storage import Storage  # noqa: E402


def start_moto() -> tuple[subprocess.Popen, str]:
    """A moto S3 server in its own process on a free 127.0.0.1 port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(1 << 20)})  # bigger: on disk
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, endpoint
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("moto server did not start")


def before(stage: Storage, units: list[str]) -> list[str]:
    """The old done-check: manifest rows, then each object downloaded and hashed in turn."""
    rows = read_rows(stage)
    return [u for u in units if not (u in rows and rows[u].status == "ok" and stage.sha256(rows[u].path)
                                     == rows[u].sha256)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10_000)
    parser.add_argument("--object-kb", type=int, default=64, help="size of each unit's output object")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    server, endpoint = start_moto()
    try:
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                   "client_kwargs": {"region_name": "us-east-1"}}
        root = Storage("s3://bench", options)
        root.fs.call_s3("create_bucket", Bucket="bench")
        stage = root.child("features", "teacher")
        recipe = stage_recipe(1, teacher="bench").unit({"scene": "0" * 64})
        units = [f"scene{i:05d}_00" for i in range(args.units)]
        blob = os.urandom(args.object_kb * 1024)

        def write(unit: str) -> UnitResult:
            name = f"{unit}.safetensors"
            return UnitResult.ok(unit, name, stage.put(name, blob), 1.0, recipe)

        start = time.perf_counter()
        manifest = Manifest(stage)
        with ThreadPoolExecutor(16) as pool:
            for result in pool.map(write, units):
                manifest.record(result)
        manifest.flush()
        setup_s = time.perf_counter() - start

        start = time.perf_counter()
        plan = Manifest(stage).plan({u: recipe for u in units})
        after_s = time.perf_counter() - start
        start = time.perf_counter()
        old = before(stage, units)
        before_s = time.perf_counter() - start
        start = time.perf_counter()
        verified = Manifest(stage).plan({u: recipe for u in units}, verify=True)
        verify_s = time.perf_counter() - start
        assert plan.todo == old == verified.todo == [], (len(plan.todo), len(old), len(verified.todo))

        result = {"benchmark": "done_check", "store": "moto S3 server (own process, 127.0.0.1)",
                  "units": args.units, "object_bytes": len(blob), "setup_s": round(setup_s, 1),
                  "before_s": round(before_s, 2), "after_s": round(after_s, 3), "speedup": round(before_s / after_s, 1),
                  "before_ms_per_unit": round(1e3 * before_s / args.units, 2),
                  "after_ms_per_unit": round(1e3 * after_s / args.units, 3),
                  "verify_s": round(verify_s, 2), "cpus": os.cpu_count(),
                  "load_average_1m": round(os.getloadavg()[0], 1)}
    finally:
        server.terminate()
        server.wait(30)
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
