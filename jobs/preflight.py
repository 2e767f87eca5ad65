"""Checks a config passes before any Ray work starts, so that a mistake costs a second instead of a hung or silent
run: placeholders left in, model names and options, resources that this machine (or the cluster's autoscaler) can
never give, storage that is unreachable or read-only, inputs that are missing or empty, a vocabulary that does not
match the data's labels, and sizes too big for this machine. Every problem is one line naming the config key.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel

from sas_ray.config import PRESETS, WEIGHT_OPTIONS, PipelineConfig
from sas_ray.errors import ConfigError, SasError

PLACEHOLDER = re.compile(r"YOUR[-_][A-Z0-9_-]*[A-Z0-9]|/path/to/|<[A-Za-z _-]+>")
MEMORY_SHARE = 0.5  # a single task estimated to need more than this share of the machine's memory asks for --yes
MODEL_DIM = 768  # feature channels assumed by the size estimate (CLIP ViT-L/14)


class PreflightError(ConfigError):
    """The config cannot run here; the message has one line per problem."""


@dataclass(frozen=True)
class Demand:
    """Resources one kind of actor or worker asks Ray for, and how many of them must run at once."""

    gpu_key: str  # the config keys that ask, e.g. "distill.use_gpu"
    gpus: float
    cpu_key: str
    cpus: float
    count: int  # the pool's minimum


@dataclass(frozen=True)
class Resources:
    """What Ray can give: the largest node's CPUs and GPUs, and the cluster's total GPUs (now or after scaling)."""

    node_cpus: float
    node_gpus: float
    total_gpus: float
    where: str  # "this machine" or "the cluster (autoscaler included)"


def preflight(stage: str, cfg: BaseModel, address: str | None = None, assume_yes: bool = False) -> None:
    """Raise PreflightError listing every problem of `cfg` (a stage's config, or `run`'s PipelineConfig)."""
    stages = cfg.stages() if isinstance(cfg, PipelineConfig) else [(stage, cfg)]
    prefix = isinstance(cfg, PipelineConfig)
    keyed = [(f"{name}." if prefix else "", name, stage_cfg) for name, stage_cfg in stages]
    problems = placeholders(cfg.model_dump(mode="json"))
    if not problems:  # a placeholder bucket or path would only add its own storage errors
        problems += model_problems(keyed)
        problems += resource_problems(keyed, cluster_resources(address))
        unreachable = storage_problems(keyed)
        problems += unreachable or input_problems(keyed)  # inputs on unreachable storage would repeat its problem
        problems += size_problems(keyed, assume_yes)
    if problems:
        raise PreflightError("\n".join(problems))


# -- placeholders ---------------------------------------------------------------------------------------------------
def _leaves(node, key: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{key}.{i}")
    else:
        yield key, node


def placeholders(data: dict) -> list[str]:
    """Values still holding a template's placeholder (YOUR-BUCKET, /path/to/..., <name>): one line per placeholder,
    naming the first key that has it."""
    found: dict[str, list[str]] = {}
    for key, value in _leaves(data):
        if isinstance(value, str) and (match := PLACEHOLDER.search(value)):
            found.setdefault(match.group(0).rstrip("/"), []).append(key)
    return [f"{where[0]}{f' (and {len(where) - 1} more keys)' if len(where) > 1 else ''}: {token!r} is a "
            "placeholder; fill in your own value" for token, where in found.items()]


# -- models -----------------------------------------------------------------------------------------------------------
def model_problems(keyed) -> list[str]:
    """Unknown teacher or text encoder names, weights/tiny mistakes, unknown model options, missing local weights."""
    specs = []  # (key, kind, spec)
    for prefix, name, cfg in keyed:
        for i, teacher in enumerate(getattr(cfg, "teachers", None) or []):
            if not isinstance(teacher, str):  # fuse's teachers are folder names
                specs.append((f"{prefix}teachers.{i}", "teacher", teacher))
        if getattr(cfg, "text_encoder", None) is not None:
            specs.append((f"{prefix}text_encoder", "text encoder", cfg.text_encoder))
    problems = []
    if specs:
        from sas_ray.models.base import check_build_options

        for key, kind, spec in specs:
            try:
                check_build_options(kind, spec.name, spec.weights, spec.tiny, spec.options)
            except ConfigError as err:
                problems.append(f"{key}: {err}")
    for prefix, name, cfg in keyed:
        if name == "capability" and cfg.source == "diffusion":
            for part in ("diffusion", "sam"):
                spec = getattr(cfg, part)
                if spec.tiny == (spec.weights is not None):
                    problems.append(f"{prefix}{part}: give either weights (a checkpoint) or tiny: true")
        for key, value in _leaves(cfg.model_dump(mode="json"), prefix.rstrip(".")):
            weights = key.rsplit(".", 1)[-1] in ("weights", *WEIGHT_OPTIONS)
            if weights and isinstance(value, str) and _missing_local(value):
                problems.append(f"{key}: {value} does not exist")
    return problems


def _missing_local(url: str) -> bool:
    local = url.removeprefix("file://") if "://" not in url or url.startswith("file://") else None
    return local is not None and not os.path.exists(local)


# -- resources --------------------------------------------------------------------------------------------------------
def demands(keyed) -> list[Demand]:
    """What every configured stage asks Ray for."""
    out = []
    for prefix, name, cfg in keyed:
        if name in ("extract", "capability"):
            for i, t in enumerate(cfg.teachers):
                cpus = (f"{prefix}teachers.{i}.cpus", t.actor_cpus) if name == "extract" else \
                    (f"{prefix}actor_cpus", cfg.actor_cpus)
                out.append(Demand(f"{prefix}teachers.{i}.gpus", t.gpus, *cpus, t.pool[0]))
        if name == "capability" and cfg.source == "diffusion":
            for part in ("diffusion", "sam"):
                spec = getattr(cfg, part)
                out.append(Demand(f"{prefix}{part}.gpus", spec.gpus, f"{prefix}actor_cpus", cfg.actor_cpus,
                                  spec.pool[0]))
        if name == "extract":
            out.append(Demand("", 0, f"{prefix}decode_cpus", cfg.decode_cpus, 1))
        if name == "distill":  # Ray Train: one CPU per worker, one GPU each with use_gpu
            out.append(Demand(f"{prefix}use_gpu", float(cfg.use_gpu), f"{prefix}num_workers", 1, cfg.num_workers[0]))
        if name == "predict" and cfg.use_gpu:
            out.append(Demand(f"{prefix}use_gpu", 1, "", 1, 1))
    return out


def resource_problems(keyed, have: Resources | None) -> list[str]:
    """Demands Ray could never schedule on `have` (None: unknown, nothing is refused): it would wait forever."""
    problems = []
    if have is None:
        return problems
    for d in demands(keyed):
        asks = f"{d.gpu_key}: {'true' if d.gpu_key.endswith('use_gpu') else _number(d.gpus)} asks for "
        if d.gpus > 0 and have.total_gpus == 0:
            problems.append(asks + f"a GPU but {have.where} has none and no autoscaler can add one (run on a GPU "
                                   "machine, join a GPU cluster with --address, or ask for none)")
        elif d.gpus > have.node_gpus:
            problems.append(asks + f"{_number(d.gpus)} GPUs per worker but the largest node of {have.where} has "
                                   f"{_number(have.node_gpus)}")
        elif d.gpus * d.count > have.total_gpus:
            problems.append(asks + f"{d.count} x {_number(d.gpus)} GPUs at once but {have.where} has "
                                   f"{_number(have.total_gpus)}")
        elif d.cpus > have.node_cpus:
            problems.append(f"{d.cpu_key}: {_number(d.cpus)} asks for {_number(d.cpus)} CPUs per worker but the "
                            f"largest node of {have.where} has {_number(have.node_cpus)}")
    return problems


def _number(value: float) -> str:
    return f"{value:g}"


def cluster_resources(address: str | None) -> Resources | None:
    """This machine's CPUs and GPUs, as a local Ray would see them; with an address (or $RAY_ADDRESS, or a Ray this
    process already runs), the cluster's nodes now and the node types its autoscaler may add; None when an
    autoscaler runs that does not publish its node types (Ray's v1 autoscaler, e.g. `ray up`): then Ray's own
    autoscaler reports what it cannot add."""
    import ray

    from jobs.runtime import ensure_ray

    address = address or os.environ.get("RAY_ADDRESS")
    if not address and not ray.is_initialized():
        cpus, gpus = local_cpus_and_gpus()
        return Resources(cpus, gpus, gpus, "this machine")
    ensure_ray(address)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    node_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    node_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    total_gpus = ray.cluster_resources().get("GPU", 0)
    scalable = autoscaler_node_types()
    if scalable is None:
        return None
    if not scalable:
        return Resources(node_cpus, node_gpus, total_gpus, "the cluster")
    node_cpus = max(node_cpus, *(t.get("CPU", 0) for t in scalable))
    node_gpus = max(node_gpus, *(t.get("GPU", 0) for t in scalable))
    return Resources(node_cpus, node_gpus, max(total_gpus, max_cluster_gpus()), "the cluster (autoscaler included)")


def local_cpus_and_gpus() -> tuple[float, float]:
    """The CPUs and GPUs a local Ray starts with (cgroup limits and CUDA_VISIBLE_DEVICES respected)."""
    from ray._private.accelerators import get_accelerator_manager_for_resource
    from ray._private.utils import get_num_cpus

    manager = get_accelerator_manager_for_resource("GPU")
    visible = manager.get_current_process_visible_accelerator_ids()
    gpus = len(visible) if visible is not None else manager.get_current_node_num_accelerators()
    return float(get_num_cpus()), float(gpus)


def autoscaler_node_types() -> list[dict] | None:
    """The resources of each node type the cluster's autoscaler may launch (as published by Ray's v2 autoscaler,
    e.g. KubeRay's); [] without an autoscaler; None when one runs without publishing them (v1, `ray up`)."""
    from ray._private import ray_constants, state
    from ray.experimental.internal_kv import _internal_kv_get

    config = state.state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return [dict(group.resources) for group in config.node_group_configs]
    return None if _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) else []


