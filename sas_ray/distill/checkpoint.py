"""Distillation checkpoints: the model as safetensors (portable across backends, the layout is ME's), the optimizer
and progress counters as a torch file read back with `weights_only=True`, and OpenScene/SAS `.pth.tar` import.

A training checkpoint folder holds `model.safetensors` (metadata: out_channels, text_space, voxel_size, stage),
`state.pt` ({"optimizer", "scaler", "step", "epoch", "epoch_step", "epoch_consumed", "consumed", "finished",
"losses", "workers", "resumed_at"}) and `progress.json` (step, epoch, consumed, finished, workers)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sas_ray.distill.minkunet import MinkUNet18A, load_openscene_state_dict
from sas_ray.errors import InputError
from sas_ray.storage import Storage, load_tensors, tensor_metadata

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without a DDP `module.` prefix, on CPU."""
    model = getattr(model, "module", model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_training_state(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        progress: dict, metadata: dict[str, str]) -> None:
    save_file(model_tensors(model), os.path.join(folder, MODEL_FILE), metadata=metadata)
    torch.save({"optimizer": optimizer.state_dict(), **progress}, os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, PROGRESS_FILE), "w") as f:  # a run's position at a glance, without torch
        json.dump({k: progress.get(k) for k in ("step", "epoch", "consumed", "finished", "workers")}, f)


def load_training_state(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer in place; returns the progress counters."""
    getattr(model, "module", model).load_state_dict(load_file(os.path.join(folder, MODEL_FILE)))
    state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state.pop("optimizer"))
    return state


def read_training_state(storage: Storage) -> dict:
    """The `state.pt` a finished stage exported next to its model (optimizer, loss scale, progress)."""
    if not storage.exists(STATE_FILE):
        raise InputError(f"{storage.url(STATE_FILE)} is missing (exported by an older version): rerun "
                         "`sas-ray distill`, which exports the finished stage again")
    return torch.load(io.BytesIO(storage.read_bytes(STATE_FILE)), map_location="cpu", weights_only=True)


def read_model(storage: Storage, rel: str) -> tuple[MinkUNet18A, dict[str, str]]:
    """A MinkUNet18A from our `model.safetensors` or an OpenScene/SAS checkpoint (`.pth`, `.pth.tar`: a dict with
    `state_dict`, keys `[module.]net3d.*`), and its metadata ({} for OpenScene files)."""
    blob = storage.read_bytes(rel)
    source = storage.url(rel)
    if rel.endswith(".safetensors"):
        tensors, metadata = load_tensors(blob, source), tensor_metadata(blob, source)
    else:
        numpy_core = getattr(np, "_core", None) or np.core  # OpenScene stores best_iou as a numpy scalar
        with torch.serialization.safe_globals([np.dtype, numpy_core.multiarray.scalar, type(np.dtype(np.float64))]):
            try:
                checkpoint = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001  (torch raises several types for foreign pickles)
                raise InputError(f"{source}: not a loadable weights-only torch checkpoint: {err}") from None
        tensors, metadata = checkpoint.get("state_dict", checkpoint), {}
    if "final.kernel" not in {k.split("net3d.")[-1].removeprefix("module.") for k in tensors}:
        raise InputError(f"{source}: no MinkUNet 'final.kernel' tensor (not a distillation checkpoint)")
    final = next(v for k, v in tensors.items() if k.endswith("final.kernel"))
    model = MinkUNet18A(3, final.shape[-1])
    load_openscene_state_dict(model, tensors, source)
    return model, metadata
