"""Do a scan's RGB-D frames agree with its geometry? Catches poses given world-to-camera instead of camera-to-world
and depth in the wrong unit (off by 1000) when a dataset is prepared, before any model runs.

The test: project (a sample of) the scene's points into a few frames with OpenScene's projection and ask how many of
the points that land on a depth reading lie at that depth (|D - Z| <= 10% of D). With right poses and units a good
share does (every frame sees the surfaces it measured); otherwise almost none. The same score under the inverted
poses, and with the depth 1000x larger or smaller, says which mistake it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sas_ray.errors import InputError
from sas_ray.scene import Frame, Scene

AGREEMENT = 0.1  # relative depth difference counted as agreeing
MIN_SCORE = 0.05  # below: the frames do not see the geometry
BETTER = 3.0  # an alternative explains the data when it scores this many times higher (and above MIN_SCORE)
_POINTS = 20000  # points sampled per check


@dataclass(frozen=True)
class Agreement:
    """Share of the projected points that land on a depth reading at their depth, and share behind the camera."""

    score: float
    behind: float


def agreement(points: np.ndarray, frames: list[Frame], depth_factor: float = 1.0, invert_poses: bool = False
              ) -> Agreement:
    """Agreement of points float [N,3] (world) with frames (pose camera-to-world, depth in metres x depth_factor)."""
    hits = tested = behind = 0
    for frame in frames:
        pose = np.linalg.inv(frame.pose) if invert_poses else frame.pose
        camera = (np.c_[points, np.ones(len(points))] @ np.linalg.inv(pose).T)[:, :3]
        z = camera[:, 2]
        behind += int((z <= 0).sum())
        front = z > 1e-6
        k, (height, width) = frame.intrinsic, frame.size
        u = np.round(camera[front, 0] * k[0, 0] / z[front] + k[0, 2]).astype(np.int64)
        v = np.round(camera[front, 1] * k[1, 1] / z[front] + k[1, 2]).astype(np.int64)
        inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
        measured = frame.depth[v[inside], u[inside]].astype(np.float64) * depth_factor
        valid = measured > 0
        tested += int(valid.sum())
        hits += int((np.abs(measured[valid] - z[front][inside][valid]) <= AGREEMENT * measured[valid]).sum())
    return Agreement(hits / max(tested, 1), behind / max(len(points) * len(frames), 1))


def check_frames_match_geometry(scene: Scene, frames: list[Frame], depth_scale: float, source: str) -> None:
    """Raise InputError naming the scene, `source` (where poses and depth come from) and the likely mistake unless
    the frames' depth agrees with the scene's points. Frames need depth; `depth_scale` is the units per metre
    the depth was read with."""
    rng = np.random.default_rng(0)
    points = scene.points[rng.choice(scene.num_points, min(_POINTS, scene.num_points), replace=False)]
    points = points.astype(np.float64)
    given = agreement(points, frames)
    if given.score >= MIN_SCORE and given.behind < 0.9:
        return
    unit = f"scene {scene.scene_id}"
    summary = (f"with these poses {given.score:.0%} of the projected points lie at their measured depth and "
               f"{given.behind:.0%} are behind the cameras")
    inverted = agreement(points, frames, invert_poses=True)
    if inverted.score >= max(MIN_SCORE, BETTER * given.score):
        raise InputError(f"{unit}: the poses in {source} look world-to-camera: {summary}; inverted, "
                         f"{inverted.score:.0%} lie at their depth and {inverted.behind:.0%} are behind. Poses must "
                         f"be camera-to-world (OpenCV axes): invert each 4x4 matrix")
    for factor in (1000.0, 0.001):
        scaled = agreement(points, frames, depth_factor=factor)
        if scaled.score >= max(MIN_SCORE, BETTER * given.score):
            raise InputError(f"{unit}: the depth in {source} looks off by {factor:g}x: {summary}; with depth "
                             f"{factor:g}x, {scaled.score:.0%} lie at their depth. Depth is read as "
                             f"{depth_scale:g} units per metre: use {depth_scale / factor:g}")
    raise InputError(f"{unit}: the frames in {source} do not see the scene's geometry: {summary} (expected at least "
                     f"{MIN_SCORE:.0%}). Check that poses are camera-to-world in the geometry's frame and metres, "
                     f"the intrinsics belong to the colour images and the depth scale is right")
