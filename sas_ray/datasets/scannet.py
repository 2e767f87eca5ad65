"""ScanNet in OpenScene's layout (SPEC §1.1-1.3): list scenes, read a scene and its frame index rows; write it.

    root/scannet_2d/intrinsics.txt                  one global 4x4 K for every stored image
    root/scannet_2d/<scene>/color/<f>.jpg           <f> = ScanNet frame number (0, 20, 40, ... after the export)
    root/scannet_2d/<scene>/depth/<f>.png           uint16 millimetres, same size as the colour image
    root/scannet_2d/<scene>/pose/<f>.txt            4x4 camera-to-world (OpenCV axes)
    root/scannet_2d/<scene>/label/<f>.png           optional: uint8 NYU40 ids (label-filt mapped; 0 = unannotated)
    root/scannet_3d/<split>/<scene>_vh_clean_2.pth  OpenScene tuple (coords, colors, labels), see openscene.py
    root/scans/<scene>/<scene>_vh_clean_2.ply       the mesh the points are the vertices of (faces for superpoints)
"""

from __future__ import annotations

import numpy as np

from sas_ray.datasets.frames import (_open_image, decode_matrix, encode_depth_png, encode_jpeg, encode_matrix,
                                     encode_png, frame_unit, numbered_sequence_rows)
from sas_ray.datasets.openscene import decode_pth_scene, encode_pth_scene
from sas_ray.datasets.ply import encode_ply, with_mesh_faces
from sas_ray.datasets.rawfiles import RawTree
from sas_ray.errors import InputError
from sas_ray.ids import check_id
from sas_ray.labels import MATTERPORT_21_NYU40_IDS, SCANNET_20_NYU40_IDS
from sas_ray.scene import Frame, Scene
from sas_ray.storage import Storage

DEPTH_SCALE = 1000.0  # depth PNG units per metre
_PTH_SUFFIX = "_vh_clean_2.pth"
_INTRINSICS = "scannet_2d/intrinsics.txt"
# Label sets whose classes are NYU40 ids, so ScanNet label images map onto them (SPEC §1.2).
NYU40_IDS = {"scannet20": SCANNET_20_NYU40_IDS, "matterport21": MATTERPORT_21_NYU40_IDS}


def _pth(split: str, scene_id: str) -> str:
    return f"scannet_3d/{split}/{scene_id}{_PTH_SUFFIX}"


def _mesh(scene_id: str) -> str:
    return f"scans/{scene_id}/{scene_id}_vh_clean_2.ply"


def list_scenes(root: str, split: str, options: dict | None = None) -> list[str]:
    """Scene ids with a `.pth` in scannet_3d/<split>/, sorted."""
    names = RawTree(root, options).list(f"scannet_3d/{check_id(split, 'split')}")
    return [n[:-len(_PTH_SUFFIX)] for n in names if n.endswith(_PTH_SUFFIX)]


def read_scene(root: str, split: str, scene_id: str, options: dict | None = None) -> Scene:
    """The scene's points, colours and labels from its `.pth`, with the mesh faces when the PLY is present."""
    tree = RawTree(root, options)
    rel = _pth(check_id(split, "split"), check_id(scene_id, "scene id"))
    unit = f"scene {scene_id}"
    scene = decode_pth_scene(tree.read(rel, unit), scene_id, tree.url(rel))
    mesh = _mesh(scene_id)
    return with_mesh_faces(scene, tree.read(mesh, unit), tree.url(mesh)) if tree.exists(mesh) else scene


def frame_rows(root: str, split: str, scene_id: str, options: dict | None = None, frame_skip: int = 1) -> list[dict]:
    """Frame index rows of the scene (frames.numbered_sequence_rows: frame numbers divisible by `frame_skip`; lost
    tracking stays in the index, extract leaves it out and counts it). `split` is unused (ScanNet's 2D folders are not split) and kept for the common layout
    signature."""
    check_id(scene_id, "scene id")
    return numbered_sequence_rows(RawTree(root, options), scene_id, f"scannet_2d/{scene_id}", _INTRINSICS,
                                  DEPTH_SCALE, frame_skip)


