"""OpenScene `.pth` scenes and `.pt` fused features: files shaped like OpenScene's, weights-only loading, legacy."""

import io
import os
import zipfile

import numpy as np
import pytest
import torch

from sas_ray.datasets.openscene import (decode_pt_features, decode_pth_scene, encode_pt_features, encode_pth_scene,
                                        read_fused_features, read_pth_scene, write_fused_features, write_pth_scene)
from sas_ray.errors import InputError
from sas_ray.scene import PointFeatures, Scene


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _openscene_scannet_pth(coords, rgb, nyu40):
    """What preprocess_3d_scannet.py writes: float remapper of the 20 NYU40 ids, colors rgb/127.5 - 1."""
    remapper = np.ones(150) * 255
    for i, x in enumerate([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]):
        remapper[x] = i
    return _saved((np.ascontiguousarray(coords), rgb / 127.5 - 1, remapper[nyu40]))


def test_decodes_an_openscene_scannet_file():
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(50, 3))
    rgb = rng.integers(0, 256, (50, 3)).astype(np.float64)
    nyu40 = rng.integers(0, 41, 50)
    scene = decode_pth_scene(_openscene_scannet_pth(coords, rgb, nyu40), "scene0000_00", "x.pth")
    np.testing.assert_array_equal(scene.points, coords.astype(np.float32))
    np.testing.assert_array_equal(scene.colors, rgb.astype(np.uint8))
    expected = {1: 0, 2: 1, 3: 2, 14: 12, 39: 19, 0: 255, 13: 255, 40: 255}
    for nyu, label in expected.items():
        assert (scene.labels[nyu40 == nyu] == label).all()


def test_nuscenes_style_scalar_colors_and_round_trip():
    coords = np.arange(12, dtype=np.float64).reshape(4, 3)
    labels = np.array([0.0, 15.0, 255.0, -100.0])  # -100: OpenScene's loader maps it to 255
    scene = decode_pth_scene(_saved((coords, 0, labels)), "tok", "n.pth")
    assert scene.colors is None
    np.testing.assert_array_equal(scene.labels, [0, 15, 255, 255])
    again = decode_pth_scene(encode_pth_scene(scene), "tok", "again.pth")
    np.testing.assert_array_equal(again.points, scene.points)
    np.testing.assert_array_equal(again.labels, scene.labels)
    assert again.colors is None


def test_round_trip_colors_exact_and_no_labels_become_ignore():
    rng = np.random.default_rng(2)
    scene = Scene("s", rng.normal(size=(20, 3)).astype(np.float32), rng.integers(0, 256, (20, 3)).astype(np.uint8))
    coords, colors, labels = torch.load(io.BytesIO(encode_pth_scene(scene)), weights_only=False)
    assert coords.dtype == np.float64 and colors.dtype == np.float64 and colors.min() >= -1 and colors.max() <= 1
    back = decode_pth_scene(encode_pth_scene(scene), "s", "s.pth")
    np.testing.assert_array_equal(back.colors, scene.colors)
    np.testing.assert_array_equal(back.labels, np.full(20, 255))


