"""FeatureAccumulator / ScenePartial / random_chunks against a hand-worked example and OpenScene's sequential loop
(`scannet_openseg.py` + `save_fused_feature`), re-implemented here independently."""

import numpy as np
import pytest
import torch

from sas_ray.errors import InputError
from sas_ray.geometry.accumulator import FeatureAccumulator, random_chunks, sample_features
from sas_ray.scene import PointFeatures


def _map(h, w, c, values):
    """fp16 [h,w,c] zeros with the given {(v, u): feature} pixels."""
    fmap = torch.zeros(h, w, c, dtype=torch.float16)
    for (v, u), feature in values.items():
        fmap[v, u] = torch.tensor(feature, dtype=torch.float16)
    return fmap


def _frame(rows, cols, valid):
    return torch.tensor(rows), torch.tensor(cols), torch.tensor(valid)


def test_hand_worked_three_points():
    # point 0: frame A pixel (0,1) = [1,2], frame B pixel (1,1) = [3,6] -> mean [2,4]
    # point 1: frame A pixel (1,2) = [4,0], frame C pixel (0,0) = [0,1] -> mean [2,0.5]; point 2: never seen
    acc = FeatureAccumulator(3, 2)
    acc.add(_map(2, 3, 2, {(0, 1): [1, 2], (1, 2): [4, 0]}), *_frame([0, 1, 0], [1, 2, 0], [True, True, False]),
            image_size=(2, 3))
    acc.add(_map(2, 3, 2, {(1, 1): [3, 6], (0, 0): [9, 9]}), *_frame([1, 0, 0], [1, 0, 0], [True, False, False]),
            image_size=(2, 3))
    acc.add(_map(2, 3, 2, {(0, 0): [0, 1]}), *_frame([0, 0, 0], [0, 0, 0], [False, True, False]), image_size=(2, 3))
    assert acc.count.tolist() == [2, 2, 0]
    out = acc.finish()
    assert out.mask_full.tolist() == [True, True, False]
    assert out.feat.dtype == torch.float16 and out.feat.tolist() == [[2.0, 4.0], [2.0, 0.5]]
    assert out.dense()[2].tolist() == [0.0, 0.0]


def test_coarse_feature_map_samples_floor_scaled_cell():
    # image 5x8, map 2x4: (v,u) -> (floor(2v/5), floor(4u/8)); (4,7) -> (1,3), (2,1) -> (0,0), (3,5) -> (1,2)
    fmap = _map(2, 4, 1, {(1, 3): [1], (0, 0): [2], (1, 2): [3]})
    ids, feats = sample_features(fmap, *_frame([4, 2, 3, 0], [7, 1, 5, 0], [True, True, True, False]), (5, 8))
    assert ids.tolist() == [0, 1, 2] and feats.squeeze(1).tolist() == [1.0, 2.0, 3.0]
    assert feats.dtype == torch.float32


def _random_frames(rng, n_frames=12, n=200, c=8, h=6, w=7):
    frames = []
    for _ in range(n_frames):
        fmap = torch.from_numpy(rng.normal(size=(h, w, c)).astype(np.float16))
        rows = torch.from_numpy(rng.integers(0, h, n))
        cols = torch.from_numpy(rng.integers(0, w, n))
        valid = torch.from_numpy(rng.random(n) < 0.3)
        frames.append((fmap, rows * valid, cols * valid, valid))
    return frames


def openscene_fusion(frames, n, c):
    """OpenScene's loop: dense gather per frame, masked += into fp32 sums and a float counter, then the mean
    with counter 0 -> 1e-5, fp16 rows of the visible points."""
    counter = torch.zeros((n, 1))
    sum_features = torch.zeros((n, c))
    vis = torch.zeros(n, dtype=torch.bool)
    for fmap, rows, cols, valid in frames:
        feat_2d_3d = fmap.permute(2, 0, 1)[:, rows, cols].permute(1, 0)
        counter[valid] += 1
        sum_features[valid] += feat_2d_3d[valid]
        vis |= valid
    counter[counter == 0] = 1e-5
    feat_bank = sum_features / counter
    return PointFeatures(feat=feat_bank[vis].half(), mask_full=vis), sum_features, counter.squeeze(1)