def max_cluster_gpus() -> float:
    from ray._private import state

    return float((state.state.get_max_resources_from_cluster_config() or {}).get("GPU", 0))


# -- storage ----------------------------------------------------------------------------------------------------------
def _url_keys(keyed, fields: tuple[str, ...]) -> list[tuple[str, str, dict]]:
    """(key, url, storage options) of every set field among `fields` (dotted paths) of every stage."""
    out = []
    for prefix, _, cfg in keyed:
        for field in fields:
            node = cfg
            for part in field.split("."):
                node = getattr(node, part, None)
            if isinstance(node, str):
                out.append((f"{prefix}{field}", node, dict(cfg.storage.options)))
    return out


def storage_problems(keyed) -> list[str]:
    """Every output must be writable: its bucket exists and takes a write with the credentials at hand, or its
    local folder can be created."""
    problems, seen = [], set()
    for key, url, options in _url_keys(keyed, ("output", "report")):
        where = _location(url)
        if (where, repr(sorted(options.items()))) in seen:
            continue
        seen.add((where, repr(sorted(options.items()))))
        problem = writable(url, options)
        if problem:
            problems.append(f"{key}: {problem}")
    return problems


def _location(url: str) -> str:
    """The bucket of an object-store URL, else the URL."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}://{rest.split('/')[0]}" if sep and scheme not in ("file", "memory") else url


def writable(url: str, options: dict) -> str | None:
    """Why nothing can be written under `url`, or None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme == "file":
        path = os.path.abspath(url.removeprefix("file://"))
        while not os.path.exists(path):
            path = os.path.dirname(path)
        if not os.path.isdir(path):
            return f"{url} cannot be created: {path} is a file"
        return None if os.access(path, os.W_OK) else f"{url} cannot be written: {path} is not writable"
    if scheme == "memory":
        return None
    from sas_ray.storage import filesystem, retrying

    bucket = rest.split("/")[0]
    probe = f"{url.rstrip('/')}/.sas-ray-preflight-{uuid.uuid4().hex}"
    try:
        fs, path = filesystem(probe, options)
        retrying(f"writing {probe}", lambda: fs.pipe_file(path, b""))
        retrying(f"deleting {probe}", lambda: fs.rm_file(path))
    except Exception as err:  # noqa: BLE001  (each storage client has its own error types)
        return _storage_error(url, bucket, err.__cause__ or err)  # the client's error behind sas-ray's
    return None


