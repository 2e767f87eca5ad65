"""Error types a user can act on: each names the unit of work, the file and what was wrong."""


class SasError(Exception):
    """Base class for every error sas-ray raises on purpose."""


class ConfigError(SasError):
    """A config file is invalid (unknown key, wrong type, bad value)."""


class InputError(SasError):
    """One unit of work (scene, frame, checkpoint) has bad input; other units are unaffected."""


class StorageError(SasError):
    """Reading or writing object storage failed (after retries) or a path is unsafe."""
