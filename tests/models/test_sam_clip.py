"""SAM + CLIP mask teacher: painting rule against a per-pixel loop, region embedding, tiny end to end."""

import torch
import torch.nn.functional as F

from sas_ray.models import build_teacher
from sas_ray.models.sam_clip import paint_masks


def test_paint_masks_matches_a_per_pixel_loop():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 6, 7, generator=g) > 0.6
    scores = torch.tensor([0.5, 0.9, 0.9, 0.1, 0.7])  # masks 1 and 2 tie: the first wins
    emb = torch.randn(5, 3, generator=g)
    painted = paint_masks(masks, scores, emb)
    for r in range(6):
        for c in range(7):
            best, best_score = None, -1.0
            for k in range(5):
                if masks[k, r, c] and scores[k] > best_score:
                    best, best_score = k, scores[k]
            expected = torch.zeros(3) if best is None else emb[best]
            torch.testing.assert_close(painted[r, c], expected)


def test_region_embedding_is_the_masked_square_crop():
    teacher = build_teacher("sam-clip", tiny=True)
    g = torch.Generator().manual_seed(3)
    frame = torch.rand(3, 40, 50, generator=g)
    mask = torch.zeros(1, 40, 50, dtype=torch.bool)
    mask[0, 10:18, 20:36] = True  # 8 rows x 16 cols: padded to 16x16 with 4 mean-colour rows above and below
    mask[0, 12, 21] = False  # a hole shows the mean colour too
    mean = torch.tensor(teacher.clip.mean).view(3, 1, 1)
    square = mean.expand(3, 16, 16).clone()
    square[:, 4:12] = frame[:, 10:18, 20:36]
    square[:, 6, 1] = mean[:, 0, 0]
    crop = F.interpolate(square[None], size=(32, 32), mode="bilinear", align_corners=False)
    expected = F.normalize(teacher.clip.model.encode_image(teacher.clip.normalize(crop)), dim=-1)
    torch.testing.assert_close(teacher._embed_regions(frame, mask), expected)


def test_tiny_teacher_paints_unit_or_zero_features():
    teacher = build_teacher("sam-clip", tiny=True)
    frames = torch.randint(0, 256, (2, 48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    feats = teacher.encode(frames)
    assert feats.shape == (2, 48, 64, teacher.dim) and feats.dtype == torch.float32
    norms = feats.norm(dim=-1)
    assert ((norms - 1).abs() < 1e-5).any() and (((norms - 1).abs() < 1e-5) | (norms == 0)).all()


def test_blank_frame_gives_zero_or_unit_features():
    teacher = build_teacher("sam-clip", tiny=True, seed=3)  # this random SAM returns empty masks on it
    norms = teacher.encode(torch.zeros(1, 16, 16, 3, dtype=torch.uint8)).norm(dim=-1)
    assert (((norms - 1).abs() < 1e-5) | (norms == 0)).all()
