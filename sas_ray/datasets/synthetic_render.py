"""Exact ray casting of triangle meshes for the synthetic datasets: pinhole cameras (RGB, depth, label images) and a
spinning lidar (points on the visible surfaces), vectorised in numpy (single-threaded, so it behaves the same on a
busy machine).

Both sensors are a grid of rays [R, C] from one origin. A triangle with sensor-frame vertices V0, V1, V2 (columns
of M) is hit by ray d where M w = d has w >= 0 (homogeneous rasterisation, Olano & Greer 1997): the hit lies at
t·d with t = 1 / sum(w) and barycentrics w·t. No clipping is needed; each triangle is only tested against the rays
inside a conservative bound of its image (a pixel box for a camera, an azimuth x beam box for the lidar), and the
nearest hit per ray wins (ties: lowest triangle index).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from sas_ray.errors import InputError
from sas_ray.scene import IGNORE_LABEL, Scene

NEAR_PLANE = 0.05  # metres; camera hits closer than this are dropped (no surface is that close to a camera)
_PAIRS_PER_CHUNK = 1 << 20  # (triangle, ray) pairs tested at once; bounds memory to ~150 MB
_INSIDE_TOLERANCE = 1e-9  # barycentric slack so rays through a shared edge hit one of its triangles
_LIGHT = np.array([0.3, 0.5, 0.81]) / np.linalg.norm([0.3, 0.5, 0.81])  # fixed light for face shading
_SKY = (150.0, 185.0, 220.0)  # rgb where a pixel sees no surface


class RenderedView(NamedTuple):
    """One rendered camera: rgb uint8 [H,W,3]; depth float32 [H,W] camera-space Z in metres (0 = no surface);
    label uint8 [H,W] label of the visible triangle (255 = no surface or an ignored class)."""

    rgb: np.ndarray
    depth: np.ndarray
    label: np.ndarray


class RayHits(NamedTuple):
    """Nearest hit per ray of an [R, C] grid: t float64 [R,C] (0 = miss; camera: Z, lidar: range in metres),
    face int64 [R,C] (-1 = miss), barycentric float64 [R,C,3]."""

    t: np.ndarray
    face: np.ndarray
    barycentric: np.ndarray


def render_views(mesh: Scene, poses: list[np.ndarray], intrinsic: np.ndarray,
                 size: tuple[int, int]) -> list[RenderedView]:
    """Render `mesh` (a Scene with faces; colors and labels optional) from every camera-to-world pose.

    Pixel (v, u) is the ray through the integer image point (u, v), i.e. the pixel that the pinhole projection
    u = fx X/Z + cx, v = fy Y/Z + cy rounds to; OpenCV axes (x right, y down, z forward). Colour is the barycentric
    blend of the vertex colours times a fixed directional shading (sky blue where nothing is hit); label is the
    triangle's first vertex label.
    """
    if mesh.faces is None or len(mesh.faces) == 0:
        raise InputError(f"scene {mesh.scene_id}: render_views needs a mesh (Scene.faces is None or empty)")
    height, width = size
    k = np.asarray(intrinsic, dtype=np.float64)
    rays = _pixel_rays(k, height, width)
    vertices = mesh.points.astype(np.float64)
    colors = (mesh.colors if mesh.colors is not None else np.full((mesh.num_points, 3), 128, np.uint8))
    face_labels = mesh.labels[mesh.faces[:, 0]] if mesh.labels is not None \
        else np.full(len(mesh.faces), IGNORE_LABEL, np.int64)
    shading = _face_shading(vertices, mesh.faces)
    views = []
    for pose in poses:
        world_to_camera = np.linalg.inv(np.asarray(pose, dtype=np.float64))
        camera_vertices = vertices @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
        candidates, bounds = _frustum_faces(camera_vertices, mesh.faces, k, height, width)
        hits = cast_ray_grid(camera_vertices, mesh.faces[candidates], rays, bounds, t_min=NEAR_PLANE)
        face = np.where(hits.face >= 0, candidates[np.maximum(hits.face, 0)], -1)
        views.append(_shade(hits._replace(face=face), mesh.faces, colors, face_labels, shading))
    return views


def cast_ray_grid(vertices: np.ndarray, faces: np.ndarray, rays: np.ndarray,
                  bounds: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  t_min: float, t_max: float = math.inf) -> RayHits:
    """Nearest triangle hit for every ray of a grid from the sensor origin.

    vertices: float64 [V,3] in the sensor frame; faces: int64 [F,3]; rays: float64 [R,C,3] directions.
    bounds: (row_lo, row_hi, col_lo, col_hi) int64 [F] — the rays triangle f can hit lie in rows [row_lo, row_hi)
    and columns [col_lo, col_hi) (columns taken modulo C, so an azimuth range may wrap). Hits with t outside
    [t_min, t_max] are ignored.
    """
    num_rows, num_cols = rays.shape[:2]
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    # rows of inverse(M) times det: w = (V1 x V2, V2 x V0, V0 x V1) . d / det
    cross = np.stack([np.cross(v1, v2), np.cross(v2, v0), np.cross(v0, v1)], 1)
    det = (v0 * cross[:, 0]).sum(1)
    scale = np.linalg.norm(v0, axis=1) * np.linalg.norm(v1, axis=1) * np.linalg.norm(v2, axis=1)
    row_lo, row_hi, col_lo, col_hi = bounds
    counts = np.maximum(row_hi - row_lo, 0) * np.maximum(col_hi - col_lo, 0)
    counts[np.abs(det) <= 1e-12 * scale] = 0  # edge-on triangles (their plane passes through the origin)
    candidates = counts.nonzero()[0]
    inverse = cross[candidates] / det[candidates, None, None]
    counts, row_lo, col_lo, col_hi = (a[candidates] for a in (counts, row_lo, col_lo, col_hi))

    flat_rays = rays.reshape(-1, 3)
    best_t = np.full(num_rows * num_cols, np.inf)
    best_face = np.full(num_rows * num_cols, -1, dtype=np.int64)
    ends = np.cumsum(counts)
    start = 0
    while start < len(candidates):
        stop = max(int(np.searchsorted(ends, ends[start] - counts[start] + _PAIRS_PER_CHUNK, side="right")),
                   start + 1)
        chunk = slice(start, stop)
        face, ray_index = _pairs(counts[chunk], row_lo[chunk], col_lo[chunk], col_hi[chunk], num_cols)
        face += start
        w = np.einsum("pij,pj->pi", inverse[face], flat_rays[ray_index])
        total = w.sum(1)
        inside = (w >= -_INSIDE_TOLERANCE * np.abs(total)[:, None]).all(1) & (total > 0)
        t = 1.0 / np.where(inside, total, 1.0)
        inside &= (t >= t_min) & (t <= t_max)
        t, ray_index, face = t[inside], ray_index[inside], face[inside]
        # nearest hit per ray within the chunk, then the lowest face among equal depths
        chunk_t = np.full_like(best_t, np.inf)
        np.minimum.at(chunk_t, ray_index, t)
        nearest = t == chunk_t[ray_index]
        chunk_face = np.full_like(best_face, np.iinfo(np.int64).max)
        np.minimum.at(chunk_face, ray_index[nearest], face[nearest])
        closer = chunk_t < best_t  # on equal depth the earlier chunk (lower face index) keeps the ray
        best_t[closer], best_face[closer] = chunk_t[closer], chunk_face[closer]
        start = stop
    hit = best_face >= 0
    face_hit = best_face[hit]
    best_face[hit] = candidates[face_hit]
    barycentric = np.zeros((num_rows * num_cols, 3))
    w = np.einsum("pij,pj->pi", inverse[face_hit], flat_rays[hit])
    barycentric[hit] = np.maximum(w / w.sum(1, keepdims=True), 0)
    return RayHits(t=np.where(hit, best_t, 0.0).reshape(num_rows, num_cols),
                   face=best_face.reshape(num_rows, num_cols),
                   barycentric=barycentric.reshape(num_rows, num_cols, 3))


def _pairs(counts, row_lo, col_lo, col_hi, num_cols):
    """Enumerate (triangle, ray) pairs: for each triangle every ray of its row x column box."""
    face = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(int(counts.sum())) - (np.cumsum(counts) - counts)[face]
    widths = (col_hi - col_lo)[face]
    rows = row_lo[face] + local // widths
    cols = (col_lo[face] + local % widths) % num_cols
    return face, rows * num_cols + cols


def _pixel_rays(k: np.ndarray, height: int, width: int) -> np.ndarray:
    """float64 [H,W,3]: direction (X/Z, Y/Z, 1) of the ray through each integer pixel point."""
    v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    return np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)


def _frustum_faces(camera_vertices: np.ndarray, faces: np.ndarray, k: np.ndarray, height: int,
                   width: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Indices of the triangles that may cover a pixel, and the pixel box of each.

    A triangle is dropped when all its vertices lie outside one plane of the frustum (near plane, or one pixel
    beyond an image border). The box comes from the vertex projections; a triangle crossing the near plane is
    clipped there first, so its box stays finite (its part behind the near plane is never drawn).
    """
    x, y, z = camera_vertices.T
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    outside = [z < NEAR_PLANE, fx * x + (cx + 1) * z < 0, fx * x - (width - cx) * z > 0,
               fy * y + (cy + 1) * z < 0, fy * y - (height - cy) * z > 0]
    code = sum(flag.astype(np.int64) << bit for bit, flag in enumerate(outside))
    corner_codes = code[faces]
    keep = ((corner_codes[:, 0] & corner_codes[:, 1] & corner_codes[:, 2]) == 0).nonzero()[0]
    corners = camera_vertices[faces[keep]]                              # [F,3,3]
    front = corners[..., 2] >= NEAR_PLANE
    a, b = corners, np.roll(corners, -1, axis=1)                        # edges (0,1), (1,2), (2,0)
    crosses = (a[..., 2] - NEAR_PLANE) * (b[..., 2] - NEAR_PLANE) < 0
    s = ((NEAR_PLANE - a[..., 2]) / np.where(crosses, b[..., 2] - a[..., 2], 1.0))[..., None]
    points = np.concatenate([corners, a + s * (b - a)], 1)             # corners and near-plane edge points
    valid = np.concatenate([front, crosses], 1)
    depth = np.where(valid, points[..., 2], 1.0)
    u = fx * points[..., 0] / depth + cx
    v = fy * points[..., 1] / depth + cy
    row_lo = np.floor(np.clip(np.where(valid, v, np.inf).min(1), 0, height))
    row_hi = np.floor(np.clip(np.where(valid, v, -np.inf).max(1), -1, height - 1)) + 1
    col_lo = np.floor(np.clip(np.where(valid, u, np.inf).min(1), 0, width))
    col_hi = np.floor(np.clip(np.where(valid, u, -np.inf).max(1), -1, width - 1)) + 1
    return keep, tuple(a.astype(np.int64) for a in (row_lo, row_hi, col_lo, col_hi))


