"""The simulated-label teacher: recognises the dataset's frames, paints the label images' text embeddings, errs per
(class, world cell) region at the configured rates, bleeds only near label edges, blurs and drops views as stated."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from sas_ray.config import DatasetConfig
from sas_ray.datasets import scannet
from sas_ray.datasets.frames import frame_index_table, read_frame
from sas_ray.datasets.rawfiles import read_url
from sas_ray.datasets.synthetic_dataset import write_synthetic_scene
from sas_ray.errors import ConfigError
from sas_ray.labels import SCANNET_20
from sas_ray.models import build_teacher, build_text_encoder, teacher_names
from sas_ray.models.simulated_label import CONFUSERS, confusion_matrix
from sas_ray.prepared import FRAMES
from sas_ray.reference import reference_fusion
from sas_ray.storage import Storage
from sas_ray.superpoints import segment_mesh

PERFECT = {"default_skill": 1.0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A one-room ScanNet-layout dataset (3 frames at 320x240) with its frame index: (prepared root, frames, truth,
    the room's mesh)."""
    root = tmp_path_factory.mktemp("simulated")
    config = DatasetConfig(layout="scannet", root=str(root / "raw"), synthetic={
        "num_scenes": 1, "frames_per_scene": 3, "size": "real", "points_per_scene": 2000, "seed": 4})
    write_synthetic_scene(config, "scene0000_00")
    rows = scannet.frame_rows(config.root, "val", "scene0000_00")
    Storage(str(root / "prepared")).write_table(FRAMES, frame_index_table(rows))
    frames = [read_frame(row) for row in rows]
    truth = [scannet.decode_label_png(read_url(scannet.label_uri(r["color_uri"]), None, "t"), "scannet20", "t", "t")
             for r in rows]
    return str(root / "prepared"), frames, truth, scannet.read_scene(config.root, "val", "scene0000_00")


def _teacher(prepared: str, **options):
    return build_teacher("simulated-label", tiny=True, prepared=prepared, seed=2, **options)


def _classes(features: torch.Tensor) -> np.ndarray:
    """Argmax over the ScanNet-20 prompts, -1 where the feature is zero."""
    text = build_text_encoder("openclip-text", tiny=True, seed=2).encode_labels(SCANNET_20)
    classes = (features @ text.T).argmax(-1).numpy()
    return np.where(features.abs().amax(-1).numpy() > 0, classes, -1)


def _regions(frame, truth: np.ndarray, cell: float) -> np.ndarray:
    """int64 [H, W] region id: (true class, world cell), from the frame's depth and pose in closed form."""
    k, (height, width) = frame.intrinsic, truth.shape
    v, u = np.mgrid[:height, :width]
    z = frame.depth
    camera = np.stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z], -1)
    world = camera @ frame.pose[:3, :3].T + frame.pose[:3, 3]
    key = np.concatenate([truth[..., None], np.floor(world / cell).astype(np.int64)], -1).reshape(-1, 4)
    return np.unique(key, axis=0, return_inverse=True)[1].reshape(height, width)


def test_a_perfect_teacher_paints_the_label_images(dataset):
    prepared, frames, truth, _ = dataset
    assert "simulated-label" in teacher_names()
    teacher = _teacher(prepared, **PERFECT)
    assert teacher.text_space == build_text_encoder("openclip-text", tiny=True, seed=2).text_space
    features = teacher.encode(torch.from_numpy(np.stack([f.rgb for f in frames])))
    assert features.shape == (3, 240, 320, teacher.dim)
    for b, labels in enumerate(truth):
        labelled = labels != 255
        assert labelled.mean() > 0.5
        np.testing.assert_array_equal(_classes(features[b]), np.where(labelled, labels, -1))
        torch.testing.assert_close(features[b][torch.from_numpy(labelled)].norm(dim=-1),
                                   torch.ones(int(labelled.sum())))


