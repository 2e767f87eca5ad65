"""Superpoints: the C++ segmentator against a sequential pure-Python transliteration of ScanNet's Segmentator
(Karbo123/segmentator), including its std::sort (libstdc++'s, transliterated in libstdcxx_sort.py)."""

import math

import numpy as np
import pytest
from libstdcxx_sort import std_sort

from sas_ray import _segmentator
from sas_ray.errors import InputError
from sas_ray.superpoints import knn, knn_edges, pca_normals, segment_graph, segment_mesh, segment_points

F32 = np.float32


# ---------------------------------------------------------------- reference (slow, small inputs only)


def reference_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Running average of unit face normals in face order, float32 operation for operation."""
    normals = np.zeros_like(vertices)
    counts = [0] * len(vertices)
    with np.errstate(invalid="ignore", divide="ignore"):
        for corner in faces.tolist():
            p1, p2, p3 = (vertices[i] for i in corner)
            u, v = p2 - p1, p3 - p1
            n = np.array([u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]], F32)
            n = n / np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
            for i in corner:
                t = F32(1) / (F32(counts[i]) + F32(1))
                normals[i] = t * n + (F32(1) - t) * normals[i]
            for i in corner:
                counts[i] += 1
    return normals


def reference_weights(points: np.ndarray, normals: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        d = points[b] - points[a]
        length = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])
        dx, dy, dz = d[:, 0] / length, d[:, 1] / length, d[:, 2] / length
        na, nb = normals[a], normals[b]
        dot = na[:, 0] * nb[:, 0] + na[:, 1] * nb[:, 1] + na[:, 2] * nb[:, 2]
        convexity = nb[:, 0] * dx + nb[:, 1] * dy + nb[:, 2] * dz
        w = F32(1) - dot
        return np.where(convexity > 0, w * w, w)


def original_order(w: np.ndarray) -> list[int]:
    """Edge indices as segmentator's std::sort(edges, edges + n) leaves them: weights compared with `<`; NaN weights
    (undefined behaviour in the original) after every number, as the C++ does."""
    keys = w.tolist()
    order = list(range(len(keys)))
    std_sort(order, lambda x, y: keys[x] < keys[y] or (not math.isnan(keys[x]) and math.isnan(keys[y])))
    return order


def stable_order(w: np.ndarray) -> list[int]:
    """Ascending weights, equal weights in edge order: what the original does NOT do (to show ties matter)."""
    return sorted(range(len(w)), key=lambda e: (math.isnan(w[e]), 0.0 if math.isnan(w[e]) else float(w[e]), e))


def reference_segment(num_vertices, a, b, w, k_thresh, min_verts, order=original_order) -> np.ndarray:
    """Felzenszwalb exactly as segmentator.cpp, edges visited in `order(w)`."""
    parent, rank, size = list(range(num_vertices)), [0] * num_vertices, [1] * num_vertices
    c = F32(k_thresh)
    threshold = [c] * num_vertices

    def find(x):
        y = x
        while parent[y] != y:
            y = parent[y]
        parent[x] = y
        return y

    def join(x, y):
        if rank[x] > rank[y]:
            parent[y] = x
            size[x] += size[y]
        else:
            parent[x] = y
            size[y] += size[x]
            if rank[x] == rank[y]:
                rank[y] += 1

    order = order(w)
    for e in order:
        ra, rb = find(int(a[e])), find(int(b[e]))
        if ra != rb and w[e] <= threshold[ra] and w[e] <= threshold[rb]:
            join(ra, rb)
            root = find(ra)
            threshold[root] = w[e] + c / F32(size[root])
    for e in order:
        ra, rb = find(int(a[e])), find(int(b[e]))
        if ra != rb and (size[ra] < min_verts or size[rb] < min_verts):
            join(ra, rb)
    roots = np.array([find(v) for v in range(num_vertices)], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)  # torch.unique(return_inverse=True)


def reference_segment_mesh(vertices, faces, k_thresh, min_verts, order=original_order) -> np.ndarray:
    a = faces[:, [0, 0, 2]].ravel()  # a-b, a-c, c-b per face
    b = faces[:, [1, 2, 1]].ravel()
    w = reference_weights(vertices, reference_vertex_normals(vertices, faces), a, b)
    return reference_segment(len(vertices), a, b, w, k_thresh, min_verts, order)


# ---------------------------------------------------------------- synthetic meshes


def grid_faces(rows: int, cols: int, offset: int = 0) -> np.ndarray:
    """Two counter-clockwise triangles per cell of a rows x cols vertex grid (row-major)."""
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols - 1), indexing="ij")
    v00 = (r * cols + c).ravel() + offset
    v01, v10, v11 = v00 + 1, v00 + cols, v00 + cols + 1
    return np.concatenate([np.stack([v00, v01, v11], 1), np.stack([v00, v11, v10], 1)]).astype(np.int64)


def box_mesh(n: int, low, high) -> tuple[np.ndarray, np.ndarray]:
    """Closed box subdivided n x n per side, welded vertices, outward counter-clockwise faces."""
    index, vertices, faces = {}, [], []
    for axis in range(3):
        u_axis, v_axis = (axis + 1) % 3, (axis + 2) % 3
        for side in (0, n):
            ids = np.empty((n + 1, n + 1), dtype=np.int64)
            for i in range(n + 1):
                for j in range(n + 1):
                    key = [0, 0, 0]
                    key[axis], key[u_axis], key[v_axis] = side, i, j
                    ids[i, j] = index.setdefault(tuple(key), len(index))
            quads = grid_faces(n + 1, n + 1)
            tri = ids.ravel()[quads]
            faces.append(tri if side else tri[:, ::-1])
    keys = np.array(sorted(index, key=index.get), dtype=np.float64)
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    vertices = (low + keys / n * (high - low)).astype(F32)
    return vertices, np.concatenate(faces)


def bumpy_plane(rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    z = 0.3 * rng.random((rows, cols))
    z[:, cols // 2 :] += 0.5 * (x[:, cols // 2 :] - cols // 2)  # a crease: flat-ish half, sloped half
    vertices = np.stack([x, y, z], -1).reshape(-1, 3).astype(F32)
    return vertices, grid_faces(rows, cols)


def touching_boxes() -> tuple[np.ndarray, np.ndarray]:
    va, fa = box_mesh(5, (0, 0, 0), (1, 1, 1))
    vb, fb = box_mesh(4, (1, 0.2, 0), (1.6, 0.8, 0.5))  # shares the plane x = 1, not the vertices
    return np.concatenate([va, vb]), np.concatenate([fa, fb + len(va)])


def random_mesh(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random triangles: degenerate ones (repeated corners -> NaN normals), duplicate points, unused vertices."""
    rng = np.random.default_rng(seed)
    vertices = rng.normal(size=(150, 3)).astype(F32)
    vertices[100:110] = vertices[:10]  # coincident vertices: zero-length edges
    faces = rng.integers(0, 140, size=(400, 3))  # vertices 140..149 in no face
    faces[:5, 1] = faces[:5, 0]
    return vertices, faces.astype(np.int64)


