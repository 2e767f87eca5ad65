"""Validated configuration for every stage, loaded from YAML; dataset presets hold the constants of
docs/method.md §2.5.

Unknown keys and wrong types are errors that name the file and the key path. Defaults live here and only here.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sas_ray.errors import ConfigError
from sas_ray.labels import LABEL_SETS, OPENSCENE_OTHER_INDEX


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetPreset(Strict):
    """Per-dataset constants of OpenScene's fusion and distillation (docs/method.md §1.3, §2.5, §3)."""

    image_width: int
    image_height: int
    depth_scale: float | None  # raw depth units per metre; None = no depth sensor
    vis_thres: float  # relative occlusion threshold |D - Z| <= vis_thres * D
    cut_bound: int  # pixels ignored at each image border
    frame_skip: int  # keep every n-th frame of a sequence
    voxel_size: float  # metres, for distillation
    label_set: str  # key of sas_ray.labels.LABEL_SETS
    has_depth: bool = True
    resize: Literal["nearest", "bilinear"] = "nearest"  # how OpenScene resized its frames to image_width x height
    # (cv2: ScanNet's and Matterport's exports nearest, nuScenes bilinear); depth is always resized nearest


PRESETS: dict[str, DatasetPreset] = {
    "scannet": DatasetPreset(image_width=320, image_height=240, depth_scale=1000.0, vis_thres=0.25, cut_bound=10,
                             frame_skip=20, voxel_size=0.02, label_set="scannet20"),
    "matterport": DatasetPreset(image_width=640, image_height=512, depth_scale=4000.0, vis_thres=0.02, cut_bound=10,
                                frame_skip=1, voxel_size=0.02, label_set="matterport21"),
    "nuscenes": DatasetPreset(image_width=800, image_height=450, depth_scale=None, vis_thres=0.0, cut_bound=5,
                              frame_skip=1, voxel_size=0.05, label_set="nuscenes16", has_depth=False, resize="bilinear"),
    "replica": DatasetPreset(image_width=640, image_height=360, depth_scale=6553.5, vis_thres=0.25, cut_bound=10,
                             frame_skip=10, voxel_size=0.02, label_set="scannet20"),
    # own RGB-D scans (sas_ray.datasets.scans): ScanNet's constants, every frame of the folder (depth_scale.txt per scene)
    "scans": DatasetPreset(image_width=320, image_height=240, depth_scale=1000.0, vis_thres=0.25, cut_bound=10,
                           frame_skip=1, voxel_size=0.02, label_set="scannet20"),
}

Layout = Literal["scannet", "matterport", "nuscenes", "scans"]


class SyntheticConfig(Strict):
    """Procedural scenes rendered into a raw dataset layout (sas_ray.datasets.synthetic)."""

    num_scenes: int = Field(2, ge=1)  # rooms to render (scene0000_00, scene0001_00, ...)
    frames_per_scene: int = Field(8, ge=1)  # RGB-D frames rendered per room, from poses around it
    size: Literal["real", "tiny"] = "tiny"  # real = the preset's image size; tiny = 64x48-ish for tests
    points_per_scene: int = Field(20000, ge=100)  # points sampled on each room's mesh
    seed: int = 0  # rooms, furniture and poses are a function of it


