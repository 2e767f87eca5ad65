"""The 2D model zoo: teachers (per-pixel features), text encoders, Stable Diffusion and SAM, built by name."""

from sas_ray import _torchvision_shim

_torchvision_shim.apply()  # before open_clip / segment_anything / diffusers import torchvision

from sas_ray.models import clip_text, openclip_dense, sam_clip, simulated, simulated_label  # noqa: F401  (registers the models)
from sas_ray.models.base import (
    Resources,
    Teacher,
    TextEncoder,
    build_teacher,
    build_text_encoder,
    register_teacher,
    register_text_encoder,
    require_text_space,
    teacher_names,
    text_encoder_names,
)

__all__ = [
    "Resources", "Teacher", "TextEncoder", "build_teacher", "build_text_encoder", "register_teacher",
    "register_text_encoder", "require_text_space", "teacher_names", "text_encoder_names",
]