libstdcxx = pytest.mark.skipif(_segmentator.STANDARD_LIBRARY != "libstdc++", reason="equal weights are ordered "
                               "by the standard library's std::sort; the reference transliterates libstdc++'s")

MESHES = {
    "cube": box_mesh(6, (0, 0, 0), (1, 1, 1)),
    "bumpy_plane": bumpy_plane(20, 24, seed=0),
    "touching_boxes": touching_boxes(),
    "random": random_mesh(seed=1),
}
PARAMETERS = [(0.01, 20), (0.01, 60), (0.05, 5), (0.002, 0), (0.5, 1)]


# ---------------------------------------------------------------- mesh mode


@libstdcxx
@pytest.mark.parametrize("name", MESHES)
def test_segment_mesh_equals_reference(name):
    vertices, faces = MESHES[name]
    counts = set()
    for k_thresh, min_verts in PARAMETERS:
        expected = reference_segment_mesh(vertices, faces, k_thresh, min_verts)
        ids = segment_mesh(vertices, faces, k_thresh, min_verts)
        assert ids.dtype == np.int64 and ids.shape == (len(vertices),)
        np.testing.assert_array_equal(ids, expected, err_msg=f"k_thresh={k_thresh} min_verts={min_verts}")
        counts.add(int(ids.max()) + 1)
    assert len(counts) >= 3  # the parameters give genuinely different segmentations


