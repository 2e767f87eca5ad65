"""Fuse the teachers' per-scene point features into one set: capability-guided (SPEC §5.5) or an ablation baseline
(§5.10: direct add, fixed-weight linear, a single teacher).

One Ray task per scene reads features/{teacher}/{scene}.safetensors of every teacher, checks that they cover the
same points (mask_full) in one text space (each file's "text_space" metadata, and the text encoder's), fuses, and
writes features/{fused_name}/{scene}.safetensors + a manifest row. The vocabulary embeddings and capability vectors
are computed once on the driver and shared by the tasks. A rerun skips scenes whose output is intact and was made by
the same recipe (method, weights, vocabulary, text encoder; the teachers' feature files of the scene and the
capability table); a bad scene fails alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import ray
import torch

from jobs.runtime import StageReport, ensure_ray, run_unit_tasks, scene_unit
from sas_ray.capability_table import CAPABILITY_FILE, read_capabilities
from sas_ray.capfusion import add_point_features, fuse_point_features, linear_point_features
from sas_ray.config import FuseConfig
from sas_ray.errors import ConfigError, InputError
from sas_ray.features import FEATURES, encode_features, feature_file, read_full_features
from sas_ray.labels import LABEL_SETS, OPENSCENE_OTHER_INDEX, prompts
from sas_ray.lineage import Recipe, StageRecipe, content_digest, stage_recipe
from sas_ray.manifest import UnitResult, open_stage, output_digests
from sas_ray.scene import PointFeatures
from sas_ray.storage import Storage, StoredObject

RECIPE_FIELDS = ("teachers", "method", "linear_weights", "label_set", "other_index", "temperature")
VERSION = 1


@dataclass(frozen=True)
class FusionRecipe:
    """Everything a fused scene depends on besides its teachers' files, made once on the driver."""

    teachers: tuple[str, ...]
    method: str
    text_space: str | None  # the text encoder's; None = the teachers need only agree with each other
    text: torch.Tensor | None  # float32 [K,C] vocabulary embeddings (method capability)
    capabilities: dict[str, torch.Tensor] | None  # teacher -> [K] (method capability)
    linear_weights: dict[str, float] | None  # teacher -> weight (method linear)
    other_index: int | None
    temperature: float
    config: StageRecipe  # what every scene's manifest recipe shares
    shared_inputs: dict[str, str]  # the inputs every scene reads: text encoder weights, capability table


def fusion_recipe(cfg: FuseConfig, out: Storage) -> FusionRecipe:
    """Build the text encoder (if configured), embed the vocabulary and read the capability table."""
    from sas_ray.models import build_text_encoder

    vocabulary = LABEL_SETS[cfg.label_set]
    text, text_space = None, None
    if cfg.text_encoder is not None:
        spec = cfg.text_encoder
        encoder = build_text_encoder(spec.name, spec.weights, tiny=spec.tiny,
                                     storage_options=dict(cfg.storage.options), **spec.options)
        text = encoder.encode(prompts(vocabulary, OPENSCENE_OTHER_INDEX.get(cfg.label_set)))
        text_space = encoder.text_space
    shared = {}
    capabilities = None
    if cfg.method == "capability":
        capabilities = read_capabilities(out, cfg.teachers, len(vocabulary), vocabulary)
        shared["capability"] = out.sha256(CAPABILITY_FILE)
    weights = None
    if cfg.method == "linear":
        values = cfg.linear_weights or [1.0 / len(cfg.teachers)] * len(cfg.teachers)
        weights = dict(zip(cfg.teachers, values))
    encoder = None
    if cfg.text_encoder is not None:
        encoder = cfg.text_encoder.model_dump(mode="json", include={"name", "tiny", "options"})
        shared["text_encoder"] = content_digest(cfg.text_encoder.weights, dict(cfg.storage.options))
    config = stage_recipe(VERSION, cfg, RECIPE_FIELDS, text_encoder=encoder)
    return FusionRecipe(tuple(cfg.teachers), cfg.method, text_space, text, capabilities, weights, cfg.other_index,
                        cfg.temperature, config, shared)


def scene_recipes(out: Storage, recipe: FusionRecipe, scene_ids: list[str]) -> dict[str, Recipe]:
    """Each scene's recipe: the fusion's config and shared inputs, and the scene's feature file of every teacher
    (their manifest rows' sha256)."""
    teachers = {name: output_digests(out.child(FEATURES, name)) for name in recipe.teachers}
    return {s: recipe.config.unit({**recipe.shared_inputs, **{f"features/{name}": rows.get(s, "")
                                                              for name, rows in teachers.items()}})
            for s in scene_ids}


