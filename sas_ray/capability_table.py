"""The capability table the `capability` stage writes and `fuse` reads: one row per (teacher, vocabulary class).

    {output}/capability/capability.parquet
        teacher         str      the teacher's features folder name (features/{teacher}/)
        class_index     int      position in the vocabulary (label set)
        class_name      str
        capability      float64  SAS's dataset-level IoU (sum of intersections / sum of unions); 'other' = 0
        per_image_miou  float64  the paper's form (mean over images), for reference
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sas_ray.errors import InputError
from sas_ray.storage import Storage

CAPABILITY_FILE = "capability/capability.parquet"
CAPABILITY_COLUMNS = ("teacher", "class_index", "class_name", "capability", "per_image_miou")


def read_capabilities(root: Storage, teachers: Sequence[str], num_classes: int,
                      class_names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """teacher -> float64 [num_classes] capability per vocabulary class, from {root}/capability/capability.parquet.

    Every teacher needs exactly one row per class 0..num_classes-1; with `class_names`, each row's class_name must
    match the vocabulary's (a table built over another label set is refused)."""
    source = root.url(CAPABILITY_FILE)
    if not root.exists(CAPABILITY_FILE):
        raise InputError(f"{source}: no capability table; run `sas-ray capability` first (or fuse with method "
                         "add / linear / single, which need none)")
    table = root.read_table(CAPABILITY_FILE)
    missing_columns = [c for c in CAPABILITY_COLUMNS if c not in table.column_names]
    if missing_columns:
        raise InputError(f"{source}: missing column(s) {missing_columns}; expected {list(CAPABILITY_COLUMNS)}")
    rows = table.select(["teacher", "class_index", "class_name", "capability"]).to_pylist()
    have = sorted({r["teacher"] for r in rows})
    capabilities = {}
    for teacher in teachers:
        values = np.full(num_classes, np.nan)
        for row in (r for r in rows if r["teacher"] == teacher):
            k = row["class_index"]
            if k is None or not 0 <= k < num_classes:
                raise InputError(f"{source}: teacher '{teacher}' has class_index {k}, outside the vocabulary "
                                 f"0..{num_classes - 1}")
            if not np.isnan(values[k]):
                raise InputError(f"{source}: teacher '{teacher}' has more than one row for class_index {k}")
            if class_names is not None and row["class_name"] != class_names[k]:
                raise InputError(f"{source}: teacher '{teacher}' class_index {k} is {row['class_name']!r} but the "
                                 f"vocabulary's class {k} is {class_names[k]!r} (capability of another label set?)")
            value = row["capability"]
            if value is None or not np.isfinite(value) or value < 0:
                raise InputError(f"{source}: teacher '{teacher}' class {k}: capability must be finite and >= 0, "
                                 f"got {value}")
            values[k] = value
        absent = np.flatnonzero(np.isnan(values)).tolist()
        if len(absent) == num_classes:
            raise InputError(f"{source}: no rows for teacher '{teacher}'; the table has teachers {have}")
        if absent:
            raise InputError(f"{source}: teacher '{teacher}' has no capability for class_index {absent} "
                             f"(expected one row per class 0..{num_classes - 1})")
        capabilities[teacher] = torch.from_numpy(values)
    return capabilities
