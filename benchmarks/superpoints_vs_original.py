"""Superpoints against the original: Karbo123/segmentator built from its source on this machine, id for id.

The original is not on any package index; give its checkout (`git clone https://github.com/Karbo123/segmentator`).
Its csrc/segmentator.cpp is compiled unchanged with torch's extension builder into a temporary folder (needs torch
and a C++ compiler; about a minute), then both segment the same meshes: synthetic scanned rooms (flat walls and
boxes: many equal edge weights) and the scan-like height fields of benchmarks/superpoints.py, as is and with
heights rounded to 1 cm (repeated normals). Prints one JSON line per mesh and parameter set: equal ids or the count
of vertices whose id differs, and both times. CPU only.
Usage: python benchmarks/superpoints_vs_original.py --original ~/src/segmentator [--out docs/perf/x.jsonl]
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.superpoints import cpu_name, scan_like_mesh
from sas_ray.datasets.synthetic import make_indoor_scene
from sas_ray.superpoints import segment_mesh

PARAMETERS = [(0.01, 60), (0.01, 20), (0.05, 5)]  # SAS's, segmentator's default, a fine one


def build_original(checkout: str, build_dir: str):
    from torch.utils.cpp_extension import load

    return load(name="libsegmentator", sources=[os.path.join(checkout, "csrc", "segmentator.cpp")],
                build_directory=build_dir, extra_cflags=["-O3"])


def meshes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for seed, target in ((0, 3000), (1, 3000), (2, 40000), (3, 40000)):
        room, _ = make_indoor_scene(f"room{seed}", seed, target)
        out[f"room{seed}"] = (room.points, room.faces)
    for side in (54, 173, 548):  # 2.9k, 30k, 300k vertices
        vertices, faces = scan_like_mesh(side, seed=side)
        out[f"scan_like_{len(vertices)}"] = (vertices, faces)
        rounded = vertices.copy()
        rounded[:, 2] = np.round(rounded[:, 2] / 0.01) * 0.01
        out[f"scan_like_1cm_{len(vertices)}"] = (rounded.astype(np.float32), faces)
    return out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", required=True, help="a checkout of github.com/Karbo123/segmentator")
    parser.add_argument("--out", help="also write the JSON lines here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as build_dir:
        original = build_original(args.original, build_dir)
        lines = []
        for name, (vertices, faces) in meshes().items():
            for k_thresh, min_verts in PARAMETERS:
                start = time.perf_counter()
                raw = original.segment_mesh(torch.from_numpy(vertices), torch.from_numpy(faces), k_thresh, min_verts)
                theirs = torch.unique(raw, return_inverse=True)[1].numpy()  # what segmentator.segment_mesh returns
                original_s = time.perf_counter() - start
                start = time.perf_counter()
                ours = segment_mesh(vertices, faces, k_thresh, min_verts)
                ours_s = time.perf_counter() - start
                record = {"benchmark": "superpoints_vs_original", "mesh": name, "vertices": len(vertices),
                          "faces": len(faces), "k_thresh": k_thresh, "min_verts": min_verts,
                          "superpoints": int(theirs.max()) + 1, "equal": bool(np.array_equal(ours, theirs)),
                          "vertices_differing": int((ours != theirs).sum()), "original_s": round(original_s, 4),
                          "ours_s": round(ours_s, 4), "cpu": cpu_name()}
                print(json.dumps(record), flush=True)
                lines.append(record)
    if args.out:
        with open(args.out, "w") as file:
            file.writelines(json.dumps(r) + "\n" for r in lines)


if __name__ == "__main__":
    main()
