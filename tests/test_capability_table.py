"""Reading the capability table: values by teacher and class index, and errors that name what is wrong."""

import pyarrow as pa
import pytest

from sas_ray.capability_table import CAPABILITY_FILE, read_capabilities
from sas_ray.errors import InputError
from sas_ray.storage import Storage

NAMES = ("wall", "floor", "other")


def _write(root: Storage, rows: list[tuple]) -> None:
    root.write_table(CAPABILITY_FILE, pa.Table.from_pylist([
        {"teacher": t, "class_index": k, "class_name": n, "capability": c, "per_image_miou": c}
        for t, k, n, c in rows]))


def test_values_by_teacher_and_class_index(tmp_path):
    root = Storage(str(tmp_path))
    _write(root, [("b", 2, "other", 0.0), ("a", 1, "floor", 0.25), ("b", 0, "wall", 0.5), ("a", 0, "wall", 0.75),
                  ("b", 1, "floor", 0.125), ("a", 2, "other", 0.0), ("c", 0, "wall", 1.0)])
    caps = read_capabilities(root, ["a", "b"], 3, NAMES)
    assert list(caps) == ["a", "b"]
    assert caps["a"].tolist() == [0.75, 0.25, 0.0] and caps["b"].tolist() == [0.5, 0.125, 0.0]


@pytest.mark.parametrize("rows, teachers, message", [
    ([("a", 0, "wall", 0.5), ("a", 2, "other", 0.0)], ["a"], "no capability for class_index [1]"),
    ([("a", k, n, 0.5) for k, n in enumerate(NAMES)], ["a", "seem"], "no rows for teacher 'seem'"),
    ([("a", k, n, 0.5) for k, n in enumerate(NAMES)] + [("a", 1, "floor", 0.5)], ["a"], "more than one row"),
    ([("a", k, n, 0.5) for k, n in enumerate(("wall", "ceiling", "other"))], ["a"], "'ceiling'"),
    ([("a", k, n, 0.5) for k, n in enumerate(NAMES)] + [("a", 3, "x", 0.5)], ["a"], "class_index 3, outside"),
    ([("a", k, n, -0.5) for k, n in enumerate(NAMES)], ["a"], "finite and >= 0"),
])
def test_bad_tables_are_refused_by_name(tmp_path, rows, teachers, message):
    root = Storage(str(tmp_path))
    _write(root, rows)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_capabilities(root, teachers, 3, NAMES)


def test_missing_table_says_which_stage_writes_it(tmp_path):
    with pytest.raises(InputError, match="sas-ray capability"):
        read_capabilities(Storage(str(tmp_path)), ["a"], 3)
