"""`sas-ray distill` on Ray Train (2 CPU workers) with checkpoints on S3 (moto), an interrupted driver resumed (with
loader processes), then `sas-ray predict` + `sas-ray evaluate` on the distilled features."""

import json

from distill_data import TINY_TEXT, write_dataset

from jobs.distill import run_distill
from jobs.evaluate import run_evaluate
from jobs.predict import run_predict
from sas_ray.config import DistillConfig, EvaluateConfig, PredictConfig, parse_config
from sas_ray.distill.checkpoint import read_training_state
from sas_ray.storage import Storage


def test_distill_two_stages_on_s3_resume_predict_evaluate(ray_session, s3_bucket):
    root, options = s3_bucket
    store = Storage(root, options)
    scenes = write_dataset(store, num_scenes=4)
    settings = {"prepared": root, "output": root, "text_encoder": TINY_TEXT, "voxel_size": 0.05,
                "stage1": {"epochs": 3}, "stage2": {"epochs": 1}, "loop": 1, "batch_size": 1,
                "num_workers": [2, 2], "backend": "torch", "base_lr": 1e-3, "lr_reference_batch": 2,
                "lr_x10_quirk": False, "checkpoint_every": 100, "storage": {"options": options}, "progress": False}

    # A time-boxed first invocation stops after 2 steps (4 scenes / 2 workers / batch 1 = 2 steps per epoch).
    first = run_distill(parse_config({**settings, "stop_after_steps": 2}, DistillConfig))
    assert first.outputs["stage1 steps"] == "2" and "stopped early" in first.outputs
    assert store.exists("distill/stage1/model.safetensors") and not store.exists("distill/stage2/model.safetensors")
    assert store.list("distill/train/stage1")  # Ray Train's checkpoints live on S3

    # Rerunning the same command resumes at step 2 and runs both stages to the end, its batches built in a loader
    # process per worker (reading S3 there); the loader is no part of the recipe.
    second = run_distill(parse_config({**settings, "loader_processes": 1}, DistillConfig))
    assert second.done == 2, second.summary()
    assert (second.outputs["stage1 steps"], second.outputs["stage2 steps"]) == ("6", "2")
    curve = json.loads(store.read_bytes("distill/stage1/losses.json"))
    assert curve["steps"] == list(range(1, 7))  # one curve across both invocations: the step count continued
    assert len(curve["loader_wait"]) == 6 and all(w >= 0.0 for w in curve["loader_wait"])  # seconds per step
    assert sum(curve["loss"][-2:]) < 0.8 * sum(curve["loss"][:2]), curve["loss"]
    assert sorted(n for n in store.list("distill/history")) == sorted(f"{s}.safetensors" for s in scenes)
    # stage 2 took over stage 1's optimizer through storage: Adam counts the 6 + 2 steps of one schedule
    state = read_training_state(store.child("distill", "stage2"))
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {8}
    again = run_distill(parse_config(settings, DistillConfig))  # both stages done with this recipe: no training
    assert (again.done, again.skipped, again.reran) == (0, 2, {}), again.summary()
    assert (again.outputs["stage1 steps"], again.outputs["stage2 steps"]) == ("6", "2")  # the study's report reads them

    predicted = run_predict(parse_config({"prepared": root, "output": root, "repeats": 2, "backend": "torch",
                                          "storage": {"options": options}, "progress": False}, PredictConfig))
    assert (predicted.done, predicted.failed) == (4, 0), predicted.summary()
    evaluated = run_evaluate(parse_config({"prepared": root, "output": root, "features": "distill",
                                           "text_encoder": TINY_TEXT, "max_ply_scenes": 0,
                                           "storage": {"options": options}, "progress": False}, EvaluateConfig))
    assert evaluated.failed == 0, evaluated.summary()
    summary = json.loads(store.read_bytes("evaluate/distill/summary.json"))
    assert 0 < summary["miou"] <= 4 / 20  # 4 classes present of 20; absent classes count 0 (SPEC §4)