def _face_shading(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """float64 [F]: 0.7 + 0.3 |n . light|, so differently oriented surfaces of one colour stay distinguishable."""
    normal = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    return 0.7 + 0.3 * np.abs(normal @ _LIGHT)


def _shade(hits: RayHits, faces, colors, face_labels, shading) -> RenderedView:
    hit = hits.face >= 0
    face = np.maximum(hits.face, 0)
    rgb = np.einsum("hwk,hwkc->hwc", hits.barycentric, colors[faces[face]].astype(np.float64))
    rgb = np.where(hit[..., None], np.clip(np.round(rgb * shading[face][..., None]), 0, 255), _SKY)
    label = np.where(hit, face_labels[face], IGNORE_LABEL)
    return RenderedView(rgb=rgb.astype(np.uint8), depth=hits.t.astype(np.float32), label=label.astype(np.uint8))


class LidarSweep(NamedTuple):
    """One spinning-lidar sweep, in emission order (azimuth-major, then beam): points float64 [P,3] in the lidar
    frame, face int64 [P] (the mesh triangle each point lies on), beam int64 [P] (ring), azimuth int64 [P]."""

    points: np.ndarray
    face: np.ndarray
    beam: np.ndarray
    azimuth: np.ndarray


def cast_lidar(mesh: Scene, lidar_to_world: np.ndarray, elevations_deg: np.ndarray, num_azimuths: int,
               min_range: float, max_range: float) -> LidarSweep:
    """Ray-cast a spinning lidar: beams at `elevations_deg` (ascending) x `num_azimuths` equal steps, azimuth
    measured in the lidar's xy plane from +x towards +y. Returns the nearest hit of every ray within
    [min_range, max_range] metres; rays that hit nothing are absent."""
    if mesh.faces is None or len(mesh.faces) == 0:
        raise InputError(f"scene {mesh.scene_id}: cast_lidar needs a mesh (Scene.faces is None or empty)")
    world_to_lidar = np.linalg.inv(np.asarray(lidar_to_world, dtype=np.float64))
    vertices = mesh.points.astype(np.float64) @ world_to_lidar[:3, :3].T + world_to_lidar[:3, 3]
    elevation = np.deg2rad(np.asarray(elevations_deg, dtype=np.float64))
    azimuth = np.arange(num_azimuths) * (2 * math.pi / num_azimuths)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    rays = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)   # [B,N,3] unit
    bounds = _angular_bounds(vertices, mesh.faces, elevation, num_azimuths)
    hits = cast_ray_grid(vertices, mesh.faces, rays, bounds, t_min=min_range, t_max=max_range)
    column, beam = (hits.face >= 0).T.nonzero()                                         # azimuth-major order
    points = hits.t[beam, column, None] * rays[beam, column]
    return LidarSweep(points=points, face=hits.face[beam, column], beam=beam, azimuth=column)