class DatasetConfig(Strict):
    """Where a dataset lives and how to read it."""

    layout: Layout  # raw folder layout: OpenScene's ScanNet or Matterport export, nuScenes devkit
    root: str  # URL of the raw dataset (local path, file://, s3://, memory://)
    split: str = "val"  # sub-folder / nuScenes version to read, e.g. train, val
    scenes: list[str] | None = None  # default: every scene found
    preset: str | None = None  # default: same name as layout
    synthetic: SyntheticConfig | None = None  # set = generate the raw dataset into `root` first
    frame_skip: int | None = Field(None, ge=1)  # keep frames whose number is a multiple of it; default: the
    # preset's (ScanNet 20: a raw every-frame export -> OpenScene's frames; a no-op on OpenScene's export), 1 for
    # synthetic data (rendered as an export that keeps every frame)
    image_size: tuple[int, int] | Literal["stored"] | None = None  # (H, W) later stages resize frames to (K
    # rescaled, docs/method.md §2.3); default: the preset's (nuScenes 1600x900 -> 450x800), tiny synthetic data as stored

    @model_validator(mode="after")
    def _known_preset(self) -> DatasetConfig:
        if self.preset_name not in PRESETS:
            raise ValueError(f"unknown preset {self.preset_name!r}; known: {sorted(PRESETS)}")
        if self.synthetic is not None and self.layout == "scans":
            raise ValueError("synthetic data is rendered in the scannet, matterport or nuscenes layouts, not scans")
        if self.layout == "nuscenes" and (self.frame_skip or 1) > 1:
            raise ValueError("frame_skip does not apply to nuScenes: a scene is one keyframe sample with its six "
                             "camera images; choose samples with `scenes`")
        if isinstance(self.image_size, tuple) and min(self.image_size) < 2:
            raise ValueError(f"image_size must be (height, width) of at least 2 pixels, got {self.image_size}")
        return self

    @property
    def preset_name(self) -> str:
        return self.preset or self.layout

    @property
    def constants(self) -> DatasetPreset:
        return PRESETS[self.preset_name]

    @property
    def effective_frame_skip(self) -> int:
        if self.frame_skip is not None:
            return self.frame_skip
        return 1 if self.synthetic is not None else self.constants.frame_skip

    @property
    def effective_image_size(self) -> tuple[int, int] | None:
        """(H, W) every frame is resized to at decode, None = as stored."""
        if self.image_size == "stored" or (self.image_size is None and self.synthetic is not None
                                           and self.synthetic.size == "tiny"):
            return None
        return self.image_size or (self.constants.image_height, self.constants.image_width)


class StorageConfig(Strict):
    """fsspec options passed to every filesystem (e.g. S3 endpoint_url, key, secret)."""

    options: dict = Field(default_factory=dict)  # passed to fsspec.filesystem(); {} = the environment's credentials
    verify: bool = False  # re-hash every finished output instead of trusting its listing (CLI --verify)
    wait: bool = False  # another run writes a stage output: wait for it instead of stopping (CLI --wait)


class PrepareConfig(Strict):
    """`sas-ray prepare`: raw dataset -> scenes (safetensors) + frame index (parquet) under `output`."""

    dataset: DatasetConfig
    output: str  # URL the prepared dataset is written to
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = True


WEIGHT_OPTIONS = ("sam_weights",)  # teacher options that name a checkpoint of their own (sam-clip's SAM)


class TeacherSpec(Strict):
    """One 2D teacher: which model, its weights, and the resources of its actor pool."""

    name: str  # registry name, e.g. "openclip-dense"
    output_name: str | None = None  # folder under features/; default = name
    weights: str | None = None  # local path or URL of a real checkpoint
    tiny: bool = False  # random small config of the same classes (tests, demo)
    options: dict = Field(default_factory=dict)  # builder keyword arguments (architecture etc.)
    gpus: float = Field(1.0, ge=0)  # per actor: 1 = its own GPU, a fraction to share one, 0 = CPU
    cpus: float | None = Field(None, gt=0)  # per actor; default 1 beside a GPU, 0.5 for a CPU teacher so that
    #                                         several CPU teachers and their decode tasks fit on a small machine
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

    @property
    def actor_cpus(self) -> float:
        return self.cpus if self.cpus is not None else (1.0 if self.gpus > 0 else 0.5)

    @property
    def checkpoints(self) -> dict[str, str | None]:
        """Every checkpoint the teacher loads, by field: `weights`, and each option that names one."""
        return {"weights": self.weights, **{k: self.options[k] for k in WEIGHT_OPTIONS if self.options.get(k)}}


class ExtractConfig(Strict):
    """`sas-ray extract`: per-scene, per-teacher fused point features (docs/method.md §2) under `output`/features/."""

    prepared: str  # output root of `sas-ray prepare`
    output: str  # root; features go to {output}/features/{teacher}/
    teachers: list[TeacherSpec] = Field(min_length=1)
    scenes: list[str] | None = None  # default: every prepared scene
    split: Literal["full", "chunks"] = "full"  # chunks = OpenScene train files: random point subsets per scene
    num_chunks: int = Field(5, ge=1)  # num_rand_file_per_scene
    n_split_points: int = Field(20000, ge=1)  # points per chunk (split chunks)
    seed: int = 1457  # of the chunks' random point subsets
    labelled_only: bool | None = None  # project only labelled points; default: True for nuScenes presets
    vis_thres: float | None = None  # default: the dataset preset's
    cut_bound: int | None = None  # default: the dataset preset's
    frames_per_task: int = Field(64, ge=1)  # frames of one scene decoded and fused together
    decode_cpus: float = Field(0.5, gt=0)  # CPUs reserved by one decode task (JPEG/PNG decoding is light)
    decode_tasks: int = Field(4, ge=1)  # decode tasks at once per teacher: bounds worker processes (memory)
    object_store_gb: float = Field(4.0, gt=0)  # per teacher pipeline: decoded frames and partials in flight
    image_size: tuple[int, int] | Literal["stored"] | None = None  # (H, W) frames are resized to; default:
    # dataset.json's (the prepared dataset.image_size), else as stored; "stored" = never resize
    export_openscene: bool = False  # also write OpenScene `.pt` files ({"feat", "mask_full"})
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = True