def write_scannet(root: str, split: str, scene: Scene, frames: list[Frame], options: dict | None = None,
                  labels: list[np.ndarray] | None = None) -> None:
    """Write one scene and its frames in this layout. Frame ids must be frame numbers, every frame needs depth, and
    all frames share one K, which must also equal an intrinsics.txt already present (ScanNet's K is global).
    `labels`: optional per-frame label images, uint8 [H,W] NYU40 ids (0 = unannotated), as OpenScene exports them."""
    store = Storage(root, options)
    sid = scene.scene_id
    check_id(split, "split")
    for frame in frames:
        unit = frame_unit(frame.scene_id, frame.frame_id)
        if frame.scene_id != sid or not frame.frame_id.isdigit() or frame.depth is None:
            raise InputError(f"{unit}: ScanNet frames need scene id {sid}, a numeric frame id and depth")
        if not np.array_equal(frame.intrinsic, frames[0].intrinsic):
            raise InputError(f"{unit}: intrinsic differs from frame {frames[0].frame_id} (ScanNet K is global)")
    if labels is not None and (len(labels) != len(frames) or any(
            label.shape != frame.rgb.shape[:2] or label.dtype != np.uint8 for label, frame in zip(labels, frames))):
        raise InputError(f"scene {sid}: expected one uint8 label image per frame, of the frame's size")
    if frames:
        _write_global_intrinsic(store, frames[0].intrinsic, sid)
    for frame in frames:
        folder, f = f"scannet_2d/{sid}", frame.frame_id
        store.write_bytes(f"{folder}/color/{f}.jpg", encode_jpeg(frame.rgb))
        store.write_bytes(f"{folder}/depth/{f}.png", encode_depth_png(frame.depth, DEPTH_SCALE))
        store.write_bytes(f"{folder}/pose/{f}.txt", encode_matrix(frame.pose))
    for frame, label in zip(frames, labels or []):
        store.write_bytes(f"scannet_2d/{sid}/label/{frame.frame_id}.png", encode_png(label))
    store.write_bytes(_pth(split, sid), encode_pth_scene(scene))
    store.write_bytes(_mesh(sid), encode_ply(scene.points, scene.colors, faces=scene.faces))


def _write_global_intrinsic(store: Storage, intrinsic: np.ndarray, scene_id: str) -> None:
    k4 = np.eye(4)
    k4[:3, :3] = intrinsic
    if store.exists(_INTRINSICS):
        unit = f"scene {scene_id}"
        old = decode_matrix(store.read_bytes(_INTRINSICS), (3, 3), unit, store.url(_INTRINSICS))
        if not np.array_equal(old, intrinsic):
            raise InputError(f"{unit}: intrinsic {intrinsic.tolist()} differs from {store.url(_INTRINSICS)} "
                             f"{old.tolist()} (ScanNet K is global)")
        return
    store.write_bytes(_INTRINSICS, encode_matrix(k4))


def label_uri(color_uri: str) -> str:
    """The label image of a colour image of this layout: <scene>/color/<f>.jpg -> <scene>/label/<f>.png."""
    folder, _, name = color_uri.rpartition("/color/")
    if not folder or not name.endswith(".jpg"):
        raise InputError(f"{color_uri} is not a ScanNet colour image path (<scene>/color/<frame>.jpg)")
    return f"{folder}/label/{name[:-4]}.png"


def decode_label_png(data: bytes, label_set: str, unit: str, source: str) -> np.ndarray:
    """uint8 NYU40-id PNG bytes -> int64 [H,W] indices of `label_set` (scannet20 or matterport21), 255 = ignore."""
    if label_set not in NYU40_IDS:
        raise InputError(f"{unit}: ScanNet label images map only onto {sorted(NYU40_IDS)}, not {label_set!r}")
    image = _open_image(data, unit, source)
    if image.mode != "L":
        raise InputError(f"{unit}: {source} must be an 8-bit grayscale PNG of NYU40 ids, got image mode {image.mode}")
    lut = np.full(256, 255, np.int64)
    lut[list(NYU40_IDS[label_set])] = np.arange(len(NYU40_IDS[label_set]))
    return lut[np.asarray(image)]