def test_sequential_adds_equal_openscene_loop_exactly():
    frames = _random_frames(np.random.default_rng(0))
    want, want_sum, _ = openscene_fusion(frames, 200, 8)
    acc = FeatureAccumulator(200, 8)
    for fmap, rows, cols, valid in frames:
        acc.add(fmap, rows, cols, valid, image_size=(6, 7))
    got = acc.finish()
    assert torch.equal(acc.feat_sum, want_sum)
    assert torch.equal(got.mask_full, want.mask_full) and torch.equal(got.feat, want.feat)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_partials_merged_in_any_order_equal_sequential(seed):
    rng = np.random.default_rng(seed)
    frames = _random_frames(rng)
    want, want_sum, want_count = openscene_fusion(frames, 200, 8)
    group_of_frame = rng.integers(0, 4, len(frames))
    partials, accumulators = [], []
    for g in range(4):
        acc = FeatureAccumulator(200, 8)
        for i in np.flatnonzero(group_of_frame == g):
            acc.add(*frames[i], image_size=(6, 7))
        accumulators.append(acc)
        partials.append(acc.partial())
    for order in (rng.permutation(4), rng.permutation(4)):
        merged = FeatureAccumulator(200, 8)
        for g in order:
            merged.add_partial(partials[g])
        torch.testing.assert_close(merged.feat_sum, want_sum, rtol=1e-6, atol=1e-5)
        assert merged.count.tolist() == want_count.long().tolist()
        got = merged.finish()
        assert torch.equal(got.mask_full, want.mask_full)
        torch.testing.assert_close(got.feat, want.feat, rtol=1e-3, atol=1e-3)
    dense = FeatureAccumulator(200, 8)
    for g in rng.permutation(4):
        dense.merge(accumulators[g])
    torch.testing.assert_close(dense.feat_sum, want_sum, rtol=1e-6, atol=1e-5)
    assert dense.count.tolist() == want_count.long().tolist()


def test_partial_holds_only_seen_points():
    acc = FeatureAccumulator(5, 2)
    acc.add(_map(2, 2, 2, {(1, 0): [1, 1]}), *_frame([0, 1, 0, 1, 0], [0, 0, 0, 0, 0],
                                                      [False, True, False, True, False]), image_size=(2, 2))
    p = acc.partial()
    assert p.num_points == 5 and p.point_ids.tolist() == [1, 3]
    assert p.feat_sum.tolist() == [[1.0, 1.0], [1.0, 1.0]] and p.count.tolist() == [1, 1]


def test_batch_of_frames_equals_frame_by_frame():
    frames = _random_frames(np.random.default_rng(5), n_frames=3)
    one_by_one = FeatureAccumulator(200, 8)
    for frame in frames:
        one_by_one.add(*frame, image_size=(6, 7))
    batched = FeatureAccumulator(200, 8)
    batched.add(*(torch.stack(parts) for parts in zip(*frames)), image_size=(6, 7))
    torch.testing.assert_close(batched.feat_sum, one_by_one.feat_sum, rtol=1e-6, atol=1e-6)
    assert torch.equal(batched.count, one_by_one.count)


def test_mismatched_shapes_raise():
    acc = FeatureAccumulator(3, 2)
    with pytest.raises(InputError):
        acc.merge(FeatureAccumulator(4, 2))
    with pytest.raises(InputError):
        acc.add_partial(FeatureAccumulator(4, 2).partial())
    with pytest.raises(InputError):
        acc.add(torch.zeros(2, 2, 3), *_frame([0, 0, 0], [0, 0, 0], [True] * 3), image_size=(2, 2))


