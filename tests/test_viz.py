"""Visual outputs parse back: PNG signature and size, PLY header, vertex count and colours."""

import struct

import numpy as np
import pytest
import torch

from sas_ray.errors import InputError
from sas_ray.evaluate import NO_FEATURE, ConfusionMatrix
from sas_ray.scene import Frame
from sas_ray.views import NO_POINT, birdseye_view, camera_view, paint, pick_views
from sas_ray.viz import (
    NO_VALUE_COLOR, SCANNET_20_COLORS, PointLayers, birdseye_png, camera_view_png, capability_png, confusion_png,
    heatmap_colors, heatmap_ply, label_palette, label_ply, query_similarity,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _read_ply_vertices(data: bytes) -> tuple[list[str], np.ndarray]:
    """Independent minimal reader for the binary little-endian vertex block."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0"
    count = int(next(line for line in header if line.startswith("element vertex")).split()[2])
    types = {"float": "<f4", "uchar": "u1", "int": "<i4"}
    fields = []
    for line in header[header.index(f"element vertex {count}") + 1:]:
        if not line.startswith("property"):
            break
        fields.append((line.split()[2], types[line.split()[1]]))
    return header, np.frombuffer(data, np.dtype(fields), count, end)


def _points(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-2, 2, (n, 3)).astype(np.float32)


def test_label_ply_has_palette_colours_and_black_for_ignore_and_no_feature():
    labels = np.array([0, 1, 19, 255, NO_FEATURE, 2])
    header, vertices = _read_ply_vertices(label_ply(_points(6), labels, label_palette(20)))
    assert "element vertex 6" in header and len(vertices) == 6
    rgb = np.stack([vertices["red"], vertices["green"], vertices["blue"]], axis=1)
    assert rgb[:3].tolist() == [list(SCANNET_20_COLORS[0]), list(SCANNET_20_COLORS[1]), list(SCANNET_20_COLORS[19])]
    assert rgb[3:5].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert vertices["label"].tolist() == labels.tolist()
    np.testing.assert_array_equal(vertices["x"], _points(6)[:, 0])


def test_palette_extends_beyond_20_with_distinct_colours():
    palette = label_palette(160)
    assert palette.shape == (160, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette}) == 160


def test_query_heatmap_ply():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    similarity = query_similarity(features, torch.tensor([3.0, 0.0]))
    np.testing.assert_allclose(similarity[:3], [1.0, 0.0, 2 ** -0.5], rtol=1e-6)
    assert np.isnan(similarity[3])                         # no feature
    colors = heatmap_colors(similarity)
    assert colors[3].tolist() == list(NO_VALUE_COLOR)
    assert colors[0].tolist() != colors[1].tolist()
    _, vertices = _read_ply_vertices(heatmap_ply(_points(4), similarity))
    assert len(vertices) == 4 and vertices["red"][3] == NO_VALUE_COLOR[0]


def test_capability_and_confusion_png():
    caps = np.array([[0.8, 0.2, 0.5], [0.4, 0.9, 0.3]])
    assert _png_size(capability_png(caps, ["lseg", "seem"], ["wall", "floor", "chair"], size_inches=(5, 3))) \
        == (500, 300)
    cm = ConfusionMatrix(("wall", "floor", "chair"))
    cm.update(np.array([0, 1, 2, NO_FEATURE]), np.array([0, 1, 1, 2]))
    assert _png_size(confusion_png(cm, size_inches=(6, 5))) == (600, 500)
    with pytest.raises(InputError, match="2 teachers and 2 classes"):
        capability_png(caps, ["lseg", "seem"], ["wall", "floor"])


def test_capability_png_shows_unmeasured_cells_as_missing_not_zero():
    from PIL import Image
    import io

    caps = np.array([[0.0, 0.0, 0.0]])
    measured = np.array([[True, False, True]])
    image = np.asarray(Image.open(io.BytesIO(capability_png(caps, ["a"], ["wall", "floor", "chair"], measured,
                                                           size_inches=(6, 3)))).convert("RGB")).astype(int)
    # the three cells along the middle row: measured zeros are viridis' dark purple, the unmeasured one light grey
    row = image[image.shape[0] // 2 - 20]
    dark = (row.sum(axis=1) < 200).sum()
    grey = (np.abs(row - [217, 217, 217]).sum(axis=1) < 10).sum()
    assert dark > 100 and grey > 50, (dark, grey)


def _wall_scene():
    """A camera at the origin looking along +z (K: f = 50, 64 x 48 px) at two walls: points at z = 4 (labels 0 on
    the left half x < 0, 1 on the right) and, in front, a small patch at z = 2 (label 2) covering the centre."""
    xs, ys = np.meshgrid(np.linspace(-3, 3, 121), np.linspace(-2, 2, 81))
    back = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, 4.0)], axis=1)
    px, py = np.meshgrid(np.linspace(-0.3, 0.3, 13), np.linspace(-0.3, 0.3, 13))
    front = np.stack([px.ravel(), py.ravel(), np.full(px.size, 2.0)], axis=1)
    points = np.concatenate([back, front]).astype(np.float32)
    labels = np.concatenate([(back[:, 0] > 0).astype(int), np.full(len(front), 2)])
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    depth = np.full((48, 64), 4.0, np.float32)
    u, v = np.meshgrid(np.arange(64), np.arange(48))
    depth[(np.abs((u - 31.5) / 50 * 2) <= 0.3) & (np.abs((v - 23.5) / 50 * 2) <= 0.3)] = 2.0
    frame = Frame("s", "7", np.zeros((48, 64, 3), np.uint8), K, np.eye(4), depth)
    return points, labels, frame


def test_camera_view_fills_every_pixel_with_the_nearest_visible_point():
    points, labels, frame = _wall_scene()
    view = camera_view(points, frame)
    assert (view != NO_POINT).all()                      # dense: the gaps between projected points are filled
    shown = labels[view]
    u, v = np.meshgrid(np.arange(64), np.arange(48))
    x, y = (u - 31.5) / 50, (v - 23.5) / 50             # the ray direction at z = 1
    in_front = (np.abs(2 * x) < 0.28) & (np.abs(2 * y) < 0.28)
    assert (shown[in_front] == 2).all()                  # the near patch hides the wall behind it
    back = ~((np.abs(2 * x) < 0.32) & (np.abs(2 * y) < 0.32))
    assert (shown[back & (4 * x < -0.1)] == 0).all() and (shown[back & (4 * x > 0.1)] == 1).all()
    # without depth (lidar datasets) only the z-buffer hides: the near patch wins where its points land, and the
    # denser wall behind shows through the gaps between them
    no_depth = Frame("s", "7", frame.rgb, frame.intrinsic, frame.pose, None)
    assert (labels[camera_view(points, no_depth)][in_front] == 2).mean() > 0.6


def test_pick_views_prefers_the_camera_that_sees_most_then_the_one_adding_most():
    points, _, frame = _wall_scene()
    away = np.diag([-1.0, 1.0, -1.0, 1.0])              # turned around: sees nothing
    shifted = np.eye(4)
    shifted[0, 3] = 2.5                                 # sees the right part, some of it new
    poses = np.stack([away, np.eye(4), shifted, np.eye(4)])
    assert pick_views(points, poses, np.stack([frame.intrinsic] * 4), frame.size, 2) == [1, 2]


def test_birdseye_cuts_the_ceiling_and_shows_the_highest_point_below():
    xs, ys = np.meshgrid(np.linspace(0, 4, 81), np.linspace(0, 3, 61))
    floor = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], axis=1)
    table = floor[(floor[:, 0] < 1) & (floor[:, 1] < 1)] + [0, 0, 0.8]
    ceiling = floor + [0, 0, 3.0]
    points = np.concatenate([floor, table, ceiling])
    labels = np.concatenate([np.zeros(len(floor)), np.ones(len(table)), np.full(len(ceiling), 2)]).astype(int)
    view, cell = birdseye_view(points, long_side=81)
    assert view.shape == (61, 81) and cell == pytest.approx(0.05)     # the extent fills the image
    shown = labels[view]
    assert (shown != 2).all()                                          # the ceiling is cut away
    assert (shown[-20:, :20] == 1).all() and (shown[:40] == 0).all()   # the table (x, y < 1 m: bottom left) on top
    colors = paint(view, label_palette(3)[labels], (255, 255, 255))
    assert colors[0, 0].tolist() == label_palette(3)[0].tolist()


def test_scene_pictures_are_pngs_of_the_panels():
    points, labels, frame = _wall_scene()
    layers = PointLayers("scene0000_00", points, labels, labels, ("wall", "floor", "cabinet"),
                         {"a wall": np.linspace(0, 1, len(points))})
    assert len(layers.legend(np.arange(len(points)))) == 3
    assert _png_size(camera_view_png(layers, frame))[0] > 4 * 300    # RGB, prediction, truth, one query
    assert _png_size(birdseye_png(layers))[0] > 3 * 300


def test_point_count_mismatch_is_refused():
    with pytest.raises(InputError, match="5 points but 4"):
        heatmap_ply(_points(5), np.zeros(4))
