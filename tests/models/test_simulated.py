"""The simulated colour teacher: nearest synthetic class colour, its text embedding, and chosen confusions."""

import pytest
import torch

from sas_ray.datasets.synthetic import CLASS_COLORS
from sas_ray.errors import ConfigError
from sas_ray.labels import MATTERPORT_21
from sas_ray.models import build_teacher, build_text_encoder


def test_pixels_get_the_embedding_of_the_nearest_class_colour_or_of_its_confusion():
    teacher = build_teacher("simulated-colour", tiny=True, seed=2, confuse={"chair": "table"})
    text = build_text_encoder("openclip-text", tiny=True, seed=2).encode_labels(MATTERPORT_21)
    assert teacher.text_space == build_text_encoder("openclip-text", tiny=True, seed=2).text_space
    sofa, chair = CLASS_COLORS["sofa"], CLASS_COLORS["chair"]
    near_sofa = tuple(c + 3 for c in sofa)
    frames = torch.tensor([[[sofa, near_sofa, chair]]], dtype=torch.uint8)  # [1, 1, 3, 3]
    features = teacher.encode(frames)
    assert features.shape == (1, 1, 3, teacher.dim)
    expected = [MATTERPORT_21.index(n) for n in ("sofa", "sofa", "table")]
    torch.testing.assert_close(features[0, 0], text[expected])


def test_confusions_must_name_vocabulary_classes():
    with pytest.raises(ConfigError, match="armchair"):
        build_teacher("simulated-colour", tiny=True, confuse={"armchair": "sofa"})
