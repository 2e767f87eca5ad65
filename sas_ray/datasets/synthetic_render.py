"""Exact ray casting of triangle meshes for the synthetic datasets: pinhole cameras (RGB, depth, label images) and a
spinning lidar (points on the visible surfaces), vectorised in torch on the CPU.

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
import torch

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

    t: torch.Tensor
    face: torch.Tensor
    barycentric: torch.Tensor


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
    vertices = torch.from_numpy(mesh.points.astype(np.float64))
    faces = torch.from_numpy(mesh.faces)
    colors = torch.from_numpy((mesh.colors if mesh.colors is not None
                               else np.full((mesh.num_points, 3), 128, np.uint8)).astype(np.float64))
    face_labels = torch.from_numpy(mesh.labels[mesh.faces[:, 0]] if mesh.labels is not None
                                   else np.full(len(mesh.faces), IGNORE_LABEL, np.int64))
    shading = torch.from_numpy(_face_shading(mesh.points.astype(np.float64), mesh.faces))
    views = []
    for pose in poses:
        pose = np.asarray(pose, dtype=np.float64)
        world_to_camera = torch.from_numpy(np.linalg.inv(pose))
        camera_vertices = vertices @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
        candidates, bounds = _frustum_faces(camera_vertices, faces, k, height, width)
        hits = cast_ray_grid(camera_vertices, faces[candidates], rays, bounds, t_min=NEAR_PLANE)
        face = torch.where(hits.face >= 0, candidates[hits.face.clamp(min=0)], -1)
        views.append(_shade(hits._replace(face=face), faces, colors, face_labels, shading))
    return views


def cast_ray_grid(vertices: torch.Tensor, faces: torch.Tensor, rays: torch.Tensor,
                  bounds: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
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
    cross = torch.stack([torch.cross(v1, v2, dim=1), torch.cross(v2, v0, dim=1), torch.cross(v0, v1, dim=1)], 1)
    det = (v0 * cross[:, 0]).sum(1)
    scale = v0.norm(dim=1) * v1.norm(dim=1) * v2.norm(dim=1)
    row_lo, row_hi, col_lo, col_hi = bounds
    counts = (row_hi - row_lo).clamp(min=0) * (col_hi - col_lo).clamp(min=0)
    counts = torch.where(det.abs() > 1e-12 * scale, counts, 0)  # edge-on triangles (plane through the origin)
    candidates = counts.nonzero().squeeze(1)
    inverse = cross[candidates] / det[candidates, None, None]

    flat_rays = rays.reshape(-1, 3)
    best_t = torch.full((num_rows * num_cols,), math.inf, dtype=torch.float64)
    best_face = torch.full((num_rows * num_cols,), -1, dtype=torch.int64)
    ends = torch.cumsum(counts[candidates], 0)
    start = 0
    while start < len(candidates):
        stop = int(torch.searchsorted(ends, ends[start] - counts[candidates[start]] + _PAIRS_PER_CHUNK,
                                      right=True))
        stop = max(stop, start + 1)
        chunk = slice(start, stop)
        face_t, ray_index = _pairs(counts[candidates[chunk]], row_lo[candidates[chunk]],
                                          row_hi[candidates[chunk]], col_lo[candidates[chunk]],
                                          col_hi[candidates[chunk]], num_cols)
        w = torch.einsum("pij,pj->pi", inverse[chunk][face_t], flat_rays[ray_index])
        total = w.sum(1)
        inside = (w >= -_INSIDE_TOLERANCE * total.abs()[:, None]).all(1) & (total > 0)
        t = 1.0 / torch.where(inside, total, 1.0)
        inside &= (t >= t_min) & (t <= t_max)
        t, ray_index, face = t[inside], ray_index[inside], candidates[chunk][face_t[inside]]
        # nearest hit per ray within the chunk, then the lowest face index among equal depths
        chunk_t = torch.full_like(best_t, math.inf).scatter_reduce_(0, ray_index, t, "amin")
        nearest = t == chunk_t[ray_index]
        chunk_face = torch.full_like(best_face, torch.iinfo(torch.int64).max).scatter_reduce_(
            0, ray_index[nearest], face[nearest], "amin")
        closer = chunk_t < best_t  # on equal depth the earlier chunk (lower face index) keeps the ray
        best_t = torch.where(closer, chunk_t, best_t)
        best_face = torch.where(closer, chunk_face, best_face)
        start = stop
    hit = best_face >= 0
    barycentric = torch.zeros(num_rows * num_cols, 3, dtype=torch.float64)
    face_hit = best_face[hit]
    w = torch.einsum("pij,pj->pi", cross[face_hit] / det[face_hit, None, None], flat_rays[hit])
    barycentric[hit] = (w / w.sum(1, keepdim=True)).clamp(min=0)
    return RayHits(t=torch.where(hit, best_t, 0.0).reshape(num_rows, num_cols),
                   face=best_face.reshape(num_rows, num_cols),
                   barycentric=barycentric.reshape(num_rows, num_cols, 3))


def _pairs(counts, row_lo, row_hi, col_lo, col_hi, num_cols):
    """Enumerate (triangle, ray) pairs: for each triangle all rays of its row x column box."""
    face_t = torch.repeat_interleave(torch.arange(len(counts)), counts)
    offsets = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum())) - offsets[face_t]
    widths = (col_hi - col_lo)[face_t]
    rows = row_lo[face_t] + local // widths
    cols = (col_lo[face_t] + local % widths) % num_cols
    return face_t, rows * num_cols + cols


def _pixel_rays(k: np.ndarray, height: int, width: int) -> torch.Tensor:
    """float64 [H,W,3]: direction (X/Z, Y/Z, 1) of the ray through each integer pixel point."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    return torch.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], torch.ones_like(u)], -1)