def test_images_of_other_sizes_and_unknown_images(dataset):
    prepared, frames, truth, _ = dataset
    teacher = _teacher(prepared, **PERFECT)
    small = np.array(Image.fromarray(frames[1].rgb).resize((160, 120), Image.BILINEAR))
    expected = np.asarray(Image.fromarray(truth[1].astype(np.uint8)).resize((160, 120), Image.NEAREST)).astype(int)
    classes = _classes(teacher.encode(torch.from_numpy(small)[None])[0])
    np.testing.assert_array_equal(classes, np.where(expected != 255, expected, -1))
    unknown = teacher.encode(torch.full((2, 48, 64, 3), 77, dtype=torch.uint8))
    assert unknown.shape == (2, 48, 64, teacher.dim) and not unknown.any()


def test_confusion_rows_by_hand():
    matrix = confusion_matrix(("a", "b", "c"), {"a": 0.7}, 0.4, {"a": ("b",)})
    np.testing.assert_allclose(matrix, [[0.7, 0.3, 0.0], [0.3, 0.4, 0.3], [0.3, 0.3, 0.4]])
    scannet = confusion_matrix(SCANNET_20, {}, 0.6, CONFUSERS)
    np.testing.assert_allclose(scannet.sum(1), 1.0)
    assert scannet[SCANNET_20.index("table"), SCANNET_20.index("desk")] == pytest.approx(0.2)


def test_error_rates_follow_the_skill_and_errors_go_to_confusers(dataset):
    prepared, frames, truth, _ = dataset
    skill = {"wall": 0.9, "floor": 0.3}
    teacher = _teacher(prepared, skill=skill, default_skill=0.6, persistence=0.0, cell=0.05)
    correct, total, off_row = {}, {}, 0
    for frame, labels in zip(frames, truth):
        for draw in range(12):  # frame ids are part of the seed: 12 independent draws of every region
            pred = teacher.predict(labels, frame.depth, frame.intrinsic, frame.pose, "scene0000_00", f"x{draw}")
            for k in np.unique(labels[labels != 255]):
                mine = labels == k
                correct[k] = correct.get(k, 0) + int((pred[mine] == k).sum())
                total[k] = total.get(k, 0) + int(mine.sum())
                allowed = {k} | {SCANNET_20.index(c) for c in CONFUSERS[SCANNET_20[k]]}
                off_row += int((~np.isin(pred[mine], list(allowed))).sum())
    assert off_row == 0
    for k in correct:
        if total[k] > 20000:
            assert correct[k] / total[k] == pytest.approx(skill.get(SCANNET_20[k], 0.6), abs=0.08), SCANNET_20[k]
    assert {SCANNET_20.index("wall"), SCANNET_20.index("floor")} <= {k for k in total if total[k] > 20000}


def test_errors_are_coherent_per_region_and_persist_across_views(dataset):
    prepared, frames, truth, _ = dataset
    frame, labels = frames[0], truth[0]
    regions = _regions(frame, labels, 0.5)
    persistent = _teacher(prepared, default_skill=0.5, persistence=1.0, cell=0.5)
    first = persistent.predict(labels, frame.depth, frame.intrinsic, frame.pose, "scene0000_00", "0")
    labelled = labels != 255
    for r in np.unique(regions[labelled]):
        assert len(np.unique(first[regions == r])) == 1
    assert 0.2 < (first[labelled] == labels[labelled]).mean() < 0.8
    again = persistent.predict(labels, frame.depth, frame.intrinsic, frame.pose, "scene0000_00", "1")
    np.testing.assert_array_equal(again, first)
    fresh = _teacher(prepared, default_skill=0.5, persistence=0.0, cell=0.5)
    redrawn = fresh.predict(labels, frame.depth, frame.intrinsic, frame.pose, "scene0000_00", "1")
    assert (redrawn != fresh.predict(labels, frame.depth, frame.intrinsic, frame.pose, "scene0000_00", "0")).any()
    other_seed = _teacher(prepared, default_skill=0.5, persistence=1.0, cell=0.5, error_seed=5)
    assert (other_seed.predict(labels, frame.depth, frame.intrinsic, frame.pose, "scene0000_00", "0") != first).any()


