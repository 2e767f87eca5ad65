"""Per-stage manifests: one row per unit of work, and each run's plan of which units are done and why others re-run.

`{stage}/manifest.parquet` holds, per unit, its status, its output (path, sha256, size, version) and the recipe it was
made with (sas_ray.lineage). A unit is done iff its row is ok, its recipe is the one this run would use, and its
output is still the object that was written: the same size and version (S3 ETag, local mtime) in one listing of the
stage folder, never a download. `verify` re-hashes the outputs instead (every object read).

Only the driver writes a manifest, atomically, while it holds the stage's lease (sas_ray.lease): `open_stage`.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace

import pyarrow as pa

from sas_ray.errors import SasError
from sas_ray.lease import StageLease
from sas_ray.lineage import Recipe
from sas_ray.storage import ObjectStat, Storage, StoredObject

MANIFEST = "manifest.parquet"
MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("status", pa.string()),  # "ok" or "error"
    ("error", pa.string()),
    ("path", pa.string()),  # output object relative to the stage folder ("" if none)
    ("bytes", pa.int64()),  # the stored object's size
    ("seconds", pa.float64()),
    ("sha256", pa.string()),
    ("version", pa.string()),  # the stored object's ETag (object stores) or mtime in ns (local) when written
    ("recipe", pa.string()),  # digest of config + inputs: the unit is redone when it differs
    ("config", pa.string()),  # canonical JSON of the stage's recipe fields and version
    ("inputs", pa.string()),  # canonical JSON of input name -> sha256
])
VERIFY_THREADS = 8  # `verify` reads this many outputs at once
_CHANGED = "output changed since it was written"


@dataclass(frozen=True)
class UnitResult:
    """One manifest row: what happened to one unit of work, and the recipe it was made with."""

    id: str
    status: str
    error: str = ""
    path: str = ""
    bytes: int = 0
    seconds: float = 0.0
    sha256: str = ""
    version: str = ""
    recipe: str = ""
    config: str = ""
    inputs: str = ""

    @staticmethod
    def ok(unit_id: str, path: str, stored: StoredObject | None, seconds: float,
           recipe: Recipe | None = None) -> UnitResult:
        """A finished unit; `stored` is its output object (None for a unit whose result lives elsewhere)."""
        size, sha, version = (stored.size, stored.sha256, stored.version) if stored else (0, "", "")
        return UnitResult(unit_id, "ok", "", path, size, seconds, sha, version, *_recipe_columns(recipe))

    @staticmethod
    def failed(unit_id: str, error: str, seconds: float = 0.0, recipe: Recipe | None = None) -> UnitResult:
        return UnitResult(unit_id, "error", error, "", 0, seconds, "", "", *_recipe_columns(recipe))


def _recipe_columns(recipe: Recipe | None) -> tuple[str, str, str]:
    return (recipe.digest, recipe.config, recipe.inputs) if recipe else ("", "", "")


@dataclass
class Plan:
    """A run's units to do, in input order; how many are done already; why each of the others runs."""

    todo: list[str]
    skipped: int
    reasons: Counter = field(default_factory=Counter)


def read_rows(stage: Storage) -> dict[str, UnitResult]:
    """The rows of a stage's manifest by unit id ({} if it has none). Columns of older sas-ray versions are
    dropped and missing ones take their defaults: such rows have no recipe, so their units are redone once."""
    if not stage.exists(MANIFEST):
        return {}
    names = {f.name for f in fields(UnitResult)}
    rows = {}
    for row in stage.read_table(MANIFEST).to_pylist():
        result = UnitResult(**{k: v for k, v in row.items() if k in names and v is not None})
        rows[result.id] = result
    return rows


def output_digests(stage: Storage) -> dict[str, str]:
    """unit id -> sha256 of its output, for the finished units of an upstream stage (the inputs of a downstream
    recipe)."""
    return {unit: row.sha256 for unit, row in read_rows(stage).items() if row.status == "ok"}


class Manifest:
    """`{stage}/manifest.parquet`: one row per unit (latest wins), written atomically at most every
    `flush_every_s` and at the end."""

    FILE = MANIFEST

    def __init__(self, stage: Storage, flush_every_s: float = 5.0, lease: StageLease | None = None):
        self.stage = stage
        self.flush_every_s = flush_every_s
        self.lease = lease
        self.rows = read_rows(stage)
        self._dirty = False
        self._last_flush = time.monotonic()

    def plan(self, recipes: dict[str, Recipe], verify: bool = False) -> Plan:
        """Which of the units (id -> the recipe this run would make it with) still need work, and why. `verify`
        re-hashes every output the listing calls done or changed: equal bytes are done (a copied or touched output
        keeps its row, with the new version recorded), different ones are redone."""
        listing = self.stage.listing() if any(r.path for r in self.rows.values()) else {}
        reasons = {unit: self._stale(self.rows.get(unit), recipe, listing) for unit, recipe in recipes.items()}
        if verify:
            checked = [u for u, why in reasons.items() if why in (None, _CHANGED) and self.rows[u].path]
            with ThreadPoolExecutor(VERIFY_THREADS) as pool:
                intact = dict(zip(checked, pool.map(self._intact, checked)))
            for unit in checked:
                if intact[unit] and reasons[unit] == _CHANGED:
                    found = listing[self.rows[unit].path]
                    self.record(replace(self.rows[unit], bytes=found.size, version=found.version))
                reasons[unit] = None if intact[unit] else "output changed (sha256 differs)"
        todo = [u for u, why in reasons.items() if why is not None]
        return Plan(todo, len(recipes) - len(todo), Counter(reasons[u] for u in todo))

    @staticmethod
    def _stale(row: UnitResult | None, recipe: Recipe, listing: dict[str, ObjectStat]) -> str | None:
        """Why a unit must run (None: it is done)."""
        if row is None:
            return "new"
        if row.status != "ok":
            return "failed before"
        if row.recipe != recipe.digest:
            return recipe.change_from(row.config, row.inputs)
        if not row.path:
            return None
        found = listing.get(row.path)
        if found is None:
            return "output missing"
        if (found.size, found.version) != (row.bytes, row.version):
            return _CHANGED
        return None

    def _intact(self, unit: str) -> bool:
        row = self.rows[unit]
        try:
            return self.stage.sha256(row.path) == row.sha256
        except FileNotFoundError:
            return False

    def record(self, result: UnitResult) -> None:
        self.rows[result.id] = result
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        if self.lease is not None:
            self.lease.check()  # a run that lost its lease must not overwrite its successor's manifest
        rows = [self.rows[k].__dict__ for k in sorted(self.rows)]
        self.stage.write_table(self.FILE, pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
        self._dirty = False
        self._last_flush = time.monotonic()

    def errors(self) -> list[UnitResult]:
        return [r for r in self.rows.values() if r.status != "ok"]


@contextmanager
def open_stage(stage: Storage, wait: bool = False) -> Iterator[Manifest]:
    """The stage folder for writing: its lease held (one writer; `wait` for another run to finish instead of
    stopping), what killed writers left swept, its manifest loaded; the manifest is flushed and the lease given
    back at the end."""
    with StageLease(stage, wait=wait) as lease:
        stage.sweep_temporaries()
        manifest = Manifest(stage, lease=lease)
        try:
            yield manifest
        except BaseException:
            with contextlib.suppress(SasError):  # keep what finished if the storage still takes it; the error
                manifest.flush()                 # that stopped the stage is the one to report
            raise
        manifest.flush()
