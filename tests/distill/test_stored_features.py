"""Stage 1's targets read by row from storage (local memory map, or one ranged read on other stores) are the rows of
the file's features; a batch built from them equals one built from the features in memory."""

import numpy as np
import pytest
import torch

from sas_ray.distill.batch import SceneSample, collate, voxelize_scene
from sas_ray.distill.stored_features import StoredFeatures, open_features
from sas_ray.errors import InputError
from sas_ray.features import FEATURES, encode_features, feature_file
from sas_ray.scene import PointFeatures
from sas_ray.storage import Storage


def _features(n=400, dim=8, seed=0) -> PointFeatures:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, generator=g) < 0.6
    return PointFeatures(torch.randn(int(mask.sum()), dim, generator=g).half(), mask)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_rows_read_from_storage_are_the_files_rows(tmp_path, where):
    root = Storage(str(tmp_path) if where == "local" else f"memory://stored-{tmp_path.name}")
    features = _features()
    root.child(FEATURES, "fused").write_tensors(feature_file("s0"), encode_features(features))
    stored = open_features(root, "fused", "s0")
    assert isinstance(stored, StoredFeatures) and stored.storage.is_local == (where == "local")
    assert torch.equal(stored.mask_full, features.mask_full) and stored.shape == tuple(features.feat.shape)
    rows = torch.tensor([5, 0, 5, len(features.feat) - 1])
    assert torch.equal(stored[rows], features.feat[rows])

    points = np.random.default_rng(0).uniform(0, 1, (400, 3)).astype(np.float32)
    superpoints = np.arange(400) // 20
    batches = [collate([voxelize_scene(SceneSample("s0", points, superpoints, f), 0.05,
                                       torch.Generator().manual_seed(1), train=True)],
                       torch.Generator().manual_seed(2), 50, torch.Generator().manual_seed(3))
               for f in (features, stored)]
    assert torch.equal(batches[0].target, batches[1].target) and torch.equal(batches[0].loss_rows,
                                                                             batches[1].loss_rows)


def test_a_file_that_is_not_features_is_named(tmp_path):
    root = Storage(str(tmp_path))
    root.child(FEATURES, "fused").write_tensors(feature_file("s0"), {"feat": torch.zeros(3, 2)})
    with pytest.raises(InputError, match="s0.safetensors"):
        StoredFeatures(root.child(FEATURES, "fused"), feature_file("s0"))