def _storage_error(url: str, bucket: str, err: Exception) -> str:
    name = type(err).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (f"no credentials for {url} (bucket {bucket!r}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an "
                "instance role, or storage.options key/secret")
    if isinstance(err, FileNotFoundError) or "NoSuchBucket" in str(err):
        return f"bucket {bucket!r} does not exist ({url})"
    if isinstance(err, PermissionError):
        return f"no write access to bucket {bucket!r} ({url}): {err}"
    return f"{url} cannot be written: {name}: {err}"


# -- inputs -----------------------------------------------------------------------------------------------------------
def input_problems(keyed) -> list[str]:
    """The dataset root holds scenes of the split, a prepared root is a prepared dataset with scenes (unless an
    earlier stage of this run writes it), the chosen scenes exist, and evaluate's vocabulary matches the labels."""
    from sas_ray.storage import absolute_root

    problems = []
    prepared_here: dict[str, str] = {}  # prepared root written by this run -> its preset
    for prefix, name, cfg in keyed:
        try:
            if name == "prepare":
                problems += dataset_problems(prefix, cfg)
                prepared_here[absolute_root(cfg.output).rstrip("/")] = cfg.dataset.preset_name
                continue
            prepared = getattr(cfg, "prepared", None)
            if not prepared:
                continue
            root = absolute_root(prepared).rstrip("/")
            preset = prepared_here.get(root)
            if preset is None:
                info = prepared_info(prepared, dict(cfg.storage.options))
                preset = info["preset"]
                unknown = sorted(set(getattr(cfg, "scenes", None) or []) - set(info["scenes"]))
                if unknown:
                    problems.append(f"{prefix}scenes: {unknown} are not scenes of {prepared} "
                                    f"(it has {len(info['scenes'])}, e.g. {info['scenes'][:3]})")
            if name == "evaluate" and cfg.label_set:
                from sas_ray.labels import vocabulary_mismatch

                if problem := vocabulary_mismatch(PRESETS[preset].label_set, cfg.label_set):
                    problems.append(f"{prefix}label_set: {problem}")
        except SasError as err:
            problems.append(f"{prefix}prepared: {err}")
    return problems


