"""Ray Data actors measuring one 2D teacher against reference masks (SAS capability, SPEC §5.4); one pool a teacher.

Each actor builds its teacher once and receives the vocabulary embeddings made on the driver. A row's `pending`
column (a JSON list of teacher folder names) says which teachers still need it, its `error` column whether its
input could be read; the actor writes a JSON result into its own column for the rows it measures and "" for the
others. Only counts leave the actor, plus, for generated images, the teacher's class mask written to storage for
inspection.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from actors import actor_device, actor_dtype
from sas_ray.capability import class_slug, encode_png, label_counts, mask_counts, teacher_class_map
from sas_ray.config import TeacherSpec
from sas_ray.errors import SasError
from sas_ray.models import build_teacher, require_text_space
from sas_ray.storage import Storage


class _TeacherClassMaps:
    """A teacher and the vocabulary: images -> per-pixel vocabulary class maps."""

    def __init__(self, spec: dict, text: np.ndarray, text_space: str, column: str,
                 storage_options: dict | None = None):
        spec = TeacherSpec(**spec)
        self.folder = spec.folder
        self.column = column
        self.device = actor_device()
        self.teacher = build_teacher(spec.name, spec.weights, tiny=spec.tiny, device=self.device,
                                     dtype=actor_dtype(spec.dtype, self.device), storage_options=storage_options,
                                     **spec.options)
        require_text_space(f"teacher '{self.folder}'", self.teacher.text_space, text_space)
        self.text = torch.tensor(np.asarray(text), dtype=torch.float32, device=self.device)

    def pending_rows(self, batch: dict[str, np.ndarray]) -> list[int]:
        """Rows waiting for this teacher whose input could be read (empty `error`)."""
        return [i for i, (pending, error) in enumerate(zip(batch["pending"], batch["error"]))
                if not error and self.folder in json.loads(pending)]

    @torch.inference_mode()
    def class_maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 RGB [H, W, 3] images (any sizes; equal sizes share a forward) -> int64 [H, W] class maps."""
        maps: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape, []).append(i)
        for rows in by_size.values():
            frames = torch.from_numpy(np.stack([images[i] for i in rows])).to(self.device)
            for i, class_map in zip(rows, teacher_class_map(self.teacher.encode(frames), self.text).cpu().numpy()):
                maps[i] = class_map
        return maps

    def measure(self, batch: dict[str, np.ndarray], image_column: str, count) -> dict[str, np.ndarray]:
        """Fill this teacher's column: `count(row index, class map) -> dict` for pending rows, "" elsewhere; a bad
        batch gives every pending row the error."""
        results = [""] * len(batch["pending"])
        rows = self.pending_rows(batch)
        if rows:
            start = time.perf_counter()
            try:
                maps = self.class_maps([np.asarray(batch[image_column][i]) for i in rows])
                seconds = (time.perf_counter() - start) / len(rows)
                for i, class_map in zip(rows, maps):
                    results[i] = json.dumps({**count(i, class_map), "seconds": seconds, "error": ""})
            except SasError as err:
                for i in rows:
                    results[i] = json.dumps({"seconds": 0.0, "error": f"teacher '{self.folder}': {err}"})
        return {**batch, self.column: np.array(results, dtype=object)}


class PseudoMaskCountsActor(_TeacherClassMaps):
    """Rows of generated images (`class_index`, `class_name`, `seed`, `image` uint8 [S, S, 3], `mask` bool [S, S]
    pseudo mask): the teacher's mask of the row's class, its (intersection, union) with the pseudo mask, and the
    mask written to {stage}/images/{class}/{seed}.{teacher}.png."""

    def __init__(self, spec: dict, text: np.ndarray, text_space: str, column: str, stage: str,
                 storage_options: dict | None = None):
        super().__init__(spec, text, text_space, column, storage_options)
        self.stage = Storage(stage, storage_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        def count(i: int, class_map: np.ndarray) -> dict:
            pred = class_map == int(batch["class_index"][i])
            intersection, union = mask_counts(pred, np.asarray(batch["mask"][i], dtype=bool))
            rel = f"images/{class_slug(str(batch['class_name'][i]))}/{int(batch['seed'][i])}.{self.folder}.png"
            self.stage.write_bytes(rel, encode_png(pred))
            return {"class_index": [int(batch["class_index"][i])], "intersection": [intersection], "union": [union]}

        return self.measure(batch, "image", count)


class LabelCountsActor(_TeacherClassMaps):
    """Rows of labelled frames (`rgb` uint8 [H, W, 3], `labels` int [H, W] vocabulary indices, 255 = ignore): the
    (intersection, union) of every class occurring in the teacher's class map or the labels."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        def count(i: int, class_map: np.ndarray) -> dict:
            counts = label_counts(class_map, np.asarray(batch["labels"][i]), len(self.text))
            return {"class_index": counts.class_index.tolist(), "intersection": counts.intersection.tolist(),
                    "union": counts.union.tolist()}

        return self.measure(batch, "rgb", count)
