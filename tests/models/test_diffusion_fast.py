"""The fast SD path (fused projections, SDPA capture, compile) against the eager capture with diffusers' reference
cross-attention: same images, same maps, same masks for the same seeds."""

import numpy as np
import pytest
import torch

from sas_ray.errors import ConfigError
from sas_ray.models.diffusion import PROMPT, DiffusionGenerator
from sas_ray.models.diffusion_fast import CapturedCrossAttention, _latent_divisor

NAMES, SEEDS = ["chair", "shower curtain"], [0, 1]
PROMPTS = [PROMPT.format(name) for name in NAMES]


@pytest.fixture(scope="module")
def eager():
    generator = DiffusionGenerator(tiny=True, steps=2, fast=False)
    return generator, generator.sample(PROMPTS, SEEDS)


def assert_same_sampling(reference, result):
    (ref_images, ref_maps), (images, maps) = reference, result
    assert np.abs(images.astype(int) - ref_images).max() <= 1
    assert sorted(maps) == sorted(ref_maps) == [1, 2, 4, 8]
    for f in ref_maps:
        assert maps[f].shape == ref_maps[f].shape == (2, 8 // f, 8 // f, 77)
        torch.testing.assert_close(maps[f], ref_maps[f], atol=1e-5, rtol=1e-4)


def test_fast_sampling_equals_eager_capture(eager):
    fast = DiffusionGenerator(tiny=True, steps=2, fast=True, channels_last=True)
    assert all(isinstance(p, CapturedCrossAttention) for n, p in fast.pipe.unet.attn_processors.items()
               if n.endswith("attn2.processor")) and len(fast.capture.layers) == 3 + 1 + 6  # down, mid, up (2 a block)
    assert hasattr(fast.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1, "to_qkv")
    assert_same_sampling(eager[1], fast.sample(PROMPTS, SEEDS))
    fast.sample(["a table"], [5])  # a different batch size resizes the buffers; then the original again
    assert_same_sampling(eager[1], fast.sample(PROMPTS, SEEDS))
    np.testing.assert_array_equal(fast.generate(NAMES, SEEDS)[1], eager[0].generate(NAMES, SEEDS)[1])


@pytest.mark.slow
def test_capture_survives_compilation(eager):
    """Dynamo tracing + functionalisation of the in-place buffer updates (aot_eager: no codegen on CPU)."""
    fast = DiffusionGenerator(tiny=True, steps=2, fast=True)
    fast.pipe.unet.compile(backend="aot_eager", fullgraph=True)  # fullgraph: the capture causes no graph break
    assert_same_sampling(eager[1], fast.sample(PROMPTS, SEEDS))


def test_latent_divisor_of_sd15_layer_names():
    assert _latent_divisor("down_blocks.2.attentions.1.transformer_blocks.0.attn2.processor", 4) == 4
    assert _latent_divisor("mid_block.attentions.0.transformer_blocks.0.attn2.processor", 4) == 8
    assert _latent_divisor("up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", 4) == 4
    assert _latent_divisor("up_blocks.3.attentions.2.transformer_blocks.0.attn2.processor", 4) == 1
    with pytest.raises(ConfigError, match="not in a down, mid or up block"):
        _latent_divisor("conv_in.attn2.processor", 4)
