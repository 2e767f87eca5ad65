"""Error types a user can act on: each names the unit of work, the file and what was wrong."""


class SasError(Exception):
    """Base class for every error sas-ray raises on purpose."""


class ConfigError(SasError):
    """A config file is invalid (unknown key, wrong type, bad value)."""


class InputError(SasError):
    """One unit of work (scene, frame, checkpoint) has bad input; other units are unaffected."""


class StorageError(SasError):
    """Reading or writing object storage failed (after retries) or a path is unsafe."""


def unit_message(unit_id: str, err: BaseException, kind: str = "scene") -> str:
    """The error text of a manifest row: the error itself when it already names the unit, else prefixed by
    "{kind} {unit_id}: "."""
    text = str(err)
    return text if unit_id in text else f"{kind} {unit_id}: {text}".lstrip()