class SuperpointsConfig(Strict):
    """`sas-ray superpoints`: segmentator superpoints per prepared scene."""

    prepared: str  # output root of `sas-ray prepare`
    output: str  # root; superpoints go to {output}/superpoints/
    scenes: list[str] | None = None  # default: every prepared scene
    mode: Literal["auto", "mesh", "points"] = "auto"  # auto = mesh when the scene has faces
    k_thresh: float = Field(0.01, gt=0)  # SAS: 0.01
    min_verts: int = Field(60, ge=1)  # SAS: 60 (segmentator default 20)
    knn: int = Field(16, ge=3)  # neighbours of the point graph
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = True


class TextEncoderSpec(Strict):
    """The text encoder whose space the features live in (built on the driver; only its embeddings travel)."""

    name: str = "openclip-text"  # registry name (sas_ray.models.text_encoder_names())
    weights: str | None = None  # the same CLIP checkpoint as the teachers'
    tiny: bool = False  # random small encoder of the same class (tests, demo)
    options: dict = Field(default_factory=dict)  # builder keyword arguments (arch, seed for tiny, ...)


def _known_label_set(name: str | None) -> None:
    if name is not None and name not in LABEL_SETS:
        raise ValueError(f"unknown label_set {name!r}; known: {sorted(LABEL_SETS)}")


class FuseConfig(Strict):
    """`sas-ray fuse`: per scene, the teachers' features (features/{teacher}/) fused into features/{fused_name}/."""

    output: str  # root holding features/ (and capability/capability.parquet for method capability)
    teachers: list[str] = Field(min_length=1)  # feature folder names; the first plays SAS's LSeg role
    method: Literal["capability", "add", "linear", "single"] = "capability"  # single = the first teacher alone
    linear_weights: list[float] | None = None  # method linear, one per teacher; default: equal weights 1/T
    label_set: str = "matterport21"  # the vocabulary of the votes: SAS's 21 entries, 'other' at 19
    other_index: int | None = None  # vocabulary entry whose first-teacher votes keep the first feature;
    # absent = the label set's 'other' entry (labels.OPENSCENE_OTHER_INDEX), null = no such rule
    temperature: float = Field(0.05, gt=0)  # softmax temperature of the capability weights (SAS: 0.05)
    text_encoder: TextEncoderSpec | None = None  # required by method capability; checks the features' text space
    fused_name: str = "fused"  # output folder under features/
    scenes: list[str] | None = None  # default: every scene any teacher has features for
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = True

    @model_validator(mode="before")
    @classmethod
    def _default_other_index(cls, data):
        """Resolve other_index from the label set here, so a dumped config means the same after re-validation."""
        if isinstance(data, dict) and "other_index" not in data:
            label_set = data.get("label_set", cls.model_fields["label_set"].default)
            data = {**data, "other_index": OPENSCENE_OTHER_INDEX.get(label_set)}
        return data

    @model_validator(mode="after")
    def _method_inputs(self) -> FuseConfig:
        _known_label_set(self.label_set)
        size = len(LABEL_SETS[self.label_set])
        if self.other_index is not None and not 0 <= self.other_index < size:
            raise ValueError(f"other_index {self.other_index} is outside label_set {self.label_set!r} (0..{size - 1})")
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"teachers must be distinct, got {self.teachers}")
        if self.method != "single" and len(self.teachers) < 2:
            raise ValueError(f"method {self.method!r} needs at least 2 teachers, got {self.teachers}")
        if self.method == "capability" and self.text_encoder is None:
            raise ValueError("method 'capability' needs text_encoder (the vocabulary the teachers vote over)")
        if self.linear_weights is not None and (self.method != "linear"
                                                or len(self.linear_weights) != len(self.teachers)):
            raise ValueError(f"linear_weights are for method 'linear', one per teacher; got {self.linear_weights} "
                             f"for method {self.method!r} and {len(self.teachers)} teachers")
        if self.fused_name in self.teachers:
            raise ValueError(f"fused_name {self.fused_name!r} is one of the teachers")
        return self


