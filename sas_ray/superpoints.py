"""Superpoints for SAS's superpoint distillation: segmentator's Felzenszwalb segmentation of meshes and point clouds.

Mesh mode reproduces ScanNet's Segmentator / Karbo123's `segmentator.segment_mesh` (SPEC §6) id for id; SAS calls
it with k_thresh 0.01 and min_verts 60 on `<scene>_vh_clean_2.ply`. Equal edge weights are common (flat floors and
walls, repeated normals) and their order decides which vertex becomes a segment's root, hence the ids, and which
neighbour a small segment joins. The original orders them with an unstable std::sort over the edges created face
by face as a-b, a-c, c-b; the C++ here runs that same std::sort, so ids equal the original's built with the same
standard library (`_segmentator.STANDARD_LIBRARY`; libstdc++ with g++, the original's compiler). As in the
original, vertices of a zero-area face get NaN normals; NaN weights (undefined behaviour in the original's sort)
sort last, so only the small-segment pass joins them. Ids are contiguous from 0, numbered by increasing root
vertex. The C++ releases the GIL.

Point mode is for data without a mesh (lidar, user point clouds), where SAS makes every point its own superpoint:
a symmetric k-nearest-neighbour graph, normals from local PCA planes (each point takes the flattest plane among its
own and its neighbours' neighbourhoods that passes through it, so creases stay sharp) oriented towards a viewpoint,
then the same segmentation. Planar and smoothly curved parts become superpoints as they do on meshes.
"""

import math
from numbers import Integral, Real

import numpy as np
from scipy.spatial import cKDTree

from sas_ray.errors import InputError

try:
    from sas_ray import _segmentator
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError("sas_ray._segmentator (C++) is not built: run `pip install -e .` in the repository") from error

_MAX_COUNT = 2**31 - 1  # the C++ indexes vertices and edges with int32
_NORMAL_CHUNK = 65536  # points per batch of neighbourhood arrays (~30 MB each at k = 16)


def segment_mesh(vertices: np.ndarray, faces: np.ndarray, k_thresh: float = 0.01, min_verts: int = 20) -> np.ndarray:
    """Superpoint id of every mesh vertex, as segmentator's segment_mesh (equal weights: see the module docstring).

    vertices: float32 [V, 3]; faces: int64 [F, 3] indices into vertices. Larger k_thresh -> larger segments;
    segments below min_verts vertices are merged into a neighbour. Returns int64 [V], ids contiguous from 0.
    Vertices in no face stay alone. Raises InputError naming the wrong argument.
    """
    vertices = _points(vertices, "vertices")
    faces = _indices(faces, "faces", 3, len(vertices))
    _check_parameters(k_thresh, min_verts)
    if 3 * len(faces) > _MAX_COUNT:
        raise InputError(f"faces: {len(faces)} faces make more than 2^31 - 1 edges")
    return _segmentator.segment_mesh(vertices, faces, float(k_thresh), int(min_verts))


def segment_graph(
    points: np.ndarray, normals: np.ndarray, edges: np.ndarray, k_thresh: float = 0.01, min_verts: int = 20
) -> np.ndarray:
    """Superpoint id of every graph vertex, as segmentator's segment_point: the mesh-mode segmentation on given edges.

    points, normals: float32 [N, 3]; edges: int64 [E, 2] (edge a-b weighs 1 - n_a.n_b, squared when
    n_b.(p_b - p_a) > 0); equal weights in the original's std::sort order. Returns int64 [N], ids contiguous from 0.
    """
    points = _points(points, "points")
    normals = _points(normals, "normals")
    if normals.shape != points.shape:
        raise InputError(f"normals: expected shape {list(points.shape)} like points, got {list(normals.shape)}")
    edges = _indices(edges, "edges", 2, len(points))
    _check_parameters(k_thresh, min_verts)
    return _segmentator.segment_graph(points, normals, edges, float(k_thresh), int(min_verts))


def segment_points(
    points: np.ndarray,
    k: int = 16,
    k_thresh: float = 0.01,
    min_verts: int = 20,
    viewpoint: np.ndarray | None = None,
) -> np.ndarray:
    """Superpoint id of every point of a cloud without mesh: k-NN graph + PCA normals + segment_graph.

    points: float32 [N, 3]. k: neighbours per point, for both the normals and the graph (symmetrised, each pair
    once as (lower, higher) index). viewpoint: float [3] the normals face (their sign drives the convexity test);
    pass the sensor position for a lidar sweep; default the centroid, which suits a room seen from inside.
    Returns int64 [N], ids contiguous from 0.
    """
    points = _points(points, "points")
    if not isinstance(k, Integral) or isinstance(k, bool) or k < 1:
        raise InputError(f"k: expected an integer >= 1, got {k!r}")
    _check_parameters(k_thresh, min_verts)
    if viewpoint is not None:
        viewpoint = _viewpoint(viewpoint)
    if len(points) < 2:
        return np.zeros(len(points), dtype=np.int64)
    if viewpoint is None:
        viewpoint = points.mean(axis=0, dtype=np.float64)
    neighbours = knn(points, min(int(k), len(points) - 1))
    normals = pca_normals(points, neighbours, viewpoint)
    return segment_graph(points, normals, knn_edges(neighbours), k_thresh, min_verts)


