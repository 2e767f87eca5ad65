"""Stage 1's targets read row by row: a scene's fused features stay in storage and the loader reads only the rows the
loss keeps (SAS: 20k voxels a batch), a few MB a batch instead of the whole file (150 MB a ScanNet scene at 512-d
fp16, 1.2 GB a batch of 8), which no CPU reads and parses at a GPU's step rate.

Local files are memory-mapped (the page cache serves repeated visits); other stores read the feature block once
per scene visit (one ranged GET).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from sas_ray.errors import InputError
from sas_ray.features import FEATURES, feature_file, read_features
from sas_ray.scene import PointFeatures
from sas_ray.storage import Storage

_DTYPES = {"F16": (np.float16, torch.float16), "BOOL": (np.bool_, torch.bool)}


class StoredFeatures:
    """The fp16 [M,C] `feat` of a feature file in storage, rows read on indexing (`features[rows]`); `mask_full`
    bool [N] read at once. Stands in for `PointFeatures.feat` where only some rows are needed."""

    dtype = torch.float16

    def __init__(self, storage: Storage, rel: str):
        self.storage, self.rel, self.source = storage, rel, storage.url(rel)
        size = int.from_bytes(storage.read_range(rel, 0, 8), "little")
        try:
            header = json.loads(storage.read_range(rel, 8, 8 + size))
            feat, mask = header["feat"], header["mask_full"]
        except (ValueError, KeyError) as err:
            raise InputError(f"{self.source}: not a feature file with 'feat' and 'mask_full': {err}") from None
        if feat["dtype"] != "F16" or len(feat["shape"]) != 2 or mask["dtype"] != "BOOL":
            raise InputError(f"{self.source}: feat must be F16 [M,C] and mask_full BOOL [N], got {feat['dtype']} "
                             f"{feat['shape']} and {mask['dtype']}")
        start = 8 + size
        first, last = (start + offset for offset in mask["data_offsets"])
        self.mask_full = torch.from_numpy(np.frombuffer(storage.read_range(rel, first, last), np.bool_).copy())
        self.shape = tuple(feat["shape"])
        if int(self.mask_full.sum()) != self.shape[0]:
            raise InputError(f"{self.source}: feat has {self.shape[0]} rows but mask_full marks "
                             f"{int(self.mask_full.sum())} points")
        self._offset = start + feat["data_offsets"][0]
        self._block: np.ndarray | None = None

    @property
    def num_points(self) -> int:
        return self.mask_full.shape[0]

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        """fp16 [len(rows), C]: rows `rows` (int64 [R]) of `feat`."""
        if self._block is None:
            self._block = self._open()
        return torch.from_numpy(np.ascontiguousarray(self._block[rows.numpy()]))

    def _open(self) -> np.ndarray:
        if self.storage.is_local:
            return np.memmap(self.source.removeprefix("file://"), np.float16, "r", self._offset, self.shape)
        blob = self.storage.read_range(self.rel, self._offset, self._offset + 2 * self.shape[0] * self.shape[1])
        return np.frombuffer(blob, np.float16).reshape(self.shape)


def open_features(root: Storage, folder: str, scene_id: str) -> StoredFeatures | PointFeatures | list[PointFeatures]:
    """A scene's features under {root}/features/{folder}/: left in storage (`StoredFeatures`) for a full-resolution
    file, read whole for OpenScene chunk files (one chunk is picked per visit)."""
    stage = root.child(FEATURES, folder)
    name = feature_file(scene_id)
    size = int.from_bytes(stage.read_range(name, 0, 8), "little")
    if b'"feat"' in stage.read_range(name, 8, 8 + size):
        return StoredFeatures(stage, name)
    return read_features(root, folder, scene_id)
