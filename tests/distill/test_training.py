"""The library's training loop in-process (no Ray): stage 2 continues stage 1's poly schedule (the SAS paper's 70 + 30
epochs of one run) instead of restarting at the base learning rate."""

import sys
from pathlib import Path

import pytest
import torch

from sas_ray.config import DistillConfig
from sas_ray.distill.history import PredictionHistory
from sas_ray.distill.minkunet import MinkUNet18A
from sas_ray.distill.sparse import TorchBackend
from sas_ray.distill.steps import POLY_POWER
from sas_ray.distill.training import SceneSource, StageRun, initialise_history, train_stage
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
