"""The dense teacher's fast path against its eager path: open_clip's own blocks, grid_sample per frame, the teacher."""

import pytest
import torch
import torch.nn.functional as F

from sas_ray.errors import ConfigError
from sas_ray.models import build_teacher
from sas_ray.models.clip_model import load_clip
from sas_ray.models.openclip_dense import _upsample, dense_patch_features
from sas_ray.models.openclip_dense_fast import CompiledChunks, bilinear_matrix, check_sdpa_blocks, upsample_unit


def random_visual(dtype=torch.float64):
    """The tiny CLIP ViT (2 blocks, 2 heads) with every parameter redrawn, so attention is far from uniform."""
    visual = load_clip("tiny", None, tiny=True, dtype=dtype).model.visual
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in visual.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.3)
    return visual


def test_sdpa_blocks_equal_open_clip_blocks():
    visual = random_visual()
    images = torch.randn(3, 3, 24, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # 3x5 grid
    with torch.inference_mode():
        ref = dense_patch_features(visual, images)
        out = dense_patch_features(visual, images, sdpa=True)
    assert out.shape == (3, 3, 5, visual.output_dim)
    torch.testing.assert_close(out, ref, atol=1e-12 * ref.abs().max().item(), rtol=0)


def test_sdpa_blocks_trace_as_one_graph():
    """torch.compile(fullgraph=True) fails on any graph break; the "eager" backend keeps the test to tracing."""
    visual = random_visual(torch.float32)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def fn(x):
        return dense_patch_features(visual, x, sdpa=True)

    with torch.inference_mode():
        out = torch.compile(fn, backend="eager", fullgraph=True, dynamic=False)(images)
        torch.testing.assert_close(out, dense_patch_features(visual, images), atol=1e-5, rtol=0)


def test_bilinear_matrix_by_hand():
    # 4 pixels over 2 cells of 4 upscaled pixels at 2x: cell coordinates -0.25, 0.25, 0.75, 1.25 (clamped to 0..1)
    expected = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    torch.testing.assert_close(bilinear_matrix(4, 8, 2, 4), expected)


@pytest.mark.parametrize("flip", [False, True])
def test_batched_upsample_equals_grid_sample_per_frame(flip):
    size, patch = (37, 53), 8
    scaled = (74, 106)
    canvas = torch.randn(4, 10, 14, 6, generator=torch.Generator().manual_seed(1))  # 10 x 14 cells of 8 px
    out = upsample_unit(canvas, size, scaled, patch, flip, torch.float32)
    frames = 2 if flip else 4
    assert out.shape == (frames, *size, 6) and out.dtype == torch.float32
    for i in range(frames):
        ref = _upsample(canvas[i], size, scaled, patch)
        if flip:
            ref = ref + _upsample(canvas[frames + i], size, scaled, patch).flip(1)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_compiled_chunks_compile_one_shape_and_run_the_rest_eagerly():
    seen = []

    def compiled(x):
        seen.append(len(x))
        return x * 2

    chunks = CompiledChunks(lambda x: x * 2, compiled)
    x = torch.arange(20.0)
    torch.testing.assert_close(chunks(x[:6]), x[:6] * 2)
    torch.testing.assert_close(chunks(x[:14]), x[:14] * 2)  # two compiled chunks of 6, the last 2 eager
    torch.testing.assert_close(chunks(x[:3]), x[:3] * 2)
    assert seen == [6, 6, 6] and chunks.chunk == 6


@pytest.mark.parametrize("flip, crop, backend", [(True, 24, "math"), (False, 64, None)])
def test_fast_teacher_equals_eager(flip, crop, backend):
    frames = torch.randint(0, 256, (2, 37, 53, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    eager = build_teacher("openclip-dense", tiny=True, flip=flip, crop_size=crop)
    fast = build_teacher("openclip-dense", tiny=True, flip=flip, crop_size=crop, fast=True, sdpa_backend=backend)
    assert not eager.fast and fast.fast  # CPU default: eager
    ref, out = eager.encode(frames), fast.encode(frames)
    assert out.shape == ref.shape and out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_fast_teacher_in_bfloat16_stays_close_to_float32():
    frames = torch.randint(0, 256, (1, 20, 28, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    ref = build_teacher("openclip-dense", tiny=True).encode(frames)
    low = build_teacher("openclip-dense", tiny=True, dtype=torch.bfloat16, fast=True).encode(frames)
    assert low.dtype == torch.bfloat16
    assert F.cosine_similarity(low.float(), ref, dim=-1).min() > 0.97


def test_fast_options_are_checked():
    with pytest.raises(ConfigError, match="fast path"):
        build_teacher("openclip-dense", tiny=True, fast=False, compile_mode="default")
    with pytest.raises(ConfigError, match="unknown sdpa_backend 'fastest'"):
        build_teacher("openclip-dense", tiny=True, fast=True, sdpa_backend="fastest")
    with pytest.raises(ConfigError, match="block 0 .Identity"):
        check_sdpa_blocks([torch.nn.Identity()])
