"""Matterport3D in OpenScene's layout (SPEC §1.1-1.3, §2.5): regions as scenes, a building's images as their views.

    root/matterport_2d/<building>/color/<pano>_i<c>_<y>.jpg      <c> camera 0-2, <y> yaw 0-5 (one digit each)
    root/matterport_2d/<building>/depth/<pano>_d<c>_<y>.png      uint16, 1/4000 m
    root/matterport_2d/<building>/pose/<pano>_i<c>_<y>.txt       4x4 camera-to-world, OpenCV axes (already flipped)
    root/matterport_2d/<building>/intrinsic/<pano>_i<c>_<y>.txt  3x3 K of the stored image
    root/matterport_3d/<split>/<building>_<region>.pth           OpenScene tuple (coords, colors, labels)
    root/scans/<building>/region_segmentations/<region>.ply      the region mesh (faces for superpoints), optional

A scene id is `<building>_<region>`; the building is the part before the first '_' (OpenScene's rule).
"""

from __future__ import annotations

import re

import numpy as np

from sas_ray.datasets.frames import (decode_matrix, encode_depth_png, encode_jpeg, encode_matrix, frame_row,
                                     frame_unit, image_size)
from sas_ray.datasets.openscene import decode_pth_scene, encode_pth_scene
from sas_ray.datasets.ply import encode_ply, with_mesh_faces
from sas_ray.datasets.rawfiles import RawTree, cached_table
from sas_ray.errors import InputError
from sas_ray.ids import check_id
from sas_ray.scene import Frame, Scene
from sas_ray.storage import Storage

DEPTH_SCALE = 4000.0  # depth PNG units per metre
NEAREST_VIEWS = 100  # test regions without a camera inside take this many cameras nearest the bbox centre
_IMAGE = re.compile(r"^(?P<pano>[A-Za-z0-9]+)_i(?P<cam>\d)_(?P<yaw>\d)$")


def split_scene_id(scene_id: str) -> tuple[str, str]:
    """(building, region) of `<building>_<region>`."""
    building, _, region = check_id(scene_id, "scene id").partition("_")
    if not building or not region:
        raise InputError(f"scene {scene_id}: Matterport scene ids are <building>_<region>")
    return building, region


def depth_name(image: str) -> str:
    """Depth file of colour image `<pano>_i<c>_<y>`: `<pano>_d<c>_<y>.png`."""
    m = _IMAGE.match(image)
    if m is None:
        raise InputError(f"image {image!r} is not named <pano>_i<camera>_<yaw> (one digit each)")
    return f"{m['pano']}_d{m['cam']}_{m['yaw']}.png"


def select_views(camera_centres: np.ndarray, points: np.ndarray, split: str) -> np.ndarray:
    """Indices of the cameras that see a region (OpenScene's rule): centres strictly inside the points' xyz bbox;
    on the test split a region with none takes the 100 nearest to the bbox centre; train/val with none -> empty."""
    low, high = points.min(axis=0), points.max(axis=0)
    inside = np.nonzero(((camera_centres > low) & (camera_centres < high)).all(axis=1))[0]
    if len(inside) or split != "test":
        return inside
    distance = np.linalg.norm(camera_centres - (low + high) / 2, axis=1)
    return np.argsort(distance, kind="stable")[:NEAREST_VIEWS]


def list_scenes(root: str, split: str, options: dict | None = None) -> list[str]:
    """Region scene ids with a `.pth` in matterport_3d/<split>/, sorted."""
    names = RawTree(root, options).list(f"matterport_3d/{check_id(split, 'split')}")
    return [n[:-4] for n in names if n.endswith(".pth")]


def read_scene(root: str, split: str, scene_id: str, options: dict | None = None) -> Scene:
    """The region's points, colours and labels, with the region mesh faces when the PLY is present."""
    building, region = split_scene_id(scene_id)
    tree = RawTree(root, options)
    rel = f"matterport_3d/{check_id(split, 'split')}/{scene_id}.pth"
    unit = f"scene {scene_id}"
    scene = decode_pth_scene(tree.read(rel, unit), scene_id, tree.url(rel))
    mesh = f"scans/{building}/region_segmentations/{region}.ply"
    return with_mesh_faces(scene, tree.read(mesh, unit), tree.url(mesh)) if tree.exists(mesh) else scene


