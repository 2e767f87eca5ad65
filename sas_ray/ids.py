"""Unit ids (scene, frame, teacher names) become path components, so they must not escape the output root."""

import re

from sas_ray.errors import InputError

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def check_id(unit_id: str, what: str = "id") -> str:
    """Return `unit_id` if it is a single safe path component, else raise InputError naming it.

    Allowed: letters, digits, '_', '.', '-', not starting with '.' or '-', at most 200 characters, not '..'.
    """
    if not isinstance(unit_id, str) or not _SAFE_ID.match(unit_id) or ".." in unit_id:
        raise InputError(
            f"{what} {unit_id!r} is not a safe name: use letters, digits, '_', '.', '-' "
            "(no '/', no '..', not absolute, at most 200 characters)"
        )
    return unit_id
