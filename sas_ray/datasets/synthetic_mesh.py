"""Procedural triangle meshes for the synthetic datasets: labelled boxes, quads and triangles subdivided evenly to a
vertex budget, coloured per class with per-vertex texture noise, returned as a Scene with faces.

Surfaces are recorded first and subdivided last, so one grid spacing serves the whole scene and the vertex count
approaches the requested number whatever the layout. Vertices shared by the surfaces of one part (the six faces
of a box) are welded, as in a scanned mesh; each triangle's normal (right-hand winding) points out of solids and
into a room.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from sas_ray.scene import Scene

BOX_FACES = ("-x", "+x", "-y", "+y", "-z", "+z")
_TEXTURE_NOISE = 6.0  # std of the per-vertex colour noise, per channel and in brightness (0..255 units)
_WELD_RESOLUTION = 1e-5  # metres; vertices of one part closer than this become one


class Material(NamedTuple):
    """What a surface is: label index (255 = ignore) and base colour (RGB 0..255)."""

    label: int
    color: tuple[float, float, float]


class _Surface(NamedTuple):
    origin: np.ndarray  # [3]
    edge1: np.ndarray  # [3]
    edge2: np.ndarray  # [3]; normal = edge1 x edge2
    triangle: bool  # False: parallelogram origin + [0,1] edge1 + [0,1] edge2; True: triangle (origin, +edge1, +edge2)
    part: int
    material: Material


class MeshRecipe:
    """Collects labelled surfaces; `build` subdivides them into one welded, coloured triangle mesh."""

    def __init__(self) -> None:
        self._surfaces: list[_Surface] = []
        self._parts = 0

    def new_part(self) -> int:
        self._parts += 1
        return self._parts - 1

    def add_quad(self, origin, edge1, edge2, material: Material, part: int | None = None) -> None:
        """Parallelogram origin + a·edge1 + b·edge2 (a, b in [0,1]); its normal is edge1 x edge2."""
        self._add(origin, edge1, edge2, False, material, part)

    def add_triangle(self, p0, p1, p2, material: Material, part: int | None = None) -> None:
        """Triangle (p0, p1, p2); its normal is (p1 - p0) x (p2 - p0)."""
        p0 = np.asarray(p0, np.float64)
        self._add(p0, np.asarray(p1, np.float64) - p0, np.asarray(p2, np.float64) - p0, True, material, part)

    def add_box(self, lo, hi, material: Material, omit: tuple[str, ...] = ()) -> None:
        """Axis-aligned solid box, outward normals; `omit` drops hidden faces (e.g. '-z' on the floor)."""
        self.add_box_faces(lo, hi, {face: material for face in BOX_FACES if face not in omit}, inward=False)

    def add_box_faces(self, lo, hi, faces: dict[str, Material], inward: bool) -> None:
        """Some faces of an axis-aligned box as one part; `inward` turns the normals inside (a room seen from
        within). Face names: '-x', '+x', '-y', '+y', '-z', '+z'."""
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        size = hi - lo
        part = self.new_part()
        for name, material in faces.items():
            axis = "xyz".index(name[1])
            b, c = (axis + 1) % 3, (axis + 2) % 3  # (axis, b, c) cyclic: e_b x e_c = +e_axis
            origin = lo.copy()
            if name[0] == "+":
                origin[axis] = hi[axis]
            edge_b, edge_c = np.zeros(3), np.zeros(3)
            edge_b[b], edge_c[c] = size[b], size[c]
            outward = name[0] == "+"
            if outward != inward:
                self.add_quad(origin, edge_b, edge_c, material, part)
            else:
                self.add_quad(origin, edge_c, edge_b, material, part)

    def _add(self, origin, edge1, edge2, triangle: bool, material: Material, part: int | None) -> None:
        self._surfaces.append(_Surface(np.asarray(origin, np.float64), np.asarray(edge1, np.float64),
                                       np.asarray(edge2, np.float64), triangle,
                                       self.new_part() if part is None else part, material))

    def build(self, scene_id: str, num_vertices: int, rng: np.random.Generator) -> Scene:
        """Subdivide every surface with one spacing chosen so the welded vertex count approaches `num_vertices`
        (within a few percent), then colour each vertex with its material colour plus Gaussian texture noise
        drawn from `rng`."""
        budget = num_vertices  # before welding; raised by the share welding removes
        for _ in range(3):
            points, faces, materials = self._welded(self._spacing_for(budget))
            if abs(len(points) - num_vertices) <= 0.03 * num_vertices:
                break
            budget = budget * num_vertices / len(points)
        noise = rng.normal(0.0, _TEXTURE_NOISE, (len(points), 3)) + rng.normal(0.0, _TEXTURE_NOISE, (len(points), 1))
        colors = np.clip(np.round(materials[:, 1:] + noise), 0, 255).astype(np.uint8)
        return Scene(scene_id=scene_id, points=points.astype(np.float32), colors=colors,
                     labels=materials[:, 0].astype(np.int64), faces=faces)

    def _welded(self, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vertices float64 [V,3], triangles int64 [T,3] and per-vertex (label, r, g, b) float64 [V,4] of all
        surfaces subdivided at `spacing`, vertices of a part merged where they coincide (first kept, in order)."""
        points, faces, keys, materials = [], [], [], []
        offset = 0
        for surface in self._surfaces:
            vertices, triangles = _subdivide(surface, spacing)
            points.append(vertices)
            faces.append(triangles + offset)
            offset += len(vertices)
            quantised = np.round(vertices / _WELD_RESOLUTION).astype(np.int64)
            head = np.tile([surface.part, surface.material.label], (len(vertices), 1))
            keys.append(np.concatenate([head, quantised], 1))
            materials.append(np.repeat([[surface.material.label, *surface.material.color]], len(vertices), 0))
        points, faces, keys, materials = (np.concatenate(x) for x in (points, faces, keys, materials))
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        keep = first[order]
        return points[keep], rank[inverse.reshape(-1)][faces].astype(np.int64), materials[keep]

    def _spacing_for(self, num_vertices: int) -> float:
        """Grid spacing (metres) whose vertex count before welding is the largest not above num_vertices."""
        lo, hi = 1e-4, 1e3
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            if self._count(mid) > num_vertices:
                lo = mid
            else:
                hi = mid
        return hi

    def _count(self, spacing: float) -> int:
        total = 0
        for s in self._surfaces:
            if s.triangle:
                n = _steps(max(np.linalg.norm(s.edge1), np.linalg.norm(s.edge2),
                               np.linalg.norm(s.edge2 - s.edge1)), spacing)
                total += (n + 1) * (n + 2) // 2
            else:
                total += (_steps(np.linalg.norm(s.edge1), spacing) + 1) * (_steps(np.linalg.norm(s.edge2), spacing) + 1)
        return total


