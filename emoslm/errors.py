"""User-facing errors.

Anything a user can cause (a bad file, a missing package, an unreachable server) raises an
``EmoslmError`` whose message is one line saying what is wrong and what to do. The CLI prints
that line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class EmoslmError(Exception):
    """An error caused by input or environment, reported to the user as one line."""

    exit_code = 2


class AudioError(EmoslmError):
    """The audio input cannot be used (empty, silent, corrupt, truncated, too long, not audio)."""


class AudioTooLong(AudioError):
    """The audio is longer than the limit that applies (a server answers 413)."""


class MissingPackageError(EmoslmError):
    """An optional package needed for the requested model or backend is not installed."""

    def __init__(self, package: str, purpose: str, pip_args: str = "") -> None:
        self.package = package
        args = pip_args or package
        super().__init__(f"{purpose} needs the package '{package}': run `pip install {args}`")


class ModelNotFoundError(EmoslmError):
    """A model name is neither a known offline model, a local directory, nor a hub id."""


class BackendError(EmoslmError):
    """A backend (LLM, TTS, ASR server) failed or could not be reached."""


class DataError(EmoslmError):
    """A data file is malformed; the message names the file and line."""
