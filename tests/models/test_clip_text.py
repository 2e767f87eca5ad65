"""CLIP text encoder: SPEC prompts, unit rows, and one text space per checkpoint."""

import pytest
import torch

from sas_ray.errors import ConfigError
from sas_ray.models import build_teacher, build_text_encoder, require_text_space, text_encoder_names


def test_label_prompts_are_unit_rows_in_the_teachers_space():
    assert "openclip-text" in text_encoder_names()
    text = build_text_encoder("openclip-text", tiny=True)
    rows = text.encode_labels(["chair", "table", "other"])
    assert rows.shape == (3, text.dim) and rows.dtype == torch.float32
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(rows, text.encode(["a chair in a scene", "a table in a scene", "other"]))
    assert (rows @ rows.T - torch.eye(3)).abs().max() > 1e-3  # distinct prompts, distinct rows
    assert text.text_space == build_teacher("sam-clip", tiny=True).text_space


def test_other_seeds_are_other_spaces_and_are_refused():
    a = build_text_encoder("openclip-text", tiny=True)
    b = build_text_encoder("openclip-text", tiny=True, seed=1)
    assert a.text_space != b.text_space
    with pytest.raises(ConfigError, match="text space 'openclip:tiny:seed1'"):
        require_text_space("teacher x", b.text_space, a.text_space)
    with pytest.raises(ValueError, match="list of prompts"):
        a.encode("a chair in a scene")
