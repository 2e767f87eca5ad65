"""Evaluate point features against the prepared ground truth (SPEC §4) and draw the results.

Modes (OpenScene's): fusion = the fused 2D features (features/{features}/), distill = the 3D network's features
(features/{distilled}/, written by `sas-ray predict`), ensemble = per point whichever of the two is surer.
One Ray task per scene reads the scene (points, labels) and its features, predicts labels (argmax of feature · text
over the vocabulary; "no feature" where a point has none) and returns its confusion counts (a [K, K+1] table); the
first `max_ply_scenes` scenes also get pictures: the scene from above and from up to two of its own cameras, with the
prediction, the ground truth and each free-form text query painted in (PNG), and pred.ply, gt.ply and one heatmap PLY
per query for 3D viewers. The driver merges the counts and writes per_class.md, per_class.parquet, summary.json and
confusion.png under {output}/evaluate/{name}/. Every write is atomic. Evaluation always reruns in full: it is a
reduction over all scenes, and a scene costs one matmul.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch

from jobs.console import progress_bar
from jobs.runtime import StageReport, ensure_ray
from sas_ray.config import PRESETS, EvaluateConfig
from sas_ray.errors import ConfigError, InputError, SasError, unit_message
from sas_ray.evaluate import (NO_FEATURE, ConfusionMatrix, ensemble_features, predict_distill, predict_ensemble,
                              predict_fusion)
from sas_ray.features import read_full_features
from sas_ray.labels import (LABEL_SETS, NUSCENES_43, NUSCENES_43_TO_16, OPENSCENE_OTHER_INDEX, prompts,
                            vocabulary_mismatch)
from sas_ray.lease import StageLease
from sas_ray.prepared import read_info, read_scene
from sas_ray.scene import IGNORE_LABEL
from sas_ray.storage import Storage

EVALUATE = "evaluate"


@dataclass(frozen=True)
class EvaluationInputs:
    """What every scene is scored with, made once on the driver."""

    class_names: tuple[str, ...]
    text: torch.Tensor  # float32 [K', C] prompt embeddings (K' = 43 with the detailed nuScenes prompts)
    mapper: torch.Tensor | None  # int64 [K']: prompt -> class index
    text_space: str
    queries: dict[str, tuple[str, torch.Tensor]]  # file stem -> (query, float32 [C] embedding)


def vocabulary_prompts(label_set: str, nuscenes_details: bool) -> tuple[tuple[str, ...], list[str], list[int] | None]:
    """(class names, prompts to score, prompt -> class mapper or None) of a label set, as OpenScene evaluates it."""
    class_names = LABEL_SETS[label_set]
    if label_set == "nuscenes16" and nuscenes_details:
        return class_names, prompts(NUSCENES_43), list(NUSCENES_43_TO_16)
    return class_names, prompts(class_names, OPENSCENE_OTHER_INDEX.get(label_set)), None


def query_stem(position: int, query: str) -> str:
    """A file name stem for a free-form query: 'query0-a-sofa'."""
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")[:60] or "text"
    return f"query{position}-{slug}"


def evaluation_inputs(cfg: EvaluateConfig, label_set: str) -> EvaluationInputs:
    from sas_ray.models import build_text_encoder

    spec = cfg.text_encoder
    encoder = build_text_encoder(spec.name, spec.weights, tiny=spec.tiny, storage_options=dict(cfg.storage.options),
                                 **spec.options)
    class_names, vocabulary, mapper = vocabulary_prompts(label_set, cfg.nuscenes_details)
    queries = {}
    if cfg.queries:
        embeddings = encoder.encode(list(cfg.queries))
        queries = {query_stem(i, q): (q, embeddings[i]) for i, q in enumerate(cfg.queries)}
    return EvaluationInputs(class_names, encoder.encode(vocabulary),
                            None if mapper is None else torch.tensor(mapper, dtype=torch.int64),
                            encoder.text_space, queries)


def scene_features(out: Storage, folder: str, scene, inputs: EvaluationInputs):
    """PointFeatures of `scene` in features/{folder}/, checked against the scene's points and the text space."""
    features, text_space = read_full_features(out, folder, scene.scene_id)
    if features.num_points != scene.num_points:
        raise InputError(f"scene {scene.scene_id}: features/{folder} cover {features.num_points} points but the "
                         f"prepared scene has {scene.num_points} (features of another version of the scene?)")
    if text_space != inputs.text_space:
        raise InputError(f"scene {scene.scene_id}: features/{folder} live in text space {text_space!r} but the text "
                         f"encoder in {inputs.text_space!r} (use the teachers' CLIP checkpoint)")
    return features


