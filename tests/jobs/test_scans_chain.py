"""Your own scans through the whole chain: a folder of colour/depth/pose/intrinsics + a PLY mesh -> `sas-ray prepare`
(a scene with world-to-camera poses fails alone, saying so) -> extract -> superpoints -> evaluate."""

import json
from dataclasses import replace

import numpy as np
import torch

from jobs.prepare import run_prepare
from jobs.run import run_pipeline
from sas_ray.config import PipelineConfig, PrepareConfig, parse_config
from sas_ray.datasets.scans import write_scans
from sas_ray.datasets.synthetic import CLASS_COLORS, make_indoor_frames, make_indoor_scene
from sas_ray.labels import SCANNET_20
from sas_ray.prepared import read_info
from sas_ray.features import decode_features
from sas_ray.models import build_teacher
from sas_ray.reference import reference_fusion
from sas_ray.storage import Storage


def test_own_scans_prepare_extract_superpoints_evaluate(ray_session, tmp_path):
    raw, prepared, output = (str(tmp_path / d) for d in ("scans", "prepared", "out"))
    palette = np.zeros((256, 3), np.uint8)  # frames painted in the flat class colours the colour teacher knows
    palette[:len(SCANNET_20)] = [CLASS_COLORS[n] for n in SCANNET_20]
    written = {}
    for name, seed, world_to_camera in (("myroom", 11, False), ("badroom", 12, True)):
        scene, layout = make_indoor_scene(name, seed, 2500)
        frames, views = make_indoor_frames(scene, layout, 6, (48, 64), seed=seed)
        frames = [replace(f, frame_id=str(i), rgb=palette[v.label],
                          pose=np.linalg.inv(f.pose) if world_to_camera else f.pose)
                  for i, (f, v) in enumerate(zip(frames, views))]
        write_scans(raw, scene, frames)
        written[name] = scene, frames
    dataset = {"layout": "scans", "root": raw, "image_size": "stored"}  # the frames are tiny: keep their size

    report = run_prepare(parse_config({"dataset": dataset, "output": prepared, "progress": False}, PrepareConfig))
    assert (report.done, report.failed) == (1, 1), report.summary()
    assert "scene badroom: the poses in" in report.errors[0] and "look world-to-camera" in report.errors[0]
    info = read_info(Storage(prepared))
    assert (info["scenes"], info["preset"], info["image_size"]) == (["myroom"], "scans", None)

    teacher = {"name": "simulated-colour", "tiny": True, "gpus": 0, "options": {"label_set": "scannet20"}}
    pipeline = parse_config({
        "prepare": {"dataset": {**dataset, "scenes": ["myroom"]}, "output": prepared, "progress": False},
        "extract": {"prepared": prepared, "output": output, "teachers": [teacher], "progress": False},
        "superpoints": {"prepared": prepared, "output": output, "progress": False},
        "evaluate": {"prepared": prepared, "output": output, "features": "simulated-colour", "max_ply_scenes": 0,
                     "text_encoder": {"name": "openclip-text", "tiny": True}, "progress": False},
    }, PipelineConfig)
    result = run_pipeline(pipeline)
    assert result.stopped is None and result.failed == 0, result.summary()
    assert [(r.stage, r.done) for r in result.reports][1:] == [
        ("extract[simulated-colour]", 1), ("superpoints", 1), ("evaluate[fusion]", 1)]
    assert Storage(output).child("superpoints").exists("myroom.safetensors")
    assert json.loads((tmp_path / "out" / "evaluate" / "simulated-colour" / "summary.json").read_text())["miou"] > 0

    # The oracle (OpenScene's sequential fusion) on the scan as it was in memory, before any file was written:
    # the chain read the same points, poses, K and depth (PNG millimetres, JPEG colours) back from the folder.
    scene, frames = written["myroom"]
    ours = decode_features(Storage(output).child("features", "simulated-colour").read_tensors("myroom.safetensors"),
                           "myroom")
    expected = reference_fusion(build_teacher("simulated-colour", tiny=True, label_set="scannet20"), scene, frames,
                                cut_bound=10, vis_thres=0.25)
    assert torch.equal(ours.mask_full, expected.mask_full) and ours.mask_full.sum() > 0.3 * scene.num_points
    close = torch.isclose(ours.feat.float(), expected.feat.float(), atol=1e-3).all(1)
    assert close.float().mean() > 0.95  # measured 97%: at class edges of these 64x48 JPEGs a pixel may tip to the
    #                                     neighbouring class colour