def _angular_bounds(vertices: np.ndarray, faces: np.ndarray, elevation: np.ndarray, num_azimuths: int):
    """Conservative (beam, azimuth column) box of each triangle seen from the origin.

    Azimuth: the span of the vertices (exact for a triangle whose xy shadow misses the z axis; all columns when
    it contains it). Elevation atan2(z, r): z spans the vertex range, r = horizontal distance spans
    [distance from the z axis to the xy shadow, largest vertex r]; the extremes of atan2 over that box bound it.
    """
    corners = vertices[faces]                                              # [F,3,3]
    xy, z = corners[..., :2], corners[..., 2]
    angle = np.arctan2(xy[..., 1], xy[..., 0])
    relative = np.remainder(angle - angle[:, :1] + math.pi, 2 * math.pi) - math.pi
    az_lo, az_hi = angle[:, 0] + relative.min(1), angle[:, 0] + relative.max(1)
    r_min = _origin_distance_2d(xy)
    r_max = np.linalg.norm(xy, axis=-1).max(1)
    step = 2 * math.pi / num_azimuths
    around = r_min <= 1e-9
    col_lo = np.where(around, 0, np.floor(az_lo / step)).astype(np.int64)
    col_hi = np.where(around, num_azimuths, np.ceil(az_hi / step) + 1).astype(np.int64)
    col_hi = np.minimum(col_hi, col_lo + num_azimuths)
    z_lo, z_hi = z.min(1), z.max(1)
    el_lo = np.arctan2(z_lo, np.where(z_lo < 0, r_min, r_max))
    el_hi = np.arctan2(z_hi, np.where(z_hi > 0, r_min, r_max))
    row_lo = np.searchsorted(elevation, el_lo - 1e-9, side="left")
    row_hi = np.searchsorted(elevation, el_hi + 1e-9, side="right")
    return row_lo, row_hi, col_lo, col_hi


def _origin_distance_2d(triangles: np.ndarray) -> np.ndarray:
    """float64 [F]: distance from (0,0) to each 2D triangle [F,3,2] (0 when inside or degenerate through it)."""
    a = triangles
    edge = np.roll(triangles, -1, axis=1) - a
    side = edge[..., 0] * (-a[..., 1]) - edge[..., 1] * (-a[..., 0])              # cross(edge, origin - a)
    inside = (side >= 0).all(1) | (side <= 0).all(1)
    s = np.clip(-(a * edge).sum(-1) / np.maximum((edge * edge).sum(-1), 1e-300), 0, 1)
    distance = np.linalg.norm(a + s[..., None] * edge, axis=-1).min(1)
    return np.where(inside, 0.0, distance)
