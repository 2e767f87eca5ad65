"""Raw dataset layouts behind one protocol, so `prepare` treats every dataset alike.

Each layout module (`layout_module(name)`) provides
    list_scenes(root, split, options) -> list[str]
    read_scene(root, split, scene_id, options) -> Scene
    frame_rows(root, split, scene_id, options, frame_skip=1) -> list[dict]   (frame index rows, see frames.py)
and a writer used by the synthetic generator and tests (write_scannet, write_matterport, write_nuscenes_devkit,
write_scans). `scans` is the layout for your own RGB-D sequences (see its module).
`root` is any fsspec URL (local path, file://, s3://, memory://) and `options` the fsspec options that reach it.
"""

from types import ModuleType

from sas_ray.datasets import matterport, nuscenes, scannet, scans
from sas_ray.errors import ConfigError

LAYOUTS: dict[str, ModuleType] = {"scannet": scannet, "matterport": matterport, "nuscenes": nuscenes, "scans": scans}


def layout_module(name: str) -> ModuleType:
    """The module implementing layout `name`."""
    if name not in LAYOUTS:
        raise ConfigError(f"unknown dataset layout {name!r}; known: {sorted(LAYOUTS)}")
    return LAYOUTS[name]
