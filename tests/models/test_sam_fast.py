"""FastImageEncoder against segment_anything's own eager encoder: windowed (padded) and global rel-pos blocks."""

from functools import partial

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT

from sas_ray.errors import ConfigError
from sas_ray.models.sam import SamRefiner
from sas_ray.models.sam_fast import FastImageEncoder


def random_vit(use_rel_pos: bool = True, dtype=torch.float32) -> ImageEncoderViT:
    """7x7 tokens: 3x3 windows pad them to 9x9; block 1 is global. All parameters random (SAM zero-inits rel_pos)."""
    torch.manual_seed(0)
    vit = ImageEncoderViT(img_size=56, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, out_chans=16,
                          use_rel_pos=use_rel_pos, window_size=3, global_attn_indexes=(1,),
                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0.0, 0.5)
    return vit.eval().to(dtype)


@pytest.mark.parametrize("rel_pos", ["mask", "fold"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fast_encoder_equals_eager(rel_pos, dtype, tol):
    vit = random_vit(dtype=dtype)
    assert vit.blocks[0].attn.rel_pos_h.shape == (5, 16) and vit.blocks[1].attn.rel_pos_h.shape == (13, 16)
    images = torch.randn(2, 3, 56, 56, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = vit(images)
        out = FastImageEncoder(vit, rel_pos=rel_pos)(images)
    assert out.shape == (2, 16, 7, 7) and out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=tol * ref.abs().max().item(), rtol=0)


def test_fast_encoder_without_rel_pos_and_bad_mode():
    vit = random_vit(use_rel_pos=False)
    images = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(FastImageEncoder(vit)(images), vit(images), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="rel_pos"):
        FastImageEncoder(vit, rel_pos="flash")


def test_fast_refiner_gives_the_eager_mask():
    image = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    coarse = np.zeros((64, 48), bool)
    coarse[20:40, 10:40] = True
    eager = SamRefiner(tiny=True, border=8, fast=False)
    fast = SamRefiner(tiny=True, border=8, fast=True, rel_pos="fold")
    assert isinstance(fast.predictor.model.image_encoder, FastImageEncoder)
    np.testing.assert_array_equal(fast.refine(image, coarse), eager.refine(image, coarse))
    torch.testing.assert_close(fast.predictor.model.image_encoder.vit.state_dict(),
                               eager.predictor.model.image_encoder.state_dict())  # same weights, not a new model


def test_compiled_blocks_share_two_graphs():
    """`compile` compiles one block's forward for all blocks: a windowed and a global graph however deep the
    encoder (a graph per block would also exceed dynamo's recompile limit and run ViT-H's later blocks eagerly), and
    for one batch length (other lengths would recompile)."""
    torch.manual_seed(0)
    vit = ImageEncoderViT(img_size=56, patch_size=8, embed_dim=32, depth=6, num_heads=2, mlp_ratio=2.0, out_chans=16,
                          use_rel_pos=True, window_size=3, global_attn_indexes=(1, 4),
                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0.0, 0.5)
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    encoder = FastImageEncoder(vit, rel_pos="fold")
    encoder.compile(backend="eager", fullgraph=True)
    with torch.inference_mode():
        ref = vit(images)
        out = encoder(images)
        longer = torch.cat([images, images[:1].flip(-1)])  # a chunk of the compiled length and one frame eagerly
        longer_out, longer_ref = encoder(longer), vit(longer)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    torch.testing.assert_close(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=0)
    torch.testing.assert_close(longer_out, longer_ref, atol=1e-5 * ref.abs().max().item(), rtol=0)
