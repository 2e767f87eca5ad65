"""The library's training loop in-process (no Ray): stage 2 continues stage 1's poly schedule (the SAS paper's 70 + 30
epochs of one run) instead of restarting at the base learning rate."""

import sys
from pathlib import Path

import pytest
import torch

from sas_ray.config import DistillConfig
from sas_ray.distill.history import PredictionHistory, scene_assignment
from sas_ray.distill.minkunet import MinkUNet18A
from sas_ray.distill.sparse import TorchBackend
from sas_ray.distill.steps import POLY_POWER
from sas_ray.distill import training
from sas_ray.distill.training import (SceneSource, StageRun, initialise_history, load_batch, stage_plan,
                                        train_stage)
from sas_ray.storage import Storage

sys.path.insert(0, str(Path(__file__).parents[1] / "jobs"))
from distill_data import TINY_TEXT, write_dataset  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = Storage(str(tmp_path_factory.mktemp("distill")))
    return root, write_dataset(root, num_scenes=2, points=300)


def _run(root, scenes, cfg, stage, model, optimizer, lrs, **kwargs):
    def record(progress):
        lrs.append(optimizer.param_groups[0]["lr"])

    return StageRun(cfg, stage, scenes, 0.1, SceneSource(root, root, root, "fused"), model, TorchBackend(),
                    optimizer, torch.amp.GradScaler("cpu", enabled=False), CPU, after_step=record, **kwargs)


def test_stage2_continues_stage1s_learning_rate_and_optimizer(dataset):
    root, scenes = dataset
    cfg = DistillConfig(prepared=root.url(), output=root.url(), stage1={"epochs": 3}, stage2={"epochs": 2}, loop=1,
                        batch_size=1, base_lr=0.01, lr_reference_batch=1, lr_x10_quirk=False, backend="torch",
                        text_encoder=TINY_TEXT, checkpoint_every=1000, prefetch=1)
    torch.manual_seed(0)
    model = MinkUNet18A(3, 32)
    optimizer = torch.optim.Adam(model.parameters())
    lrs = []
    train_stage(_run(root, scenes, cfg, "stage1", model, optimizer, lrs))
    adam_steps = int(optimizer.state[next(iter(model.parameters()))]["step"])
    history = PredictionHistory(root.child("history"))
    initialise_history(SceneSource(root, root, root), model, TorchBackend(), history, scenes, 0.1, CPU, [0])
    text = torch.nn.functional.normalize(torch.randn(20, 32), dim=1)
    train_stage(_run(root, scenes, cfg, "stage2", model, optimizer, lrs, text=text, history=history))
    # 2 scenes / batch 1 = 2 steps an epoch: 6 steps of stage 1, 4 of stage 2, one poly decay over the 10
    expected = [0.01] + [0.01 * (1 - k / 10) ** POLY_POWER for k in range(1, 10)]
    assert lrs == pytest.approx(expected)
    assert (adam_steps, int(optimizer.state[next(iter(model.parameters()))]["step"])) == (6, 10)


def test_loader_processes_give_the_threads_batches(dataset):
    """Stage 1 through 2 spawned loader processes (batches built on the CPU, handed over in shared memory) trains
    the same model bit for bit as through loader threads."""
    root, scenes = dataset
    results = []
    for processes in (0, 2):
        cfg = DistillConfig(prepared=root.url(), output=root.url(), stage1={"epochs": 2}, stage2={"epochs": 0},
                            loop=2, batch_size=1, backend="torch", text_encoder=TINY_TEXT, checkpoint_every=1000,
                            prefetch=2, loader_processes=processes)
        torch.manual_seed(0)
        model = MinkUNet18A(3, 32)
        run = _run(root, scenes, cfg, "stage1", model, torch.optim.Adam(model.parameters()), [])
        train_stage(run)
        results.append(([e[:3] for e in run.progress["losses"]], model.state_dict()))
    (losses, state), (losses_p, state_p) = results
    assert len(losses) == 8 and losses_p == losses  # 2 epochs x 2 scenes x loop 2, batch 1
    assert all(torch.equal(state[k], state_p[k]) for k in state)


def test_the_loader_runs_ahead_across_epochs_and_a_stop_loads_no_more(dataset, monkeypatch):
    """With one-step epochs, step 2's batch is asked for before step 1 ends (the loader used to run ahead within an
    epoch only, so each epoch's first batch was loaded while the step waited); an invocation cut by
    `stop_after_steps` loads its own steps' batches and no more."""
    root, scenes = dataset
    events = []

    def counted(*args, **kwargs):
        events.append(f"load {args[5]}")  # (source, cfg, stage, voxel_size, seed, step, scene_ids)
        return load_batch(*args, **kwargs)

    monkeypatch.setattr(training, "load_batch", counted)
    settings = dict(prepared=root.url(), output=root.url(), stage2={"epochs": 0}, backend="torch",
                    text_encoder=TINY_TEXT, checkpoint_every=1000, prefetch=2, loader_processes=0)
    cfg = DistillConfig(**settings, stage1={"epochs": 3}, loop=1, batch_size=2)  # 2 scenes: one step an epoch
    model = MinkUNet18A(3, 32)
    run = _run(root, scenes, cfg, "stage1", model, torch.optim.Adam(model.parameters()), [])
    run.after_step = lambda progress: events.append(f"step {progress['step']}")
    train_stage(run)
    assert events.index("load 1") < events.index("step 1"), events  # the 2nd epoch's batch, during the 1st step

    events.clear()
    cfg = DistillConfig(**settings, stage1={"epochs": 2}, loop=2, batch_size=1, stop_after_steps=3)  # 4 an epoch
    run = _run(root, scenes, cfg, "stage1", model, torch.optim.Adam(model.parameters()), [])
    train_stage(run)
    assert sorted(e for e in events if e.startswith("load")) == ["load 0", "load 1", "load 2"]
    assert run.progress["step"] == 3 and not run.progress["finished"]
    orders = [scene_assignment(scenes, epoch, 0, 1, 2, cfg.seed) for epoch in range(4)]
    visits = (orders[0][3:] + orders[1] + orders[2] + orders[3])[:10]  # from epoch 0's 4th step on
    assert stage_plan(run, 4, 10) == [(3 + i, [scene]) for i, scene in enumerate(visits)]


def test_a_loader_process_error_names_the_scene(dataset):
    """A scene that cannot be read fails the stage with an error naming it, raised where the step asks for it."""
    root, scenes = dataset
    cfg = DistillConfig(prepared=root.url(), output=root.url(), stage1={"epochs": 1}, stage2={"epochs": 0}, loop=1,
                        batch_size=1, backend="torch", text_encoder=TINY_TEXT, loader_processes=1)
    model = MinkUNet18A(3, 32)
    run = _run(root, [*scenes, "scene9999_00"], cfg, "stage1", model, torch.optim.Adam(model.parameters()), [])
    with pytest.raises(FileNotFoundError, match="scene9999_00"):  # the type the worker raised
        train_stage(run)