def _frustum_faces(camera_vertices: torch.Tensor, faces: torch.Tensor, k: np.ndarray, height: int,
                   width: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Indices of the triangles that may cover a pixel, and the pixel box of each.

    A triangle is dropped when all its vertices lie outside one plane of the frustum (near plane, or one pixel
    beyond an image border). The box comes from the vertex projections; a triangle crossing the near plane is
    clipped there first, so its box stays finite (its part behind the near plane is never drawn).
    """
    x, y, z = camera_vertices.unbind(1)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    outside = [z < NEAR_PLANE, fx * x + (cx + 1) * z < 0, fx * x - (width - cx) * z > 0,
               fy * y + (cy + 1) * z < 0, fy * y - (height - cy) * z > 0]
    code = sum(flag.to(torch.int64) << bit for bit, flag in enumerate(outside))
    corner_codes = code[faces]
    keep = ((corner_codes[:, 0] & corner_codes[:, 1] & corner_codes[:, 2]) == 0).nonzero().squeeze(1)
    corners = camera_vertices[faces[keep]]                              # [F,3,3]
    depth = corners[..., 2]
    front = depth >= NEAR_PLANE
    a, b = corners, corners.roll(-1, dims=1)                            # edges (0,1), (1,2), (2,0)
    crosses = (a[..., 2] - NEAR_PLANE) * (b[..., 2] - NEAR_PLANE) < 0
    s = ((NEAR_PLANE - a[..., 2]) / torch.where(crosses, b[..., 2] - a[..., 2], 1.0))[..., None]
    points = torch.cat([corners, a + s * (b - a)], 1)                   # corners and near-plane edge points
    valid = torch.cat([front, crosses], 1)
    w = torch.where(valid, points[..., 2], 1.0)
    u = torch.where(valid, fx * points[..., 0] / w + cx, math.nan)
    v = torch.where(valid, fy * points[..., 1] / w + cy, math.nan)
    row_lo = v.nan_to_num(math.inf).amin(1).clamp(-1, height).floor().clamp(min=0).long()
    row_hi = v.nan_to_num(-math.inf).amax(1).clamp(-1, height).floor().long() + 1
    col_lo = u.nan_to_num(math.inf).amin(1).clamp(-1, width).floor().clamp(min=0).long()
    col_hi = u.nan_to_num(-math.inf).amax(1).clamp(-1, width).floor().long() + 1
    return keep, (row_lo, row_hi.clamp(max=height), col_lo, col_hi.clamp(max=width))


def _face_shading(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """float64 [F]: 0.7 + 0.3 |n . light|, so differently oriented surfaces of one colour stay distinguishable."""
    normal = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    return 0.7 + 0.3 * np.abs(normal @ _LIGHT)


def _shade(hits: RayHits, faces, colors, face_labels, shading) -> RenderedView:
    hit = hits.face >= 0
    face = hits.face.clamp(min=0)
    rgb = (hits.barycentric[..., None] * colors[faces[face]]).sum(-2) * shading[face][..., None]
    rgb = torch.where(hit[..., None], rgb.round().clamp(0, 255), torch.tensor(_SKY, dtype=torch.float64))
    label = torch.where(hit, face_labels[face], IGNORE_LABEL)
    return RenderedView(rgb=rgb.numpy().astype(np.uint8), depth=hits.t.numpy().astype(np.float32),
                        label=label.numpy().astype(np.uint8))


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
    vertices = torch.from_numpy(mesh.points.astype(np.float64) @ world_to_lidar[:3, :3].T + world_to_lidar[:3, 3])
    faces = torch.from_numpy(mesh.faces)
    elevation = torch.deg2rad(torch.as_tensor(elevations_deg, dtype=torch.float64))
    azimuth = torch.arange(num_azimuths, dtype=torch.float64) * (2 * math.pi / num_azimuths)
    el, az = torch.meshgrid(elevation, azimuth, indexing="ij")
    rays = torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)        # [B,N,3] unit
    bounds = _angular_bounds(vertices, faces, elevation, num_azimuths)
    hits = cast_ray_grid(vertices, faces, rays, bounds, t_min=min_range, t_max=max_range)
    hit = (hits.face >= 0).T                                                           # azimuth-major order
    column, beam = hit.nonzero(as_tuple=True)
    points = hits.t[beam, column, None] * rays[beam, column]
    return LidarSweep(points=points.numpy(), face=hits.face[beam, column].numpy(), beam=beam.numpy(),
                      azimuth=column.numpy())


def _angular_bounds(vertices: torch.Tensor, faces: torch.Tensor, elevation: torch.Tensor, num_azimuths: int):
    """Conservative (beam, azimuth column) box of each triangle seen from the origin.

    Azimuth: the span of the vertices (exact for a triangle whose xy shadow misses the z axis; all columns when
    it contains it). Elevation atan2(z, r): z spans the vertex range, r = horizontal distance spans
    [distance from the z axis to the xy shadow, largest vertex r]; the extremes of atan2 over that box bound it.
    """
    corners = vertices[faces]                                              # [F,3,3]
    xy, z = corners[..., :2], corners[..., 2]
    angle = torch.atan2(xy[..., 1], xy[..., 0])
    relative = torch.remainder(angle - angle[:, :1] + math.pi, 2 * math.pi) - math.pi
    az_lo, az_hi = angle[:, 0] + relative.amin(1), angle[:, 0] + relative.amax(1)
    r_min = _origin_distance_2d(xy)
    r_max = xy.norm(dim=-1).amax(1)
    step = 2 * math.pi / num_azimuths
    around = r_min <= 1e-9
    col_lo = torch.where(around, 0, torch.floor(az_lo / step).long())
    col_hi = torch.where(around, num_azimuths, torch.ceil(az_hi / step).long() + 1)
    col_hi = torch.minimum(col_hi, col_lo + num_azimuths)
    z_lo, z_hi = z.amin(1), z.amax(1)
    el_lo = torch.atan2(z_lo, torch.where(z_lo < 0, r_min, r_max))
    el_hi = torch.atan2(z_hi, torch.where(z_hi > 0, r_min, r_max))
    row_lo = torch.searchsorted(elevation, el_lo - 1e-9, right=False)
    row_hi = torch.searchsorted(elevation, el_hi + 1e-9, right=True)
    return row_lo, row_hi, col_lo, col_hi


def _origin_distance_2d(triangles: torch.Tensor) -> torch.Tensor:
    """float64 [F]: distance from (0,0) to each 2D triangle [F,3,2] (0 when inside or degenerate through it)."""
    a, b = triangles, triangles.roll(-1, dims=1)
    edge = b - a
    side = edge[..., 0] * (-a[..., 1]) - edge[..., 1] * (-a[..., 0])              # cross(edge, origin - a)
    inside = (side >= 0).all(1) | (side <= 0).all(1)
    s = (-(a * edge).sum(-1) / (edge * edge).sum(-1).clamp(min=1e-300)).clamp(0, 1)
    distance = (a + s[..., None] * edge).norm(dim=-1).amin(1)
    return torch.where(inside, 0.0, distance)