def check_text_spaces(scene_id: str, spaces: dict[str, str], expected: str | None) -> str:
    """The one text space all teachers' files of a scene live in (equal to `expected` if given)."""
    first, first_space = next(iter(spaces.items()))
    for name, space in spaces.items():
        if space != first_space:
            raise InputError(f"scene {scene_id}: teacher '{name}' features live in text space {space!r} but "
                             f"teacher '{first}' features in {first_space!r} (fusion needs one shared text space)")
    if expected is not None and first_space != expected:
        raise InputError(f"scene {scene_id}: the teachers' features live in text space {first_space!r} but the "
                         f"text encoder in {expected!r} (use the teachers' CLIP checkpoint for the text encoder)")
    return first_space


def fuse_scene(out: Storage, scene_id: str, recipe: FusionRecipe) -> tuple[PointFeatures, str]:
    """One scene's fused features and their text space."""
    teachers, spaces = {}, {}
    for name in recipe.teachers:
        teachers[name], spaces[name] = read_full_features(out, name, scene_id)
    text_space = check_text_spaces(scene_id, spaces, recipe.text_space)
    unit = f"scene {scene_id}"
    if recipe.method == "capability":
        fused = fuse_point_features(teachers, recipe.capabilities, recipe.text, recipe.other_index, unit,
                                    recipe.temperature)
    elif recipe.method == "add":
        fused = add_point_features(teachers, unit)
    elif recipe.method == "linear":
        fused = linear_point_features(teachers, recipe.linear_weights, unit)
    else:  # single: the first teacher alone (the one-teacher rows of the ablation)
        fused = teachers[recipe.teachers[0]]
    return fused, text_space


def _fuse_task(output: str, storage_options: dict, fused_name: str, scene_id: str, recipe: FusionRecipe,
               unit_recipe: Recipe) -> UnitResult:
    def work() -> tuple[str, StoredObject]:
        out = Storage(output, storage_options)
        fused, text_space = fuse_scene(out, scene_id, recipe)
        metadata = {"teacher": fused_name, "teachers": json.dumps(list(recipe.teachers)), "method": recipe.method,
                    "text_space": text_space, "dim": str(fused.dim), "split": "full"}
        name = feature_file(scene_id)
        return name, out.child(FEATURES, fused_name).put_tensors(name, encode_features(fused), metadata)

    return scene_unit(scene_id, unit_recipe, work)


def scenes_with_features(out: Storage, teachers: list[str]) -> list[str]:
    """Every scene any of the teachers has a feature file for (a scene some teacher lacks then fails by name)."""
    suffix = feature_file("")
    scenes = set()
    for name in teachers:
        found = [f[:-len(suffix)] for f in out.child(FEATURES, name).list() if f.endswith(suffix)]
        if not found:
            raise ConfigError(f"teacher '{name}' has no features under {out.url(FEATURES, name)}; run `sas-ray "
                              f"extract` with output_name {name!r}, or fix `teachers`")
        scenes.update(found)
    return sorted(scenes)


def run_fuse(cfg: FuseConfig, address: str | None = None) -> StageReport:
    start = time.perf_counter()
    options = dict(cfg.storage.options)
    out = Storage(cfg.output, options)
    stage = out.child(FEATURES, cfg.fused_name)
    with open_stage(stage, wait=cfg.storage.wait) as manifest:
        ensure_ray(address)
        recipe = fusion_recipe(cfg, out)
        scene_ids = cfg.scenes or scenes_with_features(out, cfg.teachers)
        recipes = scene_recipes(out, recipe, scene_ids)
        plan = manifest.plan(recipes, verify=cfg.storage.verify)
        report = StageReport(f"fuse[{cfg.method}]").planned(plan)
        shared = ray.put(recipe)  # one copy of the vocabulary and capabilities for every task
        units = [(s, (cfg.output, options, cfg.fused_name, s, shared, recipes[s])) for s in plan.todo]
        run_unit_tasks(_fuse_task, units, manifest, report, f"fuse {cfg.fused_name}", cfg.progress)
    report.seconds = time.perf_counter() - start
    report.outputs["features"] = stage.url()
    return report


def main(config: str, overrides: list[str], address: str | None) -> StageReport:
    """Fuse the teachers' point features of every scene into one set (SAS capability-guided fusion,
    docs/method.md §5.5).

    method capability: each point's feature is the softmax(capability / 0.05)-weighted sum of the teachers' features,
    the capabilities read from {output}/capability/capability.parquet (`sas-ray capability`) on the classes the
    teachers vote for; points where the first teacher votes 'other' keep its feature. Baselines: add (sum), linear
    (fixed weights), single (the first teacher). Teachers must share mask_full and text space. Writes
    {output}/features/{fused_name}/{scene}.safetensors and a manifest; reruns skip scenes already fused."""
    from jobs.cli import load_stage_config

    return run_fuse(load_stage_config(config, overrides, FuseConfig), address)
