"""Errors that name the file or item that is wrong, so users never see a deep traceback."""


class MmcalError(Exception):
    """A user-facing error: the message says what is wrong and where."""


class DataError(MmcalError):
    """A data file or item is missing or malformed."""


class ConfigError(MmcalError):
    """The study configuration is invalid."""


class OutputError(MmcalError, OSError):
    """An output could not be written (disk full, file too large, read-only folder); the message names the file.
    Still an OSError, so code that tolerates a failed write (the hash cache) keeps doing so."""
