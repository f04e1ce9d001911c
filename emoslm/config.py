"""Process-wide settings read from the environment (and later, YAML recipes)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field


def _default_home() -> Path:
    return Path(os.environ.get("EMOSLM_HOME", Path.home() / ".cache" / "emoslm")).expanduser()


def _default_threads() -> int:
    return int(os.environ.get("EMOSLM_THREADS", min(4, os.cpu_count() or 1)))


class Settings(BaseModel):
    """Where caches live and how many CPU threads the backends may use."""

    home: Path = Field(default_factory=_default_home)
    threads: int = Field(default_factory=_default_threads)

    @property
    def cache_dir(self) -> Path:
        path = self.home / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path


def settings() -> Settings:
    """Fresh settings each call, so tests and users can change the environment at run time."""
    return Settings()
