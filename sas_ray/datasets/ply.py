"""Binary PLY meshes: ScanNet/Matterport mesh files (for superpoints) and the coloured clouds we write.

Reads binary little- or big-endian PLY with any scalar vertex/face properties and one triangle list per face
(`property list uchar int vertex_indices`), which covers ScanNet `_vh_clean_2.ply` and Matterport region meshes.
Writes binary little endian: vertex float x,y,z, optional uchar red,green,blue, optional int label; faces as
uchar count + int indices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sas_ray.errors import InputError
from sas_ray.scene import Scene

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
    "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}
_ENDIAN = {"binary_little_endian": "<", "binary_big_endian": ">"}


@dataclass(frozen=True, eq=False)
class PlyMesh:
    """points float32 [N,3]; colors uint8 [N,3] | None; labels int64 [N] | None; faces int64 [F,3] | None."""

    points: np.ndarray
    colors: np.ndarray | None = None
    labels: np.ndarray | None = None
    faces: np.ndarray | None = None


@dataclass
class _Element:
    name: str
    count: int
    scalars: list[tuple[str, str]]  # (name, numpy type) in file order
    list_prop: tuple[str, str, str] | None = None  # (name, count type, item type)
    list_position: int = -1  # index in `scalars` before which the list sits


def _parse_header(data: bytes, source: str) -> tuple[str, list[_Element], int]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise InputError(f"{source}: not a PLY file (missing 'ply' magic or 'end_header')")
    body = data.index(b"\n", end) + 1
    endian, elements = None, []
    for raw in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if words[1] not in _ENDIAN:
                raise InputError(f"{source}: PLY format {words[1]!r} is not supported (expected binary)")
            endian = _ENDIAN[words[1]]
        elif words[0] == "element":
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            el = elements[-1]
            if words[1] == "list":
                if el.list_prop is not None or words[2] not in _TYPES or words[3] not in _TYPES:
                    raise InputError(f"{source}: element {el.name!r}: unsupported list property {raw.strip()!r}")
                el.list_prop = (words[4], _TYPES[words[2]], _TYPES[words[3]])
                el.list_position = len(el.scalars)
            elif words[1] in _TYPES:
                el.scalars.append((words[2], _TYPES[words[1]]))
            else:
                raise InputError(f"{source}: unknown PLY property type in {raw.strip()!r}")
    if endian is None:
        raise InputError(f"{source}: PLY header has no 'format' line")
    return endian, elements, body


def decode_ply_elements(data: bytes, source: str) -> dict[str, dict[str, np.ndarray]]:
    """Every element as {property: array}; a list property becomes [count, k] (all rows must have k items)."""
    endian, elements, offset = _parse_header(data, source)
    out: dict[str, dict[str, np.ndarray]] = {}
    for el in elements:
        fields = [(n, endian + t) for n, t in el.scalars]
        if el.list_prop is not None:
            name, count_type, item_type = el.list_prop
            head = np.dtype([(n, endian + t) for n, t in el.scalars[:el.list_position]]).itemsize
            k = int(np.frombuffer(data, endian + count_type, 1, offset + head)[0]) if el.count else 0
            list_fields = [("__count", endian + count_type), (name, endian + item_type, (k,))]
            fields = fields[:el.list_position] + list_fields + fields[el.list_position:]
        dtype = np.dtype(fields)
        if offset + dtype.itemsize * el.count > len(data):
            raise InputError(f"{source}: PLY element {el.name!r} is truncated "
                             f"(needs {dtype.itemsize * el.count} bytes at offset {offset}, file has {len(data)})")
        rows = np.frombuffer(data, dtype, el.count, offset)
        offset += dtype.itemsize * el.count
        if el.list_prop is not None and el.count and (rows["__count"] != rows["__count"][0]).any():
            raise InputError(f"{source}: PLY element {el.name!r} mixes list lengths (only triangles are supported)")
        out[el.name] = {n: rows[n].copy() for n in dtype.names if n != "__count"}
    return out


def decode_ply(data: bytes, source: str) -> PlyMesh:
    """A PLY mesh or point cloud: vertex x,y,z (+ red,green,blue, + label) and triangle faces if present."""
    elements = decode_ply_elements(data, source)
    vertex = elements.get("vertex")
    if vertex is None or not {"x", "y", "z"} <= vertex.keys():
        raise InputError(f"{source}: PLY has no vertex element with x, y, z")
    points = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    colors = None
    if {"red", "green", "blue"} <= vertex.keys():
        colors = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)
    labels = vertex["label"].astype(np.int64) if "label" in vertex else None
    faces = None
    face = elements.get("face", {})
    indices = face.get("vertex_indices", face.get("vertex_index"))
    if indices is not None and len(indices):
        if indices.shape[1] != 3:
            raise InputError(f"{source}: faces have {indices.shape[1]} vertices (only triangles are supported)")
        faces = indices.astype(np.int64)
        if faces.min() < 0 or faces.max() >= len(points):
            raise InputError(f"{source}: face indices {faces.min()}..{faces.max()} outside 0..{len(points) - 1}")
    return PlyMesh(points, colors, labels, faces)


def with_mesh_faces(scene: Scene, data: bytes, source: str) -> Scene:
    """`scene` with the faces of the PLY mesh `data`, whose vertices must be the scene's points in order."""
    mesh = decode_ply(data, source)
    if mesh.points.shape != scene.points.shape or not np.allclose(mesh.points, scene.points, atol=1e-5):
        raise InputError(f"scene {scene.scene_id}: {source} has {len(mesh.points)} vertices that differ from the "
                         f"{scene.num_points} points of the scene file (expected the same vertices in order)")
    return replace(scene, faces=mesh.faces)


def encode_ply(points: np.ndarray, colors: np.ndarray | None = None, labels: np.ndarray | None = None,
               faces: np.ndarray | None = None) -> bytes:
    """Binary little-endian PLY of points float [N,3], colors uint8 [N,3], labels int [N], faces int [F,3]."""
    n = len(points)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    props = ["property float x", "property float y", "property float z"]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        props += ["property uchar red", "property uchar green", "property uchar blue"]
    if labels is not None:
        fields += [("label", "<i4")]
        props += ["property int label"]
    vertex = np.empty(n, np.dtype(fields))
    vertex["x"], vertex["y"], vertex["z"] = (np.asarray(points, np.float32)[:, i] for i in range(3))
    if colors is not None:
        vertex["red"], vertex["green"], vertex["blue"] = (np.asarray(colors, np.uint8)[:, i] for i in range(3))
    if labels is not None:
        vertex["label"] = labels
    faces = np.zeros((0, 3), np.int64) if faces is None else faces
    face = np.empty(len(faces), np.dtype([("n", "u1"), ("v", "<i4", (3,))]))
    face["n"], face["v"] = 3, faces
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}", *props,
                        f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header", ""])
    return header.encode("ascii") + vertex.tobytes() + face.tobytes()
