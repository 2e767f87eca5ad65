"""Validated configuration for every stage, loaded from YAML; dataset presets hold the SPEC §2.5 constants.

Unknown keys and wrong types are errors that name the file and the key path. Defaults live here and only here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sas_ray.errors import ConfigError


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetPreset(Strict):
    """Per-dataset constants of OpenScene's fusion and distillation (SPEC §1.3, §2.5, §3)."""

    image_width: int
    image_height: int
    depth_scale: float | None  # raw depth units per metre; None = no depth sensor
    vis_thres: float  # relative occlusion threshold |D - Z| <= vis_thres * D
    cut_bound: int  # pixels ignored at each image border
    frame_skip: int  # keep every n-th frame of a sequence
    voxel_size: float  # metres, for distillation
    label_set: str  # key of sas_ray.labels.LABEL_SETS
    has_depth: bool = True


PRESETS: dict[str, DatasetPreset] = {
    "scannet": DatasetPreset(image_width=320, image_height=240, depth_scale=1000.0, vis_thres=0.25, cut_bound=10,
                             frame_skip=20, voxel_size=0.02, label_set="scannet20"),
    "matterport": DatasetPreset(image_width=640, image_height=512, depth_scale=4000.0, vis_thres=0.02, cut_bound=10,
                                frame_skip=1, voxel_size=0.02, label_set="matterport21"),
    "nuscenes": DatasetPreset(image_width=800, image_height=450, depth_scale=None, vis_thres=0.0, cut_bound=5,
                              frame_skip=1, voxel_size=0.05, label_set="nuscenes16", has_depth=False),
    "replica": DatasetPreset(image_width=640, image_height=360, depth_scale=6553.5, vis_thres=0.25, cut_bound=10,
                             frame_skip=10, voxel_size=0.02, label_set="scannet20"),
}

Layout = Literal["scannet", "matterport", "nuscenes"]


class SyntheticConfig(Strict):
    """Procedural scenes rendered into a raw dataset layout (sas_ray.datasets.synthetic)."""

    num_scenes: int = Field(2, ge=1)
    frames_per_scene: int = Field(8, ge=1)
    size: Literal["real", "tiny"] = "tiny"  # real = the preset's image size; tiny = 64x48-ish for tests
    points_per_scene: int = Field(20000, ge=100)
    seed: int = 0


class DatasetConfig(Strict):
    """Where a dataset lives and how to read it."""

    layout: Layout
    root: str  # URL of the raw dataset (local path, file://, s3://, memory://)
    split: str = "val"
    scenes: list[str] | None = None  # default: every scene found
    preset: str | None = None  # default: same name as layout
    synthetic: SyntheticConfig | None = None  # set = generate the raw dataset into `root` first

    @model_validator(mode="after")
    def _known_preset(self) -> DatasetConfig:
        if self.preset_name not in PRESETS:
            raise ValueError(f"unknown preset {self.preset_name!r}; known: {sorted(PRESETS)}")
        return self

    @property
    def preset_name(self) -> str:
        return self.preset or self.layout

    @property
    def constants(self) -> DatasetPreset:
        return PRESETS[self.preset_name]


class StorageConfig(Strict):
    """fsspec options passed to every filesystem (e.g. S3 endpoint_url, key, secret)."""

    options: dict = Field(default_factory=dict)


class PrepareConfig(Strict):
    """`sas-ray prepare`: raw dataset -> scenes (safetensors) + frame index (parquet) under `output`."""

    dataset: DatasetConfig
    output: str
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = True


class TeacherSpec(Strict):
    """One 2D teacher: which model, its weights, and the resources of its actor pool."""

    name: str  # registry name, e.g. "openclip-dense"
    output_name: str | None = None  # folder under features/; default = name
    weights: str | None = None  # local path or URL of a real checkpoint
    tiny: bool = False  # random small config of the same classes (tests, demo)
    options: dict = Field(default_factory=dict)  # builder keyword arguments (architecture etc.)
    gpus: float = Field(1.0, ge=0)  # per actor: 1 = its own GPU, a fraction to share one, 0 = CPU
    pool: tuple[int, int] = (1, 1)  # (min, max) actors; the pool grows and shrinks with the cluster
    batch_size: int = Field(8, ge=1)  # frames per model forward
    dtype: Literal["float32", "float16", "bfloat16"] = "float16"  # on GPU; CPU always runs float32

    @model_validator(mode="after")
    def _pool_order(self) -> TeacherSpec:
        if not 1 <= self.pool[0] <= self.pool[1]:
            raise ValueError(f"pool must be (min, max) with 1 <= min <= max, got {self.pool}")
        return self

    @property
    def folder(self) -> str:
        return self.output_name or self.name


class ExtractConfig(Strict):
    """`sas-ray extract`: per-scene, per-teacher fused point features (SPEC §2) under `output`/features/."""

    prepared: str  # output root of `sas-ray prepare`
    output: str
    teachers: list[TeacherSpec] = Field(min_length=1)
    scenes: list[str] | None = None  # default: every prepared scene
    split: Literal["full", "chunks"] = "full"  # chunks = OpenScene train files: random point subsets per scene
    num_chunks: int = Field(5, ge=1)  # num_rand_file_per_scene
    n_split_points: int = Field(20000, ge=1)
    seed: int = 1457
    labelled_only: bool | None = None  # project only labelled points; default: True for nuScenes presets
    vis_thres: float | None = None  # default: the dataset preset's
    cut_bound: int | None = None  # default: the dataset preset's
    frames_per_task: int = Field(64, ge=1)  # frames of one scene decoded and fused together
    image_size: tuple[int, int] | None = None  # (H, W) frames are resized to; default: dataset.json's, else as stored
    export_openscene: bool = False  # also write OpenScene `.pt` files ({"feat", "mask_full"})
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = True


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        elif e["type"] == "missing":
            lines.append(f"missing key '{key}'")
        else:
            lines.append(f"key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def parse_config(data: dict, model: type[ConfigT], source: str = "<config>") -> ConfigT:
    """Validate a mapping against `model`; errors name `source` and every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_format_errors(err)}") from None


def load_config(path: str, model: type[ConfigT], storage_options: dict | None = None) -> ConfigT:
    """Read a YAML file (local or any fsspec URL) into `model`."""
    import fsspec

    try:
        with fsspec.open(path, "r", **(storage_options or {})) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data if data is not None else {}, model, source=path)


def config_hash(config: BaseModel) -> str:
    """Stable short hash of a config, recorded in manifests so a changed config is visible."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