class EvaluateConfig(Strict):
    """`sas-ray evaluate`: per-class IoU/accuracy of point features against the prepared ground truth, with
    pictures, under {output}/evaluate/{name}/."""

    prepared: str  # output root of `sas-ray prepare` (points + ground-truth labels)
    output: str  # root holding features/; results go to evaluate/{name}/
    mode: Literal["fusion", "distill", "ensemble"] = "fusion"  # OpenScene's: 2D, 3D, or per point the surer one
    features: str = "fused"  # fusion, ensemble: the 2D features' folder under features/ (fused or one teacher's)
    distilled: str = "distill"  # distill, ensemble: the 3D features' folder (`sas-ray predict`'s name)
    label_set: str | None = None  # default: the prepared dataset's preset's
    nuscenes_details: bool = True  # nuscenes16: score the 43 detailed prompts, map the argmax to the 16 classes
    text_encoder: TextEncoderSpec
    mark_no_feature_to_unknown: bool = True  # fusion: points without a 2D feature are misses, not class 0
    queries: list[str] = Field(default_factory=list)  # free-form text queries drawn as heatmaps
    max_ply_scenes: int = Field(3, ge=0)  # scenes (in order) that get prediction/GT/heatmap pictures
    name: str | None = None  # output folder under evaluate/; default: the evaluated folder (see `folder`)
    scenes: list[str] | None = None  # default: every prepared scene
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = True

    @model_validator(mode="after")
    def _known_vocabulary(self) -> EvaluateConfig:
        _known_label_set(self.label_set)
        return self

    @property
    def folder(self) -> str:
        """evaluate/{folder}: `name`, else features (fusion), distilled (distill), {distilled}-ensemble."""
        default = {"fusion": self.features, "distill": self.distilled, "ensemble": f"{self.distilled}-ensemble"}
        return self.name or default[self.mode]


SparseBackendName = Literal["auto", "torch", "spconv", "minkowski"]


class DistillStageConfig(Strict):
    """The length of one distillation stage. An epoch visits every training scene `loop` times."""

    epochs: int = Field(ge=0)  # 0 = skip the stage
    max_steps: int | None = Field(None, ge=1)  # stop the stage after this many optimizer steps (smoke runs)