def predict_scene(prepared: Storage, out: Storage, cfg: EvaluateConfig, scene_id: str, inputs: EvaluationInputs):
    """(scene, the evaluated features float [N,C] (zero rows = no feature), int64 [N] predicted labels)."""
    scene = read_scene(prepared, scene_id)
    if scene.labels is None:
        raise InputError(f"scene {scene_id}: the prepared scene has no ground-truth labels to evaluate against")
    if cfg.mode == "distill":
        dense = scene_features(out, cfg.distilled, scene, inputs).dense()
        return scene, dense, predict_distill(dense, inputs.text, inputs.mapper)
    fused = scene_features(out, cfg.features, scene, inputs)
    if cfg.mode == "ensemble":
        distilled = scene_features(out, cfg.distilled, scene, inputs).dense()
        return (scene, ensemble_features(fused, distilled, inputs.text).float(),
                predict_ensemble(fused, distilled, inputs.text, inputs.mapper))
    if cfg.mark_no_feature_to_unknown:
        return scene, fused.dense(), predict_fusion(fused, inputs.text, inputs.mapper)
    return scene, fused.dense(), predict_distill(fused.dense(), inputs.text, inputs.mapper)


def draw_scene(pictures: Storage, prepared: Storage, scene, features: torch.Tensor, predicted: torch.Tensor,
               inputs: EvaluationInputs, views: int = 2) -> None:
    """Pictures into `pictures`: birdseye.png and view-{frame}.png from up to `views` of the scene's own cameras
    (prediction, ground truth and each query painted into every pixel); pred.ply, gt.ply and a heatmap PLY per query
    for 3D viewers."""
    from sas_ray.datasets.frames import lost_pose_frames, read_frame
    from sas_ray.prepared import frame_rows_of
    from sas_ray.views import pick_views
    from sas_ray.viz import (PointLayers, birdseye_png, camera_view_png, heatmap_ply, label_palette, label_ply,
                             query_similarity)

    palette = label_palette(len(inputs.class_names))
    pictures.write_bytes("pred.ply", label_ply(scene.points, predicted, palette))
    pictures.write_bytes("gt.ply", label_ply(scene.points, scene.labels, palette))
    similarities = {}
    for stem, (query, embedding) in inputs.queries.items():
        similarities[query] = query_similarity(features, embedding)
        pictures.write_bytes(f"{stem}.ply", heatmap_ply(scene.points, similarities[query]))
    layers = PointLayers(scene.scene_id, scene.points, predicted.numpy(), scene.labels, inputs.class_names,
                         similarities)
    pictures.write_bytes("birdseye.png", birdseye_png(layers))
    rows = frame_rows_of(prepared, scene.scene_id)
    lost = {id(r) for r in lost_pose_frames(rows)}
    rows = [r for r in rows if id(r) not in lost and (r["height"], r["width"]) == (rows[0]["height"], rows[0]["width"])]
    if not rows:
        return
    chosen = pick_views(scene.points, np.array([r["pose"] for r in rows]).reshape(-1, 4, 4),
                        np.array([r["intrinsic"] for r in rows]).reshape(-1, 3, 3),
                        (rows[0]["height"], rows[0]["width"]), views)
    for i in chosen:
        frame = read_frame(rows[i], prepared.options)
        pictures.write_bytes(f"view-{frame.frame_id}.png", camera_view_png(layers, frame))


def _evaluate_task(cfg: dict, scene_id: str, inputs: EvaluationInputs, draw: bool) -> dict:
    try:
        cfg = EvaluateConfig.model_validate(cfg)
        options = dict(cfg.storage.options)
        out = Storage(cfg.output, options)
        scene, features, predicted = predict_scene(Storage(cfg.prepared, options), out, cfg, scene_id, inputs)
        confusion = ConfusionMatrix(inputs.class_names)
        confusion.update(predicted, scene.labels, unit=f"scene {scene_id}")
        if draw:
            draw_scene(out.child(EVALUATE, cfg.folder, "scenes", scene_id), Storage(cfg.prepared, options), scene,
                       features, predicted, inputs)
        labelled = scene.labels != IGNORE_LABEL
        predicted = predicted.numpy()
        counts = {"points": scene.num_points, "labelled_points": int(labelled.sum()),
                  "points_with_feature": int((features.abs().sum(dim=1) > 0).sum()),
                  "correct_points": int((predicted == scene.labels)[labelled].sum()),
                  "no_feature_points": int((predicted == NO_FEATURE)[labelled].sum()),
                  "miou": confusion.mean_iou(), "macc": confusion.mean_accuracy()}
        return {"scene": scene_id, "error": "", "counts": confusion.counts, "summary": counts}
    except (SasError, OSError, ValueError) as err:
        return {"scene": scene_id, "error": unit_message(scene_id, err)}


def _scene_results(units: list[tuple[str, tuple]], progress: bool) -> list[dict]:
    """Run one task per scene; results in completion order, a dead task as that scene's error."""
    remote = ray.remote(num_cpus=1)(_evaluate_task)
    pending = {remote.remote(*args): scene for scene, args in units}
    results = []
    with progress_bar(len(pending), "evaluate", "scene", not progress) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            scene = pending.pop(ready[0])
            try:
                results.append(ray.get(ready[0]))
            except ray.exceptions.RayError as err:
                results.append({"scene": scene, "error": f"scene {scene}: task failed: {err}"})
            bar.update(1)
    return results