def test_segment_mesh_hand_worked():
    # Square 0-1-2-3 in z=0 (two coplanar triangles, normal +z) and a triangle folded up 90 degrees along edge 1-2
    # (normal +x). Vertex normals: n0 = n3 = z, n1 = (x+z)/2, n2 = z/3 ... = (1/3, 0, 2/3), n4 = x.
    # Edge weights: 0-3: 0; 0-2, 3-2: (1/3)^2 = 0.111 (convex); 0-1: 0.5^2 = 0.25 (convex); 1-2, 1-4: 0.5; 4-2: 2/3.
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0.5, 1]], F32)
    faces = np.array([[0, 1, 2], [0, 2, 3], [1, 2, 4]], np.int64)
    # k=0.05: only 0-3 (w 0 <= 0.05) merges, root 3 (equal ranks: the second root survives); roots 1,2,3,4.
    np.testing.assert_array_equal(segment_mesh(vertices, faces, 0.05, 0), [2, 0, 1, 2, 3])
    # k=0.3: 0-3 merges (thr 0.15), then 0-2 (0.111 <= 0.15), thr 0.111 + 0.1; 0-1 (0.25) is above: roots 1, 3, 4.
    np.testing.assert_array_equal(segment_mesh(vertices, faces, 0.3, 1), [1, 0, 1, 1, 2])
    # min_verts=2: the small pass joins {1} over 0-1, then {4} over 1-4: one segment.
    np.testing.assert_array_equal(segment_mesh(vertices, faces, 0.3, 2), [0, 0, 0, 0, 0])


def test_segment_mesh_flat_square_is_one_segment():
    vertices, faces = bumpy_plane(8, 8, seed=0)
    vertices[:, 2] = 0  # every weight is exactly 0
    ids = segment_mesh(vertices, faces, 0.01, 0)
    np.testing.assert_array_equal(ids, np.zeros(64))
    np.testing.assert_array_equal(ids, reference_segment_mesh(vertices, faces, 0.01, 0))