class _Payload:
    """A pickle that would create a directory when loaded without weights_only."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = str(tmp_path / "pwned")
    data = _saved((np.zeros((2, 3)), 0, _Payload(marker)))
    with pytest.raises(InputError, match=r"evil.pth: refused .*os.makedirs|evil.pth: refused .*makedirs"):
        decode_pth_scene(data, "s", "evil.pth")
    assert not os.path.exists(marker)
    with pytest.raises(InputError, match="evil.pt: refused"):
        decode_pt_features(_saved({"feat": _Payload(marker), "mask_full": torch.ones(1, dtype=torch.bool)}),
                           "evil.pt")
    assert not os.path.exists(marker)


def test_object_arrays_and_garbage_are_refused():
    with pytest.raises(InputError, match="o.pth: refused"):
        decode_pth_scene(_saved((np.array([1, "a"], dtype=object), 0, 0)), "s", "o.pth")
    with pytest.raises(InputError, match="g.pth: refused or unreadable"):
        decode_pth_scene(b"not a torch file", "s", "g.pth")
    with pytest.raises(InputError, match="expected a tuple"):
        decode_pth_scene(_saved({"coords": torch.zeros(2, 3)}), "s", "d.pth")


def test_numpy1_written_files_load():
    """Files pickled under numpy 1.x name numpy.core.multiarray; rewrite a file to that spelling and load it."""
    data = _saved((np.ones((3, 3)), np.zeros((3, 3)), np.array([1.0, 2.0, 255.0])))
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            blob = src.read(name)
            if name.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in blob
                blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(name, blob)
    scene = decode_pth_scene(out.getvalue(), "s", "old.pth")
    np.testing.assert_array_equal(scene.labels, [1, 2, 255])
    np.testing.assert_array_equal(scene.colors, np.full((3, 3), 128))  # (0 + 1) * 127.5 rounds to 128


def test_fused_features_round_trip_and_openscene_shape():
    mask = torch.tensor([True, False, True, True, False])
    feat = torch.arange(6, dtype=torch.float32).reshape(3, 2).half()
    raw = torch.load(io.BytesIO(encode_pt_features(PointFeatures(feat, mask))), weights_only=True)
    assert sorted(raw) == ["feat", "mask_full"] and raw["feat"].dtype == torch.float16
    back = decode_pt_features(_saved({"feat": feat, "mask_full": mask.numpy()}), "f.pt")  # numpy mask, as in old files
    assert torch.equal(back.feat, feat) and torch.equal(back.mask_full, mask)
    with pytest.raises(InputError, match="marks 3 points"):
        decode_pt_features(_saved({"feat": feat[:2], "mask_full": mask}), "f.pt")
    with pytest.raises(InputError, match=r"got \['feat'\]"):
        decode_pt_features(_saved({"feat": feat}), "f.pt")


def test_legacy_three_key_file_is_converted():
    """openscene#3: feat has a row per chunk point (mask_full), `mask` marks the rows that got a feature."""
    mask_full = torch.tensor([False, True, True, False, True, True])  # chunk = points 1, 2, 4, 5
    feat = torch.tensor([[1.0], [2.0], [4.0], [5.0]]).half()[..., None]  # legacy [K, C, 1]
    visible = torch.tensor([True, False, True, True])  # point 2 had no view
    got = decode_pt_features(_saved({"feat": feat, "mask": visible, "mask_full": mask_full}), "legacy.pt")
    assert got.mask_full.tolist() == [False, True, False, False, True, True]
    assert got.feat[:, 0].tolist() == [1.0, 4.0, 5.0]
    as_indices = decode_pt_features(_saved({"feat": feat, "mask": torch.tensor([0, 2, 3]), "mask_full": mask_full}),
                                    "legacy.pt")
    assert torch.equal(as_indices.mask_full, got.mask_full)
    with pytest.raises(InputError, match="does not index the 4 feature rows"):
        decode_pt_features(_saved({"feat": feat, "mask": torch.tensor([0, 9]), "mask_full": mask_full}), "legacy.pt")


def test_write_and_read_by_url(tmp_path):
    features = PointFeatures(torch.ones(2, 4, dtype=torch.float16), torch.tensor([True, False, True]))
    scene = Scene("scene0000_00", np.eye(3, dtype=np.float32), labels=np.array([4, 255, 0]))
    for folder in (f"memory://os-{os.getpid()}/out", str(tmp_path)):
        write_fused_features(f"{folder}/scene0000_00_0.pt", features)
        back = read_fused_features(f"{folder}/scene0000_00_0.pt")
        assert torch.equal(back.feat, features.feat) and torch.equal(back.mask_full, features.mask_full)
        write_pth_scene(f"{folder}/scene0000_00_vh_clean_2.pth", scene)
        again = read_pth_scene(f"{folder}/scene0000_00_vh_clean_2.pth", "scene0000_00")
        np.testing.assert_array_equal(again.points, scene.points)
        np.testing.assert_array_equal(again.labels, scene.labels)
    with pytest.raises(InputError, match="scene s: .*missing.pth not found"):
        read_pth_scene(f"{tmp_path}/missing.pth", "s")
