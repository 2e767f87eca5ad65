"""Synthetic datasets on disk: procedural scenes rendered and written in a real raw layout, so `prepare` reads them
with the same readers as ScanNet, Matterport3D or nuScenes data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from sas_ray.config import DatasetConfig
from sas_ray.datasets import matterport, scannet
from sas_ray.datasets.synthetic import (IMAGE_SIZES, MATTERPORT_INTRINSIC, MATTERPORT_IMAGE_SIZE, make_indoor_frames,
                                        make_indoor_scene)
from sas_ray.errors import ConfigError
from sas_ray.geometry.intrinsics import adjust_intrinsic
from sas_ray.labels import MATTERPORT_21_NYU40_IDS


def synthetic_scene_ids(dataset: DatasetConfig) -> list[str]:
    """Scene ids in the layout's own naming: ScanNet `scene0000_00`, Matterport `synth0000_region0`, nuScenes
    `synth-0000`."""
    n = dataset.synthetic.num_scenes
    names = {"scannet": "scene{:04d}_00", "matterport": "synth{:04d}_region0", "nuscenes": "synth-{:04d}"}
    return [names[dataset.layout].format(i) for i in range(n)]


def write_synthetic_scene(dataset: DatasetConfig, scene_id: str, options: dict | None = None) -> None:
    """Render one synthetic scene (seed = config seed * 1000 + scene index) and write it into `dataset.root`."""
    syn = dataset.synthetic
    ids = synthetic_scene_ids(dataset)
    if scene_id not in ids:
        raise ConfigError(f"scene {scene_id} is not one of the {len(ids)} synthetic scenes of this config")
    if dataset.layout == "nuscenes":
        raise ConfigError("nuScenes devkit tables hold every sample: use write_synthetic_devkit for the whole set")
    seed = syn.seed * 1000 + ids.index(scene_id)
    size = IMAGE_SIZES[dataset.layout][syn.size]
    label_set = "matterport21" if dataset.layout == "matterport" else "scannet20"
    scene, room = make_indoor_scene(scene_id, seed, syn.points_per_scene, label_set)
    intrinsic = None
    if dataset.layout == "matterport":
        intrinsic = adjust_intrinsic(MATTERPORT_INTRINSIC, MATTERPORT_IMAGE_SIZE, size)
    frames, views = make_indoor_frames(scene, room, syn.frames_per_scene, size, seed, intrinsic)
    if dataset.layout == "matterport":
        building = scene_id.partition("_")[0]  # images are named <pano>_i<camera>_<yaw>, 3 cameras x 6 yaws a pano
        frames = [replace(f, frame_id=f"{building}p{i // 18}_i{i // 6 % 3}_{i % 6}") for i, f in enumerate(frames)]
        matterport.write_matterport(dataset.root, dataset.split, scene, frames, options)
    else:
        nyu40 = np.zeros(256, np.uint8)  # label index (255 = ignore) -> NYU40 id (0 = unannotated)
        nyu40[:len(MATTERPORT_21_NYU40_IDS)] = MATTERPORT_21_NYU40_IDS  # scannet20 is its prefix
        scannet.write_scannet(dataset.root, dataset.split, scene, frames, options,
                              labels=[nyu40[view.label] for view in views])


def write_synthetic_devkit(dataset: DatasetConfig, options: dict | None = None) -> None:
    """Render every synthetic street sample and write them as one nuScenes devkit dataset (version = split); the
    devkit's JSON tables span all samples, so this is one unit of work."""
    from sas_ray.datasets.nuscenes import DevkitSample, write_nuscenes_devkit
    from sas_ray.datasets.synthetic import make_outdoor_frames, make_outdoor_scene

    syn = dataset.synthetic
    size = IMAGE_SIZES["nuscenes"][syn.size]
    samples = []
    for i, scene_id in enumerate(synthetic_scene_ids(dataset)):
        scene, street = make_outdoor_scene(scene_id, syn.seed * 1000 + i, num_azimuths=max(64, syn.points_per_scene // 32))
        frames, _ = make_outdoor_frames(scene, street, size)
        samples.append(DevkitSample(scene, frames, street.ego_pose, street.lidar_to_ego, scene_name=f"scene-{i:04d}",
                                    timestamp_us=1_533_151_603_547_590 + i * 20_000_000))
    write_nuscenes_devkit(dataset.root, dataset.split, samples, options)