def _features(rng, n=50, c=4):
    mask = torch.from_numpy(rng.random(n) < 0.6)
    return PointFeatures(feat=torch.from_numpy(rng.normal(size=(int(mask.sum()), c)).astype(np.float16)),
                         mask_full=mask)


def openscene_chunks(features, num_chunks, n_split_points, seed):
    """save_fused_feature with OpenScene's global numpy seeding; global state restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    n = features.num_points
    dense = features.dense()
    out = []
    for _ in range(num_chunks):
        rand_ind = np.random.choice(range(n), min(n, n_split_points), replace=False)
        mask_entire = torch.zeros(n, dtype=torch.bool)
        mask_entire[rand_ind] = True
        mask_entire &= features.mask_full
        out.append((dense[mask_entire].half(), mask_entire))
    np.random.set_state(state)
    return out


def test_random_chunks_reproduce_openscene_draws():
    features = _features(np.random.default_rng(0))
    chunks = random_chunks(features, num_chunks=5, n_split_points=20, seed=1457)
    want = openscene_chunks(features, 5, 20, 1457)
    assert len(chunks) == 5
    for chunk, (feat, mask) in zip(chunks, want):
        assert torch.equal(chunk.mask_full, mask) and torch.equal(chunk.feat, feat)
        assert chunk.feat.shape[0] <= 20 and chunk.num_points == 50
    assert not torch.equal(chunks[0].mask_full, chunks[1].mask_full)


def test_random_chunks_deterministic_by_seed():
    features = _features(np.random.default_rng(1))
    a = random_chunks(features, 3, 20, seed=7)
    b = random_chunks(features, 3, 20, seed=7)
    c = random_chunks(features, 3, 20, seed=8)
    assert all(torch.equal(x.mask_full, y.mask_full) for x, y in zip(a, b))
    assert any(not torch.equal(x.mask_full, y.mask_full) for x, y in zip(a, c))


def test_random_chunks_of_small_scene_keep_every_visible_point():
    features = _features(np.random.default_rng(2))
    for chunk in random_chunks(features, 2, n_split_points=2_000_000, seed=3):
        assert torch.equal(chunk.mask_full, features.mask_full) and torch.equal(chunk.feat, features.feat)


def test_nothing_seen_gives_empty_features():
    out = FeatureAccumulator(4, 3).finish()
    assert out.feat.shape == (0, 3) and not out.mask_full.any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_partials_merge_on_cpu():
    frames = _random_frames(np.random.default_rng(9))
    want, want_sum, want_count = openscene_fusion(frames, 200, 8)
    merged = FeatureAccumulator(200, 8)
    for half in (frames[:5], frames[5:]):
        acc = FeatureAccumulator(200, 8, device="cuda")
        acc.add(*(torch.stack(parts).cuda() for parts in zip(*half)), image_size=(6, 7))
        merged.add_partial(acc.partial())
    torch.testing.assert_close(merged.feat_sum, want_sum, rtol=1e-6, atol=1e-5)
    assert merged.count.tolist() == want_count.long().tolist()
    got = merged.finish()
    assert torch.equal(got.mask_full, want.mask_full)
    torch.testing.assert_close(got.feat, want.feat, rtol=1e-3, atol=1e-3)


def test_partial_finish_equals_dense_finish():
    torch.manual_seed(3)
    acc = FeatureAccumulator(50, 4)
    fmap = torch.randn(6, 8, 4)
    for _ in range(3):
        valid = torch.rand(50) > 0.4
        acc.add(fmap, torch.randint(0, 6, (50,)), torch.randint(0, 8, (50,)), valid, (6, 8))
    dense, sparse = acc.finish(), acc.partial().finish()
    assert torch.equal(dense.mask_full, sparse.mask_full) and torch.equal(dense.feat, sparse.feat)