def _steps(length: float, spacing: float) -> int:
    return max(1, math.ceil(length / spacing - 1e-9))


def _subdivide(surface: _Surface, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Regular grid (parallelogram) or lattice (triangle) vertices float64 [V,3] and triangles int64 [T,3],
    all wound like the surface."""
    if surface.triangle:
        n = _steps(max(np.linalg.norm(surface.edge1), np.linalg.norm(surface.edge2),
                       np.linalg.norm(surface.edge2 - surface.edge1)), spacing)
        i, j = (a.ravel() for a in np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij"))
        on = i + j <= n
        i, j = i[on], j[on]
        index = np.full((n + 2, n + 2), -1)
        index[i, j] = np.arange(len(i))
        vertices = surface.origin + np.outer(i / n, surface.edge1) + np.outer(j / n, surface.edge2)
        lower = i + j < n
        upper = i + j < n - 1
        triangles = np.concatenate([
            np.stack([index[i[lower], j[lower]], index[i[lower] + 1, j[lower]], index[i[lower], j[lower] + 1]], 1),
            np.stack([index[i[upper] + 1, j[upper]], index[i[upper] + 1, j[upper] + 1],
                      index[i[upper], j[upper] + 1]], 1)])
        return vertices, triangles.astype(np.int64)
    n1 = _steps(np.linalg.norm(surface.edge1), spacing)
    n2 = _steps(np.linalg.norm(surface.edge2), spacing)
    i, j = (a.ravel() for a in np.meshgrid(np.arange(n1 + 1), np.arange(n2 + 1), indexing="ij"))
    vertices = surface.origin + np.outer(i / n1, surface.edge1) + np.outer(j / n2, surface.edge2)
    ci, cj = (a.ravel() for a in np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij"))
    a, b, c, d = ci * (n2 + 1) + cj, (ci + 1) * (n2 + 1) + cj, (ci + 1) * (n2 + 1) + cj + 1, ci * (n2 + 1) + cj + 1
    triangles = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return vertices, triangles.astype(np.int64)