def height_field(z: np.ndarray, spacing: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """A grid mesh of heights z [rows, cols]: exactly repeated heights give exactly repeated normals and weights."""
    y, x = np.meshgrid(np.arange(z.shape[0]), np.arange(z.shape[1]), indexing="ij")
    return np.stack([x * spacing, y * spacing, z], -1).reshape(-1, 3).astype(F32), grid_faces(*z.shape)


def tie_meshes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Meshes where most edge weights are shared by many edges, so the order of equal weights decides."""
    from sas_ray.datasets.synthetic import make_indoor_scene

    rng = np.random.default_rng(5)
    room, _ = make_indoor_scene("room", 0, 1500)  # flat walls, floor and boxes: a scanned room without noise
    return {
        "terraces": height_field(np.repeat(np.arange(24)[None] // 4, 24, 0) * 0.01),  # stairs: 2 crease weights
        "sawtooth": height_field(np.repeat(np.abs(np.arange(24)[None] % 6 - 3), 24, 0) * 0.01),
        "bumps": height_field((rng.random((24, 24)) < 0.05) * 0.02),  # flat floor, single-vertex bumps
        "steps": height_field(rng.integers(0, 3, (20, 20)) * 0.01),  # heights on 3 levels: few distinct normals
        "room": (room.points, room.faces),
    }


TIE_PARAMETERS = [(0.01, 60), (0.01, 20), (0.05, 5), (0.002, 3), (0.5, 10)]


@libstdcxx
def test_equal_weights_are_ordered_as_the_originals_std_sort():
    """Equal weights in segmentator's std::sort order; in edge order (a stable sort) most of these cases differ."""
    differs = 0
    for name, (vertices, faces) in tie_meshes().items():
        for k_thresh, min_verts in TIE_PARAMETERS:
            ids = segment_mesh(vertices, faces, k_thresh, min_verts)
            expected = reference_segment_mesh(vertices, faces, k_thresh, min_verts)
            np.testing.assert_array_equal(ids, expected, err_msg=f"{name} k_thresh={k_thresh} min_verts={min_verts}")
            stable = reference_segment_mesh(vertices, faces, k_thresh, min_verts, order=stable_order)
            differs += not np.array_equal(stable, expected)
    assert differs >= len(TIE_PARAMETERS) * 3  # tie order decides the ids, and often the segments


def test_segment_mesh_empty_and_faceless():
    assert segment_mesh(np.zeros((0, 3), F32), np.zeros((0, 3), np.int64)).shape == (0,)
    vertices = np.random.default_rng(0).random((7, 3)).astype(F32)
    np.testing.assert_array_equal(segment_mesh(vertices, np.zeros((0, 3), np.int64)), np.arange(7))


def test_segment_mesh_accepts_non_contiguous_input():
    vertices, faces = MESHES["cube"]
    strided = np.asfortranarray(vertices)
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(segment_mesh(strided, faces), segment_mesh(vertices, faces))


@pytest.mark.parametrize(
    ("vertices", "faces", "message"),
    [
        (np.zeros((4, 3), np.float64), np.zeros((1, 3), np.int64), "vertices: expected dtype float32, got float64"),
        (np.zeros((4, 2), F32), np.zeros((1, 3), np.int64), r"vertices: expected shape \[N, 3\], got \[4, 2\]"),
        ([[0.0, 0.0, 0.0]], np.zeros((1, 3), np.int64), "vertices: expected a numpy array"),
        (np.zeros((4, 3), F32), np.zeros((1, 3), np.int32), "faces: expected dtype int64, got int32"),
        (np.zeros((4, 3), F32), np.zeros(3, np.int64), r"faces: expected shape \[M, 3\], got \[3\]"),
        (np.zeros((4, 3), F32), np.array([[0, 1, 2], [0, 1, 4]]), r"faces: row 1 is \[0, 1, 4\].*\[0, 4\)"),
        (np.zeros((4, 3), F32), np.array([[0, -1, 2]]), r"faces: row 0 is \[0, -1, 2\]"),
        (np.array([[0, 0, 0], [0, np.nan, 0]], F32), np.zeros((0, 3), np.int64), "vertices: row 1 .*no NaN"),
        (np.array([[np.inf, 0, 0]], F32), np.zeros((0, 3), np.int64), "vertices: row 0"),
    ],
)
def test_segment_mesh_rejects_bad_input(vertices, faces, message):
    with pytest.raises(InputError, match=message):
        segment_mesh(vertices, faces)


@pytest.mark.parametrize(
    ("k_thresh", "min_verts", "message"),
    [(-0.1, 20, "k_thresh"), (float("nan"), 20, "k_thresh"), ("0.01", 20, "k_thresh"), (0.01, -1, "min_verts"),
     (0.01, 2.5, "min_verts"), (0.01, True, "min_verts")],
)
def test_segment_mesh_rejects_bad_parameters(k_thresh, min_verts, message):
    vertices, faces = MESHES["cube"]
    with pytest.raises(InputError, match=message):
        segment_mesh(vertices, faces, k_thresh, min_verts)


def test_extension_checks_its_inputs_itself():
    vertices, faces = MESHES["cube"]
    bad = [
        ((vertices.astype(np.float64), faces), "vertices must be a C-contiguous float32"),
        ((np.asfortranarray(vertices), faces), "not C-contiguous"),
        ((vertices, faces.astype(np.int32)), "faces must be a C-contiguous int64"),
        ((vertices, np.where(faces == 5, len(vertices), faces)), "vertex index .* outside"),
        ((np.where(vertices == 0, np.nan, vertices).astype(F32), faces), "NaN"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            _segmentator.segment_mesh(*args, 0.01, 20)
    with pytest.raises(ValueError, match="k_thresh"):
        _segmentator.segment_mesh(vertices, faces, -1.0, 20)
    normals = np.ones_like(vertices)
    with pytest.raises(ValueError, match="normals .* must match"):
        _segmentator.segment_graph(vertices, normals[:3], np.zeros((0, 2), np.int64), 0.01, 20)
    with pytest.raises(ValueError, match="edges must be a C-contiguous int64 array \\[N,2\\]"):
        _segmentator.segment_graph(vertices, normals, faces, 0.01, 20)


# ---------------------------------------------------------------- graph and point mode


@libstdcxx
def test_segment_graph_equals_reference():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(300, 3)).astype(F32)
    normals = rng.normal(size=(300, 3))
    normals[150:] = [0, 0, 1] + 0.05 * normals[150:]  # a near-flat half, so segments grow
    normals = (normals / np.linalg.norm(normals, axis=1, keepdims=True)).astype(F32)
    edges = rng.integers(0, 300, size=(2000, 2))  # duplicates and self loops included
    for k_thresh, min_verts in PARAMETERS:
        expected = reference_segment(300, edges[:, 0], edges[:, 1], reference_weights(points, normals, edges[:, 0],
                                     edges[:, 1]), k_thresh, min_verts)
        np.testing.assert_array_equal(segment_graph(points, normals, edges, k_thresh, min_verts), expected)


def test_segment_graph_rejects_bad_input():
    points = np.zeros((4, 3), F32)
    with pytest.raises(InputError, match=r"normals: expected shape \[4, 3\] like points, got \[3, 3\]"):
        segment_graph(points, points[:3], np.zeros((0, 2), np.int64))
    with pytest.raises(InputError, match=r"edges: row 0 is \[0, 4\], expected vertex indices in \[0, 4\)"):
        segment_graph(points, points, np.array([[0, 4]]))
    with pytest.raises(InputError, match=r"edges: expected shape \[M, 2\]"):
        segment_graph(points, points, np.zeros((2, 3), np.int64))


def test_knn_graph_is_symmetric_and_deduplicated():
    points = np.array([[0, 0, 0], [1, 0, 0], [3, 0, 0], [3, 0, 0], [10, 0, 0]], F32)
    neighbours = knn(points, 1)
    assert sorted(neighbours[:2, 0].tolist()) == [0, 1]  # 0 and 1 are each other's nearest
    assert neighbours[2, 0] == 3 and neighbours[3, 0] == 2  # duplicates find each other, not themselves
    assert neighbours[4, 0] in (2, 3)
    edges = knn_edges(neighbours)
    assert edges.tolist() == [[0, 1], [2, 3], [neighbours[4, 0], 4]]


def test_pca_normals_keep_creases_sharp_and_face_the_viewpoint():
    rng = np.random.default_rng(4)
    floor = rng.random((2500, 3)) * [1, 1, 0]  # z = 0, true normal +z towards the viewpoint
    wall = rng.random((2500, 3)) * [0, 1, 1]  # x = 0, true normal +x
    points = np.concatenate([floor, wall]).astype(F32)
    truth = np.repeat(np.array([[0, 0, 1], [1, 0, 0]], F32), 2500, axis=0)
    normals = pca_normals(points, knn(points, 16), np.array([0.5, 0.5, 0.5]))
    assert normals.dtype == np.float32 and normals.shape == points.shape
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)
    # A plain PCA blends the two planes near the crease (4% of these points are off by > 2.5 degrees).
    assert np.mean(np.einsum("ni,ni->n", normals, truth) > 0.999) > 0.98


def box_surface_points(rng, low, high, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Points sampled uniformly on a box's six faces, with each point's face index."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    points, labels = [], []
    for axis in range(3):
        others = [d for d in range(3) if d != axis]
        area = np.prod(high[others] - low[others])
        for side, bound in enumerate((low[axis], high[axis])):
            count = int(area / spacing**2)
            p = low + rng.random((count, 3)) * (high - low)
            p[:, axis] = bound
            points.append(p)
            labels.append(np.full(count, 2 * axis + side))
    return np.concatenate(points), np.concatenate(labels)


def test_segment_points_follows_box_faces():
    rng = np.random.default_rng(3)
    boxes = [((0, 0, 0), (1.0, 0.8, 0.6)), ((1.5, 0, 0), (2.2, 1.2, 1.0)), ((0.2, 1.5, 0), (1.4, 2.0, 0.4))]
    points, labels = [], []
    for number, (low, high) in enumerate(boxes):
        p, face = box_surface_points(rng, low, high, spacing=0.03)
        points.append(p)
        labels.append(6 * number + face)
    points = (np.concatenate(points) + rng.normal(scale=0.002, size=(sum(map(len, points)), 3))).astype(F32)
    labels = np.concatenate(labels)
    for viewpoint in (None, (1.0, 1.0, 5.0)):  # the centroid, or a sensor above the boxes
        ids = segment_points(points, viewpoint=viewpoint)  # k 16, k_thresh 0.01, min_verts 20
        assert ids.shape == (len(points),) and ids.dtype == np.int64
        assert np.array_equal(np.unique(ids), np.arange(ids.max() + 1))
        majority = sum(np.bincount(labels[ids == s]).max() for s in range(ids.max() + 1))
        assert majority / len(points) > 0.95  # superpoints do not straddle faces
        assert 18 <= ids.max() + 1 < len(points) / 20  # about one per face: far fewer than points


def test_segment_points_small_and_bad_inputs():
    assert segment_points(np.zeros((0, 3), F32)).shape == (0,)
    np.testing.assert_array_equal(segment_points(np.zeros((1, 3), F32)), [0])
    np.testing.assert_array_equal(segment_points(np.eye(3, dtype=F32), k=16, min_verts=0).shape, (3,))
    with pytest.raises(InputError, match="k: expected an integer >= 1"):
        segment_points(np.eye(3, dtype=F32), k=0)
    for viewpoint in ([0, 0], "up", [0, np.nan, 0]):
        with pytest.raises(InputError, match="viewpoint: expected 3 finite numbers"):
            segment_points(np.eye(3, dtype=F32), viewpoint=viewpoint)
    with pytest.raises(InputError, match="points: expected dtype float32"):
        segment_points(np.eye(3))
