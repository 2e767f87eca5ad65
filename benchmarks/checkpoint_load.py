"""A teacher checkpoint's load, as every extraction actor does it at start-up: read the bytes, hash them (the text
space's id: CLIP's; SAM's no longer), parse the safetensors, load the tensors into the model. Parsing copied every
tensor out of the bytes (safetensors' own `load`); `read_checkpoint` now keeps views of them
(`sas_ray.storage.tensor_views`) and hashes them only when the id is asked (`load_views_s` vs
`load_views_hashed_s`). All paths on the same file in one process, best of --repeats, the file in the page cache (a
warm node).

    python benchmarks/checkpoint_load.py --arch ViT-L-14 --out docs/perf/checkpoint-load-cpu.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sas_ray.models  # noqa: E402,F401  (the CPU torchvision shim)
from benchmarks import emit  # noqa: E402
from benchmarks.extract import random_checkpoint  # noqa: E402
from sas_ray.models.clip_model import load_clip  # noqa: E402
from sas_ray.models.weights import read_checkpoint  # noqa: E402
from sas_ray.storage import load_tensors  # noqa: E402


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-L-14")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        path = random_checkpoint(args.arch, f"{work}/clip.safetensors")
        model = load_clip(args.arch, path, tiny=False).model  # the module both paths load into

        def copied():  # the former parse: every tensor copied out of the bytes, then loaded
            with open(path, "rb") as f:
                blob = f.read()
            hashlib.sha256(blob).hexdigest()
            model.load_state_dict(load_tensors(blob, path))

        def views():  # the bytes are hashed only when the checkpoint's id is asked (SAM's never, in an actor)
            model.load_state_dict(read_checkpoint(path).state)

        def views_hashed():  # as CLIP's load does (its id names the text space), and every load did before
            checkpoint = read_checkpoint(path)
            model.load_state_dict(checkpoint.state)
            return checkpoint.id

        with open(path, "rb") as f:
            blob = f.read()
        result = {"benchmark": "checkpoint_load", "arch": args.arch, "gb": round(len(blob) / 1e9, 3),
                  "cpus": os.cpu_count(),
                  "read_s": round(best(lambda: open(path, "rb").read(), args.repeats), 3),
                  "sha256_s": round(best(lambda: hashlib.sha256(blob).hexdigest(), args.repeats), 3),
                  "parse_copy_s": round(best(lambda: load_tensors(blob, path), args.repeats), 3),
                  "load_copied_s": round(best(copied, args.repeats), 3),
                  "load_views_hashed_s": round(best(views_hashed, args.repeats), 3),
                  "load_views_s": round(best(views, args.repeats), 3)}
        result["views_vs_copied"] = round(result["load_copied_s"] / result["load_views_hashed_s"], 2)
        result["unhashed_vs_hashed"] = round(result["load_views_hashed_s"] / result["load_views_s"], 2)
    emit(result, args.out)


if __name__ == "__main__":
    main()