def scene_coverage(results: list[dict]) -> str:
    """'3 scenes', or '2 of 3 scenes (1 failed)': what a mean covers."""
    ok = sum(not r["error"] for r in results)
    return f"{ok} scenes" if ok == len(results) else f"{ok} of {len(results)} scenes ({len(results) - ok} failed)"


def write_results(stage: Storage, cfg: EvaluateConfig, label_set: str, inputs: EvaluationInputs,
                  confusion: ConfusionMatrix, results: list[dict]) -> str:
    """per_class.md / .parquet, summary.json and confusion.png; returns the markdown table."""
    from sas_ray.viz import confusion_png

    folders = {"fusion": [cfg.features], "distill": [cfg.distilled], "ensemble": [cfg.features, cfg.distilled]}
    evaluated = folders[cfg.mode]
    table = confusion.to_markdown()
    failed = [r for r in results if r["error"]]
    lines = [f"# {' + '.join(evaluated)}: mode {cfg.mode}, {label_set} ({confusion.num_classes} classes)", "",
             f"Over {scene_coverage(results)}.", "", table]
    if failed:
        lines += ["## Failed scenes (not in the numbers above)", ""] + [f"- {r['error']}" for r in failed] + [""]
    stage.write_bytes("per_class.md", "\n".join(lines).encode())
    stage.write_table("per_class.parquet", confusion.to_arrow())
    stage.write_json("summary.json", {
        "features": evaluated, "mode": cfg.mode, "label_set": label_set, "num_classes": confusion.num_classes,
        "text_space": inputs.text_space, "mark_no_feature_to_unknown": cfg.mark_no_feature_to_unknown,
        "miou": confusion.mean_iou(), "macc": confusion.mean_accuracy(),
        "scenes": {r["scene"]: r["summary"] for r in results if not r["error"]},
        "failed": {r["scene"]: r["error"] for r in results if r["error"]},
        "queries": {stem: query for stem, (query, _) in inputs.queries.items()}})
    stage.write_bytes("confusion.png", confusion_png(confusion))
    return table


def run_evaluate(cfg: EvaluateConfig, address: str | None = None) -> StageReport:
    start = time.perf_counter()
    options = dict(cfg.storage.options)
    stage = Storage(cfg.output, options).child(EVALUATE, cfg.folder)
    with StageLease(stage, wait=cfg.storage.wait):  # one writer; no manifest: every run re-scores every scene
        stage.sweep_temporaries()
        ensure_ray(address)
        info = read_info(Storage(cfg.prepared, options))
        label_set = cfg.label_set or PRESETS[info["preset"]].label_set
        if problem := vocabulary_mismatch(PRESETS[info["preset"]].label_set, label_set):
            raise ConfigError(problem)
        inputs = evaluation_inputs(cfg, label_set)
        scene_ids = cfg.scenes or info["scenes"]
        shared = ray.put(inputs)
        units = [(s, (cfg.model_dump(), s, shared, i < cfg.max_ply_scenes)) for i, s in enumerate(scene_ids)]
        order = {s: i for i, s in enumerate(scene_ids)}
        results = sorted(_scene_results(units, cfg.progress), key=lambda r: order[r["scene"]])
        report = StageReport(f"evaluate[{cfg.mode}]")
        report.ran_because({"evaluate re-scores every scene (no manifest)": len(scene_ids)})
        confusion = ConfusionMatrix(inputs.class_names)
        for result in results:
            if result["error"]:
                report.failed += 1
                report.errors.append(result["error"])
            else:
                report.done += 1
                confusion = confusion.merge(ConfusionMatrix(inputs.class_names, result["counts"]))
        if report.done:
            table = write_results(stage, cfg, label_set, inputs, confusion, results)
            over = f" (over {scene_coverage(results)})"
            report.outputs.update({"results": stage.url(), "mIoU": f"{100 * confusion.mean_iou():.1f}{over}",
                                   "mAcc": f"{100 * confusion.mean_accuracy():.1f}{over}",
                                   "per class": "\n" + table.rstrip()})
    report.seconds = time.perf_counter() - start
    return report


def main(config: str, overrides: list[str], address: str | None) -> StageReport:
    """Score per-point features against the prepared ground truth with OpenScene's metric (docs/method.md §4) and draw
    them.

    Labels = argmax of feature · text over the label set's prompts ("a {class} in a scene", bare "other"). mode
    fusion scores features/{features}/ (points without a 2D feature are misses: mark_no_feature_to_unknown), distill
    scores features/{distilled}/ (`sas-ray predict`), ensemble takes per point the surer of the two. mIoU and mAcc
    divide by ALL classes. Writes {output}/evaluate/{name}/per_class.md, per_class.parquet, summary.json,
    confusion.png, and for the first max_ply_scenes scenes scenes/{scene}/birdseye.png and view-{frame}.png (the
    scene from above and from its own cameras: prediction, ground truth, each text query) with pred.ply, gt.ply and
    a heatmap PLY per query for 3D viewers."""
    from jobs.cli import load_stage_config

    return run_evaluate(load_stage_config(config, overrides, EvaluateConfig), address)
