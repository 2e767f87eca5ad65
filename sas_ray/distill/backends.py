"""Choosing a sparse-convolution backend by name: `torch` (reference, always there), `spconv` (fast GPU path),
`minkowski` (MinkowskiEngine 0.5.4, OpenScene's own; only when named). `auto` = spconv if a CUDA build of it is
installed and CUDA is available (on CPU neither native backend beats torch: docs/distill.md), else torch."""

from __future__ import annotations

import importlib.util

import torch

from sas_ray.distill.sparse import SparseBackend, TorchBackend
from sas_ray.errors import ConfigError

BACKENDS = ("auto", "torch", "spconv", "minkowski")


def installed(name: str) -> bool:
    module = {"spconv": "spconv", "minkowski": "MinkowskiEngine", "torch": "torch"}[name]
    return importlib.util.find_spec(module) is not None


def spconv_has_cuda() -> bool:
    """False for the CPU-only `spconv` wheel, True for `spconv-cu12x`."""
    from spconv.cppconstants import CPU_ONLY_BUILD

    return not CPU_ONLY_BUILD


def resolve_backend_name(name: str) -> str:
    if name == "auto":
        if installed("spconv") and torch.cuda.is_available() and spconv_has_cuda():
            return "spconv"
        return "torch"
    if name not in BACKENDS:
        raise ConfigError(f"unknown sparse backend {name!r}; known: {list(BACKENDS)}")
    if not installed(name):
        raise ConfigError(f"sparse backend {name!r} is not installed (docs/distill.md: backends)")
    return name


def get_backend(name: str = "auto") -> SparseBackend:
    name = resolve_backend_name(name)
    if name == "spconv":
        from sas_ray.distill.spconv_backend import SpconvBackend

        return SpconvBackend()
    if name == "minkowski":
        from sas_ray.distill.minkowski_backend import MinkowskiBackend

        return MinkowskiBackend()
    return TorchBackend()