class DistillConfig(Strict):
    """`sas-ray distill`: MinkUNet18A distilled from fused 2D features on Ray Train, stage 1 (point + superpoint
    cosine, docs/method.md §5.7) then stage 2 (EMA self-distillation, §5.8). Checkpoints and the EMA history live
    under {output}/distill/; rerunning the same config resumes."""

    prepared: str  # output root of `sas-ray prepare`
    output: str  # root holding features/{features}/ and superpoints/; results go to distill/
    features: str = "fused"  # folder under features/ (full resolution or OpenScene chunks)
    superpoints: str | None = None  # root holding superpoints/; default: output
    text_encoder: TextEncoderSpec | None = None  # stage 2's pseudo labels; must match the features' text space
    label_set: str | None = None  # stage 2's vocabulary; default: the prepared dataset's preset's
    scenes: list[str] | None = None  # training scenes; default: every prepared scene
    stage1: DistillStageConfig = Field(default_factory=lambda: DistillStageConfig(epochs=70))  # SAS paper: 70
    stage2: DistillStageConfig = Field(default_factory=lambda: DistillStageConfig(epochs=30))  # ... + 30
    until_stage: Literal["stage1", "stage2"] = "stage2"  # the last stage to run (the schedule spans both)
    loop: int = Field(5, ge=1)  # OpenScene/SAS: every scene 5 times per epoch
    batch_size: int = Field(4, ge=1)  # scenes per worker per step (SAS: 16 over 4 GPUs)
    base_lr: float = Field(1e-4, gt=0)  # Adam, at lr_reference_batch scenes per step; scaled linearly
    lr_reference_batch: int = Field(16, ge=1)  # global batch (scenes per step) at which base_lr applies
    lr_x10_quirk: bool = True  # OpenScene/SAS's index_split=0: every step after the first runs at 10x poly lr
    voxel_size: float | None = Field(None, gt=0)  # default: the preset's (0.02 indoor, 0.05 nuScenes)
    supervision_limit: int = Field(20000, ge=1)  # voxels per worker batch entering the loss (random subset)
    mixed_precision: bool = True  # fp16 autocast + loss scaling on CUDA (about half the memory); off on CPU
    ema_momentum: float = Field(0.9999, gt=0, lt=1)  # stage 2: weight of the previous prediction in the EMA history
    backend: SparseBackendName = "auto"  # sparse convolution library; auto = the fastest installed
    num_workers: tuple[int, int] = (1, 1)  # (min, max) Ray Train workers; min < max = elastic
    resize_interval_s: float = Field(60.0, gt=0)  # elastic: seconds between Ray Train's looks for more workers
    use_gpu: bool = False  # one GPU per Ray Train worker (the cluster must have or be able to add them)
    checkpoint_every: int = Field(100, ge=1)  # optimizer steps between checkpoints
    max_failures: int = Field(3, ge=0)  # worker failures survived by restarting from the last checkpoint
    stop_after_steps: int | None = Field(None, ge=1)  # end this invocation after this many steps (time-boxed
    # runs: a checkpoint is written; rerun without it to continue)
    prefetch: int = Field(2, ge=0)  # batches each worker loads ahead: in as many threads (at least one), or per
    # loader process
    loader_processes: int | None = Field(None, ge=0)  # > 0: each worker builds its batches on the CPU in this many
    # processes; 0: in threads, on its device; null: 6 on a GPU, 0 on the CPU (`sas_ray.distill.loader`)
    seed: int = 114514  # SAS
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = True

    @model_validator(mode="after")
    def _valid(self) -> DistillConfig:
        _known_label_set(self.label_set)
        if not 1 <= self.num_workers[0] <= self.num_workers[1]:
            raise ValueError(f"num_workers must be (min, max) with 1 <= min <= max, got {self.num_workers}")
        if self.stage2.epochs and self.text_encoder is None:
            raise ValueError("stage 2 needs text_encoder (its pseudo labels are argmax over the label set's prompts)")
        return self


class PredictConfig(Strict):
    """`sas-ray predict`: a distilled checkpoint over scenes -> per-point 3D features in features/{name}/ (all points
    have a feature), for `sas-ray evaluate` (modes distill and ensemble)."""

    prepared: str  # output root of `sas-ray prepare`
    output: str  # features/{name}/ is written here
    checkpoint: str | None = None  # our model.safetensors or an OpenScene/SAS .pth.tar; default: the distill
    # stage's final model under {output}/distill/
    text_space: str | None = None  # recorded in the feature files; default: the checkpoint's metadata
    name: str = "distill"  # output folder under features/
    scenes: list[str] | None = None  # default: every prepared scene
    repeats: int = Field(5, ge=1)  # OpenScene test_repeats: random rotations/scales, features averaged
    voxel_size: float | None = Field(None, gt=0)  # default: the checkpoint's
    backend: SparseBackendName = "auto"  # sparse convolution library; auto = the fastest installed
    use_gpu: bool = False  # run the network on one GPU: each scene's task asks Ray for one (autoscalers add a node)
    seed: int = 1463  # of the test-time rotations and scales
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = True


class ModelPoolSpec(Strict):
    """A model of the capability stage (Stable Diffusion, SAM): its weights and the actor pool that runs it."""

    weights: str | None = None  # SD: a diffusers-layout folder URL (unet/, vae/, text_encoder/); SAM: a checkpoint
    tiny: bool = False  # random small model of the same classes (tests, demo)
    options: dict = Field(default_factory=dict)  # builder keyword arguments (arch, min_area, ...)
    gpus: float = Field(1.0, ge=0)  # per actor: 1 = its own GPU, a fraction to share one, 0 = CPU
    pool: tuple[int, int] = (1, 1)  # (min, max) actors; the pool grows and shrinks with the cluster
    batch_size: int = Field(4, ge=1)  # SD: prompts per pipeline call; SAM: images per actor call
    dtype: Literal["float32", "float16", "bfloat16"] = "float16"  # on GPU; CPU always runs float32

    @model_validator(mode="after")
    def _pool_order(self) -> ModelPoolSpec:
        if not 1 <= self.pool[0] <= self.pool[1]:
            raise ValueError(f"pool must be (min, max) with 1 <= min <= max, got {self.pool}")
        return self


