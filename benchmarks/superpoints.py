"""How fast superpoints are: vertices/s of the C++ segmentator on ScanNet-sized meshes (and of point mode).

Meshes are synthetic scan-like height fields (a floor with box-shaped plateaus, 5 mm noise) of about 30k and 300k
vertices, the range of ScanNet's vh_clean_2 meshes. Prints one JSON line per mode and size; --out writes them all.
Usage: python benchmarks/superpoints.py [--out docs/perf/superpoints.json] [--repeats 5]
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from sas_ray.superpoints import segment_mesh, segment_points

SIZES = {"30k": 173, "300k": 548}  # grid side: 173^2 = 29,929 and 548^2 = 300,304 vertices


def scan_like_mesh(side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A side x side grid 2 cm apart: floor, a few box plateaus, noise; two triangles per cell."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(side) * 0.02, np.arange(side) * 0.02, indexing="ij")
    z = np.zeros_like(x)
    for _ in range(12):
        x0, y0 = rng.random(2) * x.max()
        width, depth, height = 0.3 + rng.random(3) * [1.5, 1.5, 0.8]
        z[(x >= x0) & (x < x0 + width) & (y >= y0) & (y < y0 + depth)] = height
    vertices = np.stack([x, y, z + rng.normal(scale=0.005, size=z.shape)], axis=-1).reshape(-1, 3)
    r, c = np.meshgrid(np.arange(side - 1), np.arange(side - 1), indexing="ij")
    v00 = (r * side + c).ravel()
    v01, v10, v11 = v00 + 1, v00 + side, v00 + side + 1
    faces = np.concatenate([np.stack([v00, v01, v11], 1), np.stack([v00, v11, v10], 1)])
    return vertices.astype(np.float32), faces.astype(np.int64)


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as file:
            return next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def timed(function, repeats: int) -> tuple[float, np.ndarray]:
    """Median wall seconds over repeats (after one warm-up call) and the last result."""
    result = function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the results as JSON here (e.g. docs/perf/superpoints.json)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
    results = []
    for name, side in SIZES.items():
        vertices, faces = scan_like_mesh(side)
        runs = {
            "mesh": lambda: segment_mesh(vertices, faces, k_thresh=0.01, min_verts=60),  # SAS's parameters
            "points": lambda: segment_points(vertices, k=16, k_thresh=0.01, min_verts=60),  # kNN + normals + segment
        }
        for mode, run in runs.items():
            seconds, ids = timed(run, args.repeats)
            record = {
                "benchmark": "superpoints",
                "mode": mode,
                "size": name,
                "vertices": len(vertices),
                "faces": len(faces) if mode == "mesh" else 0,
                "superpoints": int(ids.max()) + 1,
                "seconds": round(seconds, 4),
                "vertices_per_s": round(len(vertices) / seconds),
                "threads": 1,
                **machine,
            }
            print(json.dumps(record), flush=True)
            results.append(record)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=1)
            file.write("\n")


if __name__ == "__main__":
    main()
