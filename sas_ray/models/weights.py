"""Model checkpoints from any fsspec URL (local path, s3://, memory://), read without executing pickled code.

Formats are told apart by their first bytes, not their names: safetensors (preferred) or a torch zip/pickle file
loaded with `weights_only=True`. Every failure is an InputError naming the checkpoint and what was wrong.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from sas_ray.errors import InputError, StorageError
from sas_ray.storage import Storage, filesystem, retrying, tensor_metadata, tensor_views

_WRAPPER_KEYS = ("state_dict", "model", "module")  # training checkpoints nest the weights under one of these


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's tensors (read-only: safetensors ones are views of the file's bytes), where they came from,
    and a content id (first 12 hex of its sha256). The bytes are hashed on first use: CLIP's for its text space,
    never SAM's 2.5 GB in an extraction actor's start-up."""

    state: dict[str, torch.Tensor]
    source: str
    content: bytes = field(repr=False)  # what `sha256` hashes
    metadata: dict[str, str] = field(default_factory=dict)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def id(self) -> str:
        return self.sha256[:12]


def read_checkpoint(url: str, storage_options: dict | None = None) -> Checkpoint:
    """Read a state dict from `url`: safetensors, or a torch file loaded with weights_only=True."""
    try:
        fs, path = filesystem(url, storage_options)
        blob = retrying(f"checkpoint {url}", lambda: fs.cat_file(path))
    except FileNotFoundError:
        raise InputError(f"checkpoint {url}: no such file or object") from None
    except (StorageError, OSError, ValueError) as err:
        raise InputError(f"checkpoint {url}: cannot be read: {err}") from None
    return parse_checkpoint(blob, url)


def parse_checkpoint(blob: bytes, source: str) -> Checkpoint:
    """Parse checkpoint bytes (format from the magic bytes); `source` names the file in errors."""
    if blob[:4] == b"PK\x03\x04" or blob[:1] == b"\x80":  # torch.save zip archive / legacy pickle protocol 2+
        return Checkpoint(_torch_state(blob, source), source, blob)
    if len(blob) >= 10 and blob[8:9] == b"{":  # safetensors: u64 header length then a JSON header; tensors are
        return Checkpoint(tensor_views(blob, f"checkpoint {source}"), source, blob,  # views of the bytes (no copy)
                          tensor_metadata(blob, f"checkpoint {source}"))
    raise InputError(f"checkpoint {source}: neither safetensors nor a torch checkpoint "
                     f"(first bytes {blob[:8]!r}, {len(blob)} bytes); is the file truncated or of another format?")


def _torch_state(blob: bytes, source: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"checkpoint {source}: not a loadable weights-only torch checkpoint "
                         f"(corrupt, truncated, or holding code objects): {first_line}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"checkpoint {source}: expected a dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"checkpoint {source}: entries that are not tensors: {bad[:5]}")
    if all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def write_checkpoint(state: dict[str, torch.Tensor], url: str, storage_options: dict | None = None,
                     metadata: dict[str, str] | None = None) -> str:
    """Write `state` as safetensors at `url` (atomically, through Storage); returns the sha256 of the bytes."""
    parent, _, name = url.rstrip("/").rpartition("/")
    if not parent or not name:
        raise InputError(f"checkpoint {url}: expected a URL or path ending in a file name")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}  # clone: tied weights
    return Storage(parent, storage_options).write_bytes(name, safetensors_bytes(tensors, metadata=metadata))


def match_prefix(checkpoint: Checkpoint, module: nn.Module, prefix: str) -> Checkpoint:
    """Add or strip `prefix` on every key so the checkpoint's layout matches the module's (library versions
    differ, e.g. transformers 4 `text_model.embeddings...` vs 5 `embeddings...`)."""
    module_has = all(k.startswith(prefix) for k in module.state_dict())
    checkpoint_has = all(k.startswith(prefix) for k in checkpoint.state)
    if module_has == checkpoint_has:
        return checkpoint
    state = ({prefix + k: v for k, v in checkpoint.state.items()} if module_has
             else {k[len(prefix):]: v for k, v in checkpoint.state.items()})
    return replace(checkpoint, state=state)


def load_into(module: nn.Module, checkpoint: Checkpoint, ignore: tuple[str, ...] = ()) -> None:
    """Load `checkpoint` into `module` strictly; keys named in `ignore` may be absent or extra.

    A mismatch is an InputError naming the checkpoint and the first differing keys/shapes."""
    expected = module.state_dict()
    state = {k: v for k, v in checkpoint.state.items() if k not in ignore}
    missing = [k for k in expected if k not in state and k not in ignore]
    extra = [k for k in state if k not in expected]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or extra or shapes:
        raise InputError(
            f"checkpoint {checkpoint.source} does not fit {type(module).__name__}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]}), "
            f"{len(shapes)} shape mismatches (e.g. {shapes[:3]}); is it the architecture you configured?")
    module.load_state_dict(state, strict=not ignore)
