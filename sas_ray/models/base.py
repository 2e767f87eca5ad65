"""The 2D model zoo's contract: teachers turn RGB frames into per-pixel features in a named text space.

A teacher is a class registered by name; `build_teacher(name, weights=..., tiny=...)` makes one. Adding a teacher
is one new module with a `@register_teacher("name")` class, imported in `sas_ray/models/__init__.py`.

Output grid: `Teacher.encode` returns features at the frame's own size, so the feature of pixel (row v, col u) is
`features[b, v, u]` (SPEC §2.4 samples the nearest integer pixel). Scores against text are plain dot products with
the unit text rows of a `TextEncoder` whose `text_space` equals the teacher's.
"""

from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sas_ray.errors import ConfigError, InputError
from sas_ray.labels import prompts as label_prompts


@dataclass(frozen=True)
class Resources:
    """What one actor of a model needs by default: GPUs (a fraction shares one) and frames per forward."""

    gpus: float = 1.0
    batch_size: int = 8


class Teacher(abc.ABC):
    """A 2D model giving per-pixel features comparable with the text embeddings of `text_space`.

    Subclasses set `dim` and `text_space` in `__init__` and implement `encode`."""

    name: ClassVar[str] = ""  # set by @register_teacher
    resources: ClassVar[Resources] = Resources()
    dim: int
    text_space: str  # e.g. "openclip:ViT-L-14:<checkpoint sha256[:12]>"; equal spaces = comparable features

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] RGB (any device) -> features [B, H, W, dim] in `self.dtype` on `self.device`."""


class TextEncoder(abc.ABC):
    """Text prompts -> unit-norm embeddings in `text_space`."""

    name: ClassVar[str] = ""
    dim: int
    text_space: str

    @abc.abstractmethod
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """K prompts -> float32 [K, dim] unit rows (on CPU)."""

    def encode_labels(self, labels: tuple[str, ...] | list[str]) -> torch.Tensor:
        """The SPEC §4 prompts of a label set ("a {label} in a scene", bare "other") -> [K, dim] unit rows."""
        return self.encode(label_prompts(labels))


_TEACHERS: dict[str, type[Teacher]] = {}
_TEXT_ENCODERS: dict[str, type[TextEncoder]] = {}


def register_teacher(name: str):
    """Class decorator: make a Teacher buildable as `build_teacher(name, ...)`."""
    return _register(_TEACHERS, name, "teacher")


def register_text_encoder(name: str):
    """Class decorator: make a TextEncoder buildable as `build_text_encoder(name, ...)`."""
    return _register(_TEXT_ENCODERS, name, "text encoder")


def _register(registry: dict, name: str, what: str):
    def add(cls):
        if name in registry:
            raise ValueError(f"{what} {name!r} is registered twice ({registry[name].__name__}, {cls.__name__})")
        cls.name = name
        registry[name] = cls
        return cls

    return add


def teacher_names() -> list[str]:
    return sorted(_TEACHERS)


def text_encoder_names() -> list[str]:
    return sorted(_TEXT_ENCODERS)


def build_teacher(name: str, weights: str | None = None, *, tiny: bool = False, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, storage_options: dict | None = None, **options) -> Teacher:
    """Build a registered teacher from a checkpoint URL (`weights`) or as a tiny random model (`tiny=True`).

    `options` are the teacher's own keyword arguments (architecture, test-time augmentation, ...)."""
    cls = _lookup(_TEACHERS, name, "teacher")
    check_weights_choice(f"teacher {name!r}", weights, tiny)
    return cls(weights, tiny=tiny, device=device, dtype=dtype, storage_options=storage_options, **options)


def build_text_encoder(name: str, weights: str | None = None, *, tiny: bool = False,
                       device: str | torch.device = "cpu", storage_options: dict | None = None,
                       **options) -> TextEncoder:
    """Build a registered text encoder; same weights/tiny rule as `build_teacher`."""
    cls = _lookup(_TEXT_ENCODERS, name, "text encoder")
    check_weights_choice(f"text encoder {name!r}", weights, tiny)
    return cls(weights, tiny=tiny, device=device, storage_options=storage_options, **options)


def check_build_options(kind: str, name: str, weights: str | None, tiny: bool, options: dict) -> None:
    """The ConfigError `build_teacher` (kind "teacher") or `build_text_encoder` ("text encoder") would raise for
    these arguments, found without building: an unknown name, weights and tiny both or neither, or an option the
    model's constructor does not take."""
    cls = _lookup(_TEACHERS if kind == "teacher" else _TEXT_ENCODERS, name, kind)
    check_weights_choice(f"{kind} {name!r}", weights, tiny)
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters) - {"self"})
    if unknown:
        known = sorted(set(parameters) - {"self", "weights", "tiny", "device", "dtype", "storage_options"})
        raise ConfigError(f"{kind} {name!r} has no option(s) {unknown}; its options: {known}")


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; known: {sorted(registry)}")
    return registry[name]


def check_weights_choice(what: str, weights: str | None, tiny: bool) -> None:
    """Exactly one of a checkpoint location or tiny=True (random small weights)."""
    if tiny and weights is not None:
        raise ConfigError(f"{what}: give either weights={weights!r} or tiny=True, not both")
    if not tiny and weights is None:
        raise ConfigError(f"{what}: needs weights (a checkpoint path or URL) or tiny=True; nothing is downloaded")


def require_text_space(what: str, space: str, expected: str) -> None:
    """Refuse to compare features across text spaces (e.g. fusing teachers that disagree)."""
    if space != expected:
        raise ConfigError(f"{what} lives in text space {space!r} but {expected!r} was expected; "
                          "use teachers and a text encoder built from the same CLIP checkpoint")


def frames_to_float(images: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, 3] RGB -> float32 [B, 3, H, W] in [0, 1] on `device`; other inputs are an InputError."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"expected uint8 RGB frames [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    return images.to(device).permute(0, 3, 1, 2).float().div_(255.0)
