"""Your own RGB-D scans (`layout: scans`): one folder per scene with the frames and a PLY of the geometry.

    root/<scene>/scene.ply           the geometry, binary PLY in metres (world frame): a mesh (faces -> mesh-mode
                                     superpoints, like ScanNet's) or a point cloud; optional per-vertex uchar
                                     red/green/blue and int `label` (indices of the preset's label set, 255 = none)
    root/<scene>/intrinsics.txt      pinhole K of the colour images, 3x3 or 4x4 text (fx 0 cx / 0 fy cy / 0 0 1)
    root/<scene>/color/<n>.jpg|png   colour frames; <n> = frame number (frame_skip keeps multiples of it)
    root/<scene>/depth/<n>.png       uint16 depth, same size as the colour frame, 0 = no reading
    root/<scene>/pose/<n>.txt        4x4 camera-to-world in the geometry's frame, OpenCV axes (x right, y down,
                                     z forward), metres; non-finite poses (lost tracking): extract leaves them out
    root/<scene>/depth_scale.txt     optional: depth units per metre (default 1000, millimetres)

Scenes are the folders that hold a scene.ply; `split` is unused. When a scene is prepared its frames are checked
against its geometry (sas_ray.datasets.consistency): world-to-camera poses or depth off by 1000 fail that scene
with a message saying so.
"""

from __future__ import annotations

import numpy as np

from sas_ray.datasets.consistency import check_frames_match_geometry
from sas_ray.datasets.frames import (decode_matrix, encode_depth_png, encode_jpeg, encode_matrix, frame_unit,
                                     numbered_sequence_rows, read_frame)
from sas_ray.datasets.ply import decode_ply, encode_ply
from sas_ray.datasets.rawfiles import RawTree
from sas_ray.errors import InputError
from sas_ray.ids import check_id
from sas_ray.scene import Frame, Scene
from sas_ray.storage import Storage

GEOMETRY = "scene.ply"
DEPTH_SCALE = 1000.0  # default depth units per metre
_COLOR_SUFFIXES = (".jpg", ".png")
_CHECKED_FRAMES = 8  # frames (evenly spaced) compared with the geometry per scene


def list_scenes(root: str, split: str = "", options: dict | None = None) -> list[str]:
    """Folders of `root` that hold a scene.ply, sorted."""
    tree = RawTree(root, options)
    return [name for name in tree.list("") if tree.exists(f"{name}/{GEOMETRY}")]


def read_scene(root: str, split: str, scene_id: str, options: dict | None = None) -> Scene:
    """The scene's PLY: vertices, colours, labels and faces as present."""
    tree = RawTree(root, options)
    rel = f"{check_id(scene_id, 'scene id')}/{GEOMETRY}"
    ply = decode_ply(tree.read(rel, f"scene {scene_id}"), tree.url(rel))
    try:
        return Scene(scene_id, ply.points, ply.colors, ply.labels, ply.faces)
    except InputError as err:
        raise InputError(f"{err} ({tree.url(rel)})") from None


def _depth_scale(tree: RawTree, scene_id: str) -> float:
    rel = f"{scene_id}/depth_scale.txt"
    if not tree.exists(rel):
        return DEPTH_SCALE
    scale = decode_matrix(tree.read(rel, f"scene {scene_id}"), (1, 1), f"scene {scene_id}", tree.url(rel))[0, 0]
    if not scale > 0:
        raise InputError(f"scene {scene_id}: {tree.url(rel)} holds {scale}, expected depth units per metre > 0")
    return float(scale)


def frame_rows(root: str, split: str, scene_id: str, options: dict | None = None, frame_skip: int = 1) -> list[dict]:
    """Frame index rows in frame-number order (frames.numbered_sequence_rows), after checking a few frames' depth
    against the geometry."""
    tree = RawTree(root, options)
    check_id(scene_id, "scene id")
    scale = _depth_scale(tree, scene_id)
    rows = numbered_sequence_rows(tree, scene_id, scene_id, f"{scene_id}/intrinsics.txt", scale, frame_skip,
                                  _COLOR_SUFFIXES)
    tracked = [row for row in rows if np.isfinite(row["pose"]).all()]
    if tracked:
        checked = [read_frame(tracked[i], options)
                   for i in np.linspace(0, len(tracked) - 1, _CHECKED_FRAMES).astype(int)]
        check_frames_match_geometry(read_scene(root, split, scene_id, options), checked, scale, tree.url(scene_id))
    return rows


def write_scans(root: str, scene: Scene, frames: list[Frame], options: dict | None = None,
                depth_scale: float = DEPTH_SCALE) -> None:
    """Write one scene in this layout. Frame ids must be frame numbers, frames need depth and share one K."""
    store = Storage(root, options)
    sid = check_id(scene.scene_id, "scene id")
    for frame in frames:
        if not frame.frame_id.isdigit() or frame.depth is None or not np.array_equal(frame.intrinsic,
                                                                                      frames[0].intrinsic):
            raise InputError(f"{frame_unit(sid, frame.frame_id)}: own-scan frames need a numeric id, depth and "
                             f"the K of frame {frames[0].frame_id}")
        store.write_bytes(f"{sid}/color/{frame.frame_id}.jpg", encode_jpeg(frame.rgb))
        store.write_bytes(f"{sid}/depth/{frame.frame_id}.png", encode_depth_png(frame.depth, depth_scale))
        store.write_bytes(f"{sid}/pose/{frame.frame_id}.txt", encode_matrix(frame.pose))
    if frames:
        store.write_bytes(f"{sid}/intrinsics.txt", encode_matrix(frames[0].intrinsic))
    if depth_scale != DEPTH_SCALE:
        store.write_bytes(f"{sid}/depth_scale.txt", encode_matrix(np.array([[depth_scale]])))
    store.write_bytes(f"{sid}/{GEOMETRY}", encode_ply(scene.points, scene.colors, scene.labels, scene.faces))