class CapabilityConfig(Strict):
    """`sas-ray capability`: per-teacher, per-class capability (SAS MCC, docs/method.md §5.4) under
    `output`/capability/.

    source "diffusion": Stable Diffusion images + SAM pseudo masks (annotation-free); "labels": the label images of
    a prepared ScanNet-layout dataset (ground truth, written to `output`/capability_labels/ for comparison)."""

    output: str  # root; results go to {output}/capability/ (labels: capability_labels/)
    teachers: list[TeacherSpec] = Field(min_length=1)
    text_encoder: TextEncoderSpec  # embeds the vocabulary; must share the teachers' text space
    label_set: str = "matterport21"  # the vocabulary: SAS uses ScanNet 20 + ceiling, 'other' at 19
    classes: list[str] | None = None  # classes to measure; default: the vocabulary minus 'other'
    source: Literal["diffusion", "labels"] = "diffusion"  # diffusion: annotation-free (SAS); labels: label images
    images_per_class: int = Field(50, ge=1)  # seeds 0..N-1
    steps: int = Field(50, ge=1)  # denoising steps per image (SAS: 50)
    guidance: float = 7.0  # classifier-free guidance scale (SAS passes 7)
    size: int = Field(512, ge=8)  # generated image side, pixels (a multiple of 8)
    border: int = Field(70, ge=0)  # pixels of the coarse mask zeroed at each side before picking SAM prompts
    diffusion: ModelPoolSpec = Field(default_factory=ModelPoolSpec)
    sam: ModelPoolSpec = Field(default_factory=lambda: ModelPoolSpec(batch_size=8))
    actor_cpus: float = Field(1.0, gt=0)  # CPUs reserved per model actor (lower it to pack CPU-only runs)
    prepared: str | None = None  # source "labels": output root of `sas-ray prepare` (ScanNet layout with label/)
    scenes: list[str] | None = None  # source "labels": default every prepared scene
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> CapabilityConfig:
        _known_label_set(self.label_set)
        chosen = set(self.classes or ())
        unknown = sorted((chosen - set(LABEL_SETS[self.label_set])) | (chosen & {"other"}))
        if unknown:
            raise ValueError(f"classes {unknown} are not measurable classes of {self.label_set!r}")
        folders = [t.folder for t in self.teachers]
        if len(set(folders)) != len(folders):
            raise ValueError(f"teachers need distinct output names, got {folders}")
        if self.source == "labels" and self.prepared is None:
            raise ValueError("source 'labels' needs `prepared` (a prepared ScanNet-layout dataset with label images)")
        if self.size % 8:
            raise ValueError(f"size must be a multiple of 8 (the VAE's downsampling), got {self.size}")
        return self


class PipelineConfig(Strict):
    """`sas-ray run`: several stages in one go, each key holding that stage's config; absent = not run. They run in
    the order of the fields below; each stage still skips the units its manifest has."""

    prepare: PrepareConfig | None = None
    extract: ExtractConfig | None = None
    capability: CapabilityConfig | None = None
    fuse: FuseConfig | None = None
    superpoints: SuperpointsConfig | None = None
    distill: DistillConfig | None = None
    predict: PredictConfig | None = None
    evaluate: EvaluateConfig | None = None

    @model_validator(mode="after")
    def _some_stage(self) -> PipelineConfig:
        if not self.stages():
            raise ValueError(f"no stage configured; give at least one of {list(type(self).model_fields)}")
        return self

    def stages(self) -> list[tuple[str, BaseModel]]:
        """(stage name, its config) of the configured stages, in running order."""
        return [(name, getattr(self, name)) for name in type(self).model_fields if getattr(self, name) is not None]

    @property
    def output(self) -> str:
        """Where the run's report goes: the output root of the last configured stage (evaluate's, when it runs)."""
        return self.stages()[-1][1].output


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def error_lines(err: ValidationError) -> list[tuple[str, str]]:
    """(key path, message naming the key) of each validation error; a section's own check has its section's key."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            lines.append((key, f"unknown key '{key}'"))
        elif e["type"] == "missing":
            lines.append((key, f"missing key '{key}'"))
        elif e["type"] == "value_error":  # a section's own check: its message says what is wrong
            where = f"key '{key}': " if e["loc"] else ""
            lines.append((key, where + e["msg"].removeprefix("Value error, ")))
        else:
            lines.append((key, f"key '{key}': {e['msg']} (got {e.get('input')!r})"))
    return lines


def _format_errors(err: ValidationError) -> str:
    return "; ".join(message for _, message in error_lines(err))


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

