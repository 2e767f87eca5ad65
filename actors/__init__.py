"""Ray wrappers around the library: one actor class per model kind, placed and batched by Ray Data.

Actors own devices, precision, batching and warm-up; the science stays in `sas_ray`. Each actor picks CUDA when Ray
gave it a GPU (Ray sets CUDA_VISIBLE_DEVICES per actor, fractions included) and the CPU otherwise, with one code path.
"""

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def actor_device() -> torch.device:
    """The GPU Ray assigned to this actor, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def actor_dtype(name: str, device: torch.device) -> torch.dtype:
    """The configured precision on a GPU; float32 on the CPU (CPU half precision is slow and lossy)."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name] if device.type == "cuda" else torch.float32
