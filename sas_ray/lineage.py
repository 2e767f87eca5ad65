"""Recipes: what a unit of work's output depends on, so that resume re-runs exactly the units a change affects.

A stage declares its output-relevant config fields as data and an algorithm VERSION it bumps when its outputs
change (STYLE.md, "A stage declares what its output depends on"); a unit adds the sha256 of every input it read:
upstream manifest rows and weights. Progress, resources, paths and storage options are never in a recipe.

    RECIPE_FIELDS = ("k_thresh", "min_verts", "mode", "knn")
    VERSION = 1
    recipe = stage_recipe(VERSION, cfg, RECIPE_FIELDS).unit({"scene": scene_rows[scene_id]})

Weights are identified by content: `content_digest` hashes a file (or every file of a folder) once per machine and
remembers the result by (URL, size, version), so an unchanged checkpoint costs one listing afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass

from pydantic import BaseModel

from sas_ray.storage import absolute_root, filesystem, retrying, sha256_bytes, version_of


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Recipe:
    """A unit's recipe: `config` (canonical JSON of the stage's fields and version) and `inputs` (canonical JSON of
    input name -> sha256). Manifest rows keep both, so a changed recipe can say what changed."""

    config: str
    inputs: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.config}\n{self.inputs}".encode()).hexdigest()[:32]

    def change_from(self, config: str, inputs: str) -> str:
        """Why a unit made with (`config`, `inputs`) is made again with this recipe, in a user's words."""
        if config != self.config:
            return "config changed: " + _diff(config, self.config)
        if inputs != self.inputs:
            return "input changed: " + _diff(inputs, self.inputs, values=False)
        return "recipe changed"


def _diff(old: str, new: str, values: bool = True) -> str:
    try:
        before, after = json.loads(old or "{}"), json.loads(new)
    except json.JSONDecodeError:
        return "recorded by an older sas-ray"
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if not values:
        return ", ".join(keys)
    return ", ".join(f"{k} {_short(before.get(k))} -> {_short(after.get(k))}" for k in keys)


def _short(value) -> str:
    text = _canonical(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class StageRecipe:
    """The part of a recipe every unit of a run shares: the stage's config fields and version."""

    config: str

    def unit(self, inputs: dict[str, str] | None = None) -> Recipe:
        """The recipe of one unit that read `inputs` (name -> sha256; '' for an input that has no row yet)."""
        return Recipe(self.config, _canonical(inputs or {}))


def stage_recipe(version: int, cfg: BaseModel | None = None, fields: tuple[str, ...] = (), **resolved) -> StageRecipe:
    """The config part of a stage's recipes: `fields` of `cfg` as configured, plus `resolved` values (defaults
    taken from a preset or the data, nested specs reduced to what shapes the output)."""
    dumped = cfg.model_dump(mode="json", include=set(fields)) if cfg is not None else {}
    return StageRecipe(_canonical({"version": version, **dumped, **resolved}))


# -- weights: content digests, remembered per machine -----------------------------------------------------------
_CACHE_LOCK = threading.Lock()


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sas-ray", "content-digests.json")


def _load_cache() -> dict:
    try:
        with open(_cache_path()) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_cache(cache: dict) -> None:
    path = _cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(cache, f)
    os.replace(tmp, path)


def content_digest(url: str | None, options: dict | None = None) -> str:
    """sha256 of the weights at `url`: a file's bytes, or a folder's files (relative path and digest of each, in
    order); '' for None (no weights: a tiny model is fixed by its config). Remembered on this machine by (URL, size,
    version), so only a new or changed file is read."""
    if not url:
        return ""
    url = absolute_root(url)
    fs, path = filesystem(url, options)
    info = retrying(f"checking weights {url}", lambda: fs.info(path))
    if info.get("type") == "directory":  # e.g. a diffusers layout
        found = retrying(f"listing weights {url}", lambda: fs.find(path, detail=True))
        files = {p[len(path.rstrip("/")) + 1:]: i for p, i in found.items() if i.get("type") != "directory"}
    else:
        files = {"": info}
    with _CACHE_LOCK:
        cache = _load_cache()
        digests = {}
        for rel, entry in sorted(files.items()):
            full = f"{path.rstrip('/')}/{rel}" if rel else path
            key = f"{fs.unstrip_protocol(full)}|{entry.get('size')}|{version_of(entry)}"
            if key not in cache:
                cache[key] = sha256_bytes(retrying(f"reading weights {full}", lambda p=full: fs.cat_file(p)))
            digests[rel] = cache[key]
        _save_cache(cache)
    return digests[""] if "" in digests else sha256_bytes(_canonical(digests).encode())


def checkpoint_digests(checkpoints: dict[str, str | None], options: dict | None = None) -> dict[str, str]:
    """`content_digest` of each checkpoint, by name (a TeacherSpec's `checkpoints`): a recipe's inputs."""
    return {name: content_digest(url, options) for name, url in checkpoints.items()}