def test_boundary_noise_changes_only_pixels_near_label_edges(dataset):
    prepared, frames, truth, _ = dataset
    teacher = _teacher(prepared, **PERFECT, boundary_noise=0.5, boundary_radius=3)
    changed, near_edge = 0, 0
    for frame, labels in zip(frames, truth):
        pred = teacher.predict(labels, frame.depth, frame.intrinsic, frame.pose, frame.scene_id, frame.frame_id)
        window = np.ones((7, 7), bool)
        edge = ndimage.maximum_filter(labels, footprint=window, mode="nearest") != \
            ndimage.minimum_filter(labels, footprint=window, mode="nearest")
        wrong = pred != labels
        assert not (wrong & ~edge).any()
        changed += int(wrong.sum())
        near_edge += int(edge.sum())
    assert 0.05 * near_edge < changed < 0.5 * near_edge


def test_unsure_views_and_blur(dataset):
    prepared, frames, truth, _ = dataset
    image = torch.from_numpy(frames[2].rgb)[None]
    labelled = torch.from_numpy(truth[2] != 255)
    clean = _teacher(prepared, **PERFECT).encode(image)[0]
    unsure = _teacher(prepared, **PERFECT, dropout_frames=1.0, dropout_keep=0.3).encode(image)[0]
    noise = (unsure - 0.3 * clean) / 0.7
    torch.testing.assert_close(noise[labelled].norm(dim=-1), torch.ones(int(labelled.sum())))
    block = (torch.arange(240)[:, None] // 32) * 10 + torch.arange(320)[None] // 32
    directions = []
    for b in block[labelled].unique():  # one random direction per 32-pixel block
        rows = noise[labelled & (block == b)]
        torch.testing.assert_close(rows, rows[:1].expand_as(rows), atol=1e-5, rtol=0)
        directions.append(rows[0])
    assert len(directions) > 10 and (torch.stack(directions) @ torch.stack(directions).T).triu(1).max() < 0.99
    blurred = _teacher(prepared, **PERFECT, blur=1).encode(image)[0]
    reference = ndimage.uniform_filter(clean.numpy(), size=(3, 3, 1))
    torch.testing.assert_close(blurred[1:-1, 1:-1], torch.from_numpy(reference[1:-1, 1:-1]), atol=1e-5, rtol=0)


def test_bad_options_are_config_errors(dataset):
    prepared, _, _, _ = dataset
    with pytest.raises(ConfigError, match="options.prepared"):
        build_teacher("simulated-label", tiny=True)
    with pytest.raises(ConfigError, match="armchair"):
        _teacher(prepared, skill={"armchair": 0.5})
    with pytest.raises(ConfigError, match="must lie in"):
        _teacher(prepared, boundary_noise=1.5)
    with pytest.raises(ConfigError, match="label_set"):
        _teacher(prepared, label_set="nuscenes16")


def test_superpoints_repair_what_boundary_noise_breaks(dataset):
    prepared, frames, _, scene = dataset
    superpoints = torch.from_numpy(segment_mesh(scene.points, scene.faces, 0.01, 60))
    accuracy = {}
    for noise in (0.0, 0.6):
        teacher = _teacher(prepared, **PERFECT, boundary_noise=noise, boundary_radius=4)
        fused = reference_fusion(teacher, scene, frames, cut_bound=10, vis_thres=0.02)
        ids = torch.unique(superpoints[fused.mask_full], return_inverse=True)[1]
        averaged = torch.zeros(int(ids.max()) + 1, teacher.dim).index_add_(0, ids, fused.feat.float())
        labels = scene.labels[fused.mask_full.numpy()]
        labelled = labels != 255
        for name, features in (("raw", fused.feat.float()), ("superpoint", averaged[ids])):
            accuracy[name, noise] = (_classes(features)[labelled] == labels[labelled]).mean()
    assert accuracy["raw", 0.6] < accuracy["raw", 0.0] - 0.02  # bleeding across edges costs points near them
    assert accuracy["superpoint", 0.6] > accuracy["raw", 0.6] + 0.02  # each superpoint's majority is right
    assert accuracy["superpoint", 0.6] > accuracy["raw", 0.0]
