"""`sas-ray fuse` and `sas-ray evaluate`: hand-worked fusion of hand-made teachers, the evaluator on perfect and
deliberately confused features, and the CLI chain prepare -> extract -> fuse -> evaluate on a synthetic dataset."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from jobs.cli import main as cli_main
from jobs.evaluate import run_evaluate, vocabulary_prompts
from jobs.fuse import run_fuse
from jobs.prepare import run_prepare
from sas_ray.config import EvaluateConfig, FuseConfig, PrepareConfig, parse_config
from sas_ray.datasets.ply import decode_ply
from sas_ray.errors import ConfigError
from sas_ray.features import decode_features
from sas_ray.labels import MATTERPORT_21, SCANNET_20, prompts
from sas_ray.models import build_text_encoder
from sas_ray.prepared import read_scene
from sas_ray.storage import Storage

TINY_TEXT = {"name": "openclip-text", "tiny": True}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCENES = ("scene0000_00", "scene0001_00")


@pytest.fixture(scope="module")
def text_encoder():
    return build_text_encoder("openclip-text", tiny=True)


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    report = run_prepare(parse_config({
        "dataset": {"layout": "scannet", "root": str(root / "raw"), "split": "val",
                    "synthetic": {"num_scenes": 2, "frames_per_scene": 1, "size": "tiny", "points_per_scene": 1500,
                                  "seed": 4}},
        "output": str(root / "prepared"), "progress": False}, PrepareConfig))
    assert report.failed == 0, report.summary()
    return str(root / "prepared")


def _write_features(out: Storage, folder: str, scene_id: str, dense: torch.Tensor, mask: torch.Tensor,
                    text_space: str) -> None:
    out.child("features", folder).write_tensors(f"{scene_id}.safetensors",
                                                {"feat": dense[mask].half(), "mask_full": mask},
                                                {"text_space": text_space})


def _capability_table(values: dict[str, np.ndarray]) -> pa.Table:
    rows = [{"teacher": t, "class_index": k, "class_name": MATTERPORT_21[k], "capability": float(v[k]),
             "per_image_miou": float(v[k])} for t, v in values.items() for k in range(len(MATTERPORT_21))]
    return pa.Table.from_pylist(rows)


def test_configs_resolve_defaults_and_refuse_missing_inputs(tmp_path):
    base = {"output": "out", "teachers": ["a", "b"], "method": "add"}
    assert parse_config(base, FuseConfig).other_index == 19  # SAS: 'other' of the 21-entry vocabulary
    assert parse_config({**base, "label_set": "nuscenes16"}, FuseConfig).other_index is None
    explicit = parse_config({**base, "other_index": None}, FuseConfig)
    assert FuseConfig.model_validate(explicit.model_dump()).other_index is None  # survives the trip to a task
    for bad, key in (({"method": "capability"}, "text_encoder"), ({"teachers": ["a"]}, "at least 2"),
                     ({"linear_weights": [1.0, 2.0]}, "linear_weights"), ({"other_index": 21}, "outside")):
        with pytest.raises(ConfigError, match=key):
            parse_config({**base, **bad}, FuseConfig)
    names, scored, mapper = vocabulary_prompts("nuscenes16", nuscenes_details=True)  # OpenScene's 43 -> 16
    assert len(scored) == len(mapper) == 43 and names[mapper[scored.index("a lawn in a scene")]] == "terrain"
    assert vocabulary_prompts("matterport21", False)[1][19:] == ["other", "a ceiling in a scene"]
    evaluate = {"prepared": "p", "output": "o", "text_encoder": TINY_TEXT}
    assert [parse_config({**evaluate, "mode": m}, EvaluateConfig).folder for m in ("fusion", "distill", "ensemble")] \
        == ["fused", "distill", "distill-ensemble"]


# -- evaluate --------------------------------------------------------------------------------------------------------

def _evaluate(prepared: str, output: str, **extra):
    cfg = parse_config({"prepared": prepared, "output": output, "text_encoder": TINY_TEXT, "progress": False,
                        **extra}, EvaluateConfig)
    report = run_evaluate(cfg)
    assert (report.done, report.failed) == (2, 0), report.summary()
    stage = Storage(output).child("evaluate", cfg.folder)
    iou = {r["class"]: r["iou"] for r in stage.read_table("per_class.parquet").to_pylist()}
    return iou, stage.read_json("summary.json"), stage


def test_evaluate_perfect_features_then_one_confused_class(prepared, tmp_path, text_encoder):
    out = Storage(str(tmp_path / "out"))
    text = text_encoder.encode(prompts(SCANNET_20))  # 'other' (last entry) prompted as the bare word
    labels = {s: read_scene(Storage(prepared), s).labels for s in SCENES}
    masks = {s: torch.arange(len(labels[s])) % 7 != 3 for s in SCENES}  # every 7th point has no 2D feature
    perfect = {s: text[torch.from_numpy(np.where(labels[s] == 255, 0, labels[s]))] for s in SCENES}
    for s in SCENES:
        _write_features(out, "perfect", s, perfect[s], masks[s], text_encoder.text_space)

    # By hand: no false positive or negative, so IoU = 1 for each class in the ground truth; a point without a
    # feature is a miss for accuracy only; means divide by all 20 classes.
    gt = np.concatenate([labels[s] for s in SCENES])
    has_feature = np.concatenate([masks[s].numpy() for s in SCENES])
    present = sorted(set(gt[gt != 255].tolist()))
    assert len(present) >= 4
    accuracy = {c: (has_feature & (gt == c)).sum() / (gt == c).sum() for c in present}
    iou, summary, stage = _evaluate(prepared, str(tmp_path / "out"), features="perfect", queries=["a sofa"],
                                    max_ply_scenes=1)
    assert {name for name, value in iou.items() if value is not None} == {SCANNET_20[c] for c in present}
    assert all(iou[SCANNET_20[c]] == 1.0 for c in present)
    assert summary["miou"] == pytest.approx(len(present) / 20)
    assert summary["macc"] == pytest.approx(sum(accuracy.values()) / 20)
    assert summary["scenes"][SCENES[0]]["no_feature_points"] == int(((labels[SCENES[0]] != 255)
                                                                     & ~masks[SCENES[0]].numpy()).sum())
    pictures = stage.child("scenes", SCENES[0])
    predicted = decode_ply(pictures.read_bytes("pred.ply"), "pred.ply").labels
    expected = np.where(masks[SCENES[0]].numpy(), np.where(labels[SCENES[0]] == 255, 0, labels[SCENES[0]]), 256)
    np.testing.assert_array_equal(predicted, expected)
    assert pictures.read_bytes("birdseye.png").startswith(PNG_MAGIC)
    assert any(name.startswith("view-") and name.endswith(".png") for name in pictures.list())
    assert not stage.child("scenes", SCENES[1]).exists("pred.ply")

    # Confuse one class in the first scene: its featured points lean to another present class (0.8 / 0.2 mix).
    counts = {c: (has_feature & (gt == c)).sum() for c in present}
    confused, receiver = sorted(present, key=lambda c: -counts[c])[:2]
    moved = masks[SCENES[0]].numpy() & (labels[SCENES[0]] == confused)
    wrong = perfect[SCENES[0]].clone()
    wrong[torch.from_numpy(moved)] = 0.8 * text[receiver] + 0.2 * text[confused]
    _write_features(out, "confused", SCENES[0], wrong, masks[SCENES[0]], text_encoder.text_space)
    _write_features(out, "confused", SCENES[1], perfect[SCENES[1]], masks[SCENES[1]], text_encoder.text_space)
    iou, summary, _ = _evaluate(prepared, str(tmp_path / "out"), features="confused", max_ply_scenes=0)
    k = moved.sum()
    assert 0 < k < counts[confused]
    assert iou[SCANNET_20[confused]] == pytest.approx((counts[confused] - k) / counts[confused])
    assert iou[SCANNET_20[receiver]] == pytest.approx(counts[receiver] / (counts[receiver] + k))
    assert all(iou[SCANNET_20[c]] == 1.0 for c in present if c not in (confused, receiver))

    # 3D features that are perfect everywhere: distill is perfect; the ensemble takes the 3D feature wherever the
    # 2D one is unsure (mixed) or missing, so it is perfect too, accuracy included.
    for s in SCENES:
        _write_features(out, "perfect3d", s, perfect[s], torch.ones_like(masks[s]), text_encoder.text_space)
    for mode in ("distill", "ensemble"):
        iou, summary, _ = _evaluate(prepared, str(tmp_path / "out"), mode=mode, features="confused",
                                    distilled="perfect3d", max_ply_scenes=0)
        assert all(iou[SCANNET_20[c]] == 1.0 for c in present), mode
        assert summary["miou"] == pytest.approx(len(present) / 20) and summary["macc"] == summary["miou"], mode

    # A scene without features fails alone; the table lists it and says how many scenes its means cover.
    _write_features(out, "half", SCENES[0], perfect[SCENES[0]], masks[SCENES[0]], text_encoder.text_space)
    report = run_evaluate(parse_config({"prepared": prepared, "output": str(tmp_path / "out"), "features": "half",
                                        "text_encoder": TINY_TEXT, "max_ply_scenes": 0, "progress": False},
                                       EvaluateConfig))
    assert (report.done, report.failed) == (1, 1) and report.outputs["mIoU"].endswith("(over 1 of 2 scenes (1 failed))")
    table = out.child("evaluate", "half").read_bytes("per_class.md").decode()
    assert "Over 1 of 2 scenes (1 failed)." in table
    assert f"## Failed scenes (not in the numbers above)\n\n- {report.errors[0]}" in table and SCENES[1] in table


# -- fuse ------------------------------------------------------------------------------------------------------------

def test_fuse_matches_hand_worked_capability_fusion(ray_session, tmp_path, text_encoder):
    out = Storage(str(tmp_path / "out"))
    text = text_encoder.encode(prompts(MATTERPORT_21))  # SAS's vocabulary, bare 'other' at 19
    space = text_encoder.text_space
    # Scene s0: 6 points, point 2 unseen. Each teacher's feature is a class embedding, so its vote is known.
    mask = torch.tensor([True, True, False, True, True, True])
    lseg_votes, seem_votes = [4, 19, 0, 0, 6, 3], [5, 8, 0, 0, 20, 3]
    lseg = 2.0 * text[lseg_votes]  # LSeg-like norm 2 (flip TTA)
    seem = text[seem_votes]
    fp16_text = text.half().float().numpy()
    for feats, votes in ((lseg, lseg_votes), (seem, seem_votes)):  # precondition, in numpy
        np.testing.assert_array_equal((feats.half().float().numpy() @ fp16_text.T).argmax(1)[mask.numpy()],
                                      np.asarray(votes)[mask.numpy()])
    _write_features(out, "lseg", "s0", lseg, mask, space)
    _write_features(out, "seem", "s0", seem, mask, space)
    # s1: the teachers saw different points; s2: the second teacher lives in another text space.
    _write_features(out, "lseg", "s1", lseg, mask, space)
    _write_features(out, "seem", "s1", seem, ~mask, space)
    _write_features(out, "lseg", "s2", lseg, mask, space)
    _write_features(out, "seem", "s2", seem, mask, "openclip:tiny:seed1")
    rng = np.random.default_rng(0)
    caps = {"lseg": rng.uniform(0.1, 0.9, 21), "seem": rng.uniform(0.1, 0.9, 21)}
    for v in caps.values():
        v[19] = 0.0
    out.write_table("capability/capability.parquet", _capability_table(caps))

    cfg = {"output": str(tmp_path / "out"), "teachers": ["lseg", "seem"], "text_encoder": TINY_TEXT,
           "progress": False}
    report = run_fuse(parse_config(cfg, FuseConfig))
    assert (report.done, report.failed) == (1, 2), report.summary()
    errors = sorted(report.errors)
    assert "s1" in errors[0] and "'seem'" in errors[0] and "'lseg'" in errors[0] and "mask_full" in errors[0]
    assert "s2" in errors[1] and "text space" in errors[1] and "seed1" in errors[1]

    fused = decode_features(out.child("features", "fused").read_tensors("s0.safetensors"), "s0")
    assert torch.equal(fused.mask_full, mask)
    f_l, f_s = lseg.half().double()[mask], seem.half().double()[mask]
    rows = [0, 1, 3, 4, 5]
    for i, p in enumerate(rows):
        cl, cs = lseg_votes[p], seem_votes[p]
        if cl == 19:  # LSeg votes 'other': its feature is kept
            expected = f_l[i]
        else:  # SPEC §5.5 steps 3-6
            a_l, a_s = caps["lseg"][cl] + caps["lseg"][cs], caps["seem"][cs] + caps["seem"][cl]
            a_l, a_s = a_l / (a_l + a_s), a_s / (a_l + a_s)
            w_l = np.exp(a_l / 0.05) / (np.exp(a_l / 0.05) + np.exp(a_s / 0.05))
            expected = w_l * f_l[i] + (1 - w_l) * f_s[i]
        torch.testing.assert_close(fused.feat[i].double(), expected, atol=2e-3, rtol=2e-3)

    again = run_fuse(parse_config(cfg, FuseConfig))
    assert (again.done, again.skipped, again.failed) == (0, 1, 2)
    added = run_fuse(parse_config({**cfg, "method": "add"}, FuseConfig))  # another recipe: s0 is fused again
    assert (added.done, added.skipped) == (1, 0)
    fused = decode_features(out.child("features", "fused").read_tensors("s0.safetensors"), "s0")
    torch.testing.assert_close(fused.feat.double(), f_l + f_s, atol=4e-3, rtol=2e-3)


# -- the CLI chain ---------------------------------------------------------------------------------------------------

def _yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_cli_chain_prepare_extract_fuse_evaluate(ray_session, tmp_path, capsys):
    prepared, output = str(tmp_path / "prepared"), str(tmp_path / "out")
    teacher = {"name": "openclip-dense", "tiny": True, "gpus": 0, "batch_size": 3}
    configs = {
        "prepare": {"dataset": {"layout": "scannet", "root": str(tmp_path / "raw"), "split": "val",
                                "synthetic": {"num_scenes": 2, "frames_per_scene": 2, "size": "tiny",
                                              "points_per_scene": 1200, "seed": 5}},
                    "output": prepared, "progress": False},
        # Two teachers in one text space (same tiny CLIP) with different features (with / without flip TTA),
        # extracted by one run: two concurrent teacher pipelines on the tests' 2 Ray CPUs.
        "extract": {"prepared": prepared, "output": output, "progress": False,
                    "teachers": [{**teacher, "output_name": "dense-flip", "options": {"flip": True}},
                                 {**teacher, "output_name": "dense-plain", "options": {"flip": False}}]},
        "fuse": {"output": output, "teachers": ["dense-flip", "dense-plain"], "method": "capability",
                 "text_encoder": TINY_TEXT, "progress": False},
        "evaluate": {"prepared": prepared, "output": output, "features": "fused", "text_encoder": TINY_TEXT,
                     "queries": ["a sofa", "something to sit on"], "max_ply_scenes": 1, "progress": False},
    }
    for name in ("prepare", "extract"):
        assert cli_main([name, "--config", _yaml(tmp_path / f"{name}.yaml", configs[name])]) == 0
    caps = {"dense-flip": np.linspace(0.2, 0.8, 21), "dense-plain": np.linspace(0.8, 0.2, 21)}
    caps["dense-flip"][19] = caps["dense-plain"][19] = 0.0
    Storage(output).write_table("capability/capability.parquet", _capability_table(caps))
    for stage in ("fuse", "evaluate"):
        assert cli_main([stage, "--config", _yaml(tmp_path / f"{stage}.yaml", configs[stage])]) == 0
    printed = capsys.readouterr().out
    assert "fuse[capability]: 2 done" in printed and "mIoU:" in printed and "| wall |" in printed

    results = tmp_path / "out" / "evaluate" / "fused"
    assert "| **mean (20 classes)** |" in (results / "per_class.md").read_text()
    table = pq.read_table(results / "per_class.parquet")
    assert table.num_rows == 20 and table.column_names[:3] == ["class", "iou", "accuracy"]
    summary = json.loads((results / "summary.json").read_text())
    assert set(summary["scenes"]) == set(SCENES) and 0.0 <= summary["miou"] <= 1.0 and not summary["failed"]
    assert (results / "confusion.png").read_bytes().startswith(PNG_MAGIC)
    pictures = results / "scenes" / SCENES[0]
    points = read_scene(Storage(prepared), SCENES[0]).num_points
    for name in ("pred.ply", "gt.ply", "query0-a-sofa.ply", "query1-something-to-sit-on.ply"):
        data = (pictures / name).read_bytes()
        assert data.startswith(b"ply\n") and len(decode_ply(data, name).points) == points
    views = sorted(pictures.glob("view-*.png"))
    assert 1 <= len(views) <= 2 and (pictures / "birdseye.png").read_bytes().startswith(PNG_MAGIC)
    assert all(view.read_bytes().startswith(PNG_MAGIC) for view in views)
    assert not (results / "scenes" / SCENES[1]).exists()

    assert cli_main(["fuse", "--config", str(tmp_path / "fuse.yaml")]) == 0
    assert "fuse[capability]: 0 done, 2 already done" in capsys.readouterr().out