def dataset_problems(prefix: str, cfg) -> list[str]:
    """The raw dataset root exists and lists at least one scene of the split (a synthetic one is rendered first)."""
    from sas_ray.datasets import layout_module

    dataset = cfg.dataset
    if dataset.synthetic is not None:
        return []
    options = dict(cfg.storage.options)
    try:
        if not _exists(dataset.root, options):
            return [f"{prefix}dataset.root: {dataset.root} does not exist"]
    except ConfigError as err:
        return [f"{prefix}dataset.root: {err}"]
    try:
        found = layout_module(dataset.layout).list_scenes(dataset.root, dataset.split, options)
    except (SasError, OSError) as err:
        return [f"{prefix}dataset.root: {dataset.root} cannot be listed as a {dataset.layout} dataset: {err}"]
    if not found:
        return [f"{prefix}dataset.split: {dataset.root} has no {dataset.layout} scene in split {dataset.split!r} "
                f"(check dataset.root and dataset.split)"]
    unknown = sorted(set(dataset.scenes or []) - set(found))
    if unknown:
        return [f"{prefix}dataset.scenes: {unknown} are not in split {dataset.split!r} of {dataset.root} "
                f"({len(found)} scenes, e.g. {found[:3]})"]
    return []


def prepared_info(prepared: str, options: dict) -> dict:
    """dataset.json of a prepared root, which must list at least one scene."""
    from sas_ray.prepared import INFO
    from sas_ray.storage import Storage

    if not _exists(prepared, options):
        raise ConfigError(f"{prepared} does not exist; run `sas-ray prepare` first")
    root = Storage(prepared, options)
    if not root.exists(INFO):
        raise ConfigError(f"{prepared} is not a prepared dataset (no {INFO}); run `sas-ray prepare` first")
    info = root.read_json(INFO)
    if not info.get("scenes"):
        raise ConfigError(f"{prepared} has no prepared scene (its prepare found none or all failed)")
    return info


