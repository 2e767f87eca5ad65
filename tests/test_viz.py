"""Visual outputs parse back: PNG signature and size, PLY header, vertex count and colours."""

import struct

import numpy as np
import pytest
import torch

from sas_ray.errors import InputError
from sas_ray.evaluate import NO_FEATURE, ConfusionMatrix
from sas_ray.viz import (
    NO_VALUE_COLOR, SCANNET_20_COLORS, capability_png, confusion_png, heatmap_colors, heatmap_png, heatmap_ply,
    label_palette, label_ply, query_similarity,
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


def test_query_heatmap_ply_and_png():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    similarity = query_similarity(features, torch.tensor([3.0, 0.0]))
    np.testing.assert_allclose(similarity[:3], [1.0, 0.0, 2 ** -0.5], rtol=1e-6)
    assert np.isnan(similarity[3])                         # no feature
    colors = heatmap_colors(similarity)
    assert colors[3].tolist() == list(NO_VALUE_COLOR)
    assert colors[0].tolist() != colors[1].tolist()
    _, vertices = _read_ply_vertices(heatmap_ply(_points(4), similarity))
    assert len(vertices) == 4 and vertices["red"][3] == NO_VALUE_COLOR[0]
    assert _png_size(heatmap_png(_points(4), similarity, "a chair", size_inches=(4, 3))) == (400, 300)


def test_capability_and_confusion_png():
    caps = np.array([[0.8, 0.2, 0.5], [0.4, 0.9, 0.3]])
    assert _png_size(capability_png(caps, ["lseg", "seem"], ["wall", "floor", "chair"], size_inches=(5, 3))) \
        == (500, 300)
    cm = ConfusionMatrix(("wall", "floor", "chair"))
    cm.update(np.array([0, 1, 2, NO_FEATURE]), np.array([0, 1, 1, 2]))
    assert _png_size(confusion_png(cm, size_inches=(6, 5))) == (600, 500)
    with pytest.raises(InputError, match="2 teachers and 2 classes"):
        capability_png(caps, ["lseg", "seem"], ["wall", "floor"])


def test_point_count_mismatch_is_refused():
    with pytest.raises(InputError, match="5 points but 4"):
        heatmap_ply(_points(5), np.zeros(4))
