"""EMA prediction history in storage, idempotent per step, and the scene-ownership rule (SPEC §5.8)."""

import pytest
import torch

from sas_ray.distill.history import PredictionHistory, scene_assignment, steps_per_epoch, superpoint_average
from sas_ray.storage import Storage


def test_history_update_is_the_ema_stored_in_fp16(tmp_path):
    history = PredictionHistory(Storage(str(tmp_path / "history")))
    start = torch.randn(6, 3)
    history.write("scene0000_00", start)
    current = torch.randn(6, 3)
    new = history.update("scene0000_00", current, momentum=0.9)
    torch.testing.assert_close(new, 0.9 * start.half().float() + 0.1 * current)
    assert history.read("scene0000_00").dtype == torch.float16
    torch.testing.assert_close(history.read("scene0000_00").float(), new, atol=2e-3, rtol=1e-3)
    with pytest.raises(Exception, match="scene0000_00"):
        history.update("scene0000_00", torch.zeros(5, 3))


def test_a_repeated_step_is_not_blended_twice(tmp_path):
    """A run restored from a checkpoint repeats the steps after it: their updates are already in the history."""
    history = PredictionHistory(Storage(str(tmp_path / "history")))
    history.write("s", torch.zeros(2, 1))
    one = torch.ones(2, 1)
    first = history.update("s", one, 0.5, (5, 0))  # 0.5
    second = history.update("s", one, 0.5, (5, 1))  # the scene again in the same batch: 0.75
    assert history.update("s", 3 * one, 0.5, (5, 1)).tolist() == second.tolist()  # step 5 repeated: skipped
    assert history.update("s", 3 * one, 0.5, (4, 0)).tolist() == second.tolist()  # an earlier step: skipped
    after = history.update("s", one, 0.5, (6, 0))
    assert (first.flatten().tolist(), second.flatten().tolist(), after.flatten().tolist()) == \
        ([0.5, 0.5], [0.75, 0.75], [0.875, 0.875])


def test_superpoint_average_broadcasts_the_segment_mean():
    pred = torch.tensor([[1.0], [3.0], [10.0]])
    out = superpoint_average(pred, torch.tensor([7, 7, 2]))
    assert out.squeeze(1).tolist() == [2.0, 2.0, 10.0]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_own_disjoint_scenes_each_epoch(world):
    scenes = [f"s{i}" for i in range(10)]
    for epoch in range(3):
        per_rank = [scene_assignment(scenes, epoch, r, world, loop=2, seed=7) for r in range(world)]
        owned = [set(p) for p in per_rank]
        for a in range(world):
            assert len(per_rank[a]) == (10 // world) * 2
            for b in range(a + 1, world):
                assert not owned[a] & owned[b]
    assert scene_assignment(scenes, 0, 0, world, 2, 7) == scene_assignment(scenes, 0, 0, world, 2, 7)
    assert steps_per_epoch(10, 3, 2, 4) == 1