def knn(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest other points of each point: int64 [N, k] (N > k)."""
    _, found = cKDTree(points).query(points, k=k + 1)
    keep = found != np.arange(len(points))[:, None]
    keep[keep.all(axis=1), -1] = False  # rows where > k duplicates hid the point itself
    return found[keep].reshape(len(points), k).astype(np.int64)


def pca_normals(points: np.ndarray, neighbours: np.ndarray, viewpoint: np.ndarray) -> np.ndarray:
    """Unit normals float32 [N, 3] from local PCA planes, facing viewpoint [3].

    Each point's k-neighbourhood gives a plane (centroid, least-variance axis). A point near a crease would get a
    blend of the two sides, so each point takes, among its own and its neighbours' planes, the one minimising
    surface variation + (distance of the point to the plane)^2 / neighbourhood variance: a flat plane through it.
    """
    normal, centre, variation, spread = _local_planes(points, neighbours)
    normals = np.empty(points.shape, dtype=np.float32)
    for rows in _chunks(len(points)):
        candidates = np.concatenate([np.arange(len(points))[rows, None], neighbours[rows]], axis=1)
        offset = points[rows, None, :] - centre[candidates]
        distance = np.einsum("nki,nki->nk", normal[candidates], offset)
        score = variation[candidates] + distance**2 / spread[candidates]
        chosen = normal[candidates[np.arange(len(candidates)), np.argmin(score, axis=1)]]
        facing = np.einsum("ni,ni->n", chosen, viewpoint - points[rows])
        normals[rows] = np.where(facing[:, None] < 0, -chosen, chosen)
    return normals


def _local_planes(points: np.ndarray, neighbours: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per point PCA of itself + neighbours: normal [N,3], centroid [N,3], lambda_min / sum [N], sum of lambdas [N]."""
    normal, centre = np.empty((len(points), 3)), np.empty((len(points), 3))
    variation, spread = np.empty(len(points)), np.empty(len(points))
    for rows in _chunks(len(points)):
        patch = points[np.concatenate([np.arange(len(points))[rows, None], neighbours[rows]], axis=1)]
        centre[rows] = patch.mean(axis=1, dtype=np.float64)
        patch = patch - centre[rows, None, :]
        eigenvalues, axes = np.linalg.eigh(np.einsum("nki,nkj->nij", patch, patch) / patch.shape[1])  # ascending
        normal[rows] = axes[:, :, 0]
        spread[rows] = np.maximum(eigenvalues.sum(axis=1), np.finfo(np.float64).tiny)  # coincident points: 0
        variation[rows] = eigenvalues[:, 0] / spread[rows]
    return normal, centre, variation, spread


def _chunks(count: int):
    """Row slices of _NORMAL_CHUNK points, bounding the memory of per-neighbourhood arrays."""
    return (slice(start, start + _NORMAL_CHUNK) for start in range(0, count, _NORMAL_CHUNK))


def knn_edges(neighbours: np.ndarray) -> np.ndarray:
    """Undirected k-NN graph int64 [E, 2]: each neighbouring pair once as (lower, higher), sorted."""
    count = len(neighbours)
    low = np.minimum(np.arange(count)[:, None], neighbours).ravel()
    high = np.maximum(np.arange(count)[:, None], neighbours).ravel()
    pairs = np.sort(low * count + high)
    pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])]  # sorted, each pair once
    return np.stack([pairs // count, pairs % count], axis=1)


def _points(array: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise InputError(f"{name}: expected a numpy array float32 [N, 3], got {type(array).__name__}")
    if array.dtype != np.float32:
        raise InputError(f"{name}: expected dtype float32, got {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 3:
        raise InputError(f"{name}: expected shape [N, 3], got {list(array.shape)}")
    if len(array) > _MAX_COUNT:
        raise InputError(f"{name}: {len(array)} rows, at most 2^31 - 1 supported")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{name}: row {row} is {array[row].tolist()}, expected finite values (no NaN or inf)")
    return np.require(array, requirements="CA")  # C-contiguous and aligned, copied only if needed


def _indices(array: np.ndarray, name: str, columns: int, count: int) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise InputError(f"{name}: expected a numpy array int64 [M, {columns}], got {type(array).__name__}")
    if array.dtype != np.int64:
        raise InputError(f"{name}: expected dtype int64, got {array.dtype}")
    if array.ndim != 2 or array.shape[1] != columns:
        raise InputError(f"{name}: expected shape [M, {columns}], got {list(array.shape)}")
    if len(array) > _MAX_COUNT:
        raise InputError(f"{name}: {len(array)} rows, at most 2^31 - 1 supported")
    inside = ((array >= 0) & (array < count)).all(axis=1)
    if not inside.all():
        row = int(np.flatnonzero(~inside)[0])
        raise InputError(f"{name}: row {row} is {array[row].tolist()}, expected vertex indices in [0, {count})")
    return np.require(array, requirements="CA")


def _viewpoint(value) -> np.ndarray:
    try:
        viewpoint = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        viewpoint = None
    if viewpoint is None or viewpoint.shape != (3,) or not np.isfinite(viewpoint).all():
        raise InputError(f"viewpoint: expected 3 finite numbers, got {value!r}")
    return viewpoint


def _check_parameters(k_thresh: float, min_verts: int) -> None:
    if not isinstance(k_thresh, Real) or isinstance(k_thresh, bool) or not math.isfinite(k_thresh) or k_thresh < 0:
        raise InputError(f"k_thresh: expected a finite number >= 0, got {k_thresh!r}")
    if not isinstance(min_verts, Integral) or isinstance(min_verts, bool) or min_verts < 0:
        raise InputError(f"min_verts: expected an integer >= 0, got {min_verts!r}")


SUPERPOINTS = "superpoints"  # `sas-ray superpoints` writes {root}/superpoints/{scene}.safetensors


def read_superpoints(root, scene_id: str):
    """int64 [N] superpoint ids of a scene written by `sas-ray superpoints` under the Storage `root`."""
    return root.child(SUPERPOINTS).read_tensors(f"{scene_id}.safetensors")["superpoint_ids"]
