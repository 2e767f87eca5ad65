"""PLY meshes: round trip, and hand-assembled files shaped like ScanNet's and Matterport's."""

import struct

import numpy as np
import pytest

from sas_ray.datasets.ply import decode_ply, decode_ply_elements, encode_ply
from sas_ray.errors import InputError


def test_round_trip_points_colors_labels_faces():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(7, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (7, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2, 255, 19, 3, 3])
    faces = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    mesh = decode_ply(encode_ply(points, colors, labels, faces), "m.ply")
    np.testing.assert_array_equal(mesh.points, points)
    np.testing.assert_array_equal(mesh.colors, colors)
    np.testing.assert_array_equal(mesh.labels, labels)
    np.testing.assert_array_equal(mesh.faces, faces)
    bare = decode_ply(encode_ply(points), "p.ply")
    assert bare.colors is None and bare.labels is None and bare.faces is None


def _scannet_like(endian: str) -> bytes:
    """ScanNet `_vh_clean_2.ply` header (with alpha), assembled by hand with struct."""
    fmt = {"<": "binary_little_endian", ">": "binary_big_endian"}[endian]
    header = (f"ply\nformat {fmt} 1.0\ncomment VCGLIB generated\nelement vertex 3\nproperty float x\n"
              "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              "property uchar alpha\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n").encode()
    body = b"".join(struct.pack(endian + "fffBBBB", i, 2.0 * i, -1.5, 10 * i, 20, 30, 255) for i in range(3))
    return header + body + struct.pack(endian + "Biii", 3, 2, 0, 1)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_reads_scannet_shaped_file(endian):
    mesh = decode_ply(_scannet_like(endian), "scene_vh_clean_2.ply")
    np.testing.assert_array_equal(mesh.points, [[0, 0, -1.5], [1, 2, -1.5], [2, 4, -1.5]])
    np.testing.assert_array_equal(mesh.colors, [[0, 20, 30], [10, 20, 30], [20, 20, 30]])
    np.testing.assert_array_equal(mesh.faces, [[2, 0, 1]])


def test_reads_matterport_shaped_faces_with_per_face_properties():
    header = (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
              b"property float z\nproperty float nx\nproperty float ny\nproperty float nz\nproperty float tx\n"
              b"property float ty\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              b"element face 2\nproperty list uchar int vertex_indices\nproperty int material_id\n"
              b"property int segment_id\nproperty int category_id\nend_header\n")
    verts = b"".join(struct.pack("<8f3B", i, 0, 0, 0, 0, 1, 0.5, 0.5, 1, 2, 3) for i in range(3))
    faces = struct.pack("<B3i3i", 3, 0, 1, 2, 7, 8, 9) + struct.pack("<B3i3i", 3, 2, 1, 0, 4, 5, -1)
    elements = decode_ply_elements(header + verts + faces, "region0.ply")
    np.testing.assert_array_equal(elements["face"]["category_id"], [9, -1])
    np.testing.assert_array_equal(elements["face"]["vertex_indices"], [[0, 1, 2], [2, 1, 0]])
    np.testing.assert_array_equal(decode_ply(header + verts + faces, "r").points[:, 0], [0, 1, 2])


def test_bad_files_are_input_errors():
    good = _scannet_like("<")
    with pytest.raises(InputError, match="m.ply: PLY element 'face' is truncated"):
        decode_ply(good[:-4], "m.ply")
    with pytest.raises(InputError, match="not a PLY"):
        decode_ply(b"solid stl", "m.ply")
    with pytest.raises(InputError, match="ascii"):
        decode_ply(good.replace(b"binary_little_endian", b"ascii"), "m.ply")
    quad = good[:-13] + struct.pack("<Biiii", 4, 0, 1, 2, 0)
    with pytest.raises(InputError, match="only triangles"):
        decode_ply(quad, "m.ply")
    out_of_range = good[:-12] + struct.pack("<iii", 0, 1, 5)
    with pytest.raises(InputError, match="face indices 0..5 outside 0..2"):
        decode_ply(out_of_range, "m.ply")
