"""Every model kind through its actor in Ray Data on CPU (tiny models): teachers, and the SD -> SAM chain."""

import numpy as np
import pytest
import torch

from actors import actor_dtype
from actors.diffusion import DiffusionActor
from actors.sam import SamRefineActor
from actors.teacher import TeacherActor, teacher_map_kwargs
from sas_ray.config import TeacherSpec
from sas_ray.models import build_teacher


def _frames():
    g = np.random.default_rng(0)
    return [g.integers(0, 256, shape, dtype=np.uint8) for shape in [(24, 32, 3)] * 3 + [(16, 20, 3)]]


def test_actor_precision_is_float32_on_cpu():
    assert actor_dtype("float16", torch.device("cpu")) == torch.float32
    assert actor_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        actor_dtype("int8", torch.device("cpu"))


def test_teacher_actors_in_ray_data_match_the_library(ray_session):
    frames = _frames()
    rows = ray_session.data.from_items([{"frame": i, "rgb": f} for i, f in enumerate(frames)], override_num_blocks=1)
    for name in ("openclip-dense", "sam-clip"):  # two teachers annotate the same frames
        spec = TeacherSpec(name=name, tiny=True, gpus=0, batch_size=2, options={"seed": 3})
        kwargs = teacher_map_kwargs(spec, warmup_size=(16, 16), column=name)
        assert kwargs["num_gpus"] == 0 and kwargs["batch_size"] == 2 and kwargs["concurrency"] == (1, 1)
        rows = rows.map_batches(TeacherActor, num_cpus=0.5, **kwargs)
    out = sorted(rows.take_all(), key=lambda r: r["frame"])
    for name in ("openclip-dense", "sam-clip"):
        teacher = build_teacher(name, tiny=True, seed=3)
        for row, frame in zip(out, frames):
            assert row[name].dtype == np.float16 and row[name].shape == (*frame.shape[:2], teacher.dim)
            expected = teacher.encode(torch.from_numpy(frame)[None])[0]
            np.testing.assert_allclose(row[name].astype(np.float32), expected.numpy(), atol=2e-3)


def test_diffusion_then_sam_actors_make_capability_masks(ray_session):
    rows = ray_session.data.from_items([{"class_name": c, "seed": s} for c, s in [("chair", 0), ("table", 1)]],
                                       override_num_blocks=1)
    rows = rows.map_batches(DiffusionActor, fn_constructor_kwargs={"tiny": True, "options": {"steps": 2}},
                            batch_size=2, concurrency=1, num_cpus=0.5, batch_format="numpy")
    rows = rows.map_batches(SamRefineActor, fn_constructor_kwargs={"tiny": True, "options": {"border": 8}},
                            batch_size=2, concurrency=1, num_cpus=0.5, batch_format="numpy")
    out = rows.take_all()
    assert sorted(r["class_name"] for r in out) == ["chair", "table"]
    for r in out:
        assert r["image"].shape == (64, 64, 3) and r["image"].dtype == np.uint8
        assert r["coarse_mask"].shape == r["mask"].shape == (64, 64) and r["mask"].dtype == bool
