"""The training steps: the head on the loss's voxels only gives the loss and gradients of the full-head
formulation (OpenScene/SAS), and the convolutions follow autocast's dtype (mixed precision)."""

import numpy as np
import torch

from sas_ray.distill.batch import SceneSample, collate, voxelize_scene
from sas_ray.distill.history import PredictionHistory
from sas_ray.distill.losses import random_subset, self_distillation_losses, superpoint_losses
from sas_ray.distill.minkunet import MinkUNet18A
from sas_ray.distill.sparse import TorchBackend
from sas_ray.distill.steps import stage1_step, stage2_step, update_history
from sas_ray.scene import PointFeatures
from sas_ray.storage import Storage

CPU = torch.device("cpu")


def _batch(dim=6, scenes=2, n=500, seed=0, limit=None, generator=None):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(scenes):
        xyz = rng.uniform(0, 1.2, (n, 3)).astype(np.float32)
        superpoints = (np.floor(xyz / 0.4) @ np.array([1, 10, 100])).astype(np.int64)
        feat = torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(i)), dim=1)
        mask = torch.from_numpy(rng.random(n) < 0.7)
        samples.append(SceneSample(f"s{i}", xyz, superpoints, PointFeatures(feat[mask].half(), mask)))
    augmentation = torch.Generator().manual_seed(seed)
    return collate([voxelize_scene(s, 0.05, augmentation, train=True) for s in samples], augmentation, limit,
                   generator)


def _model(dim):
    torch.manual_seed(0)
    return MinkUNet18A(3, dim).double()


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _double(batch):
    batch.target = batch.target.double()
    return batch


def test_the_loaders_subset_gives_the_steps_loss_bit_for_bit():
    """collate drawing the loss's subset (and gathering only its targets) = stage1_step drawing it from the batch
    with every supervised target, given the same generator state."""
    limit = 150
    full = _batch()
    assert int(full.supervised.sum()) > limit and full.loss_rows is None
    early = _batch(limit=limit, generator=torch.Generator().manual_seed(3))
    assert early.target.shape == (limit, 6) and early.loss_rows.shape == (limit,)
    losses = []
    for batch, generator in ((full, torch.Generator().manual_seed(3)), (early, torch.Generator().manual_seed(99))):
        model = _model(6).float()
        loss, _ = stage1_step(model, TorchBackend(), batch, CPU, generator, limit)
        loss.backward()
        losses.append((loss, _grads(model)))
    assert torch.equal(losses[0][0], losses[1][0])
    assert all(torch.equal(a, b) for a, b in zip(losses[0][1], losses[1][1]))
    # the same voxels and targets, row for row: the subset of the supervised voxels' rows in `full`
    voxels = full.supervised.nonzero().squeeze(1)
    subset = random_subset(len(voxels), limit, torch.Generator().manual_seed(3))
    assert torch.equal(early.loss_rows, voxels[subset])
    assert torch.equal(early.target, full.target[subset])


def test_stage1_head_on_the_loss_voxels_equals_the_full_head():
    batch, limit = _double(_batch()), 150
    assert int(batch.supervised.sum()) > limit  # the subset is taken
    model, backend = _model(6), TorchBackend()
    loss, _ = stage1_step(model, backend, batch, CPU, torch.Generator().manual_seed(3), limit)
    loss.backward()
    ours = _grads(model)

    # Reference: SAS's order (every voxel's prediction, supervised mask, then the random subset), by hand.
    model.zero_grad()
    pred = model(backend.sparse_tensor(batch.coords, batch.input_features().double()))
    pred, target, sp = pred[batch.supervised], batch.target, batch.superpoints[batch.supervised]
    subset = random_subset(pred.shape[0], limit, torch.Generator().manual_seed(3))
    reference = sum(superpoint_losses(pred[subset], target[subset], sp[subset]))
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for a, b in zip(ours, _grads(model)):
        torch.testing.assert_close(a, b)


def test_stage2_history_sees_every_voxel_and_the_loss_only_its_subset(tmp_path):
    batch, limit, dim = _batch(), 200, 5
    text = torch.nn.functional.normalize(torch.randn(4, dim, dtype=torch.float64), dim=1)
    model, backend = _model(dim), TorchBackend()
    ours_history = PredictionHistory(Storage(str(tmp_path / "a")))
    ref_history = PredictionHistory(Storage(str(tmp_path / "b")))
    for history in (ours_history, ref_history):
        for b, scene in enumerate(batch.scene_ids):
            n = int(batch.point_offsets[b + 1] - batch.point_offsets[b])
            history.write(scene, torch.randn(n, dim, generator=torch.Generator().manual_seed(b)))
    loss, _ = stage2_step(model, backend, batch, CPU, ours_history, 0.9, text, torch.Generator().manual_seed(4),
                          limit)
    loss.backward()
    ours = _grads(model)

    model.zero_grad()
    pred = model(backend.sparse_tensor(batch.coords, batch.input_features().double()))
    ema = update_history(pred, batch, ref_history, 0.9)
    subset = random_subset(pred.shape[0], limit, torch.Generator().manual_seed(4))
    reference = sum(self_distillation_losses(pred[subset], ema[subset], batch.superpoints[subset], text))
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for a, b in zip(ours, _grads(model)):
        torch.testing.assert_close(a, b)
    for scene in batch.scene_ids:
        torch.testing.assert_close(ours_history.read(scene), ref_history.read(scene))


def test_convolutions_follow_autocast_dtype():
    batch = _batch(dim=8)
    torch.manual_seed(0)
    model, backend = MinkUNet18A(3, 8).eval(), TorchBackend()
    x = backend.sparse_tensor(batch.coords, batch.input_features())
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, trunk = model(backend.sparse_tensor(batch.coords, batch.input_features()), with_trunk=True)
    assert trunk.dtype == torch.bfloat16 and full.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(half.float(), full, dim=1)
    assert cos.min() > 0.98, cos.min()


def test_augmentation_moves_coordinates_not_the_point_to_target_mapping():
    """Each point's feature is its own index: after elastic distortion, rotation, scale and flip, every voxel's
    target is its representative point's feature, and that point maps back to the voxel."""
    n = 600
    rng = np.random.default_rng(4)
    xyz = rng.uniform(0, 1.5, (n, 3)).astype(np.float32)
    mask = torch.from_numpy(rng.random(n) < 0.7)
    feat = torch.zeros(n, 4)
    feat[:, 0] = torch.arange(n, dtype=torch.float32)
    sample = SceneSample("s", xyz, np.zeros(n, np.int64), PointFeatures(feat[mask].half(), mask))
    augmentation = torch.Generator().manual_seed(3)
    batch = collate([voxelize_scene(sample, 0.05, augmentation, train=True)], augmentation)
    voxels = torch.arange(len(batch.coords))
    assert torch.equal(batch.inverse[batch.representatives], voxels)
    assert torch.equal(batch.supervised, mask[batch.representatives])
    assert torch.equal(batch.target[:, 0].long(), batch.representatives[batch.supervised])
