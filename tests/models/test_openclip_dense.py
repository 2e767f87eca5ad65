"""Dense OpenCLIP teacher: shapes/norms at any frame size, and features that rank the right prompt by construction."""

import pytest
import torch
import torch.nn.functional as F

from sas_ray.errors import ConfigError, InputError
from sas_ray.models import build_teacher, build_text_encoder, require_text_space, teacher_names


def test_registry_lists_teachers_and_refuses_ambiguous_builds():
    assert {"openclip-dense", "sam-clip"} <= set(teacher_names())
    with pytest.raises(ConfigError, match="unknown teacher 'lseg'"):
        build_teacher("lseg", tiny=True)
    with pytest.raises(ConfigError, match="either weights='x.safetensors' or tiny=True"):
        build_teacher("openclip-dense", weights="x.safetensors", tiny=True)
    with pytest.raises(ConfigError, match="needs weights"):
        build_teacher("openclip-dense")
    with pytest.raises(ConfigError, match="unknown open_clip architecture 'ViT-Q-99'"):
        build_teacher("openclip-dense", weights="x.safetensors", arch="ViT-Q-99")


@pytest.mark.parametrize("flip", [False, True])
def test_output_is_per_pixel_at_any_frame_size(flip):
    teacher = build_teacher("openclip-dense", tiny=True, flip=flip, crop_size=24)
    frames = torch.randint(0, 256, (2, 37, 53, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    feats = teacher.encode(frames)
    assert feats.shape == (2, 37, 53, teacher.dim) and feats.dtype == torch.float32
    norms = feats.norm(dim=-1)
    if flip:  # sum of two unit vectors (LSeg flip TTA): norm in (0, 2]
        assert norms.max() <= 2 + 1e-5 and norms.min() > 0.1 and norms.mean() < 1.999
    else:
        torch.testing.assert_close(norms, torch.ones_like(norms))
    with pytest.raises(InputError, match="uint8 RGB"):
        teacher.encode(frames.float())


def test_bfloat16_matches_float32():
    frames = torch.randint(0, 256, (1, 20, 28, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    ref = build_teacher("openclip-dense", tiny=True).encode(frames)
    low = build_teacher("openclip-dense", tiny=True, dtype=torch.bfloat16).encode(frames)
    assert low.dtype == torch.bfloat16
    assert F.cosine_similarity(low.float(), ref, dim=-1).min() > 0.97


def _value_path_closed_form(visual, rgb):
    """MaskCLIP feature (before `proj`) of a uniform patch of colour `rgb`, for a model whose patch embedding
    averages each colour channel into token dims 0..2, with zero class/position embeddings and identity blocks
    before the last: ln_post(out_proj(v_proj(ln_1(ln_pre(token)))))."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    token = torch.zeros(visual.conv1.out_channels)
    token[:3] = (torch.tensor(rgb) / 255.0 - mean) / std
    width = token.numel()
    last = visual.transformer.resblocks[-1]
    x = F.layer_norm(token, (width,), visual.ln_pre.weight, visual.ln_pre.bias, visual.ln_pre.eps)
    x = F.layer_norm(x, (width,), last.ln_1.weight, last.ln_1.bias, last.ln_1.eps)
    w_v, b_v = last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:]
    x = last.attn.out_proj.weight @ (w_v @ x + b_v) + last.attn.out_proj.bias
    return F.layer_norm(x, (width,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)


def test_dense_features_rank_the_right_prompt_by_construction():
    """Red patches are made to project onto the text embedding of 'a chair in a scene', blue ones onto 'a table
    in a scene' (proj solved from the hand-derived value-path formula); the last block keeps random q/k and MLP,
    so a residual or attention-mixed feature would not land on the text rows. Windows, flip and upsampling must
    keep every pixel on its own side."""
    labels = ["wall", "chair", "table", "other"]
    text = build_text_encoder("openclip-text", tiny=True)
    teacher = build_teacher("openclip-dense", tiny=True, flip=True, crop_size=16)  # 2x2-patch windows
    require_text_space("tiny dense teacher", teacher.text_space, text.text_space)
    visual = teacher.clip.model.visual
    with torch.no_grad():
        visual.conv1.weight.zero_()
        for c in range(3):
            visual.conv1.weight[c, c] = 1.0 / visual.conv1.weight[c, c].numel()
        visual.class_embedding.zero_()
        visual.positional_embedding.zero_()
        for block in visual.transformer.resblocks[:-1]:
            for linear in (block.attn.out_proj, block.mlp.c_proj):
                linear.weight.zero_()
                linear.bias.zero_()
        rows = torch.stack([_value_path_closed_form(visual, rgb) for rgb in ((255, 0, 0), (0, 0, 255))])
        targets = text.encode(["a chair in a scene", "a table in a scene"])
        visual.proj.copy_(torch.linalg.pinv(rows) @ targets)
    frames = torch.zeros(2, 24, 40, 3, dtype=torch.uint8)
    frames[0, :, :20, 0] = 255  # frame 0: red | blue
    frames[0, :, 20:, 2] = 255
    frames[1] = frames[0].flip(1)  # frame 1: blue | red
    feats = teacher.encode(frames)
    chair, table = 2 * targets[0], 2 * targets[1]  # unit feature + its flipped twin
    # the 2x bilinear upscale blends the two colours in the patches next to the edge (cells 4 and 5 of 10):
    # pixels whose bilinear neighbours are pure cells are columns < 12 and >= 28
    left, right = slice(0, 12), slice(28, 40)
    torch.testing.assert_close(feats[0, :, left], chair.expand(24, 12, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(feats[0, :, right], table.expand(24, 12, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(feats[1, :, left], table.expand(24, 12, -1), atol=1e-4, rtol=0)
    best = (feats @ text.encode_labels(labels).T).argmax(-1)
    assert (best[0, :, left] == labels.index("chair")).all() and (best[0, :, right] == labels.index("table")).all()
    assert (best[1, :, left] == labels.index("table")).all() and (best[1, :, right] == labels.index("chair")).all()