def _building_cameras(tree: RawTree, building: str) -> tuple[list[str], np.ndarray, np.ndarray, tuple[int, int]]:
    """Every image of a building: names (sorted), K [n,3,3], poses [n,4,4], stored (width, height)."""
    unit = f"building {building}"
    folder = f"matterport_2d/{building}"
    names = [n[:-4] for n in tree.list(f"{folder}/color") if n.endswith(".jpg")]
    if not names:
        raise InputError(f"{unit}: no colour images in {tree.url(folder, 'color')}")
    for name in names:
        if _IMAGE.match(name) is None:
            raise InputError(f"{unit}: {tree.url(folder, 'color', name + '.jpg')} is not named "
                             "<pano>_i<camera>_<yaw>.jpg")
    pose_rels = [f"{folder}/pose/{n}.txt" for n in names]
    intr_rels = [f"{folder}/intrinsic/{n}.txt" for n in names]
    poses = np.stack([decode_matrix(d, (4, 4), f"{unit} image {n}", tree.url(r))
                      for n, r, d in zip(names, pose_rels, tree.read_many(pose_rels, unit))])
    intrinsics = np.stack([decode_matrix(d, (3, 3), f"{unit} image {n}", tree.url(r))
                           for n, r, d in zip(names, intr_rels, tree.read_many(intr_rels, unit))])
    first = f"{folder}/color/{names[0]}.jpg"
    return names, intrinsics, poses, image_size(tree.read(first, unit), unit, tree.url(first))


def frame_rows(root: str, split: str, scene_id: str, options: dict | None = None, frame_skip: int = 1) -> list[dict]:
    """Frame index rows of the building's images that view the region (`select_views`), every `frame_skip`-th.
    The building's cameras are read once per process and reused for its other regions."""
    building, _ = split_scene_id(scene_id)
    tree = RawTree(root, options)
    names, intrinsics, poses, (width, height) = cached_table(
        f"matterport cameras {building}", root, options, lambda: _building_cameras(tree, building))
    points = read_scene(root, split, scene_id, options).points
    folder = f"matterport_2d/{building}"
    return [frame_row(scene_id, names[i], tree.url(folder, "color", f"{names[i]}.jpg"), intrinsics[i], poses[i],
                      width, height, depth_uri=tree.url(folder, "depth", depth_name(names[i])),
                      depth_scale=DEPTH_SCALE)
            for i in select_views(poses[:, :3, 3], points, split)[::frame_skip]]


def write_matterport(root: str, split: str, scene: Scene, frames: list[Frame], options: dict | None = None) -> None:
    """Write one region and the building's images. Frame ids must be `<pano>_i<c>_<y>`; every frame needs depth.
    Images are shared by the building's regions, so writing several regions with the same frames is harmless."""
    store = Storage(root, options)
    building, region = split_scene_id(scene.scene_id)
    folder = f"matterport_2d/{building}"
    for frame in frames:
        if frame.depth is None:
            raise InputError(f"{frame_unit(frame.scene_id, frame.frame_id)}: Matterport frames need depth")
        name = frame.frame_id
        store.write_bytes(f"{folder}/depth/{depth_name(name)}", encode_depth_png(frame.depth, DEPTH_SCALE))
        store.write_bytes(f"{folder}/color/{name}.jpg", encode_jpeg(frame.rgb))
        store.write_bytes(f"{folder}/pose/{name}.txt", encode_matrix(frame.pose))
        store.write_bytes(f"{folder}/intrinsic/{name}.txt", encode_matrix(frame.intrinsic))
    store.write_bytes(f"matterport_3d/{check_id(split, 'split')}/{scene.scene_id}.pth", encode_pth_scene(scene))
    store.write_bytes(f"scans/{building}/region_segmentations/{region}.ply",
                      encode_ply(scene.points, scene.colors, faces=scene.faces))
