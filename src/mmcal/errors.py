"""Errors that name the file or item that is wrong, so users never see a deep traceback."""

from __future__ import annotations


class MmcalError(Exception):
    """A user-facing error: the message says what is wrong and where."""


class DataError(MmcalError):
    """A data file or item is missing or malformed."""


class ConfigError(MmcalError):
    """The study configuration is invalid."""


class OutputError(MmcalError, OSError):
    """An output could not be written (disk full, file too large, read-only folder); the message names the file.
    Still an OSError, so code that tolerates a failed write (the hash cache) keeps doing so."""

    @classmethod
    def from_os_error(cls, exc: OSError, message: str) -> OutputError:
        """``message`` as the whole text (no ``[Errno N]`` prefix), with the cause's errno kept for callers."""
        err = cls(message)
        err.errno = exc.errno  # not strerror: OSError would print "[Errno N] strerror" instead of the message
        return err