def _exists(url: str, options: dict) -> bool:
    from sas_ray.storage import filesystem, retrying

    try:
        fs, path = filesystem(url, options)
        return retrying(f"checking {url}", lambda: fs.exists(path))
    except Exception as err:  # noqa: BLE001  (credentials, bucket: the storage check says which)
        raise ConfigError(_storage_error(url, _location(url).split("://")[-1], err.__cause__ or err)) from None


# -- sizes ------------------------------------------------------------------------------------------------------------
def size_problems(keyed, assume_yes: bool) -> list[str]:
    """Sizes whose lower-bound memory estimate for one task exceeds MEMORY_SHARE of this machine's memory."""
    if assume_yes:
        return []
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return [f"{key}: {what} need at least {_gib(need)} in one task, this machine has {_gib(memory)}; lower it, or "
            f"pass --yes if the cluster's nodes are larger" for key, need, what in memory_estimates(keyed)
            if need > MEMORY_SHARE * memory]


def memory_estimates(keyed) -> list[tuple[str, float, str]]:
    """(key, bytes, what) lower bounds of one task's memory: the arrays it must hold, nothing more."""
    out = []
    for prefix, name, cfg in keyed:
        if name == "prepare" and cfg.dataset.synthetic is not None:
            syn = cfg.dataset.synthetic
            preset = PRESETS[cfg.dataset.preset_name]
            out.append((f"{prefix}dataset.synthetic.points_per_scene", syn.points_per_scene * 32.0,
                        f"{syn.points_per_scene:,} points a scene (xyz, colour, label, normal)"))
            if syn.size == "real":
                pixels = preset.image_width * preset.image_height
                out.append((f"{prefix}dataset.synthetic.frames_per_scene", syn.frames_per_scene * pixels * 8.0,
                            f"{syn.frames_per_scene:,} rendered frames of {preset.image_width}x{preset.image_height}"))
        if name == "extract" and cfg.image_size:
            h, w = cfg.image_size
            per_frame = h * w * (3 + 4 + 2 * MODEL_DIM)  # RGB, depth, the teacher's fp16 feature map
            out.append((f"{prefix}image_size", float(per_frame) * max(t.batch_size for t in cfg.teachers),
                        f"frames of {h}x{w} (a batch of RGB-D and {MODEL_DIM}-d fp16 feature maps)"))
        if name == "capability" and cfg.source == "diffusion":
            out.append((f"{prefix}size", cfg.diffusion.batch_size * cfg.size**2 * (3 + 4 * 16.0),
                        f"generated images of {cfg.size}x{cfg.size} (a batch, with attention maps)"))
    return out


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"
