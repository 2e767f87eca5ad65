"""The extraction actor: one 2D teacher loaded once on its device, fusing groups of a scene's frames onto the
scene's points right there; only the sparse partial sum of the points those frames saw leaves the actor."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import torch

from actors import actor_device, actor_dtype
from sas_ray.errors import SasError
from sas_ray.faults import armed_fault
from sas_ray.multiview import Views, Visibility, fuse_views
from sas_ray.prepared import read_scene_points
from sas_ray.storage import Storage

class TeacherFusionActor:
    """Ray Data `map_batches` class: each input row is one group of frames of one scene (see jobs.extract), each
    output row that group's partial: point_ids int64 [M], feat_sum float16 [M,C], count int32 [M] over the scene's
    num_points, or an `error` naming the scene and cause."""

    SCENE_CACHE = 2  # scenes whose points stay on the device (frames arrive grouped by scene)

    def __init__(self, teacher: dict, prepared: str, storage_options: dict, visibility: dict,
                 labelled_only: bool) -> None:
        started = time.perf_counter()
        from sas_ray.models import build_teacher

        self.device = actor_device()
        dtype = actor_dtype(teacher["dtype"], self.device)
        self.teacher = build_teacher(teacher["name"], weights=teacher["weights"], tiny=teacher["tiny"],
                                     device=self.device, dtype=dtype, storage_options=storage_options,
                                     **teacher["options"])
        self.batch_size = teacher["batch_size"]
        self.prepared = Storage(prepared, storage_options)
        self.visibility = Visibility(**visibility)
        self.labelled_only = labelled_only
        self._scenes: OrderedDict[str, tuple[torch.Tensor, np.ndarray | None, int]] = OrderedDict()
        self._fault = armed_fault("extract-actor")  # None unless a reliability test set $SAS_RAY_FAULT
        self._load_seconds = time.perf_counter() - started  # reported once, with this actor's first output
        self._frames_fused = 0

    def _scene(self, scene_id: str) -> tuple[torch.Tensor, np.ndarray | None, int]:
        """(points on the device, indices of the projected subset or None for all, total point count)."""
        if scene_id not in self._scenes:
            points, labels = read_scene_points(self.prepared, scene_id)
            subset = None
            if self.labelled_only and labels is not None:
                subset = np.flatnonzero(labels != 255)
                points = points[subset]
            total = len(labels) if subset is not None else len(points)
            self._scenes[scene_id] = (torch.from_numpy(points).to(self.device), subset, total)
            while len(self._scenes) > self.SCENE_CACHE:
                self._scenes.popitem(last=False)
        self._scenes.move_to_end(scene_id)
        return self._scenes[scene_id]

    def _fuse(self, row: dict) -> dict:
        points, subset, num_points = self._scene(row["scene"])
        depth = row["depth"] if row["depth"].size else None
        views = Views(rgb=row["rgb"], intrinsic=row["intrinsic"], pose=row["pose"], depth=depth)
        with torch.inference_mode():
            partial = fuse_views(self.teacher, points, views, self.visibility, self.batch_size).partial()
        point_ids = partial.point_ids.cpu().numpy()
        return {"num_points": num_points,
                "point_ids": subset[point_ids] if subset is not None else point_ids,
                # fp16 in transit (the stored features are fp16): half the device-to-host copy and object bytes
                "feat_sum": partial.feat_sum.half().cpu().numpy(), "count": partial.count.cpu().numpy()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("scene", "group", "num_groups", "num_frames", "num_points",
                                               "point_ids", "feat_sum", "count", "error", "seconds", "load_seconds",
                                               "text_space")}
        for i in range(len(batch["scene"])):
            row = {k: v[i] for k, v in batch.items()}
            start = time.perf_counter()
            result = {"num_points": 0, "point_ids": np.zeros(0, np.int64),
                      "feat_sum": np.zeros((0, self.teacher.dim), np.float16), "count": np.zeros(0, np.int32)}
            error = str(row["error"])
            if not error:
                try:
                    result = self._fuse(row)
                except (SasError, FileNotFoundError) as err:
                    error = f"{row['scene']}: {err}"
                if self._fault is not None:
                    self._frames_fused += int(row["num_frames"])
                    self._fault.check(self._frames_fused)
            for key in ("scene", "group", "num_groups", "num_frames"):
                out[key].append(row[key])
            for key, value in result.items():
                out[key].append(value)
            out["error"].append(error)
            out["seconds"].append(time.perf_counter() - start)
            out["load_seconds"].append(self._load_seconds)
            self._load_seconds = 0.0
            out["text_space"].append(self.teacher.text_space)
        return out
