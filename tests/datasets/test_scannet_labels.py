"""ScanNet label images (OpenScene's label/<f>.png, NYU40 ids): written beside the frames, read as label-set
indices; synthetic ScanNet datasets carry them."""

import numpy as np
import pytest

from sas_ray.config import DatasetConfig, SyntheticConfig
from sas_ray.datasets import scannet
from sas_ray.datasets.synthetic import make_indoor_frames, make_indoor_scene
from sas_ray.datasets.synthetic_dataset import write_synthetic_scene
from sas_ray.errors import InputError
from sas_ray.labels import MATTERPORT_21, SCANNET_20
from sas_ray.storage import Storage


def test_nyu40_label_images_round_trip_to_label_set_indices(tmp_path):
    root = str(tmp_path)
    scene, room = make_indoor_scene("scene0000_00", 3, 800)
    frames, _ = make_indoor_frames(scene, room, 1, (12, 16), 3)
    nyu40 = np.tile(np.array([[1, 2, 22, 39], [0, 40, 5, 36]], np.uint8).repeat(4, axis=1), (6, 1))  # [12, 16]
    scannet.write_scannet(root, "val", scene, frames, labels=[nyu40])
    color_uri = scannet.frame_rows(root, "val", "scene0000_00")[0]["color_uri"]
    uri = scannet.label_uri(color_uri)
    assert uri == f"{root}/scannet_2d/scene0000_00/label/0.png"
    data = Storage(root).read_bytes("scannet_2d/scene0000_00/label/0.png")
    for label_set, names in (("scannet20", SCANNET_20), ("matterport21", MATTERPORT_21)):
        index = {1: "wall", 2: "floor", 22: "ceiling", 39: "other", 5: "chair", 36: "bathtub"}
        expected = np.vectorize(lambda i: names.index(index[i]) if index.get(i) in names else 255)(nyu40)
        assert np.array_equal(scannet.decode_label_png(data, label_set, "f0", uri), expected)
    with pytest.raises(InputError, match="nuscenes16"):
        scannet.decode_label_png(data, "nuscenes16", "f0", uri)
    with pytest.raises(InputError, match="one uint8 label image per frame"):
        scannet.write_scannet(root, "val", scene, frames, labels=[nyu40[:5]])


def test_synthetic_scannet_frames_come_with_their_rendered_labels(tmp_path):
    dataset = DatasetConfig(layout="scannet", root=str(tmp_path), synthetic=SyntheticConfig(
        num_scenes=1, frames_per_scene=2, size="tiny", points_per_scene=800, seed=4))
    write_synthetic_scene(dataset, "scene0000_00")
    scene, room = make_indoor_scene("scene0000_00", 4000, 800, "scannet20")
    _, views = make_indoor_frames(scene, room, 2, (48, 64), 4000)
    store = Storage(str(tmp_path))
    for i, view in enumerate(views):
        rel = f"scannet_2d/scene0000_00/label/{i}.png"
        labels = scannet.decode_label_png(store.read_bytes(rel), "scannet20", f"frame {i}", rel)
        assert np.array_equal(labels, view.label) and (labels < 20).any()
